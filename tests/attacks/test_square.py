"""Square Attack: gradient-free, budget-bound, and strong on linear models (closed-form truths)."""

import math

import pytest
import torch
from torch import nn

import robustlab.attacks.square  # noqa: F401  (registers square)
from robustlab.attacks import ThreatModel, create
from robustlab.attacks.square import p_selection
from robustlab.errors import ConfigError


def linear_model(d, k, seed, scale=3.0):
    """A random linear classifier whose boundaries pass near the centre of [0, 1]^d."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g) * scale / math.sqrt(d))
        lin.bias.copy_(-lin.weight.sum(1) * 0.5 + torch.randn(k, generator=g) * 0.1)
    return lin


class Recorder(nn.Module):
    """Wraps a model; records every batch it sees and fails if a gradient could flow."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[torch.Tensor] = []

    def forward(self, x):
        assert not torch.is_grad_enabled() and not x.requires_grad, "Square must not use gradients"
        self.batches.append(x.detach().clone())
        return self.inner(x)


def exact_linf_robust(lin, x, y, eps):
    """Box-clipped L-inf ball: robust iff every pairwise margin stays positive at the
    coordinate-wise minimiser."""
    W, b = lin.weight.detach(), lin.bias.detach()
    robust = lin(x).argmax(1) == y
    for j in range(W.shape[0]):
        a = W[y] - W[j]
        x_star = torch.where(a > 0, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
        robust &= ((a * x_star).sum(1) + b[y] - b[j] > 0) | (y == j)
    return robust


def exact_l2_distance(lin, x, y):
    """min_j (z_y - z_j)/||w_y - w_j||_2 and whether that minimiser stays in the box."""
    W = lin.weight.detach()
    z = lin(x).detach()
    diff = W[y][:, None, :] - W[None]
    dist = (z.gather(1, y[:, None]) - z) / diff.norm(dim=-1).clamp_min(1e-12)
    dist[torch.arange(len(x)), y] = math.inf
    best, j = dist.min(1)
    a = W[y] - W[j]
    x_star = x - best[:, None] * a / a.norm(dim=1, keepdim=True)
    return best, (x_star >= 0).all(1) & (x_star <= 1).all(1)


def test_p_schedule_matches_the_official_thresholds():
    p0 = 0.8
    expected = {0: p0, 10: p0, 11: p0 / 2, 50: p0 / 2, 51: p0 / 4, 200: p0 / 4, 201: p0 / 8,
                500: p0 / 8, 501: p0 / 16, 1001: p0 / 32, 2001: p0 / 64, 4001: p0 / 128,
                6001: p0 / 256, 8000: p0 / 256, 8001: p0 / 512, 9999: p0 / 512}
    for it, p in expected.items():
        assert p_selection(p0, it, 10000) == pytest.approx(p)
    # rescaled to 5000 queries: iteration i behaves like 2i of a 10,000-query run
    assert p_selection(p0, 5, 5000) == pytest.approx(p0)
    assert p_selection(p0, 6, 5000) == pytest.approx(p0 / 2)
    assert p_selection(p0, 4001, 5000) == pytest.approx(p0 / 512)
    assert p_selection(p0, 6, 5000, rescale=False) == pytest.approx(p0)


def test_linf_breaks_every_clearly_non_robust_point_without_gradients():
    lin = linear_model(d=12, k=4, seed=0)
    x = torch.rand(200, 12, generator=torch.Generator().manual_seed(1))
    y = lin(x).argmax(1).detach()
    eps = 0.06
    robust_at_eps = exact_linf_robust(lin, x, y, eps)
    robust_at_half = exact_linf_robust(lin, x, y, eps / 2)
    assert 0.2 < (~robust_at_half).float().mean() and robust_at_eps.float().mean() > 0.2
    rec = Recorder(lin)
    res = create("square", n_queries=300)(rec, x, y, ThreatModel("linf", eps),
                                          generator=torch.Generator().manual_seed(0))
    assert res.backwards == 0
    assert bool(res.success[~robust_at_half].all())  # every point non-robust by a wide margin
    assert not bool((res.success & robust_at_eps).any())  # and never a robust one
    assert (res.x_adv - x).abs().max() <= eps + 1e-7 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_l2_breaks_every_clearly_non_robust_point():
    lin = linear_model(d=12, k=4, seed=2)
    x = 0.3 + 0.4 * torch.rand(200, 12, generator=torch.Generator().manual_seed(3))
    y = lin(x).argmax(1).detach()
    dist, inside = exact_l2_distance(lin, x, y)
    assert bool(inside.all())  # the box is not active: dist is the exact minimum
    eps = 0.1
    assert 0.2 < (dist < eps / 2).float().mean() and (dist > eps).float().mean() > 0.2
    res = create("square", n_queries=500)(lin, x, y, ThreatModel("l2", eps),
                                          generator=torch.Generator().manual_seed(0))
    assert bool(res.success[dist < eps / 2].all())
    assert not bool(res.success[dist > eps].any())
    assert bool(((res.x_adv - x).norm(dim=1) <= eps * (1 + 1e-6)).all())


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.2)])
def test_queries_never_exceed_the_budget(norm, eps):
    lin = linear_model(d=16, k=3, seed=4)
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    model = nn.Sequential(nn.Flatten(), lin)
    y = model(x).argmax(1).detach()
    n_queries, restarts = 50, 2
    res = create("square", n_queries=n_queries, n_restarts=restarts)(
        model, x, y, ThreatModel(norm, eps), generator=torch.Generator().manual_seed(0))
    # per point: the template's clean and final passes + per restart one start and n_queries
    assert res.forwards <= len(x) * (2 + restarts * (n_queries + 1))
    assert 0 < res.success.sum() < len(x)
    # a point that is never broken uses the whole budget, no more
    tiny = create("square", n_queries=n_queries)(
        model, x, y, ThreatModel(norm, 1e-6), generator=torch.Generator().manual_seed(0))
    assert not bool(tiny.success.any())
    assert tiny.forwards == len(x) * (2 + n_queries + 1)


def test_only_unbroken_points_are_queried():
    lin = linear_model(d=12, k=4, seed=6)
    x = torch.rand(60, 12, generator=torch.Generator().manual_seed(7))
    y = lin(x).argmax(1).detach()
    eps = 0.08
    gaps = torch.cdist(x, x, p=math.inf) + 10 * torch.eye(len(x))
    assert gaps.min() > 2 * eps  # every queried row belongs to exactly one point
    rec = Recorder(lin)
    res = create("square", n_queries=100)(rec, x, y, ThreatModel("linf", eps),
                                          generator=torch.Generator().manual_seed(0))
    clean, start, *iterations, final = rec.batches
    broken = lin(start).argmax(1) != y
    for batch in iterations:
        owner = torch.cdist(batch, x, p=math.inf).argmin(1)
        queried = torch.zeros(len(x), dtype=torch.bool)
        queried[owner] = True
        assert len(owner) == int(queried.sum())  # each point at most once per iteration
        assert torch.equal(queried, ~broken)  # exactly the points not broken yet
        broken[owner] |= lin(batch).argmax(1) != y[owner]
    assert torch.equal(broken, res.success)
    assert 0 < int(res.success.sum()) < len(x)


def test_linf_start_is_vertical_stripes_and_l2_start_is_a_centred_grid():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 2))
    with torch.no_grad():
        lin[1].weight.zero_()
        lin[1].bias.copy_(torch.tensor([3.0, 0.0]))  # never broken: the start is observable
    x = 0.25 + 0.5 * torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(8))
    y = torch.zeros(4, dtype=torch.long)
    rec = Recorder(lin)
    eps = 0.1
    create("square", n_queries=1)(rec, x, y, ThreatModel("linf", eps), generator=torch.Generator().manual_seed(0))
    start = rec.batches[1] - x
    assert torch.allclose(start.abs(), torch.full_like(start, eps))
    assert torch.equal(start.sign(), start.sign()[:, :, :1, :].expand_as(start))  # constant down each column
    rec.batches.clear()
    create("square", n_queries=1)(rec, x, y, ThreatModel("l2", 1.0), generator=torch.Generator().manual_seed(0))
    start = rec.batches[1] - x
    assert torch.allclose(start.reshape(4, -1).norm(dim=1), torch.ones(4))
    # 12 // 5 = 2: a 5x5 grid of 2x2 patterns covers rows/columns 1..10; the border is untouched
    border = torch.ones(12, 12, dtype=torch.bool)
    border[1:11, 1:11] = False
    assert torch.equal(start[:, :, border], torch.zeros_like(start[:, :, border]))
    assert bool((start[:, :, 1:11, 1:11] != 0).any(-1).any(-1).all())


def test_deterministic_with_the_same_generator_and_global_rng_untouched():
    lin = linear_model(d=12, k=4, seed=9)
    x = torch.rand(50, 12, generator=torch.Generator().manual_seed(10))
    y = lin(x).argmax(1).detach()
    atk = create("square", n_queries=60)
    for norm, eps in (("linf", 0.05), ("l2", 0.15)):
        state = torch.get_rng_state()
        r1 = atk(lin, x, y, ThreatModel(norm, eps), generator=torch.Generator().manual_seed(3))
        r2 = atk(lin, x, y, ThreatModel(norm, eps), generator=torch.Generator().manual_seed(3))
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.equal(r1.x_adv, r2.x_adv) and torch.equal(r1.success, r2.success)


def test_targeted_square_reaches_the_target():
    lin = linear_model(d=12, k=3, seed=11)
    x = torch.rand(60, 12, generator=torch.Generator().manual_seed(12))
    y = lin(x).argmax(1).detach()
    target = (y + 1) % 3
    res = create("square", n_queries=200)(lin, x, y, ThreatModel("linf", 0.3), target=target,
                                          generator=torch.Generator().manual_seed(0))
    assert res.targeted and res.success.float().mean() > 0.5
    assert torch.equal(lin(res.x_adv).argmax(1) == target, res.success)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_square_contract_on_images_float64_and_vectors(norm, eps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3)).double()
    model.train()
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    threat = ThreatModel(norm, eps)
    atk = create("square", n_queries=40)
    r1 = atk(model, x, y, threat, generator=torch.Generator().manual_seed(7))
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    assert r1.x_adv.dtype == torch.float64 and r1.x_adv.shape == x.shape
    assert r1.x_adv.min() >= 0 and r1.x_adv.max() <= 1
    assert bool((threat.norm_of(r1.x_adv - x) <= eps * (1 + 1e-9)).all())
    one = atk(model, x[:1], y[:1], threat, generator=torch.Generator().manual_seed(7))
    assert one.x_adv.shape == (1, 1, 4, 4)
    # channels-by-length inputs (N, C, L) and tiny images (2x2) work too
    seq = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
    xs = torch.rand(5, 2, 3, generator=torch.Generator().manual_seed(2))
    rs = atk(seq, xs, seq(xs).argmax(1).detach(), threat, generator=torch.Generator().manual_seed(0))
    assert rs.x_adv.shape == xs.shape
    small = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    xi = torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    ri = atk(small, xi, small(xi).argmax(1).detach(), threat, generator=torch.Generator().manual_seed(0))
    assert ri.x_adv.shape == xi.shape


def test_square_bad_parameters_are_refused():
    for bad in (dict(n_queries=0), dict(n_queries=1.5), dict(p_init=0.0), dict(p_init=1.5),
                dict(n_restarts=0), dict(loss="dlr"), dict(resc_schedule="yes")):
        with pytest.raises(ConfigError):
            create("square", **bad)
    lin = linear_model(d=4, k=3, seed=0)  # l1: a norm Square does not support
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="norm"):
        create("square")(lin, x, lin(x).argmax(1), ThreatModel("l1", 0.5))
