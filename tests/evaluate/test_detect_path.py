"""Detectors as a kind of measurement of the one evaluation path: rows carry exactly what
Detector.run measured, the reference split is required, bad measurements are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robustlab.detect import create as create_detector
from robustlab.errors import ConfigError, UnknownNameError
from robustlab.evaluate import Measurement, evaluate
from robustlab.seeding import derive_seed


def _problem(n: int = 240, seed: int = 0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(3, 12, generator=g) * 0.6 + 0.2
    y = torch.arange(n) % 3
    x = (centers[y] + 0.05 * torch.randn(n, 12, generator=g)).clamp(0, 1)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def test_rows_equal_the_detectors_own_run() -> None:
    model, x, y = _problem()
    ref = (x[:160], y[:160])
    m = Measurement("mahalanobis", "uniform", [0], {"shrinkage": "ledoit-wolf"}, kind="detect")
    ev = evaluate(model, x[160:], y[160:], [m, Measurement("msp", "gaussian", [0.25], kind="detect")],
                  reference=ref, seed=3, progress=False)
    maha, msp = ev.rows
    assert (maha.kind, maha.attack, maha.norm, maha.eps) == ("detect", "mahalanobis", "uniform", 0.0)
    direct = create_detector("mahalanobis", shrinkage="ledoit-wolf").run(
        model, x[160:], y[160:], "uniform", [0.0], reference=ref, num_classes=3,
        seed=derive_seed("detect", 3, "mahalanobis", "uniform"))
    assert maha.accuracy == direct.metrics[0.0]["auroc"] == maha.extra["auroc"]
    assert maha.extra["tnr_at_95_tpr"] == direct.metrics[0.0]["tnr_at_95_tpr"]
    assert np.allclose(ev.records["detect/mahalanobis/uniform/score"], direct.scores_in)
    # uniform noise is far from three tight clusters: the Mahalanobis detector separates it
    assert maha.accuracy > 0.99 and 0.0 <= msp.accuracy <= 1.0
    assert ev.detections[0].detector == "mahalanobis" and len(ev.detections) == 2


def test_detect_measurements_need_a_reference_and_valid_names() -> None:
    model, x, y = _problem(n=30)
    with pytest.raises(ConfigError, match="reference"):
        evaluate(model, x, y, [Measurement("msp", "uniform", [0], kind="detect")])
    with pytest.raises(UnknownNameError, match="mahalanobis"):
        evaluate(model, x, y, [Measurement("mahalanobs", "uniform", [0], kind="detect")], reference=(x, y))
    with pytest.raises(UnknownNameError, match="shift"):
        evaluate(model, x, y, [Measurement("msp", "unifrom", [0], kind="detect")], reference=(x, y))
