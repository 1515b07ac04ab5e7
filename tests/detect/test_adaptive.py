"""The adaptive attack must use the detector: properties that would be false if its
detector term were ignored."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from robustlab import detect
from robustlab.detect import AdaptivePGD, shifted_inputs
from robustlab.errors import ConfigError

from .helpers import blobs, trained_mlp

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    x, y = blobs(0, 600)
    return x, y, trained_mlp(x[:400], y[:400], 3)


@pytest.mark.parametrize("magnitude", [0.0, 0.01])
def test_adaptive_attack_evades_mahalanobis(setup, magnitude: float) -> None:
    # Measured (3 blobs in [0,1]^8, MLP 8-32-3, Mahalanobis on the penultimate features,
    # L-inf eps 0.2, 200 test points, all broken by PGD-20):
    #   magnitude 0:    PGD: AUROC 0.984, undetected successes 4.5%;
    #                   adaptive (lam 1): AUROC 0.958, undetected 43%; adaptive lam 0: 7.5%.
    #   magnitude 0.01 (straight-through gradient through the preprocessing): PGD 0.991 / 0.5%,
    #                   adaptive 0.955 / 39.5%, adaptive lam 0 1.5%.
    x, y, model = setup
    det = detect.create("mahalanobis", magnitude=magnitude)
    kw: dict[str, Any] = dict(reference=(x[:400], y[:400]), seed=0)
    plain = det.run(model, x[400:], y[400:], "adversarial/linf", [0.2], **kw).metrics[0.2]
    adaptive = det.run(model, x[400:], y[400:], "adaptive/linf", [0.2], **kw).metrics[0.2]
    blind = det.run(model, x[400:], y[400:], "adaptive/linf", [0.2], shift_params={"lam": 0.0}, **kw).metrics[0.2]
    assert plain["attack_success"] > 0.9 and adaptive["attack_success"] > 0.9
    assert adaptive["auroc"] < plain["auroc"] - 0.01
    assert adaptive["undetected_success"] > plain["undetected_success"] + 0.2
    assert adaptive["undetected_success"] > blind["undetected_success"] + 0.2


def test_adaptive_stays_in_the_ball_and_stops_when_accepted(setup) -> None:
    x, y, model = setup
    det = detect.create("energy").fit(model, x[:400], y[:400])
    g = torch.Generator().manual_seed(0)
    out = shifted_inputs("adaptive/linf", model, x[400:], y[400:], 0.2, generator=g, detector=det)
    assert out.success is not None and out.clean_correct is not None
    assert float((out.x - x[400:]).abs().max()) <= 0.2 + 1e-6
    assert float(out.x.min()) >= 0 and float(out.x.max()) <= 1
    # energy: PGD leaves 12% of the successes above the 95%-TPR threshold; adaptive 99%
    s_clean = det.score(model, x[400:][out.clean_correct])
    tau = detect.threshold_at_tpr(s_clean, 0.95)
    ok = out.success & out.clean_correct
    assert float((det.score(model, out.x[ok]) >= tau).float().mean()) > 0.9


def test_plain_sum_is_available_and_checked(setup) -> None:
    x, y, model = setup
    det = detect.create("msp").fit(model, x[:400], y[:400])
    atk = AdaptivePGD(det, lam=1.0, selective=False, steps=5)
    assert atk.get_params()["selective"] is False
    with pytest.raises(ConfigError, match="loss must be one of"):
        AdaptivePGD(det, loss="dlr")
