"""Format readers (IDX, CIFAR pickles, npz, image folders) and the download helpers."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from robustlab.data import download as dl
from robustlab.data import readers
from robustlab.errors import ChecksumError, DataError, DataNotFoundError, WriteError

from .conftest import idx_bytes

# -- IDX ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_uint8_images_and_labels(tmp_path, idx_writer, gz):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    y = rng.integers(0, 10, size=7, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    xi = readers.read_idx(idx_writer(tmp_path / f"img{suffix}", x, gz))
    yi = readers.read_idx(idx_writer(tmp_path / f"lbl{suffix}", y, gz))
    assert xi.dtype == np.uint8 and xi.shape == (7, 5, 4)
    np.testing.assert_array_equal(xi, x)
    np.testing.assert_array_equal(yi, y)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_big_endian_multibyte_dtypes(tmp_path, idx_writer, dtype):
    # values that differ between big- and little-endian reads
    x = np.array([[1, -2, 300], [70000 % 127, -100, 5]]).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        x = x + np.asarray(0.25, dtype=dtype)
    out = readers.read_idx(idx_writer(tmp_path / "a.idx", x))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, x)


def test_gzip_detected_by_content_not_name(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "noext").write_bytes(gzip.compress(idx_bytes(x)))
    np.testing.assert_array_equal(readers.read_idx(tmp_path / "noext"), x)


def test_write_idx_matches_independent_encoding(tmp_path):
    x = np.arange(60, dtype=np.int32).reshape(3, 4, 5) * 1000
    readers.write_idx(tmp_path / "w", x)
    assert (tmp_path / "w").read_bytes() == idx_bytes(x)
    readers.write_idx(tmp_path / "w.gz", x)
    assert gzip.decompress((tmp_path / "w.gz").read_bytes()) == idx_bytes(x)


def test_idx_truncated_payload_is_a_data_error(tmp_path):
    x = np.zeros((10, 28, 28), dtype=np.uint8)
    data = idx_bytes(x)
    (tmp_path / "t").write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated") as info:
        readers.read_idx(tmp_path / "t")
    assert "(10, 28, 28)" in str(info.value) and "7840" in str(info.value)


def test_idx_truncated_gzip_is_a_data_error(tmp_path):
    gz = gzip.compress(idx_bytes(np.ones((50, 28, 28), dtype=np.uint8)))
    (tmp_path / "t.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        readers.read_idx(tmp_path / "t.gz")


def test_idx_truncated_header(tmp_path):
    (tmp_path / "h").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 10]))
    with pytest.raises(DataError, match="truncated IDX header"):
        readers.read_idx(tmp_path / "h")


def test_idx_wrong_magic_and_unknown_dtype(tmp_path):
    good = idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    (tmp_path / "m").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="magic number"):
        readers.read_idx(tmp_path / "m")
    (tmp_path / "d").write_bytes(good[:2] + b"\x0a" + good[3:])
    with pytest.raises(DataError, match="unknown IDX dtype code 0x0a"):
        readers.read_idx(tmp_path / "d")


def test_idx_trailing_bytes_are_refused(tmp_path):
    (tmp_path / "e").write_bytes(idx_bytes(np.zeros((2, 2), dtype=np.uint8)) + b"xx")
    with pytest.raises(DataError, match="2 unexpected bytes"):
        readers.read_idx(tmp_path / "e")


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError):
        readers.read_idx(tmp_path / "nope")


# -- CIFAR pickles ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_batch_round_trip(tmp_path, protocol):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    d = {b"data": data, b"labels": [3, 1, 4, 1], b"batch_label": b"x"}
    (tmp_path / "b").write_bytes(pickle.dumps(d, protocol=protocol))
    x, y = readers.read_cifar_batch(tmp_path / "b")
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8
    # channel-major layout: the first 1024 values are the red plane, row by row
    np.testing.assert_array_equal(x[:, 0].reshape(4, -1), data[:, :1024])
    np.testing.assert_array_equal(x[:, 2, 31, 31], data[:, 3071])
    assert y.dtype == np.int64 and y.tolist() == [3, 1, 4, 1]


def test_cifar_meta_names_are_decoded(tmp_path):
    (tmp_path / "m").write_bytes(pickle.dumps({b"label_names": [b"cat", b"dog"]}, protocol=2))
    assert readers.read_cifar_meta(tmp_path / "m") == ["cat", "dog"]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil(marker)}
    (tmp_path / "evil").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=r"refuses to unpickle (posix|nt|os)\.system"):
        readers.read_cifar_batch(tmp_path / "evil")
    assert not marker.exists()
    (tmp_path / "evil2").write_bytes(pickle.dumps([_EvilEval()]))
    with pytest.raises(DataError, match=r"refuses to unpickle builtins\.eval"):
        readers.load_pickle(tmp_path / "evil2")


def test_object_arrays_in_pickles_are_refused(tmp_path):
    (tmp_path / "o").write_bytes(pickle.dumps({b"data": np.array([1, "a"], dtype=object)}))
    with pytest.raises(DataError, match="object arrays"):
        readers.load_pickle(tmp_path / "o")


def test_truncated_pickle_is_a_data_error(tmp_path):
    raw = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    (tmp_path / "t").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        readers.read_cifar_batch(tmp_path / "t")


def test_cifar_batch_with_wrong_shape_is_refused(tmp_path):
    (tmp_path / "w").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        readers.read_cifar_batch(tmp_path / "w")
    (tmp_path / "k").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(DataError, match="has no entry 'labels'"):
        readers.read_cifar_batch(tmp_path / "k")


# -- npz ----------------------------------------------------------------------------------


def test_npz_object_array_is_refused_with_clear_message(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.zeros((2, 3)), y=np.array([0, 1], dtype=object))
    with pytest.raises(DataError, match="allow_pickle=False") as info:
        readers.read_npz(tmp_path / "o.npz")
    assert "'y'" in str(info.value)


def test_npz_corrupt_and_missing(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError):
        readers.read_npz(tmp_path / "c.npz")
    with pytest.raises(DataNotFoundError):
        readers.read_npz(tmp_path / "none.npz")


@pytest.mark.parametrize(
    ("shape", "layout", "expected"),
    [
        ((5, 7), "auto", (5, 7)),
        ((5, 6, 7), "auto", (5, 1, 6, 7)),
        ((5, 8, 9, 3), "auto", (5, 3, 8, 9)),  # NHWC RGB
        ((5, 8, 9, 1), "auto", (5, 1, 8, 9)),  # NHWC gray
        ((5, 3, 8, 9), "auto", (5, 3, 8, 9)),  # NCHW stays
        ((5, 3, 8, 3), "auto", (5, 3, 8, 3)),  # ambiguous: dimension 1 == 3 wins (NCHW)
        ((5, 3, 8, 3), "nhwc", (5, 3, 3, 8)),
        ((5, 8, 9, 3), "nchw", (5, 8, 9, 3)),
    ],
)
def test_to_nchw_rule(shape, layout, expected):
    x = np.arange(int(np.prod(shape))).reshape(shape)
    out = readers.to_nchw(x, layout)
    assert out.shape == expected
    if len(shape) == 4 and out.shape != shape:  # a real transpose: pixel (n, h, w, c) -> (n, c, h, w)
        assert out[1, -1, 2, 3] == x[1, 2, 3, -1]
        np.testing.assert_array_equal(out, np.moveaxis(x, 3, 1))


# -- image folders ------------------------------------------------------------------------


def test_scan_image_folder_sorted_classes_and_files(tmp_path, png_writer):
    for cls, names in {"b": ["2.png", "1.PNG"], "a": ["z.jpg"], "c": []}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            fmt = "JPEG" if n.endswith(".jpg") else "PNG"
            from PIL import Image

            Image.new("L", (3, 3)).save(tmp_path / cls / n, format=fmt)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    paths, labels, classes = readers.scan_image_folder(tmp_path)
    assert classes == ["a", "b", "c"]
    assert [p.name for p in paths] == ["z.jpg", "1.PNG", "2.png"]
    assert labels.tolist() == [0, 1, 1]


def test_read_images_modes_and_unreadable_file(tmp_path, png_writer):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200
    p = png_writer(tmp_path / "rgb.png", rgb)
    assert readers.read_images([p], mode="RGB", size=None).shape == (1, 3, 4, 5)
    gray = readers.read_images([p], mode="L", size=(2, 3))
    assert gray.shape == (1, 1, 2, 3)
    assert readers.default_mode(["L", "L"]) == "L" and readers.default_mode(["L", "RGB"]) == "RGB"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        readers.read_images([bad], mode="L", size=None)


# -- downloads ----------------------------------------------------------------------------


class FakeOpener:
    """Serves bytes per URL; records calls; a value that is an exception is raised."""

    def __init__(self, table: dict[str, bytes | Exception]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, url: str, timeout: float = 0) -> io.BytesIO:
        self.calls.append(url)
        value = self.table[url]
        if isinstance(value, Exception):
            raise value
        return io.BytesIO(value)


def test_md5sum_and_check_md5(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"robustlab")
    assert dl.md5sum(p) == hashlib.md5(b"robustlab").hexdigest()
    dl.check_md5(p, hashlib.md5(b"robustlab").hexdigest())
    with pytest.raises(ChecksumError) as info:
        dl.check_md5(p, "0" * 32)
    msg = str(info.value)
    assert "f.bin" in msg and "0" * 32 in msg and dl.md5sum(p) in msg
    assert "delete it and download again" in msg


def test_download_url_verifies_and_writes_atomically(tmp_path):
    payload = b"\x00\x01" * 5000
    md5 = hashlib.md5(payload).hexdigest()
    opener = FakeOpener({"https://example.invalid/f": payload})
    dest = tmp_path / "sub" / "f"
    assert dl.download_url("https://example.invalid/f", dest, md5, opener=opener) == dest
    assert dest.read_bytes() == payload
    assert sorted(os.listdir(dest.parent)) == ["f"]  # no temporary file left


def test_download_url_checksum_mismatch_leaves_nothing(tmp_path):
    opener = FakeOpener({"https://example.invalid/f": b"tampered"})
    dest = tmp_path / "f"
    with pytest.raises(ChecksumError, match="expected 0123"):
        dl.download_url("https://example.invalid/f", dest, "0123" + "0" * 28, opener=opener)
    assert os.listdir(tmp_path) == []


def test_download_url_network_error_is_a_data_error(tmp_path):
    opener = FakeOpener({"https://example.invalid/f": urllib.error.URLError("no route")})
    with pytest.raises(DataError, match="could not download https://example.invalid/f"):
        dl.download_url("https://example.invalid/f", tmp_path / "f", None, opener=opener)
    assert os.listdir(tmp_path) == []


def test_fetch_tries_mirrors_in_order_and_skips_verified_files(tmp_path, monkeypatch):
    payload = b"official bytes"
    res = dl.Resource("f.gz", hashlib.md5(payload).hexdigest(), ("https://a.invalid/", "https://b.invalid/"))
    monkeypatch.setitem(dl.RESOURCES, "toy", (res,))
    opener = FakeOpener({"https://a.invalid/f.gz": urllib.error.URLError("down"),
                         "https://b.invalid/f.gz": payload})
    assert dl.fetch("toy", tmp_path, opener=opener) == [tmp_path / "f.gz"]
    assert opener.calls == ["https://a.invalid/f.gz", "https://b.invalid/f.gz"]
    dl.fetch("toy", tmp_path, opener=opener)  # already there and verified: no request
    assert len(opener.calls) == 2
    bad = FakeOpener({"https://a.invalid/f.gz": b"evil", "https://b.invalid/f.gz": b"evil"})
    (tmp_path / "f.gz").unlink()
    with pytest.raises(ChecksumError, match="tried"):
        dl.fetch("toy", tmp_path, opener=bad)
    assert os.listdir(tmp_path) == []


def test_official_table():
    assert dl.known_md5("mnist", "t10k-images-idx3-ubyte.gz") == "9fb629c4189551a2d022fa330f9573f3"
    assert dl.known_md5("fashion-mnist", "train-labels-idx1-ubyte.gz") == "25c81989df183df01b3e8a0aad5dffbe"
    assert dl.RESOURCES["cifar10"][0].urls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert dl.RESOURCES["cifar100"][0].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert dl.RESOURCES["mnist"][0].urls[0].startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")
    assert dl.known_md5("mnist", "other.gz") is None


def _tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """Members (name, data, linkname): data None + linkname -> symlink; data None -> folder."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_tar_extracts_files(tmp_path):
    arc = _tar(tmp_path / "ok.tar.gz", [("top", None, None), ("top/a.txt", b"A", None),
                                        ("top/sub/b.txt", b"BB", None)])
    out = tmp_path / "out"
    assert dl.extract_tar(arc, out) == [out / "top"]
    assert (out / "top/a.txt").read_bytes() == b"A" and (out / "top/sub/b.txt").read_bytes() == b"BB"
    assert sorted(os.listdir(out)) == ["top"]  # no temporary folder left


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([("ok.txt", b"x", None), ("../evil", b"x", None)], "path traversal"),
        ([("top/../../evil", b"x", None)], "path traversal"),
        ([("/etc/evil", b"x", None)], "absolute path"),
        ([("top/link", None, "/etc/passwd")], "is a link"),
    ],
)
def test_extract_tar_refuses_unsafe_members_before_writing(tmp_path, members, match):
    arc = _tar(tmp_path / "bad.tar.gz", members)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match):
        dl.extract_tar(arc, out)
    assert not (tmp_path / "evil").exists()
    assert not out.exists() or os.listdir(out) == []


def test_extract_tar_corrupt_archive(tmp_path):
    (tmp_path / "c.tar.gz").write_bytes(gzip.compress(b"not a tar")[:10])
    with pytest.raises(DataError, match="corrupt or truncated"):
        dl.extract_tar(tmp_path / "c.tar.gz", tmp_path / "out")


def test_download_into_a_full_disk_is_a_write_error_and_stops_at_once(tmp_path, monkeypatch):
    def disk_full(src, dst, length=0):
        dst.write(b"part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dl.shutil, "copyfileobj", disk_full)
    opener = FakeOpener({"https://example.invalid/f": b"x" * 100})
    dest = tmp_path / "f"
    with pytest.raises(WriteError) as info:
        dl.download_url("https://example.invalid/f", dest, None, opener=opener)
    assert str(info.value).startswith(f"cannot write {dest}: no space left on device (ENOSPC)")
    assert os.listdir(tmp_path) == []
    # fetch does not go on to the next mirror: the disk, not the mirror, is the problem
    res = dl.RESOURCES["mnist"][0]
    opener = FakeOpener({url: b"x" for url in res.urls})
    with pytest.raises(WriteError):
        dl.fetch("mnist", tmp_path / "m", [res.filename], opener=opener)
    assert len(opener.calls) == 1 < len(res.urls)
