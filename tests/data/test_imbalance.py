"""Class imbalance: exact counts of each profile, determinism, and what follows the rows."""

from __future__ import annotations

import pytest
import torch

from robustlab.data import Dataset, load
from robustlab.data.imbalance import (
    class_counts,
    long_tail_indices,
    make_imbalanced,
    target_counts,
)
from robustlab.errors import ConfigError, DataError


def balanced(per_class: int = 500, k: int = 10, seed: int = 0) -> Dataset:
    """``k`` classes of ``per_class`` vectors, shuffled; x[i, 0] = i / n identifies row i."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(per_class)[torch.randperm(k * per_class, generator=g)]
    n = len(y)
    x = torch.rand(n, 3, generator=g)
    x[:, 0] = torch.arange(n) / n
    return Dataset(x=x, y=y, num_classes=k, name="synthetic", description="balanced")


def test_ratio_one_leaves_a_balanced_dataset_unchanged():
    ds = balanced()
    out = make_imbalanced(ds, 1, seed=3)
    assert torch.equal(out.x, ds.x) and torch.equal(out.y, ds.y)
    assert long_tail_indices(ds.y, 10, 1.0).tolist() == list(range(len(ds)))


def test_exact_counts_for_ratio_10():
    # n_c = floor(500 * 10^(-c/9)): 500, 387.13, 299.74, 232.08, 179.69, 139.13, 107.72, 83.41, 64.58, 50
    out = make_imbalanced(balanced(), 10)
    assert class_counts(out.y, 10).tolist() == [500, 387, 299, 232, 179, 139, 107, 83, 64, 50]


def test_known_long_tailed_cifar10_counts():
    # CIFAR-10-LT with ratio 100 (Cao et al. 2019 / Cui et al. 2019): 12,406 training images
    counts = target_counts(10, 5000, 100)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


@pytest.mark.parametrize("ratio", [2, 5, 10, 50, 100, 3.7, 7])
def test_max_over_min_is_the_ratio_up_to_floor(ratio):
    out = make_imbalanced(balanced(), ratio)
    counts = class_counts(out.y, 10)
    assert counts[0] == 500 and counts.argmin() == 9
    achieved = int(counts.max()) / int(counts.min())
    # the smallest count is floor(500 / R): the ratio is R exactly when R divides 500,
    # else n_max / floor(n_max / R), in [R, 500 / (500 / R - 1))
    assert int(counts.min()) == int(500 / ratio + 1e-9)
    assert ratio <= achieved < 500 / (500 / ratio - 1)
    if 500 % ratio == 0:
        assert achieved == ratio
    assert (counts[:-1] >= counts[1:]).all()  # non-increasing in the class index


def test_step_profile_halves_the_classes():
    out = make_imbalanced(balanced(), 10, profile="step")
    assert class_counts(out.y, 10).tolist() == [500] * 5 + [50] * 5
    assert target_counts(5, 100, 4, "step") == [100, 100, 100, 25, 25]  # 3 majority, 2 minority


def test_deterministic_and_seed_dependent():
    ds = balanced()
    a = long_tail_indices(ds.y, 10, 10, seed=0)
    assert torch.equal(a, long_tail_indices(ds.y, 10, 10, seed=0))
    b = long_tail_indices(ds.y, 10, 10, seed=1)
    assert not torch.equal(a, b)
    assert class_counts(ds.y[a], 10).tolist() == class_counts(ds.y[b], 10).tolist()
    assert torch.equal(a, a.sort().values)  # original order kept


def test_rows_and_clean_labels_follow_the_indices():
    ds = balanced()
    noisy = ds.y.clone()
    noisy[::7] = (noisy[::7] + 1) % 10
    ds = ds.with_labels(noisy)
    idx = long_tail_indices(ds.y, 10, 5, seed=2)
    out = make_imbalanced(ds, 5, seed=2)
    assert torch.equal(out.x, ds.x[idx]) and torch.equal(out.y, ds.y[idx])
    assert torch.equal(out.clean_y, ds.clean_y[idx])
    assert torch.equal((out.x[:, 0] * len(ds)).round().long(), idx)  # each row is its original
    assert "ratio 5" in out.description and "balanced" in out.description


def test_errors():
    ds = balanced(per_class=20)
    for bad in (0.5, 0, -2, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="ratio"):
            make_imbalanced(ds, bad)
    with pytest.raises(ConfigError, match="profile"):
        make_imbalanced(ds, 2, profile="linear")
    with pytest.raises(ConfigError, match="no sample"):
        make_imbalanced(ds, 25)  # floor(20 / 25) = 0 samples of class 9
    with pytest.raises(DataError, match="class 0 has 20 samples"):
        make_imbalanced(ds, 2, n_max=30)
    missing = Dataset(x=torch.rand(6, 2), y=torch.tensor([0, 0, 1, 1, 0, 1]), num_classes=3)
    with pytest.raises(DataError, match="class 2 has no samples"):
        make_imbalanced(missing, 2)


def test_load_applies_imbalance_to_train_only():
    train = load("digits", split="train", imbalance=10, seed=0)
    plain = load("digits", split="train")
    assert class_counts(train.y, 10).tolist() == [139, 107, 83, 64, 49, 38, 29, 23, 17, 13]
    assert torch.equal(train.x, make_imbalanced(plain, 10, seed=0).x)
    step = load("digits", split="train", imbalance=10, imbalance_profile="step")
    assert class_counts(step.y, 10).tolist() == [139] * 5 + [13] * 5
    test = load("digits", split="test", imbalance=10)
    assert torch.equal(test.x, load("digits", split="test").x)
