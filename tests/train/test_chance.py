"""Training that fails says so: the ``training-at-chance`` flag.

The oracle: a constant classifier scores exactly the share of the class it predicts, so it
is always at chance; a trained model is not, not even under 80% symmetric label noise;
PGD-AT at eps 0.3 on MNIST without an eps warm-up collapses to a constant classifier and
is flagged, the same run with a warm-up is not."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robustlab import data, models
from robustlab.data.noise import corrupt_labels
from robustlab.train import ERM, PGDAT, Trainer, create, derive_seed
from robustlab.train.monitors import CHANCE_MARGIN, chance_check
from tests.train.helpers import Net, blobs

MNIST_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist-t10k"
needs_mnist = pytest.mark.skipif(
    not (MNIST_ROOT / "t10k-images-idx3-ubyte.gz").exists(),
    reason=f"the MNIST t10k files are not in {MNIST_ROOT} (see shared/data/README.md)",
)


def fresh(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net(dropout=0.0)


class Constant(nn.Module):
    """Predicts class ``c`` whatever the input."""

    def __init__(self, c, k=3, d=6):
        super().__init__()
        self.input_shape = (d,)
        self.num_classes = k
        self.lin = nn.Linear(d, k)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.bias.copy_(torch.nn.functional.one_hot(torch.tensor(c), k).float())

    def forward(self, x):
        return self.lin(x)


def digits_split():
    return data.load("digits")


# -- the oracle ---------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [0, 1, 2])
def test_a_constant_classifier_scores_its_class_share_and_is_at_chance(c):
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    x = torch.rand(100, 6)
    check = chance_check(Constant(c), x, y)
    assert check.accuracy == [0.5, 0.3, 0.2][c]  # exactly the share of the predicted class
    assert check.majority_share == 0.5 and check.majority_label == 0
    assert check.top_prediction == c and check.top_share == 1.0
    assert check.at_chance


def test_the_margin_is_two_points_above_the_best_constant():
    y = torch.tensor([0] * 50 + [1] * 50)
    x = torch.zeros(100, 6)
    model = Constant(0, k=2)
    base = chance_check(model, x, y)
    assert base.accuracy == 0.5 and base.majority_share == 0.5 and CHANCE_MARGIN == 0.02
    # 52 of 100 right is still chance, 53 is not
    y52 = y.clone()
    y52[50:52] = 0
    y53 = y.clone()
    y53[50:53] = 0
    assert chance_check(model, x, y52).majority_share == 0.52 and chance_check(model, x, y52).at_chance
    check53 = chance_check(model, x, y53)
    assert check53.accuracy == 0.53 and check53.majority_share == 0.53 and check53.at_chance  # still constant
    assert chance_check(model, x, y53, margin=-0.01).at_chance is False


def test_a_trained_model_is_not_at_chance_and_the_mode_is_restored():
    ds = blobs()
    m = fresh()
    hist = Trainer(m, ERM(), epochs=5, batch_size=32, progress=False).fit(ds)
    assert not any(h.get("flags") for h in hist)
    m.train()
    check = chance_check(m, ds.x, ds.y)
    assert m.training  # left as it was
    assert check.accuracy > 0.9 and not check.at_chance


def test_heavy_symmetric_label_noise_is_not_chance():
    ds = digits_split()
    res = corrupt_labels(ds.y, "symmetric", 0.8, 10, seed=0)
    noisy = ds.with_labels(res.noisy_labels)
    assert abs(float((noisy.y == ds.y).float().mean()) - 0.2) < 0.02  # 80% of the labels are wrong
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = models.for_dataset("mlp", noisy)
    t = Trainer(net, ERM("ce"), epochs=5, batch_size=64, lr=0.05, progress=False)
    hist = t.fit(noisy)
    assert not any(h.get("flags") for h in hist) and t.summary()["flags"] == []
    check = chance_check(net, noisy.x, noisy.y)
    assert check.accuracy > check.majority_share + 0.05  # well above a constant even on noisy labels


# -- the Trainer's flag ---------------------------------------------------------------------------
def force_constant(model):
    """Make ``Net`` predict class 1 whatever the input."""
    with torch.no_grad():
        model.body[-1].weight.zero_()
        model.body[-1].bias.copy_(torch.tensor([0.0, 50.0, 0.0]))


class Collapse(ERM):
    """ERM whose model is forced constant (class 1) from epoch ``at`` (0-based) on."""

    def __init__(self, at):
        super().__init__("ce")
        self.at = at
        self.epoch_now = 0

    def start_epoch(self, epoch, generator):
        super().start_epoch(epoch, generator)
        self.epoch_now = epoch

    def loss(self, model, x, y, index):
        if self.epoch_now >= self.at:
            force_constant(model)
        return super().loss(model, x, y, index)


class CollapsingPGD(PGDAT):
    """PGD-AT whose model is forced constant throughout."""

    def loss(self, model, x, y, index):
        force_constant(model)
        return super().loss(model, x, y, index)


def test_a_collapsed_run_is_flagged_in_its_records_and_summary_with_the_fix():
    ds = blobs()
    t = Trainer(fresh(), Collapse(at=2), epochs=4, batch_size=240, lr=1e-9, schedule="constant", progress=False)
    hist = t.fit(ds)
    assert [bool(h.get("flags")) for h in hist] == [False, False, True, True]
    flag = hist[2]["flags"][0]
    assert flag.startswith("training-at-chance: after epoch 3 ")
    assert "33.3% of 240 training points" in flag and "100% of its predictions are class 1" in flag
    assert "lower the learning rate" in flag
    assert t.summary()["flags"] == hist[-1]["flags"]


def test_adversarial_flag_names_eps_and_the_eps_warmup_and_warmup_epochs_are_not_judged():
    ds = blobs()
    obj = CollapsingPGD(eps=0.05, steps=1, eps_warmup=2)
    hist = Trainer(fresh(), obj, epochs=4, batch_size=240, lr=1e-9, progress=False).fit(ds)
    # epochs 1 and 2 end inside the eps warm-up: not judged; 3 and 4 are
    assert [bool(h.get("flags")) for h in hist] == [False, False, True, True]
    assert "lower eps (0.05 now) or add or lengthen the eps warm-up (train.objective_params.eps_warmup)" in hist[2]["flags"][0]
    # the lr warm-up counts the same way
    hist = Trainer(fresh(), Collapse(at=0), epochs=3, batch_size=240, lr=1e-9, warmup_epochs=1.5,
                   progress=False).fit(ds)
    assert [bool(h.get("flags")) for h in hist] == [False, True, True]


def test_the_summary_reports_the_selected_epoch():
    ds, val = blobs(), blobs(n=60, seed=1)
    t = Trainer(fresh(), Collapse(at=3), epochs=4, batch_size=32, select="clean", progress=False)
    hist = t.fit(ds, val)
    assert hist[-1].get("flags") and t.summary()["best_epoch"] < 4
    assert t.summary()["flags"] == []  # the weights the run ended with are the selected, trained ones


# -- PGD-AT at eps 0.3 without an eps warm-up collapses (Madry et al.'s MNIST eps) -------------------
def pgd_at_run(train_set, epochs, eps_warmup, eps=0.3):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("init", 0, "mnist_net"))
        net = models.for_dataset("mnist_net", train_set)
    params = {"eps": eps, "steps": 10, "rel_step_size": 0.25}
    if eps_warmup:
        params["eps_warmup"] = eps_warmup
    t = Trainer(net, create("pgd-at", **params), epochs=epochs, batch_size=100, optimizer="adam", lr=5e-3,
                schedule="onecycle", progress=False)
    hist = t.fit(train_set)
    return [bool(h.get("flags")) for h in hist], t.summary()


def test_pgd_at_collapse_is_flagged_on_digits():
    ds = digits_split()
    flags, summary = pgd_at_run(ds, 3, 0.0, eps=0.5)
    assert flags == [True, True, True] and summary["flags"][0].startswith("training-at-chance")
    flags, summary = pgd_at_run(ds, 3, 2.0)  # eps 0.3 reached after a 2-epoch warm-up: trains
    assert flags == [False, False, False] and summary["flags"] == []


@needs_mnist
def test_pgd_at_eps_03_collapse_is_flagged_on_an_mnist_subset():
    ds = data.load("mnist", root=str(MNIST_ROOT)).subset(torch.arange(1000))
    flags, summary = pgd_at_run(ds, 2, 0.0)
    assert flags == [True, True] and summary["flags"]
    flags, summary = pgd_at_run(ds, 2, 1.0)
    assert flags == [False, False] and summary["flags"] == []


@pytest.mark.slow
@needs_mnist
def test_pgd_at_eps_03_on_the_mnist_split_5_epochs_without_warmup_is_flagged():
    """The full check of benchmarks/adversarial_training/collapse.py (about 50 s on one core)."""
    ds = data.load("mnist", root=str(MNIST_ROOT))
    assert len(ds) == 8000
    flags, summary = pgd_at_run(ds, 5, 0.0)
    assert flags == [True] * 5, json.dumps(summary)
    assert summary["flags"] and "100% of its predictions are class" in summary["flags"][0]
