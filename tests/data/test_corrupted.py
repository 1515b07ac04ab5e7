"""CIFAR-10-C and MNIST-C loaders on small generated files in the released layout.

The released files are big (10,000 images per severity, 60,000/10,000 per MNIST-C
split); the tests shrink the per-block sizes the loaders insist on (module constants)
and write files of exactly that layout with plain ``np.save``.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.data import corrupted, load
from robustlab.data import download as dl
from robustlab.errors import (
    ChecksumError,
    ConfigError,
    DataError,
    DataNotFoundError,
    UnknownNameError,
)

N = 4  # images per severity block (CIFAR-10-C) in the generated files


@pytest.fixture(autouse=True)
def _small_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corrupted, "CIFAR10C_PER_SEVERITY", N)
    monkeypatch.setattr(corrupted, "MNISTC_SIZES", {"train": 6, "test": 3})


def make_cifar10c(parent: Path, names: tuple[str, ...] = ("fog", "gaussian_noise")) -> dict[str, np.ndarray]:
    """``parent/CIFAR-10-C/<name>.npy`` (5N, 32, 32, 3) uint8 + labels.npy (5N,) uint8.

    Pixel (0, 0, 0) of image j of severity s is ``10 * s + j`` so each block is recognisable.
    """
    folder = parent / "CIFAR-10-C"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.tile(rng.integers(0, 10, N).astype(np.uint8), 5)
    np.save(folder / "labels.npy", labels)
    out = {"labels": labels}
    for k, name in enumerate(names):
        x = rng.integers(0, 256, size=(5 * N, 32, 32, 3), dtype=np.uint8)
        x[:, 0, 0, 0] = [10 * s + j for s in range(1, 6) for j in range(N)]
        x[:, 0, 0, 1] = k
        x[0, 1, 1, :] = (0, 255, 7)
        np.save(folder / f"{name}.npy", x)
        out[name] = x
    return out


def make_mnistc(parent: Path, names: tuple[str, ...] = ("zigzag", "identity")) -> dict[str, np.ndarray]:
    folder = parent / "mnist_c"
    rng = np.random.default_rng(1)
    out = {}
    for name in names:
        (folder / name).mkdir(parents=True)
        for split, n in (("train", 6), ("test", 3)):
            x = rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
            y = rng.integers(0, 10, n).astype(np.uint8)
            np.save(folder / name / f"{split}_images.npy", x)
            np.save(folder / name / f"{split}_labels.npy", y)
            out[f"{name}/{split}"] = x
            out[f"{name}/{split}_labels"] = y
    return out


# -- names ------------------------------------------------------------------------------------


def test_cifar10c_names_are_the_corruption_suite_names():
    from robustlab.corruptions.base import COMMON, EXTRA

    assert corrupted.CIFAR10C_CORRUPTIONS == COMMON + EXTRA
    assert len(set(corrupted.CIFAR10C_CORRUPTIONS)) == 19
    assert len(set(corrupted.MNISTC_CORRUPTIONS)) == 15


def test_aliases_reach_the_same_loader(tmp_path):
    make_cifar10c(tmp_path)
    a = load("cifar10-c", split="test", root=tmp_path, corruption="fog", severity=2)
    for alias in ("cifar10c", "CIFAR-10-C"):
        b = load(alias, split="test", root=tmp_path, corruption="fog", severity=2)
        assert torch.equal(a.x, b.x)


# -- CIFAR-10-C ------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_cifar10c_severity_selects_its_block(tmp_path, severity):
    raw = make_cifar10c(tmp_path)
    ds = load("cifar10-c", split="test", root=tmp_path, corruption="fog", severity=severity)
    block = raw["fog"][(severity - 1) * N : severity * N]
    assert ds.x.shape == (N, 3, 32, 32) and ds.x.dtype == torch.float32
    expected = torch.from_numpy(block.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert torch.equal(ds.x, expected)
    assert ds.x[:, 0, 0, 0].mul(255).round().tolist() == [10 * severity + j for j in range(N)]
    assert ds.y.tolist() == raw["labels"][:N].tolist()
    assert ds.severity.tolist() == [severity] * N
    assert ds.corruption == "fog" and ds.name == "cifar10-c" and ds.num_classes == 10
    assert ds.class_names[0] == "airplane" and f"severity {severity}" in ds.description


def test_cifar10c_all_severities_carry_a_severity_tensor(tmp_path):
    raw = make_cifar10c(tmp_path)
    ds = load("cifar10-c", split="test", root=tmp_path, corruption="gaussian-noise")
    assert ds.corruption == "gaussian_noise"
    assert ds.x.shape == (5 * N, 3, 32, 32)
    assert ds.severity.tolist() == [s for s in range(1, 6) for _ in range(N)]
    assert ds.y.tolist() == raw["labels"].tolist()
    assert ds.x[:, 1, 0, 0].mul(255).round().unique().tolist() == [1.0]  # the second file
    assert (ds.x[0, :, 1, 1] * 255).round().tolist() == [0.0, 255.0, 7.0]
    sub = ds.subset([N + 1, 4 * N])  # severity follows the rows
    assert sub.severity.tolist() == [2, 5]
    assert torch.equal(sub.x, ds.x[[N + 1, 4 * N]])


def test_cifar10c_root_may_be_the_folder_itself(tmp_path):
    make_cifar10c(tmp_path)
    a = load("cifar10-c", split="test", root=tmp_path / "CIFAR-10-C", corruption="fog", severity=1)
    assert a.x.shape == (N, 3, 32, 32)


def test_cifar10c_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path))
    make_cifar10c(tmp_path / "cifar10-c")
    assert len(load("cifar10-c", split="test", corruption="fog", severity=5)) == N


def test_cifar10c_missing_folder_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load("cifar10-c", split="test", root=tmp_path, corruption="fog", severity=1)
    msg = str(err.value)
    assert str(tmp_path) in msg and "CIFAR-10-C.tar" in msg and "download=True" in msg
    assert "zenodo.org/records/2535967" in msg


def test_cifar10c_missing_corruption_file(tmp_path):
    make_cifar10c(tmp_path, names=("fog",))
    with pytest.raises(DataNotFoundError, match="snow.npy"):
        load("cifar10-c", split="test", root=tmp_path, corruption="snow", severity=1)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True])
def test_cifar10c_severity_out_of_range(tmp_path, severity):
    make_cifar10c(tmp_path)
    with pytest.raises(ConfigError, match="severity"):
        load("cifar10-c", split="test", root=tmp_path, corruption="fog", severity=severity)


def test_cifar10c_unknown_corruption_lists_close_matches(tmp_path):
    make_cifar10c(tmp_path)
    with pytest.raises(UnknownNameError, match="gaussian_noise") as err:
        load("cifar10-c", split="test", root=tmp_path, corruption="gausian_noise", severity=1)
    assert "Did you mean" in str(err.value)
    with pytest.raises(ConfigError, match="corruption=") as err2:
        load("cifar10-c", split="test", root=tmp_path)
    assert "fog" in str(err2.value)


def test_cifar10c_has_no_training_split(tmp_path):
    make_cifar10c(tmp_path)
    with pytest.raises(ConfigError, match="split='test'"):
        load("cifar10-c", root=tmp_path, corruption="fog", severity=1)  # load's default: train


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((5 * N, 32, 32, 3), dtype=np.float32),  # wrong dtype
        np.zeros((5 * N, 3, 32, 32), dtype=np.uint8),  # NCHW instead of NHWC
        np.zeros((5 * N + 1, 32, 32, 3), dtype=np.uint8),  # not five blocks of N
    ],
)
def test_cifar10c_wrong_dtype_or_shape_is_refused(tmp_path, bad):
    make_cifar10c(tmp_path)
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", bad)
    with pytest.raises(DataError, match=r"expected uint8 \(20, 32, 32, 3\)"):
        load("cifar10-c", split="test", root=tmp_path, corruption="fog", severity=1)


def test_pickled_object_array_is_refused_not_unpickled(tmp_path):
    make_cifar10c(tmp_path)
    obj = np.empty(5 * N, dtype=object)
    obj[:] = [{"x": i} for i in range(5 * N)]
    np.save(tmp_path / "CIFAR-10-C" / "labels.npy", obj, allow_pickle=True)
    with pytest.raises(DataError, match="Python objects"):
        load("cifar10-c", split="test", root=tmp_path, corruption="fog", severity=1)


def test_truncated_file_is_refused(tmp_path):
    make_cifar10c(tmp_path)
    p = tmp_path / "CIFAR-10-C" / "fog.npy"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load("cifar10-c", split="test", root=tmp_path, corruption="fog", severity=1)


def test_not_an_npy_file_is_refused(tmp_path):
    make_cifar10c(tmp_path)
    (tmp_path / "CIFAR-10-C" / "fog.npy").write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(DataError, match="not a readable .npy"):
        load("cifar10-c", split="test", root=tmp_path, corruption="fog", severity=1)


def test_cifar10c_labels_must_repeat_per_block(tmp_path):
    raw = make_cifar10c(tmp_path)
    labels = raw["labels"].copy()
    labels[-1] = (labels[-1] + 1) % 10
    np.save(tmp_path / "CIFAR-10-C" / "labels.npy", labels)
    with pytest.raises(DataError, match="five severity blocks"):
        load("cifar10-c", split="test", root=tmp_path, corruption="fog", severity=1)


# -- archives and download ------------------------------------------------------------------------


def _tar_of(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        tar.add(folder, arcname=folder.name)
    return dest


def _released(monkeypatch, attr: str, archive: Path) -> dl.Resource:
    res = getattr(corrupted, attr)
    local = dl.Resource(res.filename, dl.md5sum(archive), res.mirrors, True)
    monkeypatch.setattr(corrupted, attr, local)
    return local


def test_cifar10c_archive_is_verified_and_extracted(tmp_path, monkeypatch):
    src = tmp_path / "src"
    raw = make_cifar10c(src)
    root = tmp_path / "root"
    root.mkdir()
    _tar_of(src / "CIFAR-10-C", root / "CIFAR-10-C.tar")
    with pytest.raises(ChecksumError, match="md5"):  # the recorded (official) md5 does not match
        load("cifar10-c", split="test", root=root, corruption="fog", severity=3)
    assert not (root / "CIFAR-10-C").exists()
    _released(monkeypatch, "CIFAR10C_ARCHIVE", root / "CIFAR-10-C.tar")
    ds = load("cifar10-c", split="test", root=root, corruption="fog", severity=3)
    assert (root / "CIFAR-10-C" / "fog.npy").is_file()
    assert ds.x[:, 0, 0, 0].mul(255).round().tolist() == [30 + j for j in range(N)]
    assert ds.y.tolist() == raw["labels"][:N].tolist()


def test_cifar10c_download_fetches_verifies_and_extracts(tmp_path, monkeypatch):
    import urllib.request

    src = tmp_path / "src"
    make_cifar10c(src)
    blob = _tar_of(src / "CIFAR-10-C", tmp_path / "blob.tar").read_bytes()
    _released(monkeypatch, "CIFAR10C_ARCHIVE", tmp_path / "blob.tar")
    urls: list[str] = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(blob)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "root"
    ds = load("cifar10-c", split="test", root=root, download=True, corruption="fog", severity=1)
    assert urls == ["https://zenodo.org/records/2535967/files/CIFAR-10-C.tar"]
    assert len(ds) == N and (root / "CIFAR-10-C.tar").is_file()


def test_download_with_wrong_bytes_leaves_nothing(tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not the archive"))
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match="md5"):
        load("cifar10-c", split="test", root=root, download=True, corruption="fog", severity=1)
    assert not (root / "CIFAR-10-C.tar").exists() and not (root / "CIFAR-10-C").exists()


def test_zip_members_escaping_the_folder_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("mnist_c/fog/test_labels.npy", b"x")
        zf.writestr("../outside.txt", b"x")
    with pytest.raises(DataError, match="path traversal"):
        corrupted.extract_zip(archive, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()
    assert not (tmp_path / "dest" / "mnist_c").exists()


# -- MNIST-C --------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnistc_reads_the_split(tmp_path, split):
    raw = make_mnistc(tmp_path)
    ds = load("mnist-c", split=split, root=tmp_path, corruption="zigzag")
    x = raw[f"zigzag/{split}"]
    assert ds.x.shape == (len(x), 1, 28, 28)
    assert torch.equal(ds.x, torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255))
    assert ds.y.tolist() == raw[f"zigzag/{split}_labels"].tolist()
    assert ds.severity is None and ds.corruption == "zigzag" and ds.num_classes == 10
    ident = load("mnistc", split=split, root=tmp_path / "mnist_c", corruption="identity")
    assert torch.equal(ident.x, torch.from_numpy(raw[f"identity/{split}"].transpose(0, 3, 1, 2) / 255).float())


def test_mnistc_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="mnist_c.zip") as err:
        load("mnist-c", split="test", root=tmp_path, corruption="fog")
    assert "download=True" in str(err.value) and str(tmp_path) in str(err.value)
    make_mnistc(tmp_path)
    with pytest.raises(UnknownNameError, match="canny_edges"):
        load("mnist-c", split="test", root=tmp_path, corruption="canny_edge")
    with pytest.raises(DataNotFoundError, match="fog"):  # folder absent from this extraction
        load("mnist-c", split="test", root=tmp_path, corruption="fog")
    with pytest.raises(ConfigError, match="severity"):  # MNIST-C has one severity: no option
        load("mnist-c", split="test", root=tmp_path, corruption="zigzag", severity=1)
    np.save(tmp_path / "mnist_c" / "zigzag" / "test_images.npy", np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 \(3, 28, 28, 1\)"):
        load("mnist-c", split="test", root=tmp_path, corruption="zigzag")
    np.save(tmp_path / "mnist_c" / "zigzag" / "test_labels.npy", np.zeros(3, np.float64))
    with pytest.raises(DataError, match="integer dtype"):
        load("mnist-c", split="test", root=tmp_path, corruption="zigzag")


def test_mnistc_zip_is_verified_and_extracted(tmp_path, monkeypatch):
    src = tmp_path / "src"
    raw = make_mnistc(src)
    root = tmp_path / "root"
    root.mkdir()
    with zipfile.ZipFile(root / "mnist_c.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted((src / "mnist_c").rglob("*.npy")):
            zf.write(p, p.relative_to(src).as_posix())
    with pytest.raises(ChecksumError):
        load("mnist-c", split="test", root=root, corruption="zigzag")
    _released(monkeypatch, "MNISTC_ARCHIVE", root / "mnist_c.zip")
    ds = load("mnist-c", split="test", root=root, corruption="zigzag")
    assert ds.y.tolist() == raw["zigzag/test_labels"].tolist()
    assert (root / "mnist_c" / "identity" / "train_images.npy").is_file()
