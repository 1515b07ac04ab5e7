"""Carlini-Wagner L2 against the exact minimal perturbation of binary linear models."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from torch import nn

import robustlab.attacks.cw  # noqa: F401  (registers cw-l2)
from robustlab.attacks import ThreatModel, create
from robustlab.errors import ConfigError


def binary_model(d, seed, bounds=(0.0, 1.0), scale=3.0):
    """A linear two-class model whose boundary passes near the centre of the box."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, 2)
    centre = (bounds[0] + bounds[1]) / 2
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g) * scale / math.sqrt(d))
        lin.bias.copy_(-lin.weight.sum(1) * centre + torch.randn(2, generator=g) * 0.1)
    if bounds != (0.0, 1.0):
        lin.input_bounds = bounds
    return lin


def margin_and_direction(lin, x, y):
    W, b = lin.weight.detach(), lin.bias.detach()
    a = W[1] - W[0]
    s = torch.where(y == 0, 1.0, -1.0)  # adversarial iff s * (a.z + b1 - b0) >= 0
    margin = -s * (x @ a + b[1] - b[0])  # > 0 for correctly classified points
    return margin, a


@pytest.fixture(scope="module")
def far_from_box():
    lin = binary_model(d=8, seed=5)
    x = 0.3 + 0.4 * torch.rand(120, 8, generator=torch.Generator().manual_seed(3))
    y = lin(x).argmax(1).detach()
    margin, a = margin_and_direction(lin, x, y)
    exact = margin / a.norm()  # the exact minimal L2 perturbation ...
    step = x + (torch.where(y == 0, 1.0, -1.0) * exact)[:, None] * a / a.norm()
    assert bool(((step > 0) & (step < 1)).all())  # ... the box is not active
    return lin, x, y, exact


def test_cw_finds_the_exact_minimal_perturbation(far_from_box):
    lin, x, y, exact = far_from_box
    eps = float(exact.max()) * 1.05  # every point can be broken
    res = create("cw-l2")(lin, x, y, ThreatModel("l2", eps), generator=torch.Generator().manual_seed(0))
    assert bool(res.success.all())
    norms = (res.x_adv - x).norm(dim=1)
    assert bool((norms >= exact * (1 - 1e-5)).all())  # an attack never beats the exact minimum
    # CW resolves the boundary up to Adam's step (lr = 5e-3 in tanh space, about 2.5e-3 per
    # coordinate in input space): within 1% wherever the minimum is well above that scale,
    # and within a fraction of one step everywhere
    clear = exact > 0.02
    assert clear.float().mean() > 0.8
    assert bool((norms[clear] <= exact[clear] * 1.01).all()), float((norms / exact)[clear].max())
    assert bool((norms - exact <= 1e-3).all())


def test_cw_success_within_eps_is_exactly_the_non_robust_points(far_from_box):
    lin, x, y, exact = far_from_box
    eps = float(exact.median())
    res = create("cw-l2", steps=500)(lin, x, y, ThreatModel("l2", eps), generator=torch.Generator().manual_seed(0))
    assert not bool(res.success[exact > eps].any())  # never succeeds beyond the exact minimum
    assert bool(res.success[exact * 1.01 < eps].all())  # and finds every clear case
    assert bool(((res.x_adv - x).norm(dim=1) <= eps * (1 + 1e-6)).all())
    # every pass is a gradient pass, except the template's clean and final checks
    assert res.backwards == res.forwards - 2 * len(x)


def test_cw_confidence_kappa_moves_the_result_past_the_boundary(far_from_box):
    lin, x, y, exact = far_from_box
    kappa = 0.5
    _, a = margin_and_direction(lin, x, y)
    target_dist = exact + kappa / a.norm()  # reach a logit margin of kappa on the other side
    eps = float(target_dist.max()) * 1.05
    res = create("cw-l2", kappa=kappa, steps=500)(lin, x[:40], y[:40], ThreatModel("l2", eps))
    z = lin(res.x_adv).detach()
    other = 1 - y[:40]
    achieved = z.gather(1, other[:, None]).squeeze(1) - z.gather(1, y[:40, None]).squeeze(1)
    assert bool(res.success.all()) and bool((achieved >= kappa - 1e-4).all())
    norms = (res.x_adv - x[:40]).norm(dim=1)
    assert bool((norms >= target_dist[:40] * (1 - 1e-5)).all())
    assert bool((norms <= target_dist[:40] * 1.01).all())


def test_cw_respects_the_models_own_bounds_and_never_beats_the_box_minimum():
    lo, hi = -1.0, 2.0
    lin = binary_model(d=6, seed=7, bounds=(lo, hi), scale=8.0)
    g = torch.Generator().manual_seed(8)
    x = lo + (hi - lo) * torch.rand(30, 6, generator=g)
    x[:, :2] = torch.where(x[:, :2] > 0.5, hi, lo)  # coordinates on the faces: the box is active
    y = lin(x).argmax(1).detach()
    margin, a = margin_and_direction(lin, x, y)
    exact = []
    for i in range(len(x)):
        v = (torch.where(y[i] == 0, 1.0, -1.0) * a).double().numpy()  # the direction that helps
        x0, need = x[i].double().numpy(), float(margin[i])

        def gap(lam, v=v, x0=x0, need=need):
            return v @ np.clip(lam * v, lo - x0, hi - x0) - need

        if gap(1e8) < 0:
            exact.append(math.inf)
            continue
        lam = brentq(gap, 0.0, 1e8, xtol=1e-300, rtol=4 * np.finfo(float).eps)
        exact.append(float(np.linalg.norm(np.clip(lam * v, lo - x0, hi - x0))))
    exact = torch.tensor(exact, dtype=torch.float64)
    eps = 3.0
    assert (exact < eps).sum() >= 10
    res = create("cw-l2", steps=500)(lin, x, y, ThreatModel("l2", eps), generator=torch.Generator().manual_seed(0))
    assert res.x_adv.min() >= lo and res.x_adv.max() <= hi
    norms = (res.x_adv - x).norm(dim=1).double()
    assert bool((norms[res.success] >= exact[res.success] * (1 - 1e-5)).all())
    assert bool(res.success[exact * 1.02 < eps].all())
    assert not bool(res.success[exact > eps].any())


def test_cw_targeted_reaches_the_target():
    g = torch.Generator().manual_seed(9)
    lin = nn.Linear(6, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 6, generator=g))
        lin.bias.copy_(-lin.weight.sum(1) * 0.5)
    x = 0.3 + 0.4 * torch.rand(30, 6, generator=g)
    y = lin(x).argmax(1).detach()
    target = (y + 1) % 3
    res = create("cw-l2", steps=200)(lin, x, y, ThreatModel("l2", 2.0), target=target)
    assert res.targeted and bool(res.success.all())
    assert torch.equal(lin(res.x_adv).argmax(1), target)


def test_cw_contract_on_images_and_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3)).double()
    model.train()
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    threat = ThreatModel("l2", 0.5)
    atk = create("cw-l2", steps=50, binary_search_steps=3)
    r1 = atk(model, x, y, threat, generator=torch.Generator().manual_seed(7))
    r2 = atk(model, x, y, threat, generator=torch.Generator().manual_seed(7))
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert r1.x_adv.dtype == torch.float64 and r1.x_adv.shape == x.shape
    assert torch.equal(r1.x_adv, r2.x_adv) and torch.equal(r1.success, r2.success)
    assert r1.x_adv.min() >= 0 and r1.x_adv.max() <= 1
    assert bool((threat.norm_of(r1.x_adv - x) <= 0.5 * (1 + 1e-9)).all())
    one = atk(model, x[:1], y[:1], threat)
    assert one.x_adv.shape == (1, 1, 4, 4)


def test_cw_bad_parameters_and_norms_are_refused():
    for bad in (dict(steps=0), dict(binary_search_steps=0), dict(initial_const=0.0),
                dict(initial_const=-1.0), dict(lr=0.0), dict(kappa=-0.1), dict(abort_early="no"),
                dict(steps=10.5), dict(lr=float("nan"))):
        with pytest.raises(ConfigError):
            create("cw-l2", **bad)
    lin = binary_model(d=4, seed=0)
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="norm"):
        create("cw-l2")(lin, x, lin(x).argmax(1), ThreatModel("linf", 0.1))
