"""FAB / FAB-T against exact minimal perturbations of linear models (closed form, LP)."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, linprog
from torch import nn

from robustlab.attacks import ThreatModel, create
from robustlab.attacks.fab import fab_min_norm, project_hyperplane_box
from robustlab.errors import ConfigError


def linear_model(d, k, seed, scale=3.0, bounds=(0.0, 1.0)):
    """A random linear classifier whose decision boundaries pass near the centre of the box."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    centre = (bounds[0] + bounds[1]) / 2
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g) * scale / math.sqrt(d))
        lin.bias.copy_(-lin.weight.sum(1) * centre + torch.randn(k, generator=g) * 0.1)
    if bounds != (0.0, 1.0):
        lin.input_bounds = bounds
    return lin


def exact_unboxed(lin, x, y, q):
    """min_j (z_y - z_j) / ||w_y - w_j||_q: the exact minimal perturbation in the dual-q
    geometry when the box is not active."""
    W = lin.weight.detach().double()
    z = lin(x).detach().double()
    diff = W[y][:, None, :] - W[None]  # (N, K, D)
    margin = z.gather(1, y[:, None]) - z
    dist = margin / diff.norm(p=q, dim=-1)
    dist[torch.arange(len(x)), y] = math.inf
    best, j = dist.min(1)
    return best, j


# -- exact references for "minimum norm step onto {a.z >= c} inside the box" ---------------
def lp_linf(a, c, x0, lo, hi):
    """min ||d||_inf  s.t.  a.(x0 + d) >= c,  lo <= x0 + d <= hi  (LP in (d, r))."""
    d = len(x0)
    cost = np.r_[np.zeros(d), 1.0]
    a_ub = np.vstack([np.c_[np.eye(d), -np.ones(d)], np.c_[-np.eye(d), -np.ones(d)], np.r_[-a, 0.0][None]])
    b_ub = np.r_[np.zeros(2 * d), a @ x0 - c]
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=list(zip(lo - x0, hi - x0, strict=True)) + [(0, None)])
    return res.fun if res.status == 0 else math.inf


def lp_l1(a, c, x0, lo, hi):
    """min ||d||_1  s.t.  a.(x0 + d) >= c, box  (LP with d = p - n, p, n >= 0)."""
    d = len(x0)
    res = linprog(
        np.ones(2 * d),
        A_ub=np.r_[-a, a][None],
        b_ub=[a @ x0 - c],
        bounds=[(0, max(h, 0)) for h in hi - x0] + [(0, max(-l_, 0)) for l_ in lo - x0],
    )
    return res.fun if res.status == 0 else math.inf


def kkt_l2(a, c, x0, lo, hi):
    """min ||d||_2  s.t.  a.(x0 + d) >= c, box: d = clip(lam * a, lo - x0, hi - x0) with the
    multiplier lam >= 0 found by root finding on the (monotone) dual."""
    need = c - a @ x0
    if need <= 0:
        return 0.0

    def gap(lam):
        return a @ np.clip(lam * a, lo - x0, hi - x0) - need

    if gap(1e8) < 0:
        return math.inf
    lam = brentq(gap, 0.0, 1e8, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    return float(np.linalg.norm(np.clip(lam * a, lo - x0, hi - x0)))


EXACT = {"linf": (lp_linf, np.inf), "l1": (lp_l1, 1), "l2": (kkt_l2, 2)}


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_hyperplane_box_projection_is_exact(norm):
    solver, p = EXACT[norm]
    g = torch.Generator().manual_seed(0)
    n, d = 40, 6
    t = torch.rand(n, d, generator=g, dtype=torch.float64)
    t[:, 0], t[:, 1] = 0.0, 1.0  # points on the box faces
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    w[:6, 2] = 0.0  # coordinates that cannot help
    b = (w * torch.rand(n, d, generator=g, dtype=torch.float64)).sum(1)  # planes that meet the box
    b[-4:] += 50.0  # planes out of reach
    lo, hi = -0.0, 1.0
    delta = project_hyperplane_box(t, w, b, (lo, hi), norm)
    z = t + delta
    assert z.min() >= lo - 1e-12 and z.max() <= hi + 1e-12
    assert torch.equal(delta[:6, 2], torch.zeros(6, dtype=torch.float64))  # w_i = 0 never moves
    for i in range(n):
        ti, wi, bi = t[i].numpy(), w[i].numpy(), float(b[i])
        # the plane <w, z> = b is the boundary of {s <w, z> >= s b} on the far side of t
        s = 1.0 if wi @ ti <= bi else -1.0
        exact = solver(s * wi, s * bi, ti, np.full(d, lo), np.full(d, hi))
        if math.isfinite(exact):
            assert float((w[i] * z[i]).sum()) == pytest.approx(bi, abs=1e-9)
            assert float(np.linalg.norm(delta[i].numpy(), p)) == pytest.approx(exact, rel=1e-7, abs=1e-10)
        else:  # unreachable: the box vertex closest to the plane
            vertex = np.where(s * wi > 0, hi, np.where(s * wi < 0, lo, ti))
            assert np.allclose(z[i].numpy(), vertex)


@pytest.mark.parametrize("targeted", [True, False])
@pytest.mark.parametrize("norm,q", [("l2", 2), ("linf", 1)])
def test_fab_finds_exact_minimal_perturbation_of_linear_model(targeted, norm, q):
    lin = linear_model(d=10, k=5, seed=0)
    x = 0.3 + 0.4 * torch.rand(150, 10, generator=torch.Generator().manual_seed(1))
    y = lin(x).argmax(1).detach()
    exact, j = exact_unboxed(lin, x, y, q)
    # the exact minimiser stays inside the box, so the box is not active
    W = lin.weight.detach().double()
    a = W[y] - W[j]
    step = -exact[:, None] * (a / a.norm(dim=1, keepdim=True) if q == 2 else a.sign())
    assert ((x.double() + step).min() > 0) and ((x.double() + step).max() < 1)
    found = fab_min_norm(lin, x, y, norm, targeted=targeted)
    ratio = found.norm.double() / exact
    assert bool((ratio >= 1 - 1e-5).all())  # never below the exact minimum
    assert bool((ratio <= 1.01).all()), float(ratio.max())  # within 1% for every point
    # the reported norm is the norm of an adversarial example that really fools the model
    assert torch.equal(lin(found.x_adv).argmax(1) != y, torch.ones(len(x), dtype=torch.bool))
    assert torch.allclose(ThreatModel(norm, 0.1).norm_of(found.x_adv - x), found.norm)


@pytest.mark.parametrize("targeted", [True, False])
def test_fab_l1_finds_exact_minimal_perturbation_of_linear_model(targeted):
    lin = linear_model(d=10, k=4, seed=2)
    x = 0.3 + 0.4 * torch.rand(100, 10, generator=torch.Generator().manual_seed(3))
    y = lin(x).argmax(1).detach()
    exact, _ = exact_unboxed(lin, x, y, math.inf)  # the L1 minimiser moves one coordinate
    keep = exact < 0.25  # ... by less than its distance to the box
    assert keep.sum() > 30
    found = fab_min_norm(lin, x[keep], y[keep], "l1", targeted=targeted)
    ratio = found.norm.double() / exact[keep]
    assert bool((ratio >= 1 - 1e-5).all()) and bool((ratio <= 1.01).all())


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fab_never_beats_the_exact_box_constrained_minimum(bounds, norm):
    lo, hi = bounds
    lin = linear_model(d=8, k=2, seed=4, scale=6.0, bounds=bounds)
    g = torch.Generator().manual_seed(5)
    x = lo + (hi - lo) * torch.rand(24, 8, generator=g)
    x[:, :3] = torch.where(x[:, :3] > (lo + hi) / 2, hi, lo)  # many coordinates on the faces
    y = lin(x).argmax(1).detach()
    W, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    solver, _ = EXACT[norm]
    exact = []
    for i in range(len(x)):
        yi = int(y[i])
        a = W[1 - yi] - W[yi]  # adversarial iff a.z + (b_o - b_y) >= 0
        exact.append(solver(a, b[yi] - b[1 - yi], x[i].double().numpy(), np.full(8, lo), np.full(8, hi)))
    exact = torch.tensor(exact, dtype=torch.float64)
    assert torch.isfinite(exact).sum() >= 12
    found = fab_min_norm(lin, x, y, norm, targeted=False).norm.double()
    reachable = torch.isfinite(exact)
    assert bool((found[reachable] >= exact[reachable] * (1 - 1e-5)).all())  # the law
    assert bool((found[reachable] <= exact[reachable] * 1.02).all())  # and FAB gets close
    assert bool(torch.isinf(found[~reachable]).all())  # nothing found where nothing exists


@pytest.mark.parametrize("name", ["fab", "fab-t"])
@pytest.mark.parametrize("norm,q,eps", [("l2", 2, 0.05), ("linf", 1, 0.02)])
def test_fab_success_within_eps_follows_the_exact_minimum(name, norm, q, eps):
    lin = linear_model(d=10, k=4, seed=6)
    x = 0.3 + 0.4 * torch.rand(200, 10, generator=torch.Generator().manual_seed(7))
    y = lin(x).argmax(1).detach()
    y[:10] = (y[:10] + 1) % 4  # clean errors count as broken without work
    exact, _ = exact_unboxed(lin, x, y, q)
    exact[:10] = 0.0
    res = create(name)(lin, x, y, ThreatModel(norm, eps), generator=torch.Generator().manual_seed(0))
    clear = (exact * 1.01 < eps) | (exact > eps)
    assert 0.2 < (exact <= eps).float().mean() < 0.8  # a non-trivial case
    assert torch.equal(res.success[clear], (exact <= eps)[clear])
    assert bool((ThreatModel(norm, eps).norm_of(res.x_adv - x) <= eps * (1 + 1e-6)).all())
    # unbroken points are returned unchanged (as the official code does)
    assert torch.equal(res.x_adv[~res.success], x[~res.success])
    # what the attack returns for broken points is never below the exact minimum
    size = ThreatModel(norm, 1.0).norm_of(res.x_adv - x).double()
    attacked = res.success.clone()
    attacked[:10] = False
    assert bool((size[attacked] >= exact[attacked] * (1 - 1e-5)).all())


def test_fab_targeted_call_reaches_the_target_and_never_beats_the_lp_minimum():
    lin = linear_model(d=6, k=3, seed=8)
    x = 0.4 + 0.2 * torch.rand(40, 6, generator=torch.Generator().manual_seed(9))
    y = lin(x).argmax(1).detach()
    target = (y + 1) % 3
    W, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    exact = []
    for i in range(len(x)):
        t, x0 = int(target[i]), x[i].double().numpy()
        others = [j for j in range(3) if j != t]
        # min r s.t. |d_i| <= r, box, (w_t - w_j).(x0 + d) + b_t - b_j >= 0 for all j != t
        a_ub = np.vstack(
            [np.c_[np.eye(6), -np.ones(6)], np.c_[-np.eye(6), -np.ones(6)]]
            + [np.r_[-(W[t] - W[j]), 0.0][None] for j in others]
        )
        b_ub = np.r_[np.zeros(12), [(W[t] - W[j]) @ x0 + b[t] - b[j] for j in others]]
        res = linprog(np.r_[np.zeros(6), 1.0], A_ub=a_ub, b_ub=b_ub,
                      bounds=list(zip(-x0, 1 - x0, strict=True)) + [(0, None)])
        exact.append(res.fun)
    exact = torch.tensor(exact)
    found = fab_min_norm(lin, x, y, "linf", target=target)
    ratio = found.norm.double() / exact
    assert bool((ratio >= 1 - 1e-5).all())  # the law
    # the target's region is an intersection of half-spaces: FAB steps to one boundary at a
    # time, exact when one constraint is active at the optimum (most points), not at corners
    assert (ratio <= 1.01).float().mean() >= 0.9 and bool((ratio <= 1.25).all())
    hit = torch.isfinite(found.norm)
    assert torch.equal(lin(found.x_adv[hit]).argmax(1), target[hit])
    eps = float(exact.median())
    res = create("fab-t")(lin, x, y, ThreatModel("linf", eps), target=target,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(lin(res.x_adv).argmax(1) == target, res.success)
    assert not bool((res.success & (exact > eps)).any())
    assert bool(res.success[exact * 1.25 < eps].all())


def test_fab_pass_counts():
    lin = linear_model(d=5, k=4, seed=10)
    x = 0.4 + 0.2 * torch.rand(7, 5, generator=torch.Generator().manual_seed(11))
    y = lin(x).argmax(1).detach()
    n, k, iters = len(x), 4, 3
    tgt = fab_min_norm(lin, x, y, "l2", targeted=True, n_target_classes=2, n_iter=iters)
    # clean pass + target ranking + per target and iteration: gradient pass + check pass
    assert tgt.forwards == n + n + 2 * iters * 2 * n
    assert tgt.backwards == 2 * iters * n  # one gradient per point per iteration
    unt = fab_min_norm(lin, x, y, "l2", targeted=False, n_iter=iters)
    assert unt.forwards == n + iters * 2 * n
    assert unt.backwards == iters * k * n  # one gradient per class: the Jacobian


def test_fab_targets_are_capped_by_the_number_of_classes():
    lin = linear_model(d=5, k=3, seed=12)
    x = 0.4 + 0.2 * torch.rand(6, 5, generator=torch.Generator().manual_seed(13))
    y = lin(x).argmax(1).detach()
    capped = fab_min_norm(lin, x, y, "l2", n_target_classes=9, n_iter=2)
    two = fab_min_norm(lin, x, y, "l2", n_target_classes=2, n_iter=2)
    assert capped.forwards == two.forwards and torch.equal(capped.norm, two.norm)


def test_fab_restarts_only_improve_and_are_deterministic():
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p, std=1.0)
    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(14))
    y = model(x).argmax(1).detach()
    state = torch.get_rng_state()
    one = fab_min_norm(model, x, y, "l2", targeted=False, n_iter=20)
    three = fab_min_norm(model, x, y, "l2", targeted=False, n_iter=20, n_restarts=3,
                         generator=torch.Generator().manual_seed(1))
    again = fab_min_norm(model, x, y, "l2", targeted=False, n_iter=20, n_restarts=3,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never used
    assert bool((three.norm <= one.norm).all())  # the first run is the same; later ones only help
    assert torch.equal(three.x_adv, again.x_adv) and torch.equal(three.norm, again.norm)


@pytest.mark.parametrize("name", ["fab", "fab-t"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_fab_contract_on_images_and_float64(name, norm, eps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3)).double()
    model.train()
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    threat = ThreatModel(norm, eps)
    atk = create(name, n_iter=10, n_restarts=2)
    r1 = atk(model, x, y, threat, generator=torch.Generator().manual_seed(7))
    r2 = atk(model, x, y, threat, generator=torch.Generator().manual_seed(7))
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert r1.x_adv.dtype == torch.float64 and r1.x_adv.shape == x.shape
    assert torch.equal(r1.x_adv, r2.x_adv) and torch.equal(r1.success, r2.success)
    assert r1.x_adv.min() >= 0 and r1.x_adv.max() <= 1
    assert bool((threat.norm_of(r1.x_adv - x) <= eps * (1 + 1e-9)).all())
    one = atk(model, x[:1], y[:1], threat, generator=torch.Generator().manual_seed(7))
    assert one.x_adv.shape == (1, 1, 4, 4)


def test_fab_bad_parameters_are_refused():
    for bad in (dict(n_iter=0), dict(n_restarts=0), dict(eta=0.0), dict(beta=1.5), dict(beta=0.0),
                dict(alpha_max=-0.1), dict(alpha_max=2.0), dict(n_iter=2.5), dict(eta="big")):
        with pytest.raises(ConfigError):
            create("fab", **bad)
    with pytest.raises(ConfigError):
        create("fab-t", n_target_classes=0)
    with pytest.raises(ConfigError):
        create("fab", n_target_classes=3)  # only the targeted version takes targets
    lin = linear_model(d=4, k=3, seed=0)
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="norm"):
        fab_min_norm(lin, x, lin(x).argmax(1), "l3")
    with pytest.raises(ConfigError, match="norm"):
        project_hyperplane_box(x, x, x.sum(1), (0.0, 1.0), "l3")


def sorted_breakpoint_projection(t, w, b, lo, hi, norm):
    """The projection written the textbook way, row by row in numpy: sort the breakpoints of
    the piecewise-linear h and walk them (what the official ``fab_projections.py`` and
    robustlab's FAB did before the Newton steps)."""
    out = np.zeros_like(t)
    for i in range(len(t)):
        ti, wi = t[i], w[i]
        c = wi @ ti - b[i]
        u = wi if c >= 0 else -wi
        au = np.abs(u)
        cap = np.where(u > 0, ti - lo, np.where(u < 0, hi - ti, 0.0)).clip(min=0)
        gap = abs(c)
        if (au * cap).sum() < gap:
            m = cap
        else:
            moving = au > 0
            brk = np.where(moving, cap / np.where(moving, au, 1.0), 0.0) if norm == "l2" else cap
            slope = au * au if norm == "l2" else au
            s = 0.0
            for k in np.argsort(brk, kind="stable"):
                capped = (au * cap)[brk <= brk[k]].sum()
                rest = slope[brk > brk[k]].sum()
                if capped + brk[k] * rest >= gap:  # the root lies at or below this breakpoint
                    below = brk < brk[k]
                    s = (gap - (au * cap)[below].sum()) / slope[~below].sum()
                    break
            m = np.minimum(s * au if norm == "l2" else s, cap)
        out[i] = -np.sign(u) * m
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_newton_projection_equals_the_sorted_breakpoint_walk(norm, dtype):
    g = torch.Generator().manual_seed(3)
    n, d = 64, 49
    # MNIST-like rows: most coordinates exactly on a face (ties among the breakpoints)
    t = (torch.rand(n, d, generator=g) > 0.7).to(torch.float64)
    t[n // 2:] = torch.rand(n - n // 2, d, generator=g, dtype=torch.float64)  # and generic rows
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    w[:8, :10] = 0.0  # coordinates that cannot help
    b = (w * torch.rand(n, d, generator=g, dtype=torch.float64)).sum(1)
    b[-3:] += 100.0  # out of reach: every coordinate to its cap
    b[5] = (w[5] * t[5]).sum()  # already on the plane: no move
    ours = project_hyperplane_box(t.to(dtype), w.to(dtype), b.to(dtype), (0.0, 1.0), norm).double()
    ref = torch.from_numpy(sorted_breakpoint_projection(t.numpy(), w.numpy(), b.numpy(), 0.0, 1.0, norm))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert torch.allclose(ours, ref, rtol=tol, atol=tol)
    if dtype == torch.float64:  # on the plane (in float32 the cast moves it off by ~1e-8)
        assert not bool(ours[5].any())


def test_piecewise_linear_root_is_exact_on_a_hand_example():
    from robustlab.attacks.fab import _piecewise_linear_root

    # h(s) = min(s, 1) + 2 min(s, 3) + min(s, 10): slope 4 up to 1, 3 up to 3, 1 after
    brk = torch.tensor([[1.0, 3.0, 10.0]], dtype=torch.float64)
    slope = torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64)
    rc = slope * brk
    for gap, root in [(2.0, 0.5), (4.0, 1.0), (7.0, 2.0), (12.0, 5.0), (0.0, 0.0)]:
        s = _piecewise_linear_root(brk, slope, rc, torch.tensor([gap], dtype=torch.float64), 1e-300)
        assert float(s) == pytest.approx(root, abs=1e-12)
