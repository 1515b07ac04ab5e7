"""The dataset registry, the seeded stratified split and every built-in loader."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tarfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustlab.data import download as dl
from robustlab.data import readers
from robustlab.data.datasets import available, datasets, default_root, load, stratified_split
from robustlab.errors import (
    ChecksumError,
    ConfigError,
    DataError,
    DataNotFoundError,
    InvalidInputError,
    UnknownNameError,
)

from .conftest import idx_bytes

ALL = [
    "cifar10", "cifar10-c", "cifar100", "digits", "fashion-mnist", "imagefolder", "mnist",
    "mnist-c", "npz",
]


def assert_contract(ds, n: int, shape: tuple[int, ...]) -> None:
    """robustlab's input-space contract for a loaded split."""
    assert ds.x.shape == (n, *shape)
    assert ds.x.dtype == torch.float32 and ds.x.is_contiguous()
    assert ds.y.dtype == torch.int64 and ds.y.shape == (n,)
    assert float(ds.x.min()) >= 0.0 and float(ds.x.max()) <= 1.0
    assert len(ds.class_names) == ds.num_classes
    assert ds.description


# -- registry -------------------------------------------------------------------------------


def test_available_lists_the_builtins():
    assert available() == ALL
    assert available("*mnist*") == ["fashion-mnist", "mnist", "mnist-c"]
    assert set(ALL) <= set(datasets.available())


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError, match="digits"):
        load("digit")


def test_bad_split_and_unknown_option():
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        load("digits", split="val")
    with pytest.raises(ConfigError, match="verify"):
        load("mnist", verifyy=False)
    with pytest.raises(ConfigError, match="label_type"):
        load("cifar100", label_type="medium")


# -- stratified_split -----------------------------------------------------------------------


def largest_remainder(counts: list[int], k: int) -> list[int]:
    """Reference Hamilton apportionment with exact fractions (ties: smaller class first)."""
    n = sum(counts)
    quotas = [Fraction(k * c, n) for c in counts]
    take = [int(q) for q in quotas]
    order = sorted(range(len(counts)), key=lambda i: (-(quotas[i] - take[i]), i))
    for i in order[: k - sum(take)]:
        take[i] += 1
    return take


def test_stratified_split_exact_sizes_and_proportions():
    y = np.repeat(np.arange(4), [7, 13, 29, 51])  # n = 100
    tr, te = stratified_split(y, 30, seed=3)
    assert len(te) == 30 and len(tr) == 70
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)  # sorted, unique
    assert len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 100
    assert np.bincount(y[te]).tolist() == largest_remainder([7, 13, 29, 51], 30) == [2, 4, 9, 15]
    assert tr.dtype == np.int64 and te.dtype == np.int64


def test_stratified_split_fraction_rounds_up_like_sklearn():
    y = np.arange(1797) % 10
    assert len(stratified_split(y, 0.2, seed=0)[1]) == 360
    assert len(stratified_split(np.arange(10000) % 10, 0.2, seed=0)[1]) == 2000


def test_stratified_split_deterministic_and_seed_dependent():
    y = torch.arange(500) % 7
    a = stratified_split(y, 0.3, seed=11)
    b = stratified_split(y.numpy(), 0.3, seed=11)
    c = stratified_split(y, 0.3, seed=12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert np.bincount(y.numpy()[a[1]]).tolist() == np.bincount(y.numpy()[c[1]]).tolist()


def test_stratified_split_pinned_values():
    # Pins the algorithm (class order, one default_rng(seed) stream, permutation prefix):
    # a change here changes every reported number that used a seeded split.
    tr, te = stratified_split(np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2]), 4, seed=0)
    y = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    assert np.bincount(y[te]).tolist() == [1, 2, 1]
    rng = np.random.default_rng(0)
    expected = np.sort(np.concatenate([rng.permutation([0, 1, 2])[:1], rng.permutation([3, 4, 5, 6])[:2],
                                       rng.permutation([7, 8, 9])[:1]]))
    np.testing.assert_array_equal(te, expected)


@pytest.mark.parametrize("bad", [0, 10, 1.0, 0.0, -3, True, "0.2"])
def test_stratified_split_refuses_bad_sizes(bad):
    with pytest.raises(ConfigError):
        stratified_split(np.arange(10) % 2, bad, seed=0)


def test_stratified_split_refuses_bad_seed_and_labels():
    with pytest.raises(ConfigError, match="seed"):
        stratified_split(np.arange(10) % 2, 2, seed=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        stratified_split(np.zeros((5, 2)), 2, seed=0)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    frac=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_property(counts, frac, seed):
    n = sum(counts)
    if n < 2:
        return
    k = min(max(1, int(frac * n)), n - 1)
    y = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
    tr, te = stratified_split(y, k, seed)
    assert len(te) == k and len(tr) + len(te) == n
    per_class = np.bincount(y[te], minlength=len(counts))
    assert per_class.tolist() == largest_remainder(counts, k)
    assert np.all(np.abs(per_class - np.array(counts) * k / n) < 1)


# -- digits ---------------------------------------------------------------------------------


def test_digits_fixed_stratified_split():
    from sklearn.datasets import load_digits

    train, test = load("digits", "train"), load("digits", "test")
    assert_contract(train, 1437, (1, 8, 8))
    assert_contract(test, 360, (1, 8, 8))
    assert train.num_classes == 10 and train.class_names == [str(i) for i in range(10)]
    full = load_digits()
    counts = np.bincount(full.target)
    test_counts = np.bincount(test.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 360 * counts / 1797) <= 1)
    assert test_counts.sum() == 360
    # train and test partition the original data: the split indices reproduce both sets
    tr, te = stratified_split(full.target, 360, seed=0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 1797
    np.testing.assert_array_equal(test.x.numpy()[:, 0] * 16, full.images[te])
    np.testing.assert_array_equal(train.y.numpy(), full.target[tr])
    # x is the grey level / 16 (17 levels)
    assert set(np.unique(train.x.numpy() * 16).tolist()) <= set(range(17))
    assert float(train.x.max()) == 1.0
    assert "360" in test.description and "seed 0" in test.description


def test_digits_split_ignores_seed_and_is_stable():
    a = load("digits", "test", seed=0)
    b = load("digits", "test", seed=123)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


# -- MNIST family ---------------------------------------------------------------------------


def test_mnist_official_split_raw_files(tmp_path, mnist_like):
    ref = mnist_like(tmp_path, n_train=30, n_test=20)
    train = load("mnist", "train", root=tmp_path)
    test = load("mnist", "test", root=tmp_path)
    assert_contract(train, 30, (1, 28, 28))
    assert_contract(test, 20, (1, 28, 28))
    np.testing.assert_array_equal((train.x.numpy()[:, 0] * 255).round(), ref["train"][0])
    np.testing.assert_array_equal(test.y.numpy(), ref["test"][1])
    assert float(train.x.max()) == 1.0 and float(train.x.min()) == 0.0
    assert "official train split" in train.description
    assert train.class_names == [str(i) for i in range(10)]


def test_mnist_t10k_only_is_split_8000_2000_style(tmp_path, mnist_like):
    ref = mnist_like(tmp_path, n_train=None, n_test=50)
    train = load("mnist", "train", root=tmp_path, seed=5)
    test = load("mnist", "test", root=tmp_path, seed=5)
    assert len(train) == 40 and len(test) == 10
    assert "t10k only" in test.description and "seed 5" in test.description
    tr, te = stratified_split(ref["test"][1], 0.2, seed=5)
    np.testing.assert_array_equal(test.y.numpy(), ref["test"][1][te])
    np.testing.assert_array_equal((train.x.numpy()[:, 0] * 255).round(), ref["test"][0][tr])
    other = load("mnist", "test", root=tmp_path, seed=6)
    assert not torch.equal(other.x, test.x)


def test_mnist_gz_files_are_md5_verified(tmp_path, mnist_like):
    mnist_like(tmp_path, n_train=None, n_test=20, gz=True)  # official names, not official bytes
    with pytest.raises(ChecksumError, match="t10k-images-idx3-ubyte.gz") as info:
        load("mnist", root=tmp_path)
    assert "9fb629c4189551a2d022fa330f9573f3" in str(info.value)
    assert "verify=False" in str(info.value)
    assert len(load("mnist", root=tmp_path, verify=False)) == 16


def test_mnist_truncated_file_is_a_data_error(tmp_path, mnist_like):
    mnist_like(tmp_path, n_train=None, n_test=20)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        load("mnist", root=tmp_path)


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load("mnist", root=tmp_path / "empty")
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path / "empty") in msg
    assert "download=True" in msg and "ROBUSTLAB_DATA" in msg and "root=" in msg


def test_default_root_honours_robustlab_data(tmp_path, monkeypatch, mnist_like):
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path / "data"))
    assert default_root("mnist") == tmp_path / "data" / "mnist"
    mnist_like(tmp_path / "data" / "fashion-mnist", n_train=10, n_test=10)
    ds = load("fashion-mnist", "test")
    assert len(ds) == 10 and ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    monkeypatch.delenv("ROBUSTLAB_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root("mnist") == tmp_path / "home" / ".cache" / "robustlab" / "mnist"


def test_mnist_root_may_be_a_parent_folder(tmp_path, mnist_like):
    mnist_like(tmp_path / "MNIST" / "raw", n_train=10, n_test=10)
    assert len(load("mnist", "test", root=tmp_path)) == 10


def test_mnist_download_with_fake_network(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", 20), ("t10k", 10)):
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(
            idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(
            idx_bytes((np.arange(n) % 10).astype(np.uint8)))
    mirrors = ("https://primary.invalid/", "https://fallback.invalid/")
    monkeypatch.setitem(dl.RESOURCES, "mnist", tuple(
        dl.Resource(name, hashlib.md5(data).hexdigest(), mirrors) for name, data in files.items()))
    served: list[str] = []

    def fake_urlopen(url, timeout=None):
        served.append(url)
        if url.startswith(mirrors[0]):
            raise urllib.error.URLError("primary down")
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    train = load("mnist", "train", root=tmp_path / "m", download=True)
    assert len(train) == 20 and "official" in train.description
    assert sorted(os.listdir(tmp_path / "m")) == sorted(files)  # no temporary files
    assert len(served) == 8  # each file: primary failed, fallback served
    load("mnist", "test", root=tmp_path / "m", download=True)
    assert len(served) == 8  # present and complete: nothing downloaded again


MNIST_T10K = Path(os.environ.get("ROBUSTLAB_MNIST_T10K") or
                  Path(__file__).resolve().parents[2].parent / "shared/data/mnist-t10k")


def test_real_mnist_t10k_split():
    if not (MNIST_T10K / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST t10k files not found at {MNIST_T10K}; set ROBUSTLAB_MNIST_T10K to "
                    f"the folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.")
    assert dl.md5sum(MNIST_T10K / "t10k-images-idx3-ubyte.gz") == "9fb629c4189551a2d022fa330f9573f3"
    assert dl.md5sum(MNIST_T10K / "t10k-labels-idx1-ubyte.gz") == "ec29112dd5afa0611ce80d1b7f02629c"
    train = load("mnist", "train", root=MNIST_T10K, seed=0)
    test = load("mnist", "test", root=MNIST_T10K, seed=0)
    assert_contract(train, 8000, (1, 28, 28))
    assert_contract(test, 2000, (1, 28, 28))
    assert float(train.x.max()) == 1.0 and float(train.x.min()) == 0.0
    official = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    counts = np.bincount(train.y.numpy(), minlength=10) + np.bincount(test.y.numpy(), minlength=10)
    assert counts.tolist() == official
    assert np.all(np.abs(np.bincount(test.y.numpy()) - np.array(official) / 5) < 1)
    # train and test partition the 10,000 images: as multisets of (image, label) their sum
    # is exactly the official file (so no image is in both, none is missing)
    from robustlab.data import readers

    def keys(x, y):
        return Counter((a.tobytes(), int(b)) for a, b in zip(x, y, strict=True))

    full = keys(readers.read_idx(MNIST_T10K / "t10k-images-idx3-ubyte.gz"),
                readers.read_idx(MNIST_T10K / "t10k-labels-idx1-ubyte.gz"))
    as_uint8 = lambda ds: (ds.x.numpy()[:, 0] * 255).round().astype(np.uint8)  # noqa: E731
    assert keys(as_uint8(train), train.y.numpy()) + keys(as_uint8(test), test.y.numpy()) == full
    assert "8000/2000" in test.description and "seed 0" in test.description


# -- CIFAR ------------------------------------------------------------------------------------


def test_cifar10_from_parent_or_folder(tmp_path, cifar10_like):
    batches = cifar10_like(tmp_path, n_per_batch=6)
    train = load("cifar10", "train", root=tmp_path)
    test = load("cifar10", "test", root=tmp_path / "cifar-10-batches-py")
    assert_contract(train, 30, (3, 32, 32))
    assert_contract(test, 6, (3, 32, 32))
    assert train.class_names[0] == "airplane" and train.class_names[9] == "truck"
    np.testing.assert_array_equal(
        (test.x.numpy() * 255).round().reshape(6, -1), batches["test_batch"][b"data"])
    assert test.y.tolist() == batches["test_batch"][b"labels"]
    assert train.y.tolist()[:6] == batches["data_batch_1"][b"labels"]
    assert "Krizhevsky 2009" in train.description


def test_cifar100_fine_and_coarse(tmp_path, cifar100_like):
    ref = cifar100_like(tmp_path, n=8)
    fine = load("cifar100", "test", root=tmp_path)
    coarse = load("cifar100", "test", root=tmp_path, label_type="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.y.tolist() == ref["test"][b"fine_labels"]
    assert coarse.y.tolist() == ref["test"][b"coarse_labels"]
    assert coarse.class_names[3] == "coarse3" and fine.class_names[99] == "fine99"
    assert_contract(load("cifar100", "train", root=tmp_path), 8, (3, 32, 32))


def test_cifar_malicious_batch_is_refused(tmp_path, cifar10_like):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    cifar10_like(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refuses to unpickle"):
        load("cifar10", "test", root=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_missing_message(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py/test_batch") as info:
        load("cifar10", "test", root=tmp_path)
    assert "download=True" in str(info.value)


def test_cifar10_download_extracts_verified_tarball(tmp_path, monkeypatch, cifar10_like):
    src = tmp_path / "src"
    cifar10_like(src, n_per_batch=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    blob = buf.getvalue()
    res = dl.Resource("cifar-10-python.tar.gz", hashlib.md5(blob).hexdigest(), ("https://x.invalid/",), True)
    monkeypatch.setitem(dl.RESOURCES, "cifar10", (res,))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(blob))
    ds = load("cifar10", "train", root=tmp_path / "dl", download=True)
    assert len(ds) == 10
    assert (tmp_path / "dl" / "cifar-10-python.tar.gz").is_file()


# -- npz ----------------------------------------------------------------------------------------


def test_npz_vectors_stratified_80_20(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((50, 6)).astype(np.float64)
    y = np.arange(50) % 5
    np.savez(tmp_path / "v.npz", x=x, y=y)
    train = load("npz", "train", path=tmp_path / "v.npz", seed=1)
    test = load("npz", "test", path=tmp_path / "v.npz", seed=1)
    assert_contract(train, 40, (6,))
    assert_contract(test, 10, (6,))
    assert np.bincount(test.y.numpy()).tolist() == [2] * 5
    tr, te = stratified_split(y, 0.2, seed=1)
    np.testing.assert_allclose(test.x.numpy(), x[te].astype(np.float32))
    assert train.num_classes == 5 and "seed 1" in test.description


def test_npz_grayscale_uint8_and_relative_path(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (10, 4, 5), dtype=np.uint8)
    x[0, 0, 0] = 255
    np.savez(tmp_path / "g.npz", x=x, y=np.arange(10) % 2, class_names=np.array(["cat", "dog"]))
    ds = load("npz", "train", root=tmp_path, path="g.npz")
    assert_contract(ds, 8, (1, 4, 5))
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert float(ds.x.max()) == 1.0


def test_npz_nhwc_is_transposed_and_x_test_used(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 8, 9, 3), dtype=np.uint8)
    xt = rng.integers(0, 256, (4, 8, 9, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(6) % 3, x_test=xt, y_test=np.array([0, 1, 2, 3]))
    train = load("npz", "train", path=tmp_path / "c.npz")
    test = load("npz", "test", path=tmp_path / "c.npz")
    assert_contract(train, 6, (3, 8, 9))
    assert_contract(test, 4, (3, 8, 9))
    assert test.num_classes == 4 == train.num_classes  # max over y and y_test
    assert abs(float(test.x[1, 2, 3, 4]) - xt[1, 3, 4, 2] / 255) < 1e-7
    assert "x_test/y_test" in test.description


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([[0.1]], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="allow_pickle=False"):
        load("npz", path=tmp_path / "obj.npz")
    np.savez(tmp_path / "big.npz", x=np.full((10, 3), 2.0), y=np.arange(10) % 2)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        load("npz", path=tmp_path / "big.npz")
    np.savez(tmp_path / "u16.npz", x=np.full((10, 3), 1000, np.uint16), y=np.arange(10) % 2)
    with pytest.raises(DataError, match="8-bit"):
        load("npz", path=tmp_path / "u16.npz")
    np.savez(tmp_path / "nox.npz", y=np.arange(3))
    with pytest.raises(DataError, match="no array 'x'"):
        load("npz", path=tmp_path / "nox.npz")
    with pytest.raises(ConfigError, match="path"):
        load("npz")
    with pytest.raises(ConfigError, match="download"):
        load("npz", path=tmp_path / "big.npz", download=True)


# -- image folders --------------------------------------------------------------------------------


def _gray(value: int, shape=(6, 5)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def test_imagefolder_labels_split_and_mode(tmp_path, png_writer):
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(5):
            png_writer(tmp_path / "imgs" / cls / f"{i}.png", _gray(40 * c + i))
    train = load("imagefolder", "train", path=tmp_path / "imgs")
    test = load("imagefolder", "test", path=tmp_path / "imgs")
    assert_contract(train, 8, (1, 6, 5))
    assert_contract(test, 2, (1, 6, 5))
    assert train.class_names == ["cat", "dog"] and sorted(test.y.tolist()) == [0, 1]
    # each image's pixel value encodes its class: labels follow the folders
    values = (test.x.numpy()[:, 0, 0, 0] * 255).round()
    assert np.all((values >= 40) == (test.y.numpy() == 1))
    rgb = load("imagefolder", "test", path=tmp_path / "imgs", mode="RGB")
    assert rgb.x.shape == (2, 3, 6, 5)


def test_imagefolder_rgb_default_resize_and_size_error(tmp_path, png_writer):
    png_writer(tmp_path / "a" / "x" / "0.png", np.zeros((4, 4, 3), np.uint8))
    png_writer(tmp_path / "a" / "x" / "1.png", _gray(10, (4, 4)))
    png_writer(tmp_path / "a" / "y" / "0.png", _gray(10, (7, 3)))
    png_writer(tmp_path / "a" / "y" / "1.png", _gray(10, (4, 4)))
    with pytest.raises(DataError, match="pass size="):
        load("imagefolder", path=tmp_path / "a", test_size=2)
    ds = load("imagefolder", path=tmp_path / "a", size=(3, 2), test_size=2)
    assert_contract(ds, 2, (3, 3, 2))  # one RGB image -> RGB for all
    assert load("imagefolder", "test", path=tmp_path / "a", size=5, test_size=2).x.shape == (2, 3, 5, 5)


def test_imagefolder_train_test_folders(tmp_path, png_writer):
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("b", "a"):
            for i in range(n):
                png_writer(tmp_path / split / cls / f"{i}.png", _gray(i))
    png_writer(tmp_path / "train" / "c" / "0.png", _gray(0))  # a class only in train
    train = load("imagefolder", "train", root=tmp_path)
    test = load("imagefolder", "test", root=tmp_path)
    assert train.class_names == test.class_names == ["a", "b", "c"]
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1, 2] and test.y.tolist() == [0, 0, 1, 1]
    assert test.num_classes == 3
    (tmp_path / "test").rename(tmp_path / "other")
    with pytest.raises(DataError, match="no test/ folder"):
        load("imagefolder", root=tmp_path)


def test_imagefolder_missing(tmp_path):
    with pytest.raises(DataNotFoundError):
        load("imagefolder", path=tmp_path / "nothing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no images"):
        load("imagefolder", path=tmp_path / "empty")


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny grayscale PNG whose IHDR declares ``width x height`` (its pixels are absent)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [60_000, 10_000])  # Pillow: error above 2x the limit, warning above it
def test_imagefolder_refuses_a_decompression_bomb_without_decoding_it(tmp_path, png_writer, monkeypatch, side):
    from PIL import ImageFile

    for cls in ("a", "b"):
        for i in range(3):
            png_writer(tmp_path / "imgs" / cls / f"{i}.png", _gray(i))
    bomb = tmp_path / "imgs" / "b" / "9.png"
    bomb.write_bytes(_png_header_only(side, side))
    assert bomb.stat().st_size < 200

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for split in ("train", "test"):
        with pytest.raises(DataError) as info:
            load("imagefolder", split, path=tmp_path / "imgs")
        msg = str(info.value)
        assert msg.startswith(f"{bomb}: declares {side * side:,} pixels, more than PIL.Image.MAX_IMAGE_PIXELS")
        assert "decompression bomb" in msg and "\n" not in msg
    # the reader refuses it on its own too (not only after image_info)
    with pytest.raises(DataError, match="decompression bomb"):
        readers.read_images([bomb], mode="L", size=None)
