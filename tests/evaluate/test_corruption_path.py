"""Corruptions as a kind of measurement of the one evaluation path: rows equal a direct
computation with the documented chunk seeds, do not depend on the batch size, and carry
calibration; bad measurements are refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robustlab.corruptions import corrupt
from robustlab.errors import ConfigError, UnknownNameError
from robustlab.evaluate import Measurement, evaluate, subset_indices
from robustlab.evaluate.metrics import ece_of, reliability
from robustlab.evaluate.shifts import CHUNK, corruption_measurements, corruption_names
from robustlab.seeding import derive_seed


def _images(n: int = 300, side: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(side * side, 4))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, 1, side, side, generator=g) * 0.6 + 0.2
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:30] = (y[:30] + 1) % 4
    return model, x, y


def test_rows_equal_a_direct_computation_with_the_chunk_seeds() -> None:
    model, x, y = _images(n=300)
    ev = evaluate(model, x, y, [Measurement("gaussian_noise", "severity", [1, 5], kind="corruption")],
                  seed=7, progress=False)
    assert [(r.kind, r.attack, r.norm, r.eps) for r in ev.rows] == [
        ("corruption", "gaussian_noise", "severity", 1.0), ("corruption", "gaussian_noise", "severity", 5.0)]
    for row in ev.rows:
        sev = int(row.eps)
        parts = []
        for k, start in enumerate(range(0, 300, CHUNK)):
            gen = torch.Generator().manual_seed(derive_seed("corruption", 7, "gaussian_noise", sev, k))
            parts.append(corrupt(x[start:start + CHUNK], "gaussian_noise", sev, generator=gen))
        with torch.no_grad():
            probs = model(torch.cat(parts)).softmax(1)
        correct = probs.argmax(1) == y
        assert row.accuracy == int(correct.sum()) / 300
        assert np.array_equal(ev.records[f"corruption/gaussian_noise/{sev}"], correct.numpy().astype(np.int8))
        assert row.extra["ece"] == pytest.approx(ece_of(reliability(probs, y)))
        assert row.extra["family"] == "noise"
    assert ev.rows[1].accuracy < ev.rows[0].accuracy  # more noise, fewer correct on this model
    assert "reliability" in ev.clean and ev.clean["ece"] == pytest.approx(ece_of(ev.clean["reliability"]))
    summary = ev.metrics()["corruption"]
    assert summary["accuracy"]["gaussian_noise"] == {"1": ev.rows[0].accuracy, "5": ev.rows[1].accuracy}
    assert summary["mean_accuracy"] is None  # not all 15 x 5 measured


def test_batch_size_and_other_measurements_do_not_change_corrupted_points() -> None:
    model, x, y = _images(n=200)
    m = Measurement("shot_noise", "severity", [3], kind="corruption", subset=120)
    a = evaluate(model, x, y, [m], seed=1, batch_size=7, progress=False)
    b = evaluate(model, x, y, [Measurement("impulse_noise", "severity", [2], kind="corruption"), m],
                 seed=1, batch_size=512, progress=False)
    assert a.rows[0].accuracy == b.rows[1].accuracy
    assert np.array_equal(a.records["corruption/shot_noise/3"], b.records["corruption/shot_noise/3"])
    rec = a.records["corruption/shot_noise/3"]
    idx = subset_indices(200, 120, 1).numpy()
    assert (rec[np.setdiff1d(np.arange(200), idx)] == -2).all() and a.rows[0].num_points == 120


def test_attack_rows_carry_calibration_on_the_attacked_inputs() -> None:
    model, x, y = _images(n=60)
    ev = evaluate(model, x, y, [Measurement("fgsm", "linf", [0.0, 0.1], audit=False)], progress=False)
    at0 = ev.rows[0].extra
    # at eps = 0 the attacked inputs are the clean inputs
    assert at0["reliability"] == ev.clean["reliability"]
    assert ev.rows[1].extra["ece"] == pytest.approx(ece_of(ev.rows[1].extra["reliability"]))


def test_suites_and_bad_corruption_measurements() -> None:
    assert len(corruption_names("common")) == 15 and len(corruption_names("all")) == 19
    assert corruption_names(["fog", "extra", "Fog"])[:2] == ["fog", "speckle_noise"]
    ms = corruption_measurements("extra", [5, 1])
    assert [m.eps for m in ms] == [[1, 5]] * 4 and all(m.kind == "corruption" for m in ms)
    model, x, y = _images(n=10)
    with pytest.raises(UnknownNameError, match="gaussian_noise"):
        evaluate(model, x, y, [Measurement("gausian_noise", "severity", [1], kind="corruption")])
    with pytest.raises(ConfigError, match="1 to 5"):
        evaluate(model, x, y, [Measurement("fog", "severity", [6], kind="corruption")])
    with pytest.raises(ConfigError, match="severity"):
        evaluate(model, x, y, [Measurement("fog", "l2", [1], kind="corruption")])
