"""The released corrupted test sets: CIFAR-10-C and MNIST-C, read as robustlab datasets.

>>> from robustlab import data
>>> fog3 = data.load("cifar10-c", split="test", root="~/data", corruption="fog", severity=3)
>>> fog3.x.shape, fog3.severity.unique()            # 10,000 images of severity 3
(torch.Size([10000, 3, 32, 32]), tensor([3]))
>>> fog = data.load("cifar10-c", split="test", root="~/data", corruption="fog")
>>> fog.severity.bincount()[1:]                     # severity=None: all five blocks
tensor([10000, 10000, 10000, 10000, 10000])
>>> mc = data.load("mnist-c", split="test", root="~/data", corruption="zigzag")

CIFAR-10-C
    Hendrycks & Dietterich (2019), "Benchmarking Neural Network Robustness to Common
    Corruptions and Perturbations", ICLR; Zenodo record 2535967, file ``CIFAR-10-C.tar``
    (md5 ``56bf5dcef84df0e2308c6dcbcbbd8499`` as published on the record). The archive
    unpacks to ``CIFAR-10-C/`` holding one ``<corruption>.npy`` per corruption, uint8 of
    shape ``(50000, 32, 32, 3)`` (NHWC): the 10,000 CIFAR-10 test images at severity 1,
    then the same images at severity 2, ..., 5; and ``labels.npy``, the 50,000 labels
    (the test labels five times over). The 19 released corruptions are the 15 of the
    benchmark plus four extra ones (:data:`CIFAR10C_CORRUPTIONS`). There is no training
    set: only ``split="test"`` is accepted.
MNIST-C
    Mu & Gilmer (2019), "MNIST-C: A Robustness Benchmark for Computer Vision", ICML
    workshop on Uncertainty & Robustness in Deep Learning; Zenodo record 3239543, file
    ``mnist_c.zip`` (md5 ``4b34b33045869ee6d424616cd3a65da3``). It unpacks to
    ``mnist_c/<corruption>/{train,test}_{images,labels}.npy``, images uint8
    ``(N, 28, 28, 1)`` with ``N`` = 60,000 (train) or 10,000 (test); 15 corruptions
    (:data:`MNISTC_CORRUPTIONS`) at one severity, plus the uncorrupted ``identity``.

Trust
-----
Per-file checksums of the extracted ``.npy`` files are not published, so an extracted
folder is checked by its headers: before anything is read, each file's ``.npy`` header
must declare exactly the released dtype and shape (uint8 images, integer labels) and
the file must be exactly as long as that header says; anything else raises
:class:`~robustlab.errors.DataError`. Files are read with
``np.load(..., allow_pickle=False)``: an object (pickled) array is refused, never
unpickled. The archive itself is md5-checked whenever it is extracted (``verify=True``,
the default) — when ``root`` holds the archive but no extracted folder, and after
``download=True`` fetched it (:func:`robustlab.data.download.download_url` checks the md5
before the file appears). A folder that is already extracted is not re-hashed against the
archive on every load (2.9 GB); delete the folder to have it re-extracted and verified.

Where files live
----------------
``root`` may be the extracted folder itself (``CIFAR-10-C/``, ``mnist_c/``) or its parent;
with ``root=None`` the parent is ``$ROBUSTLAB_DATA/<name>`` or
``~/.cache/robustlab/<name>`` (``<name>`` = ``cifar10-c`` / ``mnist-c``). The archive is
looked for, and downloaded to, in the parent; it is kept after extraction.

Metadata
--------
:class:`~robustlab.data.base.Dataset` has no metadata field, so these loaders return
:class:`CorruptedDataset`, a subclass adding ``corruption`` (the name) and ``severity``
(int64, one entry per image; ``None`` for MNIST-C, which has one unnamed severity).
``subset`` keeps ``severity`` aligned with the images; everything that takes a
``Dataset`` takes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from robustlab.data import download as dl
from robustlab.data.base import Dataset
from robustlab.data.datasets import _CIFAR10_CLASSES, _check_common, _roots, _to_float, datasets
from robustlab.errors import (
    ChecksumError,
    ConfigError,
    DataError,
    DataNotFoundError,
    UnknownNameError,
)
from robustlab.registry import close_matches
from robustlab.validation import check_int

#: The 19 corruptions released in CIFAR-10-C: the 15 of the benchmark (Hendrycks &
#: Dietterich 2019, in the paper's order) then the four extra ones. Equal to
#: ``robustlab.corruptions.COMMON + EXTRA`` (a test keeps them equal; the data layer
#: does not import the corruptions layer above it).
CIFAR10C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)
#: The 15 corruptions of MNIST-C (Mu & Gilmer 2019, Table 1 order).
MNISTC_CORRUPTIONS: tuple[str, ...] = (
    "shot_noise", "impulse_noise", "glass_blur", "motion_blur",
    "shear", "scale", "rotate", "brightness", "translate",
    "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges",
)
#: The uncorrupted MNIST images shipped beside them in ``mnist_c/identity/``.
MNISTC_IDENTITY = "identity"

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: Images per severity block in each released CIFAR-10-C file (the CIFAR-10 test set).
CIFAR10C_PER_SEVERITY = 10_000
#: Images per split in each released MNIST-C folder.
MNISTC_SIZES: dict[str, int] = {"train": 60_000, "test": 10_000}

#: Zenodo record 2535967 (v1, 9 January 2019); md5 as listed on the record.
CIFAR10C_ARCHIVE = dl.Resource(
    "CIFAR-10-C.tar",
    "56bf5dcef84df0e2308c6dcbcbbd8499",
    ("https://zenodo.org/records/2535967/files/", "https://zenodo.org/record/2535967/files/"),
    extract=True,
)
#: Zenodo record 3239543; md5 as listed on the record.
MNISTC_ARCHIVE = dl.Resource(
    "mnist_c.zip",
    "4b34b33045869ee6d424616cd3a65da3",
    ("https://zenodo.org/records/3239543/files/", "https://zenodo.org/record/3239543/files/"),
    extract=True,
)

_CIFAR10C_FOLDER = "CIFAR-10-C"
_MNISTC_FOLDER = "mnist_c"


@dataclass(repr=False)
class CorruptedDataset(Dataset):
    """A :class:`~robustlab.data.base.Dataset` of corrupted images that knows its
    corruption and, per image, its severity.

    Attributes (besides the ``Dataset`` ones)
    -----------------------------------------
    corruption: the corruption's name (``"fog"``, ...).
    severity: int64 tensor, one severity in 1..5 per image, or ``None`` when the data
        set has no severity levels (MNIST-C).
    """

    corruption: str = ""
    severity: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.severity is not None:
            self.severity = torch.as_tensor(self.severity, dtype=torch.long)
            if self.severity.shape != (len(self.x),):
                raise DataError(
                    f"{self.name}: severity has shape {tuple(self.severity.shape)}; expected one "
                    f"severity per image, shape ({len(self.x)},)."
                )

    def subset(self, indices: Sequence[int] | torch.Tensor) -> CorruptedDataset:
        """A new dataset holding only ``indices``; labels and severities follow."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return replace(
            self,
            x=self.x[idx],
            y=self.y[idx],
            clean_y=None if self.clean_y is None else self.clean_y[idx],
            severity=None if self.severity is None else self.severity[idx],
        )

    def __repr__(self) -> str:
        sev = "" if self.severity is None else f", severities={sorted(set(self.severity.tolist()))}"
        return (
            f"CorruptedDataset({self.name!r}, corruption={self.corruption!r}, n={len(self)}, "
            f"input_shape={self.input_shape}{sev})"
        )


# -- checks on names and files ----------------------------------------------------------


def _corruption(name: object, known: Sequence[str], title: str) -> str:
    if name is None:
        raise ConfigError(
            f"{title} needs corruption=...: one of {', '.join(known)}."
        )
    if not isinstance(name, str):
        raise UnknownNameError(f"{title} corruption names are strings, got {name!r}.")
    key = name.strip().lower().replace("-", "_")
    if key in known:
        return key
    near = close_matches(name, known)
    hint = f" Did you mean {', '.join(repr(m) for m in near)}?" if near else ""
    raise UnknownNameError(
        f"Unknown {title} corruption {name!r}.{hint} Available: {', '.join(known)}."
    )


def read_npy_header(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` from a ``.npy`` header, without reading the data.

    The header is parsed by numpy's literal parser (no code runs). Raises
    :class:`DataNotFoundError` for a missing file and :class:`DataError` for a file that
    is not a version 1.0/2.0 ``.npy`` file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"file not found: {p}")
    try:
        with open(p, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise DataError(f"{p}: .npy format version {version} is not supported (1.0 or 2.0).")
            offset = fh.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{p}: not a readable .npy file ({exc}); delete it and extract the archive again.") from exc
    return tuple(int(s) for s in shape), np.dtype(dtype), offset


def check_npy(
    path: str | os.PathLike[str], shape: tuple[int, ...], kind: str, *, what: str
) -> None:
    """Refuse a ``.npy`` file whose header is not ``shape`` of dtype kind ``kind``.

    ``kind`` is ``"uint8"`` (images) or ``"int"`` (labels: any integer dtype). Object
    arrays (pickles) are refused whatever is asked; so is a file whose length is not the
    header's offset plus ``prod(shape) * itemsize`` (truncated or padded).
    """
    p = Path(path)
    got_shape, dtype, offset = read_npy_header(p)
    if dtype.hasobject:
        raise DataError(
            f"{p}: holds Python objects (a pickled array); robustlab never unpickles data files. "
            f"It is not the released {what}: delete it and extract the archive again."
        )
    dtype_ok = dtype == np.uint8 if kind == "uint8" else dtype.kind in "iu"
    want_dtype = "uint8" if kind == "uint8" else "an integer dtype"
    if not dtype_ok or got_shape != shape:
        raise DataError(
            f"{p}: holds {dtype} {got_shape}, expected {want_dtype} {shape} as in the released "
            f"{what}. The file is not the official one or is damaged: delete the extracted folder "
            f"and extract the archive again (or download=True)."
        )
    size = p.stat().st_size
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise DataError(
            f"{p}: is {size:,} bytes but its header describes {expected:,}; the file is truncated or "
            f"damaged: delete the extracted folder and extract the archive again (or download=True)."
        )


def _read(path: Path, shape: tuple[int, ...], kind: str, what: str) -> np.ndarray:
    """The checked array, memory-mapped (only the rows sliced later are read)."""
    check_npy(path, shape, kind, what=what)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); delete it and extract the archive again.") from exc


# -- archives ---------------------------------------------------------------------------


def _download(res: dl.Resource, folder: Path) -> Path:
    """``folder/<res.filename>``: kept if its md5 is right, else fetched from the mirrors
    (:func:`robustlab.data.download.download_url` verifies before the file appears)."""
    dest = folder / res.filename
    if dest.is_file() and dl.md5sum(dest) == res.md5:
        return dest
    errors: list[str] = []
    checksum = True
    for url in res.urls:
        try:
            return dl.download_url(url, dest, res.md5)
        except DataError as exc:
            errors.append(str(exc))
            checksum = checksum and isinstance(exc, ChecksumError)
    kind = ChecksumError if checksum else DataError
    raise kind(
        f"could not download {res.filename} into {folder}; tried: " + "; ".join(errors)
        + f". Check your internet connection, or download {res.urls[0]} yourself and pass "
        f"root=<its folder>."
    )


def _member_parts(name: str, archive: Path) -> tuple[str, ...]:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refuses to extract member {name!r} with an absolute path.")
    if ".." in p.parts:
        raise DataError(f"{archive}: refuses to extract member {name!r} (path traversal '..').")
    return tuple(part for part in p.parts if part not in ("", "."))


def extract_zip(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Safely extract a zip archive into ``dest`` (the zip counterpart of
    :func:`robustlab.data.download.extract_tar`).

    Every member is checked before anything is written: absolute paths, ``..`` and
    symbolic links raise :class:`DataError`. Members are written into a temporary folder
    inside ``dest`` (zip CRCs are checked while reading) and its top-level entries then
    replace those of the same name in ``dest``; a failure leaves nothing half-written.
    Returns the top-level paths created.
    """
    archive, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = []
            for info in zf.infolist():
                parts = _member_parts(info.filename, archive)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DataError(
                        f"{archive}: refuses to extract member {info.filename!r}: it is a link; "
                        f"dataset archives contain only files and folders."
                    )
                members.append((info, parts))
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
            try:
                for info, parts in members:
                    if not parts:
                        continue
                    target = tmp.joinpath(*parts)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                return dl.publish_extracted(tmp, dest)
            finally:
                with contextlib.suppress(OSError):
                    shutil.rmtree(tmp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError) and not archive.exists():
            raise DataError(f"archive {archive} does not exist.") from exc
        raise DataError(
            f"{archive} is not a readable zip archive ({exc}); it is corrupt or truncated: "
            f"delete it and download again."
        ) from exc


def _unpack(res: dl.Resource, base: Path, download: bool, verify: bool) -> bool:
    """Extract ``base/<archive>`` (downloading it first if asked); False if there is none."""
    archive = base / res.filename
    if download:
        _download(res, base)  # verified by download_url, or kept because its md5 is right
    elif not archive.is_file():
        return False
    elif verify:
        dl.check_md5(archive, res.md5, hint=" (If you trust this file, pass verify=False.)")
    if res.filename.endswith(".zip"):
        extract_zip(archive, base)
    else:
        dl.extract_tar(archive, base)
    return True


# -- CIFAR-10-C ---------------------------------------------------------------------------


def _find(dirs: Sequence[Path], marker: str) -> Path | None:
    return next((d for d in dirs if (d / marker).exists()), None)


@datasets.register("cifar10-c", aliases=("cifar10c", "cifar-10-c"))
def cifar10c_dataset(
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    corruption: str | None = None,
    severity: int | None = None,
    verify: bool = True,
) -> CorruptedDataset:
    """CIFAR-10-C (Hendrycks & Dietterich 2019): the CIFAR-10 test images under one of
    the 19 released corruptions, as ``(N, 3, 32, 32)`` pixel/255.

    ``split`` must be ``"test"`` (the release has no training images; ``"train"`` raises
    :class:`~robustlab.errors.ConfigError` rather than hand test images to a training
    run). ``seed`` is unused (nothing is drawn). ``download=True`` fetches
    ``CIFAR-10-C.tar`` (2.9 GB) from Zenodo, md5-verified, and extracts it.

    Options
    -------
    corruption: one of :data:`CIFAR10C_CORRUPTIONS` (``-`` and ``_`` interchangeable);
        an unknown name raises :class:`~robustlab.errors.UnknownNameError` with close matches.
    severity: 1..5 for that severity's 10,000 images (rows ``(s-1)*10000 : s*10000`` of
        the file); ``None`` for all 50,000, in file order (severity 1 first).
    verify: md5-check the archive before extracting it (see the module docstring).
    """
    _check_common(split, seed)
    if split != "test":
        raise ConfigError(
            "CIFAR-10-C holds corrupted versions of the CIFAR-10 test images only; "
            "pass split='test'."
        )
    name = _corruption(corruption, CIFAR10C_CORRUPTIONS, "CIFAR-10-C")
    if severity is not None:
        severity = check_int(severity, "severity", minimum=1, maximum=5)
    dirs = _roots("cifar10-c", root, [_CIFAR10C_FOLDER])
    folder = _find(dirs, "labels.npy")
    if folder is None and _unpack(CIFAR10C_ARCHIVE, dirs[0], download, verify):
        folder = _find(dirs, "labels.npy")
    if folder is None:
        raise DataNotFoundError(
            f"CIFAR-10-C not found: looked for {_CIFAR10C_FOLDER}/labels.npy and "
            f"{CIFAR10C_ARCHIVE.filename} in {', '.join(str(d) for d in dirs)}. Pass download=True "
            f"to fetch {CIFAR10C_ARCHIVE.urls[0]} (2.9 GB, md5-checked), root=... to point at the "
            f"folder holding {_CIFAR10C_FOLDER}/ (or at that folder itself), or set ROBUSTLAB_DATA "
            f"to a folder containing cifar10-c/."
        )
    images_path = folder / f"{name}.npy"
    if not images_path.is_file():
        present = sorted(p.stem for p in folder.glob("*.npy") if p.stem != "labels")
        raise DataNotFoundError(
            f"{images_path} not found (the folder holds {', '.join(present) or 'no corruption files'}); "
            f"the extraction is incomplete: delete {folder} and extract {CIFAR10C_ARCHIVE.filename} "
            f"again (or download=True)."
        )
    n = CIFAR10C_PER_SEVERITY
    total = n * len(SEVERITIES)
    what = "CIFAR-10-C"
    labels = np.asarray(_read(folder / "labels.npy", (total,), "int", what)).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{folder / 'labels.npy'}: labels outside 0..9; not the released file.")
    blocks = labels.reshape(len(SEVERITIES), n)
    if not (blocks == blocks[0]).all():
        raise DataError(
            f"{folder / 'labels.npy'}: the five severity blocks carry different labels; the released "
            f"file repeats the 10,000 test labels five times. Extract the archive again."
        )
    images = _read(images_path, (total, 32, 32, 3), "uint8", what)
    rows = slice(0, total) if severity is None else slice((severity - 1) * n, severity * n)
    x = np.ascontiguousarray(np.asarray(images[rows]).transpose(0, 3, 1, 2))
    sev = np.repeat(np.arange(1, 6, dtype=np.int64), n)[rows]
    which = "severities 1-5" if severity is None else f"severity {severity}"
    return CorruptedDataset(
        x=_to_float(x, "cifar10-c"),
        y=torch.from_numpy(np.ascontiguousarray(labels[rows])),
        num_classes=10,
        class_names=list(_CIFAR10_CLASSES),
        name="cifar10-c",
        description=(
            f"CIFAR-10-C (Hendrycks & Dietterich 2019), corruption {name}, {which}: "
            f"{len(x):,} corrupted CIFAR-10 test images from {images_path}."
        ),
        corruption=name,
        severity=torch.from_numpy(sev),
    )


# -- MNIST-C ------------------------------------------------------------------------------


@datasets.register("mnist-c", aliases=("mnistc",))
def mnistc_dataset(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    corruption: str | None = None,
    verify: bool = True,
) -> CorruptedDataset:
    """MNIST-C (Mu & Gilmer 2019): MNIST under one of 15 corruptions, ``(N, 1, 28, 28)``
    pixel/255, official split (60,000 train / 10,000 test images per corruption).

    ``seed`` is unused. ``download=True`` fetches ``mnist_c.zip`` from Zenodo,
    md5-verified, and extracts it. MNIST-C has a single severity, so there is no
    ``severity`` option and the returned ``severity`` is ``None``.

    Options
    -------
    corruption: one of :data:`MNISTC_CORRUPTIONS`, or ``"identity"`` for the uncorrupted
        images of the release; unknown names raise
        :class:`~robustlab.errors.UnknownNameError` with close matches.
    verify: md5-check the archive before extracting it.
    """
    _check_common(split, seed)
    known = (*MNISTC_CORRUPTIONS, MNISTC_IDENTITY)
    name = _corruption(corruption, known, "MNIST-C")
    dirs = _roots("mnist-c", root, [_MNISTC_FOLDER])

    def locate() -> Path | None:
        return next((d for d in dirs if any((d / c).is_dir() for c in known)), None)

    folder = locate()
    if folder is None and _unpack(MNISTC_ARCHIVE, dirs[0], download, verify):
        folder = locate()
    if folder is None:
        raise DataNotFoundError(
            f"MNIST-C not found: looked for {_MNISTC_FOLDER}/<corruption>/ folders and "
            f"{MNISTC_ARCHIVE.filename} in {', '.join(str(d) for d in dirs)}. Pass download=True to "
            f"fetch {MNISTC_ARCHIVE.urls[0]} (md5-checked), root=... to point at the folder holding "
            f"{_MNISTC_FOLDER}/ (or at that folder itself), or set ROBUSTLAB_DATA to a folder "
            f"containing mnist-c/."
        )
    sub = folder / name
    images_path, labels_path = sub / f"{split}_images.npy", sub / f"{split}_labels.npy"
    for p in (images_path, labels_path):
        if not p.is_file():
            raise DataNotFoundError(
                f"{p} not found; the extraction is incomplete: delete {folder} and extract "
                f"{MNISTC_ARCHIVE.filename} again (or download=True)."
            )
    n = MNISTC_SIZES[split]
    labels = np.asarray(_read(labels_path, (n,), "int", "MNIST-C")).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{labels_path}: labels outside 0..9; not the released file.")
    images = _read(images_path, (n, 28, 28, 1), "uint8", "MNIST-C")
    x = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))
    return CorruptedDataset(
        x=_to_float(x, "mnist-c"),
        y=torch.from_numpy(labels),
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        name="mnist-c",
        description=(
            f"MNIST-C (Mu & Gilmer 2019), corruption {name}, official {split} split: "
            f"{len(x):,} images from {sub}."
        ),
        corruption=name,
        severity=None,
    )


__all__ = [
    "CIFAR10C_ARCHIVE",
    "CIFAR10C_CORRUPTIONS",
    "CIFAR10C_PER_SEVERITY",
    "MNISTC_ARCHIVE",
    "MNISTC_CORRUPTIONS",
    "MNISTC_IDENTITY",
    "MNISTC_SIZES",
    "SEVERITIES",
    "CorruptedDataset",
    "check_npy",
    "cifar10c_dataset",
    "extract_zip",
    "mnistc_dataset",
    "read_npy_header",
]
