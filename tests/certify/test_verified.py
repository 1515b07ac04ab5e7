"""Bound-propagation certifiers on the evaluation path: no point counted as verified is
broken by the standard attack, the methods' orderings hold on the same points, and rows
and records say what was measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robustlab import evaluate
from robustlab.errors import ConfigError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def blobs_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP trained on 3 Gaussian blobs in [0, 1]^8 (margins of many sizes)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(3, 8, generator=g) * 0.6 + 0.2
    y = torch.arange(300) % 3
    x = (centers[y] + 0.1 * torch.randn(300, 8, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):
        loss = nn.functional.cross_entropy(model(x[:200]), y[:200])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x[200:], y[200:]


def test_verified_points_are_never_broken_and_tighter_methods_verify_more(blobs_model) -> None:
    model, x, y = blobs_model
    eps = [0.02, 0.05, 0.1]
    methods = ["ibp", "crown-ibp", "crown", "alpha-crown"]
    ms = [evaluate.Measurement(m, "linf", eps, kind="certify") for m in methods]
    ms.append(evaluate.Measurement("standard", "linf", eps, audit=False))
    ev = evaluate.evaluate(model, x, y, ms, seed=0, progress=False)
    robust = {e: ev.records[f"robust/standard/linf/{e:g}"] for e in eps}
    counts = {}
    for m in methods:
        for e in eps:
            verified = ev.records[f"certify/{m}/linf/verified/{e:g}"] == 1
            assert not bool((verified & (robust[e] != 1)).any()), f"{m} at eps={e}: a verified point was broken"
            counts[m, e] = int(verified.sum())
    for e in eps:  # IBP <= CROWN-IBP, CROWN <= alpha-CROWN (CROWN-IBP and CROWN are not ordered in general)
        assert counts["ibp", e] <= counts["crown-ibp", e] and counts["crown", e] <= counts["alpha-crown", e]
    rows = {(r.attack, r.eps): r for r in ev.rows}
    for e in eps:
        attack = rows["standard", e].accuracy
        for m in methods:
            r = rows[m, e]
            assert r.kind == "certify" and r.protocol == "robustlab-bounds/1"
            assert r.accuracy == counts[m, e] / len(x) <= attack
    # the check is not vacuous: something is verified, and the attack breaks something
    assert counts["alpha-crown", 0.02] > 0 and rows["standard", 0.1].accuracy < rows["standard", 0.02].per_attack["clean"]


def test_bound_certifier_bad_input() -> None:
    with pytest.raises(ConfigError, match="alpha_steps"):
        evaluate.Measurement("alpha-crown", "linf", [0.1], {"alpha_steps": -1}, kind="certify").build()
    with pytest.raises(ConfigError, match="smoothing"):
        evaluate.Measurement("smoothing", "linf", [0.1], kind="certify").build()
    with pytest.raises(Exception, match="crown-ibp"):
        evaluate.Measurement("crown-ipb", "linf", [0.1], kind="certify").build()


def test_records_hold_one_mask_per_eps_and_nothing_for_unmeasured_points(blobs_model) -> None:
    model, x, y = blobs_model
    ev = evaluate.evaluate(model, x, y, [evaluate.Measurement("ibp", "linf", [0.05], subset=40, kind="certify")],
                           seed=1, progress=False)
    rec = ev.records["certify/ibp/linf/verified/0.05"]
    idx = evaluate.subset_indices(len(x), 40, 1).numpy()
    assert set(np.unique(rec[idx])) <= {0, 1}
    assert (np.delete(rec, idx) == -2).all()
