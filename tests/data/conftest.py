"""Small generated files in every supported format (no network, no real datasets needed).

The writers here are independent of robustlab's readers (the IDX writer packs the header
with ``struct``), so a round trip checks the reader against the format, not against itself.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding: magic 0x0000<code><ndim>, big-endian uint32 dims, big-endian payload."""
    a = np.asarray(array)
    code = IDX_CODES[a.dtype]
    header = struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx_file(path: Path, array: np.ndarray, gz: bool | None = None) -> Path:
    data = idx_bytes(array)
    if gz if gz is not None else path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_mnist_like(
    folder: Path, n_train: int | None, n_test: int, *, gz: bool = False, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write MNIST-named IDX files (28x28 uint8, labels 0..9); ``n_train=None`` = t10k only."""
    rng = np.random.default_rng(seed)
    out = {}
    suffix = ".gz" if gz else ""
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        if n is None:
            continue
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255  # make sure both ends of the range occur
        y = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(y)
        write_idx_file(folder / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx_file(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y)
        out[split] = (x, y)
    return out


def _batch(rng: np.random.Generator, n: int, labels: dict[bytes, list[int]]) -> dict[bytes, object]:
    d: dict[bytes, object] = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                              b"batch_label": b"generated"}
    d.update(labels)
    return d


def make_cifar10_like(parent: Path, n_per_batch: int = 6, *, protocol: int = 2, seed: int = 0) -> dict:
    """``parent/cifar-10-batches-py/`` with 5 train batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = _batch(rng, n_per_batch, {b"labels": rng.integers(0, 10, n_per_batch).tolist()})
        (folder / fname).write_bytes(pickle.dumps(d, protocol=protocol))
        batches[fname] = d
    names = [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                  "frog", "horse", "ship", "truck"]]
    meta = {b"label_names": names, b"num_cases_per_batch": n_per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


def make_cifar100_like(parent: Path, n: int = 8, *, protocol: int = 4, seed: int = 0) -> dict:
    """``parent/cifar-100-python/{train,test,meta}`` with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for fname in ("train", "test"):
        fine = rng.integers(0, 100, n)
        d = _batch(rng, n, {b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()})
        (folder / fname).write_bytes(pickle.dumps(d, protocol=protocol))
        out[fname] = d
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return out


@pytest.fixture
def idx_writer() -> Callable[..., Path]:
    return write_idx_file


@pytest.fixture
def mnist_like() -> Callable[..., dict]:
    return make_mnist_like


@pytest.fixture
def cifar10_like() -> Callable[..., dict]:
    return make_cifar10_like


@pytest.fixture
def cifar100_like() -> Callable[..., dict]:
    return make_cifar100_like


@pytest.fixture
def png_writer() -> Callable[..., Path]:
    """Write a PNG with Pillow from a uint8 array (H, W) -> mode L, (H, W, 3) -> RGB."""
    from PIL import Image

    def write(path: Path, array: np.ndarray) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
        return path

    return write


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any accidental real download fails loudly instead of touching the network."""
    import urllib.request

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"test tried to use the network: {args!r}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(autouse=True)
def _isolated_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Default roots point into tmp_path, never at the user's real cache."""
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path / "robustlab-data"))
