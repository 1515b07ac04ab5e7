"""The dataset registry and the built-in datasets, as tensors in ``[0, 1]``.

>>> from robustlab.data import datasets, load, available
>>> available()
['cifar10', 'cifar10-c', 'cifar100', 'digits', 'fashion-mnist', 'imagefolder', 'mnist', 'mnist-c', 'npz']
>>> test = load("digits", split="test")
>>> test.x.shape, test.x.dtype
(torch.Size([360, 1, 8, 8]), torch.float32)

Every loader is registered in :data:`datasets` and has the signature
``fn(split="train", root=None, download=False, seed=0, *, <options>) -> Dataset``; the
options are keyword parameters listed in each loader's docstring, and :func:`load`
refuses unknown option names with a :class:`~robustlab.errors.ConfigError` that lists
the accepted ones. A third-party dataset is one decorated function away::

    @datasets.register("my-data")
    def my_data(split="train", root=None, download=False, seed=0) -> Dataset: ...

Where files live
----------------
``root`` is the folder holding a dataset's files. If it is ``None`` the folder is
``$ROBUSTLAB_DATA/<name>`` when the environment variable ``ROBUSTLAB_DATA`` is set,
else ``~/.cache/robustlab/<name>`` (see :func:`default_root`). Missing files raise
:class:`~robustlab.errors.DataNotFoundError` saying which files were looked for where;
``download=True`` fetches the official files (md5-verified, see
:mod:`robustlab.data.download`).

Splits
------
``split`` is ``"train"`` or ``"test"``. Datasets without an official test set are split
with :func:`stratified_split` (seeded, exact per-class proportions); the ``description``
of the returned :class:`~robustlab.data.base.Dataset` always says how the split was made.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustlab.data import download as dl
from robustlab.data import readers
from robustlab.data.base import Dataset
from robustlab.data.imbalance import make_imbalanced
from robustlab.errors import ConfigError, DataError, DataNotFoundError, LabelError
from robustlab.registry import Registry
from robustlab.validation import check_float, check_int

datasets: Registry[Dataset] = Registry("dataset")

SPLITS = ("train", "test")

#: The fixed size of the digits test split and the seed that draws it.
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


# -- public helpers -----------------------------------------------------------------


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    imbalance: float | None = None,
    imbalance_profile: str = "exponential",
    **options: Any,
) -> Dataset:
    """Load the ``split`` of the dataset registered as ``name``.

    Parameters
    ----------
    name: a registered name (see :func:`available`); unknown names raise
        :class:`~robustlab.errors.UnknownNameError` listing close matches.
    split: ``"train"`` or ``"test"`` (else :class:`~robustlab.errors.ConfigError`).
    root: folder with the dataset's files (``None``: see :func:`default_root`).
    download: fetch missing official files (verified against recorded md5 sums).
    seed: seed of any split that is not official (documented per dataset).
    options: dataset-specific keyword options (e.g. ``path=`` for ``npz``); unknown
        names raise :class:`~robustlab.errors.ConfigError`.
    imbalance: class-imbalance ratio ``R >= 1`` applied to the **train split only** (the
        test split stays as loaded, so accuracies are measured on balanced classes):
        :func:`robustlab.data.imbalance.make_imbalanced` with ``seed`` and
        ``imbalance_profile`` (``"exponential"``, Cui et al. 2019, or ``"step"``).
    """
    datasets.get(name)  # unknown names first: they are the likelier mistake
    _check_split(split)
    ds = datasets.create(name, split=split, root=root, download=download, seed=seed, **options)
    if imbalance is not None and split == "train":
        ds = make_imbalanced(ds, imbalance, seed=seed, profile=imbalance_profile)
    return ds


def available(pattern: str = "*") -> list[str]:
    """Sorted registered dataset names matching a shell-style ``pattern``."""
    return datasets.available(pattern)


def default_root(name: str) -> Path:
    """The folder used when ``root=None``: ``$ROBUSTLAB_DATA/<name>`` or ``~/.cache/robustlab/<name>``."""
    env = os.environ.get("ROBUSTLAB_DATA")
    if env:
        return Path(env).expanduser() / name
    return Path.home() / ".cache" / "robustlab" / name


def _n_test(test_size: int | float, n: int) -> int:
    if isinstance(test_size, (float, np.floating)):
        frac = check_float(
            test_size, "test_size (a fraction)", low=0.0, high=1.0, low_open=True, high_open=True
        )
        # ceil, like scikit-learn; rounding first removes float noise (0.2 * 10000 = 2000).
        k = math.ceil(round(frac * n, 9))
    else:
        k = check_int(test_size, "test_size (an int count or a float fraction)", minimum=1)
    if not 1 <= k <= n - 1:
        raise ConfigError(
            f"test_size={test_size} gives {k} test samples out of {n}; both parts must be "
            f"non-empty (1 <= test count <= {n - 1})."
        )
    return k


def _check_seed(seed: Any) -> int:
    return check_int(seed, "seed", minimum=0)


def stratified_split(
    y: torch.Tensor | np.ndarray | Sequence[int], test_size: int | float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: sorted ``(train_idx, test_idx)`` int64 index arrays.

    ``test_size`` is a count (int) or a fraction in ``(0, 1)`` (float, rounded up like
    scikit-learn: 20% of 1,797 is 360). Each class ``c`` with ``n_c`` of the ``n``
    samples gets ``floor(k * n_c / n)`` test samples; the ``k - sum(floors)`` left over go
    to the classes with the largest remainders (ties: smaller class value first) — the
    largest-remainder (Hamilton) method, computed in exact integer arithmetic, so the
    total is exactly ``k`` and no class is off its proportional share by 1 or more.
    Within each class (in sorted class order) the test members are the first of a
    permutation drawn from one ``np.random.default_rng(seed)``, so the split depends only
    on ``y``, ``test_size`` and ``seed`` (numpy's PCG64 stream is platform independent).
    """
    if isinstance(y, torch.Tensor):
        labels = y.detach().cpu().numpy()
    else:
        labels = np.asarray(y)
    if labels.ndim != 1:
        raise LabelError(f"y has shape {labels.shape}; stratified_split needs 1-D labels.")
    seed = _check_seed(seed)
    n = len(labels)
    k = _n_test(test_size, n)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    scaled = k * counts.astype(np.int64)
    take = scaled // n
    remainder = scaled % n
    short = k - int(take.sum())
    order = np.lexsort((np.arange(len(classes)), -remainder))  # remainder desc, then class
    take[order[:short]] += 1
    rng = np.random.default_rng(seed)
    parts = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        parts.append(rng.permutation(members)[: take[c]])
    test_idx = np.sort(np.concatenate(parts)).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[test_idx] = False
    train_idx = np.flatnonzero(keep).astype(np.int64)
    return train_idx, test_idx


# -- internals ------------------------------------------------------------------------


def _check_split(split: Any) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}.")


def _check_common(split: Any, seed: Any) -> int:
    _check_split(split)
    return _check_seed(seed)


def _no_download(name: str, download: bool) -> None:
    if download:
        raise ConfigError(
            f"{name} reads your own files and cannot download anything; pass download=False."
        )


def _to_float(x: np.ndarray, what: str) -> torch.Tensor:
    """uint8 (or other 8-bit-range integers) / 255, floats as they are, as contiguous float32."""
    if x.dtype == np.bool_:
        arr = x.astype(np.float32)
    elif np.issubdtype(x.dtype, np.integer):
        if x.size and (int(x.min()) < 0 or int(x.max()) > 255):
            raise DataError(
                f"{what}: integer pixels must be 8-bit values in [0, 255] (they are divided "
                f"by 255), got values in [{int(x.min())}, {int(x.max())}]. Scale the data to "
                f"float values in [0, 1] yourself."
            )
        arr = x.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        arr = x.astype(np.float32)
    else:
        raise DataError(f"{what}: x has dtype {x.dtype}; expected uint8 pixels or floats in [0, 1].")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _labels(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what}: labels have shape {y.shape}; expected a 1-D array.")
    if np.issubdtype(y.dtype, np.floating):
        if y.size and not np.all(np.isfinite(y) & (y == np.round(y))):
            raise DataError(f"{what}: float labels must be whole numbers (class indices).")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels have dtype {y.dtype}; expected integer class indices.")
    return y.astype(np.int64)


def _make(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    class_names: list[str],
    name: str,
    description: str,
) -> Dataset:
    return Dataset(
        x=_to_float(x, name),
        y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        num_classes=num_classes,
        class_names=list(class_names),
        name=name,
        description=description,
    )


def _roots(name: str, root: str | os.PathLike[str] | None, extra: Sequence[str]) -> list[Path]:
    """Folders to search: ``root`` itself and ``root/<extra...>``, or the default root."""
    if root is None:
        base = default_root(name)
        return [base] + [base / e for e in extra]
    base = Path(root).expanduser()
    return [base] + [base / e for e in extra]


# -- digits ---------------------------------------------------------------------------


@datasets.register("digits")
def digits_dataset(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
) -> Dataset:
    """scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``).

    1,797 images of 8x8 pixels with 17 grey levels (0..16), from the UCI "Optical
    Recognition of Handwritten Digits" data (Alpaydin & Kaynak 1998); ``x`` is the
    pixel value / 16, shape ``(N, 1, 8, 8)``. There is no official split: the test set
    is a fixed stratified sample of 360 images (20%, :func:`stratified_split` with seed
    0) and the train set the other 1,437. The split seed is **always 0, whatever the
    ``seed`` argument**, so "the digits test set" is one fixed set; ``root`` and
    ``download`` are ignored (nothing is read from disk besides scikit-learn's copy).
    """
    _check_common(split, seed)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(y, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    idx = train_idx if split == "train" else test_idx
    x = (images[idx] / 16.0).astype(np.float32)[:, None, :, :]
    return _make(
        x,
        y[idx],
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        name="digits",
        description=(
            f"scikit-learn digits (UCI optdigits, Alpaydin & Kaynak 1998), 8x8, 17 grey levels "
            f"scaled by 1/16; fixed stratified {len(train_idx)}/{len(test_idx)} train/test "
            f"split (split seed {DIGITS_SPLIT_SEED}, independent of the seed argument); "
            f"{split} split, {len(idx)} images."
        ),
    )


# -- MNIST family (IDX) -------------------------------------------------------------

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_MNIST_T10K_TEST = 2000  # of the 10,000 t10k images when only they are available


def _find_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    found = []
    for base in _IDX_FILES[split]:
        for fname in (base + ".gz", base):
            if (folder / fname).is_file():
                found.append(folder / fname)
                break
        else:
            return None
    return found[0], found[1]


def _locate_idx(dirs: Sequence[Path]) -> tuple[Path, dict[str, tuple[Path, Path]]] | None:
    """The first folder holding a complete train or t10k pair, and the pairs it holds."""
    for d in dirs:
        pairs = {s: p for s in SPLITS if (p := _find_pair(d, s)) is not None}
        if pairs:
            return d, pairs
    return None


def _read_idx_split(
    name: str, pair: tuple[Path, Path], verify: bool
) -> tuple[np.ndarray, np.ndarray]:
    if verify:
        for p in pair:
            md5 = dl.known_md5(name, p.name)
            if md5 is not None:
                dl.check_md5(p, md5, hint=" (If you trust this file, pass verify=False.)")
    images = readers.read_idx(pair[0])
    labels = readers.read_idx(pair[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{pair[0]}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}.")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{pair[1]}: {labels.shape} labels do not fit the {len(images)} images of {pair[0]}."
        )
    return images, labels.astype(np.int64)


def _idx_dataset(
    name: str,
    title: str,
    cite: str,
    class_names: list[str],
    torchvision_dir: str,
    split: str,
    root: str | os.PathLike[str] | None,
    download: bool,
    seed: int,
    verify: bool,
) -> Dataset:
    seed = _check_common(split, seed)
    dirs = _roots(name, root, [name, f"{torchvision_dir}/raw"])
    found = _locate_idx(dirs)
    if download and (found is None or "train" not in found[1] or "test" not in found[1]):
        folder = found[0] if found is not None else dirs[0]
        dl.fetch(name, folder)
        found = _locate_idx([folder])
    if found is None:
        wanted = ", ".join(f"{b}[.gz]" for s in SPLITS for b in _IDX_FILES[s])
        raise DataNotFoundError(
            f"{title} files not found: looked for {wanted} in "
            f"{', '.join(str(d) for d in dirs)}. Pass download=True to fetch them "
            f"({dl.RESOURCES[name][0].urls[0].rsplit('/', 1)[0]}/), root=... to point at a "
            f"folder that holds them, or set ROBUSTLAB_DATA to a folder containing {name}/."
        )
    folder, pairs = found
    if "train" in pairs and "test" in pairs:
        x, y = _read_idx_split(name, pairs[split], verify)
        desc = (
            f"{title} ({cite}), official {split} split ({len(y):,} images) from {folder}."
        )
        return _make(x[:, None], y, num_classes=10, class_names=class_names, name=name,
                     description=desc)
    if "test" not in pairs:
        missing = ", ".join(f"{b}[.gz]" for b in _IDX_FILES["test"])
        raise DataNotFoundError(
            f"{title}: {folder} holds the training files but not the test files ({missing}); "
            f"add them or pass download=True."
        )
    # Only the official test images: split them, seeded and stratified.
    x, y = _read_idx_split(name, pairs["test"], verify)
    n_test = _MNIST_T10K_TEST if len(y) == 10000 else 0.2
    train_idx, test_idx = stratified_split(y, n_test, seed)
    idx = train_idx if split == "train" else test_idx
    desc = (
        f"{title} t10k only: seeded stratified {len(train_idx)}/{len(test_idx)} split "
        f"(seed {seed}) of the official {len(y):,} test images ({cite}); the training "
        f"files were not found in {folder}. This is the {split} part ({len(idx):,} images)."
    )
    return _make(x[idx][:, None], y[idx], num_classes=10, class_names=class_names, name=name,
                 description=desc)


@datasets.register("mnist")
def mnist_dataset(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    verify: bool = True,
) -> Dataset:
    """MNIST handwritten digits (LeCun, Bottou, Bengio & Haffner 1998), 28x28 grayscale.

    Reads the IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` from
    ``root`` (or ``root/mnist``, ``root/MNIST/raw``; default :func:`default_root`).
    With all four files the official 60,000/10,000 split is used. If only the two
    ``t10k`` files exist, the 10,000 official test images are split into a seeded
    stratified 8,000 train / 2,000 test split (seed = ``seed``) and ``description``
    says so. ``x`` has shape ``(N, 1, 28, 28)`` with values pixel/255.

    Options
    -------
    verify: check the md5 of official ``.gz`` files against the published sums
        (default True; a mismatch raises :class:`~robustlab.errors.ChecksumError`).
    """
    return _idx_dataset("mnist", "MNIST", "LeCun et al. 1998", [str(i) for i in range(10)],
                        "MNIST", split, root, download, seed, verify)


@datasets.register("fashion-mnist", aliases=("fashion_mnist", "fashionmnist"))
def fashion_mnist_dataset(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    verify: bool = True,
) -> Dataset:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747), 28x28 grayscale.

    Same file names, layout and rules as :func:`mnist_dataset` (official 60,000/10,000
    split, or a seeded stratified 8,000/2,000 split when only the t10k files exist);
    also looked for in ``root/fashion-mnist`` and ``root/FashionMNIST/raw``. Classes:
    T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.

    Options
    -------
    verify: check the md5 of official ``.gz`` files (default True).
    """
    return _idx_dataset("fashion-mnist", "Fashion-MNIST", "Xiao et al. 2017", _FASHION_CLASSES,
                        "FashionMNIST", split, root, download, seed, verify)


# -- CIFAR (python pickles) -----------------------------------------------------------

_CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
_CIFAR = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
    },
}


def _locate_cifar(name: str, dirs: Sequence[Path], split: str) -> Path | None:
    files = _CIFAR[name][split]
    for d in dirs:
        if all((d / f).is_file() for f in files):
            return d
    return None


def _cifar_dataset(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None,
    download: bool,
    seed: int,
    label_type: str | None,
    label_file: str | os.PathLike[str] | None = None,
    label_set: str | None = None,
) -> Dataset:
    _check_common(split, seed)
    spec = _CIFAR[name]
    folder_name = str(spec["folder"])
    if root is None:
        parent = default_root(name)
        dirs = [parent / folder_name, parent]
    else:
        r = Path(root).expanduser()
        parent = r.parent if r.name == folder_name else r
        dirs = [r / folder_name, r, r / name / folder_name]
    folder = _locate_cifar(name, dirs, split)
    if folder is None and download:
        dl.fetch(name, parent)
        folder = _locate_cifar(name, [parent / folder_name], split)
    if folder is None:
        wanted = ", ".join(f"{folder_name}/{f}" for f in spec[split])  # type: ignore[union-attr]
        raise DataNotFoundError(
            f"{spec['title']} {split} files not found: looked for {wanted} (also directly in "
            f"the folder) under {', '.join(str(d) for d in dirs)}. Pass download=True to fetch "
            f"{dl.RESOURCES[name][0].urls[0]}, root=... to point at the folder that holds "
            f"{folder_name}/ (or at that folder itself), or set ROBUSTLAB_DATA to a folder "
            f"containing {name}/."
        )
    label_key = "labels" if name == "cifar10" else f"{label_type}_labels"
    xs, ys = [], []
    for f in spec[split]:  # type: ignore[union-attr]
        x, y = readers.read_cifar_batch(folder / f, label_key)
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    if name == "cifar10":
        num_classes, names_key, fallback = 10, "label_names", _CIFAR10_CLASSES
    elif label_type == "fine":
        num_classes, names_key, fallback = 100, "fine_label_names", [str(i) for i in range(100)]
    else:
        num_classes, names_key, fallback = 20, "coarse_label_names", [str(i) for i in range(20)]
    meta = folder / str(spec["meta"])
    class_names = readers.read_cifar_meta(meta, names_key) if meta.is_file() else fallback
    if len(class_names) != num_classes:
        raise DataError(f"{meta}: {len(class_names)} {names_key}, expected {num_classes}.")
    kind = "" if name == "cifar10" else f", {label_type} labels"
    ds = _make(
        x, y, num_classes=num_classes, class_names=class_names, name=name,
        description=(
            f"{spec['title']} (Krizhevsky 2009), official {split} split ({len(y):,} images"
            f"{kind}) from {folder}."
        ),
    )
    if label_file is None or split == "test":
        return ds  # human-annotated labels exist for the training images only
    return _with_cifarn_labels(ds, label_file, label_set or ("aggre_label" if name == "cifar10" else "noisy_label"))


def _with_cifarn_labels(ds: Dataset, label_file: str | os.PathLike[str], label_set: str) -> Dataset:
    """Replace the training labels by a CIFAR-10N/100N label set; the clean ones are kept."""
    from robustlab.data.cifarn import read_cifarn

    labels = read_cifarn(label_file)
    key = labels.resolve(label_set)
    clean = labels.labels[labels.clean_for(key)]
    if len(clean) != len(ds) or not np.array_equal(clean, ds.y.numpy()):
        raise DataError(
            f"{label_file}: its clean labels do not match the {ds.name} training labels read from "
            f"disk ({len(clean)} vs {len(ds)} labels); use the CIFAR-N file of this dataset (and, "
            f"for CIFAR-100N coarse sets, label_type='coarse')."
        )
    noisy = labels.get(key)
    rate = float((noisy != ds.y).float().mean())
    out = ds.with_labels(noisy)
    out.description += (
        f" Training labels: CIFAR-N human annotations {key!r} from {label_file} (Wei et al. 2022), "
        f"noise rate {rate:.4f}; test labels are the original ones."
    )
    return out


@datasets.register("cifar10", aliases=("cifar-10",))
def cifar10_dataset(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    label_file: str | os.PathLike[str] | None = None,
    label_set: str = "aggre_label",
) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images").

    Reads the python version (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
    ``batches.meta``); ``root`` may be that folder or its parent. Official split
    50,000/10,000; ``x`` is ``(N, 3, 32, 32)`` pixel/255. Pickles are read with
    :class:`~robustlab.data.readers.RestrictedUnpickler` (numpy arrays only, never
    arbitrary code). ``download=True`` fetches and md5-checks the official tarball.

    Options
    -------
    label_file: a CIFAR-10N label file (``CIFAR-10_human.pt``, Wei et al. 2022, "Learning
        with Noisy Labels Revisited: A Study Using Real-World Human Annotations"; CC BY-NC,
        not shipped). The training split then carries its ``label_set`` labels
        (``aggre_label``, ``worse_label``, ``random_label1..3``; short names ``aggre``,
        ``worst``, ``rand1..3``), with the original labels kept as ``clean_y``; the file's
        clean labels must equal the ones on disk. The test split is unchanged.
    """
    return _cifar_dataset("cifar10", split, root, download, seed, None, label_file, label_set)


@datasets.register("cifar100", aliases=("cifar-100",))
def cifar100_dataset(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    label_type: str = "fine",
    label_file: str | os.PathLike[str] | None = None,
    label_set: str | None = None,
) -> Dataset:
    """CIFAR-100 (Krizhevsky 2009), python version (``cifar-100-python/train``, ``test``, ``meta``).

    Same rules as :func:`cifar10_dataset`. Option ``label_type``: ``"fine"`` (100
    classes, default) or ``"coarse"`` (20 superclasses). Options ``label_file`` and
    ``label_set`` read CIFAR-100N human labels (``CIFAR-100_human.pt``; sets
    ``noisy_label``, the default, and ``noisy_coarse_label`` for ``label_type="coarse"``).
    """
    if label_type not in ("fine", "coarse"):
        raise ConfigError(f"cifar100 label_type must be 'fine' or 'coarse', got {label_type!r}.")
    if label_set is None:
        label_set = "noisy_label" if label_type == "fine" else "noisy_coarse_label"
    return _cifar_dataset("cifar100", split, root, download, seed, label_type, label_file, label_set)


# -- npz --------------------------------------------------------------------------------


def _resolve_path(name: str, path: Any, root: str | os.PathLike[str] | None) -> Path:
    """``path`` (relative to ``root`` when both are given), or ``root`` alone."""
    if path is None and root is None:
        raise ConfigError(f"{name} needs a path: load({name!r}, path='...').")
    if path is None:
        return Path(root).expanduser()  # type: ignore[arg-type]
    p = Path(path).expanduser()
    if root is not None and not p.is_absolute():
        p = Path(root).expanduser() / p
    return p


@datasets.register("npz")
def npz_dataset(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    path: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    layout: str = "auto",
    test_size: int | float = 0.2,
) -> Dataset:
    """Your own arrays from an ``.npz`` file (read with ``allow_pickle=False``).

    The file holds ``x`` and ``y``, optionally ``x_test``/``y_test`` (used for
    ``split="test"``; without them ``x, y`` get a seeded stratified split with
    ``test_size`` = 20% by default) and optionally ``class_names`` (a string array).

    ``x``: integer pixels (e.g. uint8, values 0..255) are divided by 255; floats must
    already lie in ``[0, 1]``. Layout: ``(N, D)`` stays; ``(N, H, W)`` becomes
    ``(N, 1, H, W)``; a 4-D array is NHWC, and is transposed to NCHW, when its last
    dimension is 1 or 3 and its dimension 1 is not (else it is taken as NCHW) — pass
    ``layout="nhwc"`` or ``"nchw"`` to say it explicitly.

    Options
    -------
    path: the file (relative paths are taken relative to ``root`` if given; ``root``
        alone may also name the file).
    num_classes: default ``len(class_names)`` or ``max(y, y_test) + 1``.
    layout: ``"auto"``, ``"nhwc"`` or ``"nchw"``.
    test_size: count or fraction for the stratified split when there is no ``x_test``.
    """
    seed = _check_common(split, seed)
    _no_download("npz", download)
    p = _resolve_path("npz", path, root)
    arrays = readers.read_npz(p)
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{p}: has no array {key!r} (found {sorted(arrays)}); save x= and y=.")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{p}: has only one of x_test / y_test; save both or neither.")
    y = _labels(arrays["y"], f"{p} y")
    if len(y) != len(arrays["x"]):
        raise DataError(f"{p}: x has {len(arrays['x'])} samples but y has {len(y)} labels.")
    has_test = "x_test" in arrays
    y_test = _labels(arrays["y_test"], f"{p} y_test") if has_test else None
    if has_test and len(y_test) != len(arrays["x_test"]):  # type: ignore[arg-type]
        raise DataError(f"{p}: x_test and y_test have different lengths.")

    class_names: list[str] | None = None
    if "class_names" in arrays:
        cn = arrays["class_names"]
        if cn.ndim != 1 or cn.dtype.kind not in "US":
            raise DataError(f"{p}: class_names must be a 1-D string array, got {cn.dtype} {cn.shape}.")
        class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in cn.tolist()]
    if num_classes is None:
        if class_names is not None:
            num_classes = len(class_names)
        else:
            all_y = y if y_test is None else np.concatenate([y, y_test])
            num_classes = int(all_y.max()) + 1 if all_y.size else 0
    if class_names is not None and len(class_names) != num_classes:
        raise DataError(f"{p}: {len(class_names)} class_names for num_classes={num_classes}.")

    if has_test:
        x = arrays["x"] if split == "train" else arrays["x_test"]
        labels = y if split == "train" else y_test
        how = "x/y as train, x_test/y_test as test"
        if arrays["x"].shape[1:] != arrays["x_test"].shape[1:]:
            raise DataError(
                f"{p}: x has per-sample shape {arrays['x'].shape[1:]} but x_test has "
                f"{arrays['x_test'].shape[1:]}."
            )
    else:
        train_idx, test_idx = stratified_split(y, test_size, seed)
        idx = train_idx if split == "train" else test_idx
        x, labels = arrays["x"][idx], y[idx]
        how = (f"seeded stratified {len(train_idx)}/{len(test_idx)} train/test split "
               f"(seed {seed}) of x/y")
    x = readers.to_nchw(x, layout)
    return _make(
        x, labels, num_classes=num_classes,  # type: ignore[arg-type]
        class_names=class_names or [str(i) for i in range(num_classes)],
        name="npz",
        description=f"npz file {p}: {how}; {split} split, {len(labels):,} samples.",  # type: ignore[arg-type]
    )


# -- image folders ----------------------------------------------------------------------


def _parse_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size
    ):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ConfigError(f"size must be an int or (height, width), got {size!r}.")
    if min(hw) < 1:
        raise ConfigError(f"size must be positive, got {size!r}.")
    return hw


@datasets.register("imagefolder", aliases=("image-folder",))
def imagefolder_dataset(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    seed: int = 0,
    *,
    path: str | os.PathLike[str] | None = None,
    size: int | tuple[int, int] | None = None,
    mode: str | None = None,
    test_size: int | float = 0.2,
) -> Dataset:
    """Images in class folders, ``path/<class name>/*.{png,jpg,jpeg,bmp,gif}`` (Pillow).

    Classes are the sorted folder names. If ``path/train/`` and ``path/test/`` exist,
    each holds class folders and gives that split (classes: the sorted union of both);
    otherwise all images get a seeded stratified split (``test_size``, 20% by default).

    Options
    -------
    path: the top folder (``root`` alone may also name it).
    size: ``int`` or ``(height, width)`` to resize every image to (bilinear). Without
        it all images must have one size, else :class:`~robustlab.errors.DataError`.
    mode: ``"L"`` (1 channel) or ``"RGB"`` (3 channels); default ``"L"`` if every image
        is grayscale, else ``"RGB"``. Decided over both splits so they always agree.
    test_size: count or fraction for the stratified split.
    """
    seed = _check_common(split, seed)
    _no_download("imagefolder", download)
    hw = _parse_size(size)
    if mode not in (None, "L", "RGB"):
        raise ConfigError(f"mode must be 'L', 'RGB' or None, got {mode!r}.")
    top = _resolve_path("imagefolder", path, root)
    if not top.is_dir():
        raise DataNotFoundError(f"image folder not found: {top}")
    has_train, has_test = (top / "train").is_dir(), (top / "test").is_dir()
    if has_train != has_test:
        raise DataError(
            f"{top}: has a {'train' if has_train else 'test'}/ folder but no "
            f"{'test' if has_train else 'train'}/ folder; provide both, or neither (then "
            f"the images in {top}/<class>/ are split automatically)."
        )
    if has_train:
        names = sorted({
            d.name for s in SPLITS for d in (top / s).iterdir()
            if d.is_dir() and not d.name.startswith(".")
        })
        scans = {s: readers.scan_image_folder(top / s, names) for s in SPLITS}
        all_paths = scans["train"][0] + scans["test"][0]
        paths, labels = scans[split][0], scans[split][1]
        how = f"{split} split from {top / split}"
    else:
        all_paths, all_labels, names = readers.scan_image_folder(top)
        train_idx, test_idx = stratified_split(all_labels, test_size, seed)
        idx = train_idx if split == "train" else test_idx
        paths = [all_paths[i] for i in idx]
        labels = all_labels[idx]
        how = (f"seeded stratified {len(train_idx)}/{len(test_idx)} train/test split "
               f"(seed {seed}); {split} split")
    modes, sizes = readers.image_info(all_paths)
    use_mode = mode or readers.default_mode(modes)
    if hw is None and len(set(sizes)) > 1:
        first = sizes[0]
        j = next(i for i, s in enumerate(sizes) if s != first)
        raise DataError(
            f"images have different sizes: {all_paths[0]} is {first[0]}x{first[1]} but "
            f"{all_paths[j]} is {sizes[j][0]}x{sizes[j][1]} (height x width); pass "
            f"size=(h, w) (or one int) to resize them all."
        )
    x = readers.read_images(paths, mode=use_mode, size=hw)
    return _make(
        x, labels, num_classes=len(names), class_names=names, name="imagefolder",
        description=(
            f"image folder {top} ({len(names)} classes, mode {use_mode}, "
            f"{x.shape[2]}x{x.shape[3]}): {how}, {len(labels):,} images."
        ),
    )


__all__ = [
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_SIZE",
    "SPLITS",
    "available",
    "datasets",
    "default_root",
    "load",
    "stratified_split",
]
