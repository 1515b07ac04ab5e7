"""The mechanism behind benchmarks/disparity/gaussian_mixture.py, checked against closed forms.

For x | y ~ N(+-mu, sigma^2) with prior odds R for class 0, the worst-case L-inf shift of
size eps < mu moves every point eps towards the boundary, which leaves a well-specified
logistic model with mean mu - eps. So the population minimiser of the adversarial
logistic loss is w = 2 (mu - eps) / sigma^2, b = log R, and the decision threshold
-b / w = -sigma^2 log R / (2 (mu - eps)) moves into the minority class as eps grows
(Hu, Wu, Zhang & Zhao 2023: robustness plus imbalance widens the accuracy gap).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

from robustlab.evaluate.metrics import disparity

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "disparity" / "gaussian_mixture.py"


@pytest.fixture(scope="module")
def gm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gaussian_mixture_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("eps", [0.0, 0.3, 0.6])
def test_adversarial_training_lands_on_the_closed_form_1d(gm, eps):
    mu, sigma, ratio, n0 = 1.0, 1.0, 4, 120_000
    x, y = gm.sample((n0, n0 // ratio), mu, sigma, 1, torch.Generator().manual_seed(0))
    w, b = gm.train_linear(x, y, eps, "linf")
    w_star, b_star = 2 * (mu - eps) / sigma**2, math.log(ratio)
    # standard errors of the logistic MLE at n = 150,000 are ~0.01 here
    assert float(w) == pytest.approx(w_star, rel=0.03)
    assert float(b) == pytest.approx(b_star, abs=0.03)
    t_star = -sigma**2 * math.log(ratio) / (2 * (mu - eps))
    assert -float(b) / float(w) == pytest.approx(t_star, abs=0.03)


def test_threshold_and_gap_grow_with_eps_and_vanish_when_balanced(gm):
    mu, sigma = 1.0, 1.0
    gaps = []
    for eps in (0.0, 0.3, 0.6):
        x, y = gm.sample((40_000, 10_000), mu, sigma, 1, torch.Generator().manual_seed(1))
        w, b = gm.train_linear(x, y, eps, "linf")
        gaps.append(disparity(gm.population_accuracy(w, b, mu, sigma))["gap"])
        xb, yb = gm.sample((20_000, 20_000), mu, sigma, 1, torch.Generator().manual_seed(2))
        wb, bb = gm.train_linear(xb, yb, eps, "linf")
        assert abs(float(bb)) < 0.03  # R = 1: no shift, no disparity
    assert gaps[0] < gaps[1] < gaps[2]
    assert gaps[2] == pytest.approx(gm.theory_gap(4, 0.6, "linf", mu, sigma, 1), abs=0.03)


@pytest.mark.parametrize("norm,eps", [("linf", 0.5), ("l2", 5.0)])
def test_theory_gap_is_the_gap_of_the_closed_form_classifier(gm, norm, eps):
    d, mu, sigma, ratio = 100, 1.25, 6.25, 10
    mu_eff = mu - (eps if norm == "linf" else eps / math.sqrt(d))
    w = torch.full((d,), 2 * mu_eff / sigma**2, dtype=torch.float64)
    b = torch.tensor(math.log(ratio), dtype=torch.float64)
    acc = gm.population_accuracy(w, b, mu, sigma)
    assert acc[0] - acc[1] == pytest.approx(gm.theory_gap(ratio, eps, norm, mu, sigma, d), abs=1e-12)
    # robust accuracy = accuracy on the data with the means moved eps towards the boundary
    rob = gm.population_accuracy(w, b, mu, sigma, eps, norm)
    same = gm.population_accuracy(w, b, mu_eff, sigma)
    assert rob == pytest.approx(same, abs=1e-12)


def test_population_accuracy_matches_a_large_sample(gm):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, generator=g, dtype=torch.float64).abs()
    b = torch.tensor(0.7, dtype=torch.float64)
    x, y = gm.sample((200_000, 200_000), 0.4, 1.5, 5, g)
    pred = (x @ w + b < 0).long()
    sampled = [float((pred[y == c] == c).double().mean()) for c in (0, 1)]
    assert sampled == pytest.approx(gm.population_accuracy(w, b, 0.4, 1.5), abs=0.004)
