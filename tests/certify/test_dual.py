"""Dual randomized smoothing (Xia et al. 2024): the split, the tight radius, and certify.

The oracle: a linear base classifier ``f(z) = [w.z + b > 0]`` smoothed with N(0, sigma^2 I)
has the closed-form probability ``Phi((w.z + b) / (sigma ||w||))`` of class 1, so the dual
classifier's averaged probability -- and the exact worst-case perturbation -- are known
without sampling.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from robustlab.certify import stats
from robustlab.certify.dual import (
    DualCertificates,
    DualSmooth,
    dual_radius,
    merge_halves,
    split_halves,
)
from robustlab.certify.smoothing import Certificates, image_seeds, sample_counts
from robustlab.errors import ConfigError, InvalidInputError, NonFiniteInputError

torch.set_num_threads(1)

SIGMA = 0.25


class LinearHalf(nn.Module):
    """Class 1 when ``w.z + b > 0``, else class 0, on a flattened sub-image."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone(), requires_grad=False)
        self.b = float(b)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = z.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


def exact_probit(w: torch.Tensor, b: float, z: torch.Tensor) -> np.ndarray:
    """``Phi^-1`` of the smoothed probability of class 1: ``(w.z + b) / (sigma ||w||)``, per row."""
    w64 = w.flatten().double()
    return ((z.flatten(1).double() @ w64 + b) / (SIGMA * w64.norm())).numpy()


def averaged_p1(halves: list[tuple[torch.Tensor, float]], x: torch.Tensor) -> np.ndarray:
    """The dual classifier's exact averaged smoothed probability of class 1 at images ``x``."""
    subs = split_halves(x.double())
    return np.mean([norm.cdf(exact_probit(w, b, z)) for (w, b), z in zip(halves, subs, strict=True)], axis=0)


def bias_for(w: torch.Tensor, z: torch.Tensor, probit: float) -> float:
    """The bias that puts ``Phi^-1(p_1(z))`` at ``probit`` for the linear half ``w``."""
    w64 = w.flatten().double()
    return float(probit * SIGMA * w64.norm() - z.flatten().double() @ w64)


def directions(halves: list[tuple[torch.Tensor, float]], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit images along ``w_l`` (left pixels only) and along ``w_r`` (right pixels only)."""
    (w_l, _), (w_r, _) = halves
    zero = torch.zeros((1, *shape), dtype=torch.float64)
    u_l = merge_halves((w_l.double() / w_l.double().norm()).reshape(1, *shape), zero)
    u_r = merge_halves(zero, (w_r.double() / w_r.double().norm()).reshape(1, *shape))
    return u_l, u_r


def worst_case(halves: list[tuple[torch.Tensor, float]], rho: float, theta: float | np.ndarray,
               shape: tuple[int, ...]) -> torch.Tensor:
    """The 2-D worst case, as images (one per ``theta``): ``rho cos(theta)`` against ``w_l`` on
    the left pixels, ``rho sin(theta)`` against ``w_r`` on the right pixels."""
    u_l, u_r = directions(halves, shape)
    t = torch.as_tensor(np.atleast_1d(theta), dtype=torch.float64)[:, None, None, None]
    return -rho * (torch.cos(t) * u_l + torch.sin(t) * u_r)


def test_split_halves_is_the_documented_checkerboard_and_a_partition() -> None:
    for h, w in ((4, 6), (3, 2), (5, 8)):
        x = torch.arange(2 * 3 * h * w, dtype=torch.float64).reshape(2, 3, h, w)
        left, right = split_halves(x)
        assert left.shape == right.shape == (2, 3, h, w // 2)
        for r in range(h):
            for c in range(w):
                side = left if (r + c) % 2 == 0 else right
                assert torch.equal(side[:, :, r, c // 2], x[:, :, r, c])  # documented pixel, every channel
        values = torch.cat([left.flatten(), right.flatten()])
        assert torch.equal(values.sort().values, x.flatten())  # disjoint and covering: a partition
        assert torch.equal(merge_halves(left, right), x)


def test_split_halves_refuses_what_it_cannot_split() -> None:
    with pytest.raises(InvalidInputError, match="even"):
        split_halves(torch.zeros(1, 1, 4, 5))
    with pytest.raises(InvalidInputError, match=r"\(N, C, H, W\)"):
        split_halves(torch.zeros(4, 6))
    with pytest.raises(InvalidInputError, match="same shape"):
        merge_halves(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))


def test_dual_radius_on_hand_values() -> None:
    assert float(dual_radius(1.0, 0.0)) == pytest.approx(1 / math.sqrt(2))  # not sqrt(1 + 0) = 1
    assert float(dual_radius(1.0, 1.0)) == pytest.approx(math.sqrt(2))  # R_l = R_r: both formulas agree
    assert float(dual_radius(2.0, -1.0)) == pytest.approx(1 / math.sqrt(2))  # a half against c_A counts
    assert float(dual_radius(-1.0, 0.5)) < 0  # averaged p_A below 1/2: nothing to certify
    assert np.allclose(dual_radius(np.array([0.3, 2.0]), np.array([0.1, 0.0])), [0.4 / math.sqrt(2), math.sqrt(2)])


def test_root_sum_square_is_broken_where_the_dual_radius_holds_on_linear_halves() -> None:
    g = torch.Generator().manual_seed(0)
    shape = (1, 6, 3)  # each half of a 1x6x6 image
    broken_public = 0
    for _ in range(200):
        x = torch.rand((1, 1, 6, 6), generator=g, dtype=torch.float64)
        x_l, x_r = split_halves(x)
        a, b = (torch.rand(2, generator=g, dtype=torch.float64) * 3.0 + 0.05).tolist()
        halves = []
        for sub, probit in ((x_l, a), (x_r, b)):
            w = torch.randn(shape, generator=g, dtype=torch.float64)
            halves.append((w, bias_for(w, sub, probit)))
        r_l, r_r = SIGMA * a, SIGMA * b
        ours = float(dual_radius(r_l, r_r))
        public = math.hypot(r_l, r_r)
        assert public > ours > 0
        assert averaged_p1(halves, x)[0] > 0.5
        # (1) between the two radii, the 2-D worst case (equal split) flips g: the public radius is too large
        rho = 0.5 * (ours + public)
        delta = worst_case(halves, rho, math.pi / 4, shape)
        assert float(delta.norm()) == pytest.approx(rho)
        assert averaged_p1(halves, x + delta)[0] < 0.5
        broken_public += 1
        # (2) inside ours, no split of the budget over the halves flips g, nor does any random direction
        inside = ours * (1 - 1e-6)
        thetas = np.linspace(0.0, 2 * math.pi, 721)
        assert (averaged_p1(halves, x + worst_case(halves, inside, thetas, shape)) > 0.5).all()
        d = torch.randn((64, 1, 6, 6), generator=g, dtype=torch.float64)
        d = d / d.flatten(1).norm(dim=1)[:, None, None, None] * inside
        assert (averaged_p1(halves, x + d) > 0.5).all()
        # (3) ours is tight: just beyond it, the equal split flips g
        assert averaged_p1(halves, x + worst_case(halves, ours * (1 + 1e-6), math.pi / 4, shape))[0] < 0.5
    assert broken_public == 200


def _linear_pair(probits: list[tuple[float, float]], g: torch.Generator):
    """Images (1x4x4) and one pair of linear halves per image giving exactly ``probits``."""
    x = torch.rand((len(probits), 1, 4, 4), generator=g)
    x_l, x_r = split_halves(x)
    w_l = torch.randn((1, 4, 2), generator=g)
    w_r = torch.randn((1, 4, 2), generator=g)
    pairs = []
    for i, (a, b) in enumerate(probits):
        pairs.append(((w_l, bias_for(w_l, x_l[i], a)), (w_r, bias_for(w_r, x_r[i], b))))
    return x, pairs


def test_certified_radius_is_never_broken_and_the_public_radius_is() -> None:
    g = torch.Generator().manual_seed(1)
    probits = [(2.5, -0.3), (2.0, 0.2), (1.2, 1.2), (3.0, 0.0), (-1.0, 0.4)]
    x, pairs = _linear_pair(probits, g)
    n, alpha = 20_000, 0.001
    public_broken = []
    for i, ((wb_l, wb_r), (a, b)) in enumerate(zip(pairs, probits, strict=True)):
        dual = DualSmooth(LinearHalf(*wb_l), LinearHalf(*wb_r), num_classes=2, sigma=SIGMA)
        cert = dual.certify(x[i : i + 1], n0=100, n=n, alpha=alpha, seed=i)
        assert isinstance(cert, Certificates) and isinstance(cert, DualCertificates)
        c, r = int(cert.predict[0]), float(cert.radius[0])
        exact = float(averaged_p1([wb_l, wb_r], x[i : i + 1].double())[0])
        assert exact == pytest.approx((norm.cdf(a) + norm.cdf(b)) / 2)
        sign = 1.0 if c == 1 else -1.0
        assert c != -1, "every point here has an averaged p_A far from 1/2"
        assert sign * (exact - 0.5) > 0  # the certified class is g(x)
        tight = SIGMA * sign * (a + b) / math.sqrt(2)
        assert 0 < r <= tight  # never more than the exact robust radius
        # the exact worst case at the certified radius leaves g unchanged
        delta = worst_case([wb_l, wb_r], sign * r, math.pi / 4, (1, 4, 2)).float()
        moved = float(averaged_p1([wb_l, wb_r], (x[i : i + 1] + delta).double())[0])
        assert sign * (moved - 0.5) >= 0
        # the public formula from the same counts (each half at alpha, negative halves set to 0)
        r_half = [max(float(stats.radius(stats.lower_confidence_bound(int(k), n, alpha), SIGMA)), 0.0)
                  for k in cert.count_halves[0]]
        public = math.hypot(*r_half)
        delta = worst_case([wb_l, wb_r], sign * public, math.pi / 4, (1, 4, 2)).float()
        if sign * (float(averaged_p1([wb_l, wb_r], (x[i : i + 1] + delta).double())[0]) - 0.5) < 0:
            public_broken.append(i)
    # unequal halves: sqrt(R_l^2 + R_r^2) (negative halves set to 0) exceeds the exact radius
    # sigma |a + b| / sqrt(2) by far more than the sampling error; equal halves (1.2, 1.2): it does not
    assert public_broken == [0, 1, 3, 4]


def test_each_half_is_bounded_at_half_alpha() -> None:
    g = torch.Generator().manual_seed(2)
    x, pairs = _linear_pair([(0.8, 0.3), (1.5, -0.2)], g)
    (wb_l, wb_r) = pairs[0]
    model_l, model_r = LinearHalf(*wb_l), LinearHalf(*wb_r)
    dual = DualSmooth(model_l, model_r, num_classes=2, sigma=SIGMA)
    n, alpha = 3_000, 0.01
    cert = dual.certify(x, n0=64, n=n, alpha=alpha, seed=7)
    # the estimation counts are sample_counts of each sub-image on its own stream
    seeds = image_seeds(len(x), seed=7)
    x_l, x_r = split_halves(x)
    for col, (model, half, side) in enumerate(((model_l, x_l, "left"), (model_r, x_r, "right"))):
        counts = sample_counts(model, half, sigma=SIGMA, n=n, num_classes=2, seeds=seeds, stream=f"estimate-{side}")
        c_a = cert.predict.clamp(min=0)
        assert torch.equal(cert.count_halves[:, col], counts.gather(1, c_a[:, None]).squeeze(1))
    k = cert.count_halves.numpy()
    expected = stats.lower_confidence_bound(k, n, alpha / 2)
    assert np.array_equal(cert.p_lower_halves.numpy(), expected)
    assert not np.allclose(cert.p_lower_halves.numpy(), stats.lower_confidence_bound(k, n, alpha))
    probit = norm.ppf(expected)
    assert np.allclose(cert.radius.numpy(), np.where(probit.sum(1) > 0, SIGMA * probit.sum(1) / math.sqrt(2), 0.0))
    assert torch.equal(cert.count, cert.count_halves.sum(1))
    assert torch.allclose(cert.p_lower, cert.p_lower_halves.mean(1))


def test_same_seed_same_certificates_and_independent_half_streams() -> None:
    g = torch.Generator().manual_seed(3)
    half = torch.rand((3, 1, 4, 2), generator=g)
    x = merge_halves(half, half)  # both sub-images identical
    w = torch.randn((1, 4, 2), generator=g)
    model = LinearHalf(w, bias_for(w, half[0], 0.0))
    model.train()
    dual = DualSmooth(model, model, num_classes=2, sigma=SIGMA)

    def run(**kw):
        return dual.certify(x, n0=50, n=1_000, alpha=0.01, batch_size=128, **kw)

    a, b = run(seed=11), run(seed=11)
    for field in ("predict", "radius", "p_lower", "count", "p_lower_halves", "count_halves"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    c = run(generator=torch.Generator().manual_seed(5))
    d = run(generator=torch.Generator().manual_seed(5))
    assert torch.equal(c.count_halves, d.count_halves) and torch.equal(c.radius, d.radius)
    e = run(seeds=image_seeds(3, seed=11))
    assert torch.equal(e.count_halves, a.count_halves)
    # same model, same sub-image, p = 1/2 for image 0: only the noise streams tell the halves apart
    assert int(a.count_halves[0, 0]) != int(a.count_halves[0, 1])
    assert model.training  # the caller's mode is restored


def test_bad_input_raises_typed_errors() -> None:
    w = torch.ones(1, 4, 2)
    model = LinearHalf(w, 0.0)
    x = torch.full((1, 1, 4, 4), 0.5)
    with pytest.raises(ConfigError, match="sigma"):
        DualSmooth(model, model, num_classes=2, sigma=0.0)
    with pytest.raises(ConfigError, match="num_classes"):
        DualSmooth(model, model, num_classes=1, sigma=SIGMA)
    dual = DualSmooth(model, model, num_classes=2, sigma=SIGMA)
    with pytest.raises(ConfigError, match="alpha"):
        dual.certify(x, alpha=1.5)
    with pytest.raises(ConfigError, match="n >= "):
        dual.certify(x, n0=10, n=10, alpha=0.001)
    with pytest.raises(ConfigError, match="batch_size"):
        dual.certify(x, n0=10, n=100, batch_size="big")
    with pytest.raises(ConfigError, match="not several"):
        dual.certify(x, n0=10, n=100, seed=0, seeds=[1])
    with pytest.raises(InvalidInputError, match="one seed per image"):
        dual.certify(x, n0=10, n=100, seeds=[1, 2])
    with pytest.raises(InvalidInputError, match="even"):
        dual.certify(torch.full((1, 1, 4, 5), 0.5), n0=10, n=100)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        dual.certify(x * 3, n0=10, n=100)
    with pytest.raises(NonFiniteInputError):
        dual.certify(torch.full((1, 1, 4, 4), float("nan")), n0=10, n=100)
    with pytest.raises(InvalidInputError, match="empty"):
        dual.certify(torch.zeros(0, 1, 4, 4), n0=10, n=100)
