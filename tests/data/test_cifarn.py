"""CIFAR-10N/100N label files: read without unpickling arbitrary objects, noise rates."""

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from robustlab.data.cifarn import (
    _load_restricted,
    cifarn_noise_rate,
    load_cifarn_labels,
    read_cifarn,
)
from robustlab.errors import ConfigError, DataError, DataNotFoundError


def flip_exactly(clean, count, k, rng):
    noisy = clean.copy()
    idx = rng.choice(len(clean), size=count, replace=False)
    noisy[idx] = (clean[idx] + rng.integers(1, k, size=count)) % k  # always a different class
    return noisy


@pytest.fixture
def c10n(tmp_path):
    """A CIFAR-10N-format file (torch.save of a dict of int64 numpy arrays) of 200 labels."""
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 10, 200)
    d = {
        "clean_label": clean,
        "aggre_label": flip_exactly(clean, 18, 10, rng),
        "worse_label": flip_exactly(clean, 80, 10, rng),
        "random_label1": flip_exactly(clean, 34, 10, rng),
        "random_label2": flip_exactly(clean, 35, 10, rng),
        "random_label3": flip_exactly(clean, 36, 10, rng),
    }
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(d, path)
    return path, d


@pytest.fixture
def c100n(tmp_path):
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 100, 150)
    coarse = clean // 5
    d = {
        "clean_label": clean,
        "noisy_label": flip_exactly(clean, 60, 100, rng),
        "clean_coarse_label": coarse,
        "noisy_coarse_label": flip_exactly(coarse, 30, 20, rng),
    }
    path = tmp_path / "CIFAR-100_human.pt"
    torch.save(d, path)
    return path, d


def test_cifar10n_labels_and_noise_rates(c10n):
    path, d = c10n
    for key in d:
        y = load_cifarn_labels(path, key)
        assert y.dtype == torch.int64 and np.array_equal(y.numpy(), d[key])
    assert np.array_equal(load_cifarn_labels(path).numpy(), d["aggre_label"])  # default
    assert np.array_equal(load_cifarn_labels(path, "worst").numpy(), d["worse_label"])
    assert np.array_equal(load_cifarn_labels(path, "rand2").numpy(), d["random_label2"])
    assert cifarn_noise_rate(path) == 18 / 200
    rates = read_cifarn(path).noise_rates()
    assert rates == {"aggre_label": 0.09, "clean_label": 0.0, "random_label1": 0.17,
                     "random_label2": 0.175, "random_label3": 0.18, "worse_label": 0.4}
    assert read_cifarn(path).variant == "cifar10n"


def test_cifar100n_fine_and_coarse(c100n):
    path, d = c100n
    r = read_cifarn(path)
    assert r.variant == "cifar100n" and r.num_samples == 150
    assert np.array_equal(r.get("noisy100").numpy(), d["noisy_label"])
    assert r.noise_rate("noisy_label") == 60 / 150
    assert r.noise_rate("noisy_coarse_label") == 30 / 150  # against clean_coarse_label
    with pytest.raises(ConfigError, match="noisy_label"):
        load_cifarn_labels(path)  # the default aggre_label is a CIFAR-10N set


def test_files_written_with_numpy1_names_and_tensor_values_load(tmp_path, c10n):
    path, d = c10n
    old = tmp_path / "numpy1.pt"  # numpy 1.x pickles arrays via numpy.core.multiarray
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(old, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            raw = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in raw
                raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(info, raw)
    assert np.array_equal(load_cifarn_labels(old, "aggre").numpy(), d["aggre_label"])
    t = tmp_path / "tensors.pt"
    torch.save({k: torch.from_numpy(v) for k, v in d.items()}, t)
    assert cifarn_noise_rate(t, "worse_label") == 0.4
    # the fallback reader (torch without safe_globals) reads the same arrays
    fallback = _load_restricted(path)
    assert all(np.array_equal(fallback[k], d[k]) for k in d)


class Evil:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_malicious_pickles_are_refused_without_running_code(tmp_path):
    sentinel = tmp_path / "pwned"
    as_torch = tmp_path / "evil.pt"
    torch.save({"clean_label": np.zeros(3, dtype=np.int64), "aggre_label": Evil(sentinel)}, as_torch)
    as_pickle = tmp_path / "evil.pkl"
    as_pickle.write_bytes(pickle.dumps({"clean_label": Evil(sentinel)}, protocol=2))
    for path in (as_torch, as_pickle):
        with pytest.raises(DataError, match="system"):
            read_cifarn(path)
    with pytest.raises(DataError, match="system"):
        _load_restricted(as_torch)
    assert not sentinel.exists()


def test_bad_files_refused(tmp_path):
    with pytest.raises(DataNotFoundError, match="UCSC-REAL"):
        read_cifarn(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(DataError):
        read_cifarn(junk)
    clean = np.arange(10) % 10

    def write(obj):
        p = tmp_path / "f.pt"
        torch.save(obj, p)
        return p

    cases = [
        (np.arange(4), "dict"),
        ({"aggre_label": clean}, "clean_label"),
        ({"clean_label": clean, "mystery": clean}, "neither"),
        ({"clean_label": clean}, "neither"),
        ({"clean_label": clean, "aggre_label": clean.astype(np.float32)}, "integers"),
        ({"clean_label": clean, "aggre_label": clean + 5}, r"outside \[0, 9\]"),
        ({"clean_label": clean, "aggre_label": clean[:7]}, "lengths"),
        ({"clean_label": np.arange(5), "noisy_coarse_label": np.arange(5) + 16}, r"outside \[0, 19\]"),
        ({"clean_label": np.arange(5), "noisy_coarse_label": np.arange(5)}, "clean_coarse_label"),
    ]
    for obj, match in cases:
        with pytest.raises(DataError, match=match):
            read_cifarn(write(obj))
    with pytest.raises(ConfigError, match="aggre_label"):
        load_cifarn_labels(write({"clean_label": clean, "aggre_label": clean}), "agre_label")


def test_cifar10_with_cifarn_label_file_uses_human_labels_for_train_only(tmp_path, cifar10_like):
    from robustlab.data import load

    batches = cifar10_like(tmp_path)
    clean = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)]).astype(np.int64)
    rng = np.random.default_rng(3)
    d = {"clean_label": clean, "aggre_label": flip_exactly(clean, 7, 10, rng),
         "worse_label": flip_exactly(clean, 12, 10, rng)}
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(d, path)
    train = load("cifar10", "train", root=tmp_path, label_file=path, label_set="worst")
    assert torch.equal(train.y, torch.from_numpy(d["worse_label"]))
    assert torch.equal(train.clean_y, torch.from_numpy(clean))
    assert int((train.y != train.clean_y).sum()) == 12 and "worse_label" in train.description
    test = load("cifar10", "test", root=tmp_path, label_file=path)
    assert test.clean_y is None  # test labels are never replaced
    d["clean_label"] = (clean + 1) % 10  # a file for another ordering / dataset
    torch.save(d, path)
    with pytest.raises(DataError, match="do not match"):
        load("cifar10", "train", root=tmp_path, label_file=path)
