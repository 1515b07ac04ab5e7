"""Threat-model geometry: exact L1 ∩ box projection, random starts, ascent directions."""

import math

import pytest
import torch
from scipy.optimize import minimize

from robustlab.attacks import ThreatModel, project_l1_box
from robustlab.attacks.threat import l1_sparse_direction
from robustlab.errors import ConfigError, EpsilonError


def bisection_projection(v, x, eps, lo=0.0, hi=1.0):
    """Independent reference: bisection (200 halvings, float64) on the multiplier lam of
    d_i = sign(v_i) clip(|v_i| - lam, 0, room_i), room_i the box room towards sign(v_i)."""
    v, x = v.double(), x.double()
    room = torch.where(v >= 0, hi - x, x - lo).clamp_min(0)
    box = torch.maximum(torch.minimum(v, hi - x), lo - x)
    if box.abs().sum() <= eps:
        return box
    a, b = 0.0, float(v.abs().max())
    for _ in range(200):
        lam = (a + b) / 2
        s = (v.abs() - lam).clamp(min=0).minimum(room).sum()
        a, b = (lam, b) if s > eps else (a, lam)
    return torch.sign(v) * (v.abs() - (a + b) / 2).clamp(min=0).minimum(room)


@pytest.mark.parametrize("seed", range(25))
def test_l1_projection_matches_bisection_reference(seed):
    g = torch.Generator().manual_seed(seed)
    d = int(torch.randint(1, 40, (1,), generator=g))
    x = torch.rand(1, d, generator=g, dtype=torch.float64)
    x[0, : d // 4] = 0.0  # points on the box's faces
    x[0, d // 4 : d // 3] = 1.0
    v = torch.randn(1, d, generator=g, dtype=torch.float64) * float(torch.rand(1, generator=g) * 2)
    eps = float(torch.rand(1, generator=g) * d * 0.3)
    got = project_l1_box(v, x, eps, (0.0, 1.0))[0]
    ref = bisection_projection(v[0], x[0], eps)
    assert torch.allclose(got, ref, atol=1e-9)
    assert got.abs().sum() <= eps + 1e-9
    assert ((x[0] + got) >= -1e-12).all() and ((x[0] + got) <= 1 + 1e-12).all()


@pytest.mark.parametrize("seed", range(6))
def test_l1_projection_is_the_closest_feasible_point_by_a_convex_solver(seed):
    g = torch.Generator().manual_seed(100 + seed)
    d = 5
    x = torch.rand(d, generator=g, dtype=torch.float64)
    v = torch.randn(d, generator=g, dtype=torch.float64)
    eps = 0.4
    got = project_l1_box(v[None], x[None], eps, (0.0, 1.0))[0].numpy()
    vn, xn = v.numpy(), x.numpy()
    # min ||d - v||^2 with d = p - q, p, q >= 0, sum(p + q) <= eps, 0 <= x + d <= 1
    cons = [
        {"type": "ineq", "fun": lambda z: eps - z.sum()},
        {"type": "ineq", "fun": lambda z: xn + z[:d] - z[d:]},
        {"type": "ineq", "fun": lambda z: 1 - xn - z[:d] + z[d:]},
    ]
    res = minimize(
        lambda z: ((z[:d] - z[d:] - vn) ** 2).sum(), x0=[0.0] * (2 * d),
        bounds=[(0, None)] * (2 * d), constraints=cons, method="SLSQP", options={"ftol": 1e-14, "maxiter": 500},
    )
    sol = res.x[:d] - res.x[d:]
    assert ((got - vn) ** 2).sum() <= ((sol - vn) ** 2).sum() + 1e-8
    assert abs(got - sol).max() < 1e-4


def test_l1_projection_keeps_feasible_points_and_handles_batches_and_zero_eps():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 2, 2, generator=g)
    inside = (torch.rand(6, 3, 2, 2, generator=g) - 0.5) * 0.05
    inside = (x + inside).clamp(0, 1) - x
    assert torch.allclose(project_l1_box(inside, x, 1.0, (0.0, 1.0)), inside)
    v = torch.randn(6, 3, 2, 2, generator=g)
    eps = torch.tensor([0.0, 0.1, 0.5, 1.0, 2.0, 100.0])
    p = project_l1_box(v, x, eps, (0.0, 1.0))
    norms = p.reshape(6, -1).abs().sum(1)
    assert norms[0] == 0 and (norms <= eps + 1e-5).all()
    # the largest budget only clips to the box
    assert torch.allclose(p[5], torch.maximum(torch.minimum(v[5], 1 - x[5]), -x[5]))
    # row by row equals the single-row projection
    for i in range(6):
        assert torch.allclose(p[i], project_l1_box(v[i : i + 1], x[i : i + 1], float(eps[i]), (0.0, 1.0))[0], atol=1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.7), ("l1", 2.0)])
@pytest.mark.parametrize("kind", ["uniform", "apgd"])
def test_random_starts_lie_in_ball_and_box_and_follow_the_generator(norm, eps, kind):
    t = ThreatModel(norm, eps)
    x = torch.rand(50, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    bounds = (0.0, 1.0)
    s1 = t.random_start(x, bounds, torch.Generator().manual_seed(5), kind=kind)
    s2 = t.random_start(x, bounds, torch.Generator().manual_seed(5), kind=kind)
    assert torch.equal(s1, s2)
    assert (t.norm_of(s1 - x) <= eps * (1 + 1e-5)).all()
    assert s1.min() >= 0 and s1.max() <= 1
    state = torch.random.get_rng_state()
    t.random_start(x, bounds, torch.Generator().manual_seed(5), kind=kind)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_apgd_start_is_on_the_sphere_away_from_the_box():
    x = torch.full((20, 48), 0.5)
    g = torch.Generator().manual_seed(0)
    for norm, eps in (("linf", 0.1), ("l2", 0.4)):
        s = ThreatModel(norm, eps).random_start(x, (0.0, 1.0), g, kind="apgd")
        assert torch.allclose(ThreatModel(norm, eps).norm_of(s - x), torch.full((20,), eps), atol=1e-5)


def test_uniform_l1_start_fills_the_ball():
    # uniform in the L1 ball of R^d: P(||delta||_1 <= r eps) = r^d
    d, eps = 3, 0.2
    x = torch.full((20000, d), 0.5)
    s = ThreatModel("l1", eps).random_start(x, (0.0, 1.0), torch.Generator().manual_seed(1))
    r = (s - x).abs().sum(1) / eps
    assert abs(float((r <= 0.5).float().mean()) - 0.5**d) < 0.01
    assert abs(float((s - x).mean())) < 0.005  # symmetric


def test_ascent_directions_have_unit_norm_and_the_right_sparsity():
    g = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ThreatModel("linf", 0.1).ascent_direction(g), g.sign())
    d2 = ThreatModel("l2", 0.1).ascent_direction(g)
    assert torch.allclose(d2.norm(dim=1), torch.ones(4))
    d1 = ThreatModel("l1", 1.0).ascent_direction(g, sparsity=0.1)
    assert torch.allclose(d1.abs().sum(1), torch.ones(4), atol=1e-6)
    # the official code keeps |g_i| >= the value at sorted index floor((1 - 0.1) * 100) = 90
    assert ((d1 != 0).sum(1) == 10).all()
    top = g.abs().topk(10, dim=1).indices
    assert torch.equal((d1 != 0), torch.zeros_like(d1, dtype=torch.bool).scatter(1, top, True))
    assert torch.equal(d1.sign()[d1 != 0], g.sign()[d1 != 0])


def test_l1_direction_respects_the_box():
    grad = torch.tensor([[5.0, -4.0, 3.0, 1.0]])
    x = torch.tensor([[1.0, 0.0, 0.5, 0.5]])  # the two largest entries push out of the box
    d = l1_sparse_direction(grad, 0.5, x=x, bounds=(0.0, 1.0))
    assert torch.allclose(d, torch.tensor([[0.0, 0.0, 0.5, 0.5]]))
    free = l1_sparse_direction(grad, 0.5)
    assert torch.allclose(free, torch.tensor([[0.5, -0.5, 0.0, 0.0]]))


def test_threat_model_checks():
    assert ThreatModel("L1", "12").norm == "l1" and ThreatModel("inf", "8/255").eps == pytest.approx(8 / 255)
    with pytest.raises(ConfigError, match="l1"):
        ThreatModel("l0", 1.0)
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(EpsilonError, match="diameter"):
        ThreatModel("l1", 49.0).check_fits(x, (0.0, 1.0))
    ThreatModel("l1", 48.0).check_fits(x, (0.0, 1.0))
    with pytest.raises(EpsilonError):
        ThreatModel("l2", math.sqrt(48) + 0.01).check_fits(x, (0.0, 1.0))
    assert ThreatModel("l2", 3.0).diameter(x, (-1.0, 1.0)) == pytest.approx(2 * math.sqrt(48))
    assert [t.eps for t in ThreatModel.grid("linf", ["1/255", 0.1])] == pytest.approx([1 / 255, 0.1])


def test_linf_projection_with_a_scalar_eps_is_bit_identical_to_the_per_sample_path():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 8, 8, generator=g)
    x_adv = x + 0.6 * (2 * torch.rand(20, 1, 8, 8, generator=g) - 1)
    threat = ThreatModel("linf", 0.3)
    scalar = threat.project(x_adv, x, (0.0, 1.0))
    per_sample = threat.project(x_adv, x, (0.0, 1.0), eps=torch.full((20,), 0.3))
    assert torch.equal(scalar, per_sample)
    assert float((scalar - x).abs().max()) <= 0.3 + 1e-7 and 0 <= float(scalar.min()) and float(scalar.max()) <= 1
