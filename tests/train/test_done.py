"""DONE with DRO weights over the whole training set (compositional normaliser estimate)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import ConfigError
from robustlab.train import Trainer, create, done_weights
from robustlab.train.adversarial import DONE, DONEMinibatch
from tests.train.helpers import blobs

N, B, R = 12, 4, 0.7


class Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def tiny() -> tuple[Lin, torch.Tensor, torch.Tensor, torch.Tensor]:
    ds = blobs(n=N)
    model = Lin()
    with torch.no_grad():
        losses = F.cross_entropy(model(ds.x), ds.y, reduction="none")
    return model, ds.x, ds.y, losses


def outer_pass(obj: DONE, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """One pass over the training set in fixed minibatches, the adversarial inputs being
    the clean ones (a fixed model: the losses do not change between passes)."""
    outs = []
    for s in range(0, N, B):
        idx = torch.arange(s, s + B)
        per, _ = obj.outer(model, x[idx], x[idx], y[idx], idx)
        outs.append(per.detach())
    return outs


def test_table_normaliser_gives_the_exact_full_set_weights_after_one_pass():
    model, x, y, losses = tiny()
    obj = DONE(r=R, normaliser="table")
    obj.setup(N, 3)
    assert obj.needs_indices
    outer_pass(obj, model, x, y)
    # the estimate is the exact full-set normaliser: log u = log (1/n) sum_j exp(l_j / r)
    exact = torch.logsumexp(losses.double() / R, 0) - math.log(N)
    assert obj.log_u is not None and obj.log_u.item() == pytest.approx(exact.item(), abs=1e-12)
    # and the weights are the closed form exp(l / r) normalised over the *whole* set
    w = obj.full_set_weights(losses)
    assert torch.allclose(w, done_weights(losses.double(), R), rtol=1e-12, atol=0)
    # on the next pass each batch's per-sample loss is n w_i l_i (float32: rtol 1e-6)
    per = torch.cat(outer_pass(obj, model, x, y))
    assert torch.allclose(per.double(), N * done_weights(losses.double(), R) * losses.double(), rtol=1e-6, atol=0)
    # so the mean over the set is the DRO loss sum_i w_i l_i, not a per-batch softmax
    assert per.double().mean().item() == pytest.approx((done_weights(losses, R) * losses).sum().item(), rel=1e-6)


def test_ema_normaliser_converges_to_the_full_set_sum():
    model, x, y, losses = tiny()
    exact = (torch.logsumexp(losses.double() / R, 0) - math.log(N)).item()
    # full batch: exact after the first step
    full = DONE(r=R, beta=0.3)
    full.setup(N, 3)
    full.outer(model, x, x, y, torch.arange(N))
    assert full.log_u is not None and full.log_u.item() == pytest.approx(exact, abs=1e-12)
    # minibatches of 4 in a fixed cycle: the moving average's fixed point is within
    # O(beta) of the full-set mean; with beta 0.01 after 600 passes, within 0.5% (log scale 5e-3)
    obj = DONE(r=R, beta=0.01)
    obj.setup(N, 3)
    for _ in range(600):
        outer_pass(obj, model, x, y)
    assert obj.log_u is not None and abs(obj.log_u.item() - exact) < 5e-3
    w = obj.full_set_weights(losses)
    assert torch.allclose(w, done_weights(losses.double(), R), rtol=5e-3)
    assert w.sum().item() == pytest.approx(1.0, abs=5e-3)


def test_large_r_is_pgd_at_and_the_metrics():
    model, x, y, losses = tiny()
    obj = DONE(r=1e12)
    obj.setup(N, 3)
    per, m = obj.outer(model, x[:B], x[:B], y[:B], None)
    assert torch.allclose(per, losses[:B], rtol=1e-9)  # v = 1: the plain adversarial loss
    assert m["done_scale"].item() == pytest.approx(1.0, abs=1e-9)
    assert m["done_max_weight"].item() == pytest.approx(1 / N, rel=1e-6)


def test_state_survives_a_checkpoint_and_bad_values_are_refused():
    model, x, y, _ = tiny()
    a = DONE(r=R, normaliser="table")
    a.setup(N, 3)
    outer_pass(a, model, x, y)
    b = DONE(r=R, normaliser="table")
    b.setup(N, 3)
    b.load_state_dict(a.state_dict())
    assert b.log_u is not None and a.log_u is not None and torch.equal(a.log_u, b.log_u)
    assert b.table is not None and a.table is not None and torch.equal(a.table, b.table)
    with pytest.raises(ConfigError, match="normaliser"):
        DONE(normaliser="batch")
    with pytest.raises(ConfigError, match="beta"):
        DONE(beta=0.0)
    with pytest.raises(ConfigError, match="indices"):
        b.outer(model, x[:B], x[:B], y[:B], None)


def test_the_minibatch_version_is_unchanged_under_its_new_name():
    model, x, y, losses = tiny()
    obj = create("done-minibatch", r=R)
    assert isinstance(obj, DONEMinibatch)
    per, m = obj.outer(model, x[:B], x[:B], y[:B], None)
    w = torch.softmax(losses[:B].double() / R, 0)
    assert torch.allclose(per.double(), B * w * losses[:B].double(), rtol=1e-6)
    assert m["done_entropy"].item() == pytest.approx(-(w * w.log()).sum().item(), rel=1e-6)
    assert isinstance(create("done"), DONE) and not isinstance(create("done"), DONEMinibatch)


def test_done_trains_end_to_end_reproducibly():
    ds = blobs(n=96)
    runs = []
    for _ in range(2):
        model = Lin()
        h = Trainer(model, create("done", eps=0.05, steps=2, r=1.0), epochs=2, batch_size=32, lr=0.1,
                    progress=False).fit(ds)
        runs.append((h[-1]["train_loss"], model.fc.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert math.isfinite(h[-1]["train_done_log_normaliser"]) and h[-1]["train_adv_accuracy"] > 0.5
