"""Label-issue detection: stratified cross-fitting (out-of-sample, deterministic) and
confident learning with cleanlab."""

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from robustlab import data
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError, InvalidInputError, UnknownNameError
from robustlab.labels import LabelIssues, cross_val_probs, find_issues, stratified_folds


def blob_data(n=90, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.rand(n, d, generator=g)  # unique rows (continuous values)
    return Dataset(x=x, y=y, num_classes=k, name="blobs")


class Memoriser(nn.Module):
    """A perfect memoriser: for an input it was built with, a logit of 50 on that input's
    training label; for any other input, all-zero logits (uniform probabilities)."""

    def __init__(self, train: Dataset):
        super().__init__()
        self.num_classes = train.num_classes
        self.table = {tuple(r.tolist()): int(c) for r, c in zip(train.x, train.y, strict=True)}
        self.w = nn.Parameter(torch.zeros(()))  # something for the optimiser

    def forward(self, x):
        out = torch.zeros(len(x), self.num_classes)
        for i, row in enumerate(x):
            c = self.table.get(tuple(row.tolist()))
            if c is not None:
                out[i, c] = 50.0
        return out + 0.0 * self.w


# -- folds ------------------------------------------------------------------------------------
def test_stratified_folds_partition_balance_and_determinism():
    y = np.array([0] * 23 + [1] * 7 + [2] * 41 + [3] * 2)
    f = stratified_folds(y, 5, seed=3)
    assert f.shape == y.shape and set(f.tolist()) == set(range(5))
    sizes = np.bincount(f, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c in range(4):
        per_class = np.bincount(f[y == c], minlength=5)
        assert per_class.max() - per_class.min() <= 1  # every class spread evenly
    assert np.array_equal(f, stratified_folds(y, 5, seed=3))
    assert not np.array_equal(f, stratified_folds(y, 5, seed=4))
    assert np.array_equal(f, stratified_folds(torch.as_tensor(y), 5, seed=3))


# -- cross-fitting ----------------------------------------------------------------------------
def test_cross_fitted_probabilities_never_come_from_a_model_trained_on_the_sample():
    ds = blob_data()
    # in-sample, the memoriser is certain of every label ...
    with torch.no_grad():
        inside = torch.softmax(Memoriser(ds)(ds.x).double(), 1).numpy()
    assert np.all(inside[np.arange(len(ds)), ds.y.numpy()] > 0.999)
    # ... cross-fitted, each sample is scored by a memoriser that never saw it: uniform
    probs = cross_val_probs(ds, Memoriser, folds=3, seed=0, epochs=1, batch_size=32)
    assert probs.dtype == np.float64 and probs.shape == (90, 3)
    np.testing.assert_allclose(probs, np.full((90, 3), 1 / 3), rtol=0, atol=1e-15)


def test_cross_val_probs_is_deterministic_and_leaves_the_global_rng_alone():
    ds = data.load("digits").subset(torch.arange(300))
    kw = dict(model="mlp", folds=3, seed=1, model_params={"hidden": [32]}, epochs=6)
    state = torch.get_rng_state()
    a = cross_val_probs(ds, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    b = cross_val_probs(ds, **kw)
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-12)
    c = cross_val_probs(ds, **{**kw, "seed": 2})
    assert not np.array_equal(a, c)
    assert (a.argmax(1) == ds.y.numpy()).mean() > 0.5  # the probabilities are informative


def test_cross_fitting_bad_inputs_refused():
    ds = blob_data(n=12)
    with pytest.raises(ConfigError, match="folds"):
        cross_val_probs(ds, folds=1)
    with pytest.raises(ConfigError, match="folds"):
        cross_val_probs(ds, folds=13)
    with pytest.raises(ConfigError, match="seed"):
        cross_val_probs(ds, seed=-1)
    with pytest.raises(ConfigError, match="Dataset"):
        cross_val_probs((ds.x, ds.y))
    with pytest.raises(ConfigError, match="nn.Module"):
        cross_val_probs(ds, model=lambda train: "not a model", folds=2)
    with pytest.raises(UnknownNameError):
        cross_val_probs(ds, model="mlpp", folds=2)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        cross_val_probs(ds, folds=2, checkpoint_dir="/tmp/x")


# -- LabelIssues ------------------------------------------------------------------------------
def test_precision_recall_and_to_dict():
    issues = LabelIssues(indices=np.array([4, 1, 7]), scores=np.array([0.01, 0.1, 0.2]),
                         quality=np.linspace(0, 1, 10), num_samples=10)
    truth = np.zeros(10, dtype=bool)
    truth[[1, 4, 5, 9]] = True
    assert issues.precision_recall(truth) == (2 / 3, 2 / 4)
    assert issues.precision_recall(torch.as_tensor(truth)) == (2 / 3, 2 / 4)
    assert issues.mask.sum() == 3 and issues.mask[[4, 1, 7]].all()
    d = json.loads(json.dumps(issues.to_dict()))
    assert d["indices"] == [4, 1, 7] and d["num_issues"] == 3 and d["scores"] == [0.01, 0.1, 0.2]
    empty = LabelIssues(np.array([], dtype=np.int64), np.array([]), np.ones(10), 10)
    assert empty.precision_recall(truth) == (0.0, 0.0)
    with pytest.raises(InvalidInputError, match="bool"):
        issues.precision_recall(np.zeros(10))
    with pytest.raises(InvalidInputError, match="shape"):
        issues.precision_recall(np.zeros(9, dtype=bool))


# -- find_issues (cleanlab) -------------------------------------------------------------------
def test_find_issues_ranks_by_self_confidence_on_given_probabilities():
    pytest.importorskip("cleanlab", reason="cleanlab (the optional extra robustlab[noise]) is not installed")
    k, n = 3, 60
    y = torch.arange(n) % k
    rng = np.random.default_rng(0)
    probs = np.full((n, k), 0.05)
    probs[np.arange(n), y.numpy()] = 0.9
    wrong = np.array([3, 17, 25, 40, 58])
    conf = np.array([0.02, 0.004, 0.01, 0.001, 0.03])  # p[given label] of the wrong ones
    for i, c in zip(wrong, conf, strict=True):  # confidently another class
        other = (int(y[i]) + 1) % k
        probs[i] = 0.0
        probs[i, int(y[i])] = c
        probs[i, other] = 0.98 - c
        probs[i, (other + 1) % k] = 0.02
    probs += rng.uniform(0, 1e-3, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    ds = Dataset(x=torch.rand(n, 2), y=y, num_classes=k)
    issues = find_issues(ds, probs)
    assert issues.indices.tolist() == wrong[np.argsort(conf)].tolist()  # least confident first
    np.testing.assert_allclose(issues.quality, probs[np.arange(n), y.numpy()])  # self-confidence
    np.testing.assert_allclose(issues.scores, probs[issues.indices, y.numpy()[issues.indices]])
    assert issues.precision is None  # no clean labels known


def test_find_issues_on_digits_with_20pct_symmetric_noise():
    pytest.importorskip("cleanlab", reason="cleanlab (the optional extra robustlab[noise]) is not installed")
    train = data.load("digits")
    res = data.noise.corrupt_labels(train.y, "symmetric", 0.2, 10, seed=0)
    noisy = train.with_labels(res.noisy_labels)
    issues = find_issues(noisy, folds=5, seed=0, model_params={"hidden": [128]}, epochs=5)
    # measured: 261 flagged, precision 0.962, recall 0.893 (281 flipped of 1,437)
    assert issues.precision > 0.85 and issues.recall > 0.8
    assert (issues.precision, issues.recall) == issues.precision_recall(res.is_noisy.numpy())
    assert np.all(np.diff(issues.scores) >= 0)  # ranked, most suspect first


def test_find_issues_bad_inputs_refused():
    pytest.importorskip("cleanlab", reason="cleanlab (the optional extra robustlab[noise]) is not installed")
    ds = Dataset(x=torch.rand(6, 2), y=torch.tensor([0, 1, 0, 1, 0, 1]), num_classes=2)
    good = np.full((6, 2), 0.5)
    with pytest.raises(InvalidInputError, match="shape"):
        find_issues(ds, np.full((6, 3), 1 / 3))
    bad = good.copy()
    bad[2] = [0.9, 0.3]
    with pytest.raises(InvalidInputError, match="row 2"):
        find_issues(ds, bad)
    bad = good.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="finite"):
        find_issues(ds, bad)
    with pytest.raises(UnknownNameError, match="cleanlab"):
        find_issues(ds, good, method="cleanlb")
    with pytest.raises(ConfigError, match="epochs"):
        find_issues(ds, good, epochs=3)
    with pytest.raises(ConfigError, match="filter_bi"):
        find_issues(ds, good, method_params={"filter_bi": "both"})


def test_missing_cleanlab_says_how_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "cleanlab" or m.startswith("cleanlab.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # import cleanlab -> ImportError
    ds = Dataset(x=torch.rand(6, 2), y=torch.tensor([0, 1, 0, 1, 0, 1]), num_classes=2)
    with pytest.raises(ConfigError, match=r'pip install "robustlab\[noise\]"'):
        find_issues(ds, np.full((6, 2), 0.5))
