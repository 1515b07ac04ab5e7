"""Downloading dataset files safely: official URLs, md5 checks, atomic writes, safe tar.

Nothing here trusts what comes over the network:

* :func:`download_url` streams into a temporary file beside the destination, checks its
  md5 against the recorded one and only then renames it into place (``os.replace``), so
  a destination path either does not exist or holds the verified file. On a mismatch the
  temporary file is deleted and :class:`~robustlab.errors.ChecksumError` is raised.
* :func:`extract_tar` refuses archive members with absolute paths, ``..`` components,
  links or device files *before* writing anything, and extracts into a temporary folder
  that is moved into place only when every member was written.

The table :data:`RESOURCES` records the official files and md5 sums. The checksums are
the ones published with the datasets and used by torchvision's dataset classes:

* MNIST (LeCun, Bottou, Bengio & Haffner 1998), mirrored by PyTorch on
  ``https://ossci-datasets.s3.amazonaws.com/mnist/`` (the original
  ``http://yann.lecun.com/exdb/mnist/`` is tried second);
* Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747);
* CIFAR-10 / CIFAR-100 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny
  Images"), python pickle versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from robustlab._atomic import atomic_path, write_error
from robustlab.errors import ChecksumError, DataError, WriteError

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)


@dataclass(frozen=True)
class Resource:
    """One official file: its name, md5 and the base URLs it can be fetched from.

    ``extract`` marks archives (``.tar.gz``) that are unpacked after download.
    """

    filename: str
    md5: str
    mirrors: tuple[str, ...]
    extract: bool = False

    @property
    def urls(self) -> list[str]:
        """Full URLs, in the order they are tried."""
        return [m + self.filename for m in self.mirrors]


def _idx_set(mirrors: tuple[str, ...], md5s: dict[str, str]) -> tuple[Resource, ...]:
    return tuple(Resource(name, md5, mirrors) for name, md5 in md5s.items())


#: Official files per dataset (registry name -> resources). md5 values are the published
#: ones (identical to torchvision's ``MNIST.resources`` / ``FashionMNIST.resources`` /
#: ``CIFAR10.tgz_md5`` / ``CIFAR100.tgz_md5``).
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "mnist": _idx_set(
        MNIST_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": _idx_set(
        FASHION_MNIST_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        Resource("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", CIFAR_MIRRORS, True),
    ),
    "cifar100": (
        Resource("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", CIFAR_MIRRORS, True),
    ),
}


def known_md5(dataset: str, filename: str) -> str | None:
    """The recorded md5 of ``filename`` for ``dataset``, or ``None`` if it is not official."""
    for res in RESOURCES.get(dataset, ()):
        if res.filename == filename:
            return res.md5
    return None


def md5sum(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex md5 digest of a file, read in chunks (md5 is used for integrity, not security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(
    path: str | os.PathLike[str], expected: str, *, name: str | None = None, hint: str = ""
) -> None:
    """Raise :class:`ChecksumError` unless the md5 of ``path`` equals ``expected``.

    ``name`` is how the file is called in the message (default: the path itself);
    ``hint`` is appended to the message.
    """
    actual = md5sum(path)
    if actual.lower() != expected.lower():
        raise ChecksumError(
            f"{name or path}: md5 checksum mismatch (expected {expected}, got {actual}). "
            f"The file is corrupt, truncated or not the official one: delete it and "
            f"download again (download=True).{hint}"
        )


def _open(url: str, opener: Callable[..., Any] | None, timeout: float) -> Any:
    if opener is None:
        opener = urllib.request.urlopen  # looked up at call time so tests can patch it
    return opener(url, timeout=timeout)


def download_url(
    url: str,
    dest: str | os.PathLike[str],
    md5: str | None,
    *,
    opener: Callable[..., Any] | None = None,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest``, verifying ``md5`` before the file appears at ``dest``.

    The bytes go to a temporary file beside ``dest`` (``.<name>.<random>.tmp``, unique so
    that concurrent downloads of the same file cannot interleave); its md5 is checked and
    only then is it moved to ``dest`` with :func:`os.replace`. On a checksum mismatch or
    any error the temporary file is removed and ``dest`` is left as it was.

    Parameters
    ----------
    url: where to download from.
    dest: the final path of the file (parent folders are created).
    md5: expected hex md5, or ``None`` to skip the check.
    opener: called as ``opener(url, timeout=timeout)``; must return a binary file-like
        context manager. Defaults to :func:`urllib.request.urlopen` (tests inject a fake).

    Raises
    ------
    ChecksumError: the downloaded bytes do not have the expected md5.
    DataError: the URL could not be fetched.
    WriteError: the file could not be written (disk full, quota, file size limit, no
        permission), naming the cause and ``dest``.
    """
    dest = Path(dest)
    try:
        with atomic_path(dest) as tmp:  # removes the temporary file on any error
            try:
                with _open(url, opener, timeout) as response, open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out, chunk_size)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if _is_write_failure(exc, dest):
                    raise  # disk full, quota, no permission: atomic_path names it (WriteError)
                raise DataError(f"could not download {url}: {exc}") from exc
            if md5 is not None:
                check_md5(tmp, md5, name=f"{dest.name} downloaded from {url}")
    except WriteError:
        raise
    except OSError as exc:  # cannot create the folder for another reason
        raise DataError(f"cannot write {dest}: {exc}; pass a writable root=...") from exc
    return dest


def _is_write_failure(exc: BaseException, dest: Path) -> bool:
    """An ``OSError`` of the local file system (not of the network) that
    :func:`~robustlab._atomic.atomic_path` turns into a :class:`WriteError`."""
    return (
        isinstance(exc, OSError)
        and not isinstance(exc, urllib.error.URLError)
        and write_error(dest, exc.errno or 0) is not None
    )


def fetch(
    dataset: str,
    folder: str | os.PathLike[str],
    filenames: Iterable[str] | None = None,
    *,
    opener: Callable[..., Any] | None = None,
) -> list[Path]:
    """Download the official files of ``dataset`` into ``folder`` (skipping verified ones).

    Each file is tried from its mirrors in order; a file already present with the right
    md5 is kept. Archives (``Resource.extract``) are unpacked into ``folder`` with
    :func:`extract_tar`. Returns the paths of the downloaded (or kept) files.

    Raises :class:`DataError` (or :class:`ChecksumError`) naming every URL tried when a
    file cannot be obtained from any mirror.
    """
    if dataset not in RESOURCES:
        raise DataError(f"no download recipe for dataset {dataset!r}; known: {', '.join(RESOURCES)}.")
    folder = Path(folder)
    wanted = None if filenames is None else set(filenames)
    paths: list[Path] = []
    for res in RESOURCES[dataset]:
        if wanted is not None and res.filename not in wanted:
            continue
        dest = folder / res.filename
        if not (dest.is_file() and md5sum(dest) == res.md5):
            errors: list[str] = []
            last: DataError | None = None
            for url in res.urls:
                try:
                    download_url(url, dest, res.md5, opener=opener)
                    break
                except DataError as exc:  # includes ChecksumError: try the next mirror
                    errors.append(str(exc))
                    last = exc
            else:
                kind = type(last) if isinstance(last, ChecksumError) else DataError
                raise kind(
                    f"could not download {res.filename} for {dataset} into {folder}; tried: "
                    + "; ".join(errors)
                    + ". Check your internet connection, or download the file yourself and "
                    "pass root=<its folder>."
                )
        if res.extract:
            extract_tar(dest, folder)
        paths.append(dest)
    return paths


def _check_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = member.name
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refuses to extract member {name!r} with an absolute path.")
    if ".." in p.parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise DataError(f"{archive}: refuses to extract member {name!r} (path traversal '..').")
    if member.issym() or member.islnk():
        raise DataError(
            f"{archive}: refuses to extract member {name!r}: it is a link "
            f"(to {member.linkname!r}); dataset archives contain only files and folders."
        )
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refuses to extract member {name!r}: not a regular file or folder.")
    return p


def publish_extracted(tmp: Path, dest: Path) -> list[Path]:
    """Move the top-level entries of the staging folder ``tmp`` into ``dest``, replacing
    entries of the same name; returns the paths created (the last step of a safe extraction)."""
    created: list[Path] = []
    for entry in sorted(tmp.iterdir()):
        final = dest / entry.name
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(entry, final)
        created.append(final)
    return created


def extract_tar(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Safely extract a (possibly gzip-compressed) tar archive into ``dest``.

    Every member is checked first: absolute paths, ``..`` components, symbolic or hard
    links and special files raise :class:`DataError` and nothing is written. The archive
    is then unpacked into a temporary folder inside ``dest`` and its top-level entries are
    moved into ``dest`` (replacing entries of the same name), so an interrupted or failed
    extraction leaves no half-written folder behind. Returns the top-level paths created.
    """
    archive = Path(path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            checked = [(m, _check_member(m, archive)) for m in members]
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
            try:
                for member, rel in checked:
                    if not rel.parts or rel.parts == (".",):
                        continue
                    target = tmp.joinpath(*rel.parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    if src is None:  # pragma: no cover - regular files always have data
                        raise DataError(f"{archive}: cannot read member {member.name!r}.")
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                return publish_extracted(tmp, dest)
            finally:
                with contextlib.suppress(OSError):
                    shutil.rmtree(tmp)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError) and not archive.exists():
            raise DataError(f"archive {archive} does not exist.") from exc
        raise DataError(
            f"{archive} is not a readable tar archive ({exc}); it is corrupt or truncated: "
            f"delete it and download again."
        ) from exc


__all__ = [
    "RESOURCES",
    "Resource",
    "check_md5",
    "download_url",
    "extract_tar",
    "fetch",
    "known_md5",
    "md5sum",
]
