"""File-format readers: IDX (MNIST family), CIFAR python pickles, ``.npz``, image folders.

Every reader returns numpy arrays exactly as stored (uint8 pixels stay uint8); turning
them into robustlab's float ``[0, 1]`` tensors is done by :mod:`robustlab.data.datasets`.
A file that is missing raises :class:`~robustlab.errors.DataNotFoundError`; a file that
is truncated, corrupt or untrusted raises :class:`~robustlab.errors.DataError` saying
which file and what is wrong.

Formats
-------
IDX
    The format of MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017): a
    4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
    uint32 sizes, then the row-major big-endian payload. Files may be gzip-compressed
    (detected from the gzip magic bytes, not the file name).
CIFAR python batches
    Pickled dicts (Krizhevsky 2009) with ``b"data"`` (uint8, ``(N, 3072)``, channel-major
    32x32 planes R, G, B) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` /
    ``b"coarse_labels"`` (CIFAR-100). They are read with :class:`RestrictedUnpickler`,
    which can rebuild numpy arrays and nothing else: pickle can run arbitrary code, and
    a data file is not trusted code.
npz
    Read with ``np.load(path, allow_pickle=False)``: object arrays are refused.
Image folders
    ``<root>/<class name>/*.png|jpg|jpeg|bmp|gif``, decoded with Pillow. An image whose
    header declares more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's
    decompression-bomb limit; its warning is treated as an error) is refused with a
    :class:`~robustlab.errors.DataError` naming the file, before anything is decoded.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import math
import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robustlab.errors import ConfigError, DataError, DataNotFoundError

# -- IDX ----------------------------------------------------------------------------------

#: IDX dtype codes (third byte of the magic number) -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped if it starts with the gzip magic bytes."""
    if not path.is_file():
        raise DataNotFoundError(f"file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path}: gzip stream is truncated or corrupt ({exc}); delete it and download again."
        ) from exc


def parse_idx(buf: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX-format bytes into a native-byte-order numpy array.

    Raises :class:`DataError` for a wrong magic number, an unknown dtype code, a header
    cut short, a payload shorter than the header promises ("truncated") or longer.
    """
    if len(buf) < 4:
        raise DataError(f"{name}: only {len(buf)} bytes; not an IDX file (truncated header).")
    zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{name}: bad IDX magic number 0x{buf[:4].hex()} (must start with 0x0000); "
            f"not an IDX file or not decompressed."
        )
    if code not in IDX_DTYPES:
        raise DataError(
            f"{name}: unknown IDX dtype code 0x{code:02x} in magic number 0x{buf[:4].hex()} "
            f"(known: {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)})."
        )
    if ndim == 0:
        raise DataError(f"{name}: IDX magic number 0x{buf[:4].hex()} declares 0 dimensions.")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"{name}: truncated IDX header ({len(buf)} bytes, {ndim} dimensions need {header})."
        )
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    got = len(buf) - header
    if got < expected:
        raise DataError(
            f"{name}: truncated IDX file: the header declares shape {dims} ({expected} payload "
            f"bytes) but only {got} bytes follow. Delete it and download again."
        )
    if got > expected:
        raise DataError(
            f"{name}: IDX file has {got - expected} unexpected bytes after the {expected}-byte "
            f"payload of shape {dims}; it is corrupt."
        )
    arr = np.frombuffer(buf, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a numpy array.

    See :func:`parse_idx` for the checks; missing files raise :class:`DataNotFoundError`.
    """
    p = Path(path)
    return parse_idx(_read_bytes(p), name=str(p))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``compress`` or the name ends .gz).

    The inverse of :func:`read_idx`; handy for tests and for exporting data.
    """
    p = Path(path)
    arr = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str[1:]: k for k, v in IDX_DTYPES.items()}
    key = arr.dtype.newbyteorder("=").str[1:]
    if key not in codes or arr.ndim == 0 or arr.ndim > 255:
        raise ConfigError(f"cannot write dtype {arr.dtype} with {arr.ndim} dims as IDX.")
    code = codes[key]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + arr.astype(IDX_DTYPES[code], copy=False).tobytes()
    if compress if compress is not None else p.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    p.write_bytes(payload)


# -- pickles (CIFAR) -------------------------------------------------------------------


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, dicts, lists, strings and numbers only.

    ``find_class`` allows exactly the globals a pickled ``ndarray`` needs —
    ``numpy.core.multiarray._reconstruct`` (numpy 1.x name), ``numpy._core.multiarray.
    _reconstruct`` (numpy 2.x name), ``numpy.ndarray``, ``numpy.dtype`` and
    ``_codecs.encode`` (how Python 3 pickles ``bytes`` under protocol 2) — and raises
    :class:`DataError` for anything else (``os.system``, ``builtins.eval``, ...), so loading
    a malicious file cannot run code.
    """

    def __init__(self, file: Any, *, name: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self._name = name

    def _allowed(self) -> dict[tuple[str, str], Any]:
        rec = _numpy_reconstruct()
        return {
            ("numpy.core.multiarray", "_reconstruct"): rec,
            ("numpy._core.multiarray", "_reconstruct"): rec,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed().get((module, name))
        if obj is None:
            raise DataError(
                f"{self._name}: refuses to unpickle {module}.{name}: data files may only "
                f"contain numpy arrays, lists, dicts, strings and numbers. The file is not a "
                f"genuine dataset file (or was tampered with); do not load it."
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._name}: refuses to unpickle a persistent id ({pid!r}).")


def _check_no_objects(obj: Any, name: str, depth: int = 0) -> None:
    if depth > 20:
        raise DataError(f"{name}: pickled data is nested too deeply to be a dataset file.")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise DataError(f"{name}: refuses object arrays inside pickled data.")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_no_objects(k, name, depth + 1)
            _check_no_objects(v, name, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_no_objects(v, name, depth + 1)


def load_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle a data file with :class:`RestrictedUnpickler` (``encoding="bytes"``).

    Raises :class:`DataNotFoundError` if missing, :class:`DataError` if truncated, corrupt
    or if it references anything other than numpy array machinery.
    """
    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"file not found: {p}")
    data = p.read_bytes()
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), name=str(p)).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, KeyError, MemoryError, UnicodeDecodeError, OverflowError) as exc:
        raise DataError(
            f"{p}: cannot unpickle ({type(exc).__name__}: {exc}); the file is truncated or "
            f"corrupt: delete it and download again."
        ) from exc
    _check_no_objects(obj, str(p))
    return obj


def _get(d: dict[Any, Any], key: str, name: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(
        f"{name}: has no entry {key!r} (found {sorted(str(k) for k in d)}); not a CIFAR file."
    )


def _as_str(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_cifar_batch(path: str | os.PathLike[str], label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: ``(x uint8 (N, 3, 32, 32), y int64 (N,))``.

    ``label_key`` is ``"labels"`` (CIFAR-10), ``"fine_labels"`` or ``"coarse_labels"``
    (CIFAR-100). Shapes and dtypes are checked; violations raise :class:`DataError`.
    """
    p = Path(path)
    d = load_pickle(p)
    if not isinstance(d, dict):
        raise DataError(f"{p}: expected a pickled dict, got {type(d).__name__}; not a CIFAR batch.")
    data = _get(d, "data", str(p))
    labels = _get(d, label_key, str(p))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(
            f"{p}: 'data' must be a uint8 array of shape (N, 3072), got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}."
        )
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{p}: {label_key!r} are not integer labels ({exc}).") from exc
    if y.shape != (len(data),):
        raise DataError(f"{p}: {len(data)} images but {label_key!r} has shape {y.shape}.")
    return data.reshape(-1, 3, 32, 32), y


def read_cifar_meta(path: str | os.PathLike[str], key: str = "label_names") -> list[str]:
    """Class names from a CIFAR meta file (``label_names``, ``fine_label_names``, ...)."""
    p = Path(path)
    d = load_pickle(p)
    if not isinstance(d, dict):
        raise DataError(f"{p}: expected a pickled dict, got {type(d).__name__}; not a CIFAR meta file.")
    names = _get(d, key, str(p))
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{p}: {key!r} must be a list of names, got {type(names).__name__}.")
    return [_as_str(n) for n in names]


# -- npz --------------------------------------------------------------------------------


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, loaded with ``allow_pickle=False``.

    An object array (which would need pickle) raises :class:`DataError` explaining how to
    save the data without it.
    """
    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"npz file not found: {p}")
    try:
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):  # a plain .npy
                raise DataError(f"{p}: is a single .npy array, not an .npz archive with x and y.")
            out: dict[str, np.ndarray] = {}
            for k in f.files:
                try:
                    out[k] = f[k]
                except ValueError as exc:
                    if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                        raise DataError(
                            f"{p}: array {k!r} is an object array, which can only be loaded "
                            f"by unpickling; robustlab loads .npz files with allow_pickle=False. "
                            f"Save numeric arrays (and class_names as a str array, e.g. "
                            f"np.array(names, dtype=str))."
                        ) from exc
                    raise
            return out
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise DataError(f"{p}: cannot read as .npz ({exc}); the file is corrupt or truncated.") from exc


def to_nchw(x: np.ndarray, layout: str = "auto") -> np.ndarray:
    """Bring image arrays to robustlab's layout.

    * ``ndim == 2`` ``(N, D)``: vectors, unchanged.
    * ``ndim == 3`` ``(N, H, W)``: grayscale, becomes ``(N, 1, H, W)``.
    * ``ndim == 4``: with ``layout="auto"`` the array is taken as NHWC and transposed to
      NCHW iff its last dimension is 1 or 3 *and* dimension 1 is not (dimension 1 equal to
      1 or 3 looks like NCHW already, which wins). ``layout="nhwc"``/``"nchw"`` force it.
    """
    if layout not in ("auto", "nchw", "nhwc"):
        raise ConfigError(f"layout must be 'auto', 'nchw' or 'nhwc', got {layout!r}.")
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4:
        nhwc = layout == "nhwc" or (
            layout == "auto" and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3)
        )
        return x.transpose(0, 3, 1, 2) if nhwc else x
    raise DataError(
        f"x has shape {x.shape}; expected (N, D) vectors, (N, H, W) grayscale images or "
        f"(N, H, W, C) / (N, C, H, W) images."
    )


# -- image folders ------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def scan_image_folder(
    root: str | os.PathLike[str], classes: Sequence[str] | None = None
) -> tuple[list[Path], np.ndarray, list[str]]:
    """List ``root/<class>/<image>`` files: ``(paths, labels, class_names)``.

    Classes are the sub-folder names, sorted (or ``classes`` if given, which fixes the
    label of each name). Files within a class are sorted by name; hidden files and other
    extensions are skipped.
    """
    r = Path(root)
    if not r.is_dir():
        raise DataNotFoundError(f"image folder not found: {r}")
    found = sorted(d.name for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(names)}
    paths: list[Path] = []
    labels: list[int] = []
    for c in found:
        if c not in index:
            raise DataError(f"{r}: class folder {c!r} is not among the classes {names}.")
        files = sorted(
            f for f in (r / c).iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        paths.extend(files)
        labels.extend([index[c]] * len(files))
    if not paths:
        raise DataNotFoundError(
            f"no images found in {r}: expected {r}/<class name>/<image> files with extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}."
        )
    return paths, np.asarray(labels, dtype=np.int64), names


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)`` with robustlab's errors: a :class:`DataError` naming the file
    for unreadable images and for possible decompression bombs.

    Pillow reads only the header on open. An image declaring more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused there, before any pixel is decoded:
    Pillow raises ``DecompressionBombError`` above twice the limit and warns
    (``DecompressionBombWarning``) above the limit; both are refused here. Errors raised
    while the image is used inside the block (decoding a truncated file) become a
    :class:`DataError` as well.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise DataError(
            f"{path}: declares {declared}, more than PIL.Image.MAX_IMAGE_PIXELS = "
            f"{Image.MAX_IMAGE_PIXELS or 0:,}; refused without decoding it (a possible "
            f"decompression bomb). Remove the file, or raise PIL.Image.MAX_IMAGE_PIXELS if "
            f"you trust it."
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read image ({exc}).") from exc


def image_info(paths: Sequence[Path]) -> tuple[list[str], list[tuple[int, int]]]:
    """Pillow mode and ``(height, width)`` of each image, reading headers only."""
    modes: list[str] = []
    sizes: list[tuple[int, int]] = []
    for p in paths:
        with open_image(p) as im:
            modes.append(im.mode)
            sizes.append((im.height, im.width))
    return modes, sizes


def default_mode(modes: Sequence[str]) -> str:
    """``"L"`` if every Pillow mode is grayscale, else ``"RGB"``."""
    return "L" if all(m in _GRAY_MODES for m in modes) else "RGB"


def read_images(
    paths: Sequence[Path], *, mode: str, size: tuple[int, int] | None
) -> np.ndarray:
    """Decode images with Pillow into uint8 ``(N, C, H, W)`` (C = 1 for ``"L"``, 3 for ``"RGB"``).

    ``size`` is ``(height, width)`` to resize to (bilinear), or ``None`` in which case all
    images must already share one size (else :class:`DataError` asking for ``size``).
    Images are opened with :func:`open_image` (decompression bombs refused).
    """
    from PIL import Image

    if mode not in ("L", "RGB"):
        raise ConfigError(f"mode must be 'L' or 'RGB', got {mode!r}.")
    arrays: list[np.ndarray] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for p in paths:
        with open_image(p) as im:
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise DataError(
                    f"{p}: {im.mode} images (16-bit or float) are not supported; "
                    f"convert them to 8-bit."
                )
            img = im.convert(mode)
            if size is not None:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
        hw = (a.shape[0], a.shape[1])
        if first is None:
            first = (p, hw)
        elif hw != first[1]:
            raise DataError(
                f"images have different sizes: {first[0]} is {first[1][0]}x{first[1][1]} but "
                f"{p} is {hw[0]}x{hw[1]} (height x width); pass size=(h, w) (or one int) to "
                f"resize them all."
            )
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    if not arrays:
        c = 1 if mode == "L" else 3
        h, w = size if size is not None else (0, 0)
        return np.zeros((0, c, h, w), dtype=np.uint8)
    return np.stack(arrays)


__all__ = [
    "IDX_DTYPES",
    "IMAGE_EXTENSIONS",
    "RestrictedUnpickler",
    "default_mode",
    "image_info",
    "load_pickle",
    "open_image",
    "parse_idx",
    "read_cifar_batch",
    "read_cifar_meta",
    "read_idx",
    "read_images",
    "read_npz",
    "scan_image_folder",
    "to_nchw",
    "write_idx",
]
