"""Bound propagation (IBP, CROWN, CROWN-IBP, α-CROWN): exact oracles, orderings, the conv
adjoint, batch independence, typed errors.

Oracles: on one affine layer the range over a box is known in closed form (each output's
extreme is at the corner picked by the signs of its weights), so IBP and every CROWN
method must return it; CROWN's backward step through a convolution must be the
transpose of the convolution's Jacobian (autograd); α-CROWN ≥ CROWN ≥ IBP for every
lower bound (and the reverse for upper bounds) by construction.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustlab import models
from robustlab.attacks import ThreatModel
from robustlab.certify.bounds import (
    METHODS,
    compute_bounds,
    margin_spec,
    verified_accuracy,
    verify,
)
from robustlab.certify.bounds.graph import ConvOp, LinearFnOp, build_graph
from robustlab.errors import (
    ConfigError,
    EpsilonError,
    InvalidInputError,
    LabelError,
    ShapeMismatchError,
    UnsupportedLayerError,
)
from robustlab.models.layers import Normalize

torch.set_num_threads(1)


# -- helpers shared with test_bounds_soundness.py ------------------------------------------
def all_bounds(
    model: nn.Module, x: torch.Tensor, eps: float, C: torch.Tensor | None = None, norm: str = "linf", **kw: object
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    with torch.no_grad():
        return {m: compute_bounds(model, x, eps, norm, m, C, **kw) for m in METHODS}  # type: ignore[arg-type]


def box_range_affine(W: torch.Tensor, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact range of ``x W^T + b`` over the box [lo, hi], by the corner rule (per row)."""
    low = b + torch.minimum(W * lo[:, None, :], W * hi[:, None, :]).sum(-1)
    high = b + torch.maximum(W * lo[:, None, :], W * hi[:, None, :]).sum(-1)
    return low, high


# -- exact oracles ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ibp_is_exact_on_one_linear_layer(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(6, 4).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 6, generator=g, dtype=dtype))
        lin.bias.copy_(torch.randn(4, generator=g, dtype=dtype))
    x = torch.rand(5, 6, generator=g, dtype=dtype)
    x[0, :3] = torch.tensor([0.0, 1.0, 0.02], dtype=dtype)  # the box clips here
    eps = 0.1
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    want_lo, want_hi = box_range_affine(lin.weight.detach(), lin.bias.detach(), lo, hi)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for method, (low, high) in all_bounds(lin, x, eps).items():
        assert torch.allclose(low, want_lo, atol=tol, rtol=0), method
        assert torch.allclose(high, want_hi, atol=tol, rtol=0), method
    # the extremes are attained (corners of the clipped box), so no bound can be tighter
    corner = torch.where(lin.weight[0] > 0, lo[0], hi[0])
    assert torch.allclose(lin(corner)[0], want_lo[0, 0], atol=tol)


def test_all_methods_are_exact_on_a_linear_zoo_model_with_normalize() -> None:
    """mlp with hidden=() is Normalize -> Flatten -> Linear: one affine map, so IBP and
    every CROWN method equal its exact range over the box (hand-computed)."""
    torch.manual_seed(0)
    m: Any = models.create("mlp", num_classes=3, in_channels=2, input_size=(3, 3), hidden=(), mean=[0.3, 0.6], std=[0.2, 0.5]).double()
    x = torch.rand(4, 2, 3, 3, dtype=torch.float64)
    eps = 0.07
    lin = m.layers[0]
    std = m.normalize.std.double().repeat_interleave(9)
    mean = m.normalize.mean.double().repeat_interleave(9)
    W = lin.weight.detach() / std
    b = lin.bias.detach() - (lin.weight.detach() * mean / std).sum(1)
    lo, hi = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    want_lo, want_hi = box_range_affine(W, b, lo, hi)
    res = all_bounds(m, x, eps)
    for method, (low, high) in res.items():
        assert torch.allclose(low, want_lo, atol=1e-12, rtol=0), method
        assert torch.allclose(high, want_hi, atol=1e-12, rtol=0), method
    # with the specification merged, the margins are exact as well
    y = torch.tensor([0, 1, 2, 1])
    C = margin_spec(y, 3).double()
    Wc = torch.einsum("bsk,kn->bsn", C, W)
    bc = torch.einsum("bsk,k->bs", C, b)
    m_lo = bc + torch.minimum(Wc * lo[:, None], Wc * hi[:, None]).sum(-1)
    for method, (low, _) in all_bounds(m, x, eps, C).items():
        assert torch.allclose(low, m_lo, atol=1e-12, rtol=0), method


def test_crown_is_exact_on_a_ball_where_every_relu_is_stable() -> None:
    """Tiny eps: every ReLU is stable, the net is affine on the ball, CROWN is exact (its
    bound is attained by a corner), IBP is not."""
    torch.manual_seed(1)
    net: Any = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.full((1, 4), 0.5, dtype=torch.float64)
    eps = 1e-4
    res = all_bounds(net, x, eps)
    pre = net[0](x)
    active = (pre > 0).double()[0]
    W = net[2].weight.detach() @ (active[:, None] * net[0].weight.detach())
    b = net[2].weight.detach() @ (active * net[0].bias.detach()) + net[2].bias.detach()
    want_lo, _ = box_range_affine(W, b, x - eps, x + eps)
    for method in ("crown", "crown-ibp", "alpha-crown"):
        assert torch.allclose(res[method][0], want_lo, atol=1e-12, rtol=0), method


# -- orderings (hypothesis) ---------------------------------------------------------------------
@st.composite
def random_nets(draw: st.DrawFn) -> tuple[Any, torch.Tensor, torch.Tensor, float]:
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    conv = draw(st.booleans())
    k = draw(st.integers(2, 4))
    if conv:
        c, h = draw(st.integers(1, 2)), draw(st.integers(4, 7))
        ch = draw(st.integers(1, 4))
        stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, 2))
        body = nn.Sequential(nn.Conv2d(c, ch, 3, stride=stride, padding=pad), nn.ReLU())
        with torch.no_grad():
            flat = body(torch.zeros(1, c, h, h)).numel()
        net: Any = nn.Sequential(body, nn.Flatten(), nn.Linear(flat, 6), nn.ReLU(), nn.Linear(6, k))
        x_shape: tuple[int, ...] = (c, h, h)
    else:
        d = draw(st.integers(1, 6))
        widths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
        layers: list[nn.Module] = []
        prev = d
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        net = nn.Sequential(*layers, nn.Linear(prev, k))
        x_shape = (d,)
    for p in net.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * draw(st.sampled_from([0.5, 1.0])))
    b = draw(st.integers(1, 3))
    x = torch.rand(b, *x_shape, generator=g)
    y = torch.randint(0, k, (b,), generator=g)
    eps = draw(st.sampled_from([0.01, 0.05, 0.1, 0.3]))
    return net, x, y, eps


@settings(max_examples=25, deadline=None)
@given(random_nets())
def test_alpha_crown_ge_crown_ge_ibp_on_random_nets(case: tuple[Any, torch.Tensor, torch.Tensor, float]) -> None:
    net, x, y, eps = case
    C = margin_spec(y, net[-1].out_features)
    res = all_bounds(net, x, eps, C, alpha_steps=5)
    ibp_lo, ibp_hi = res["ibp"]
    for method in ("crown", "crown-ibp"):
        assert bool((res[method][0] >= ibp_lo).all()) and bool((res[method][1] <= ibp_hi).all()), method
    assert bool((res["alpha-crown"][0] >= res["crown"][0]).all())
    assert bool((res["alpha-crown"][1] <= res["crown"][1]).all())
    for low, high in res.values():
        assert bool((low <= high + 1e-5).all())


def test_crown_beats_ibp_and_alpha_beats_crown_on_a_deeper_net() -> None:
    """Not only "never looser": on a 3-hidden-layer net with many unstable ReLUs each
    method is strictly tighter in total (a method that fell back to its predecessor
    everywhere would fail this)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
    x = torch.rand(4, 10)
    C = margin_spec(torch.tensor([0, 1, 2, 3]), 5)
    raw = {m: compute_bounds(net, x, 0.05, "linf", m, C, intersect_ibp=False)[0].detach() for m in METHODS}
    assert raw["crown-ibp"].sum() > raw["ibp"].sum()
    assert raw["crown"].sum() > raw["crown-ibp"].sum()
    assert raw["alpha-crown"].sum() > raw["crown"].sum() + 1e-3


# -- the conv adjoint against autograd --------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    cin=st.integers(1, 3), cout_per_group=st.integers(1, 3), groups=st.integers(1, 3), k=st.integers(1, 4),
    stride=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 2), h=st.integers(5, 9), w=st.integers(5, 9),
    seed=st.integers(0, 1000),
)
def test_conv_backward_is_the_jacobian_transpose(
    cin: int, cout_per_group: int, groups: int, k: int, stride: int, pad: int, dil: int, h: int, w: int, seed: int
) -> None:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin * groups, cout_per_group * groups, k, stride=stride, padding=pad, dilation=dil, groups=groups).double()
    x = torch.rand(1, cin * groups, h, w, dtype=torch.float64)
    if dil * (k - 1) + 1 > h + 2 * pad or dil * (k - 1) + 1 > w + 2 * pad:
        return
    graph = build_graph(nn.Sequential(conv, nn.Flatten()), x)
    op = graph.ops[1]
    assert isinstance(op, ConvOp)
    jac = torch.autograd.functional.jacobian(lambda t: conv(t).flatten(), x).reshape(op.numel, -1)
    eye = torch.eye(op.numel, dtype=torch.float64).reshape(1, op.numel, *op.shape)
    lam_in, bias = op.backward(eye, [None], None)
    assert lam_in[0] is not None
    assert torch.allclose(lam_in[0].reshape(op.numel, -1), jac, atol=1e-12, rtol=0)
    assert bias is not None and conv.bias is not None
    assert torch.allclose(bias[0], conv.bias.detach().repeat_interleave(op.numel // conv.out_channels))


@pytest.mark.parametrize(
    "pool",
    [nn.AvgPool2d(2), nn.AvgPool2d(3, stride=2, padding=1), nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
     nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((3, 2))],
    ids=["avg2", "avg3s2p1", "avg-nopad-count", "avg-ceil", "adaptive1", "adaptive3x2"],
)
def test_pool_backward_is_the_jacobian_transpose(pool: nn.Module) -> None:
    x = torch.rand(1, 2, 7, 5, dtype=torch.float64)
    graph = build_graph(nn.Sequential(pool, nn.Flatten()), x)
    op = graph.ops[1]
    assert isinstance(op, (ConvOp, LinearFnOp))
    jac = torch.autograd.functional.jacobian(lambda t: pool(t).flatten(), x).reshape(op.numel, -1)
    eye = torch.eye(op.numel, dtype=torch.float64).reshape(1, op.numel, *op.shape)
    lam_in, _ = op.backward(eye, [None], None)
    assert lam_in[0] is not None
    assert torch.allclose(lam_in[0].reshape(op.numel, -1), jac, atol=1e-12, rtol=0)


# -- batches ----------------------------------------------------------------------------------
def test_bounds_of_a_batch_equal_each_image_alone() -> None:
    torch.manual_seed(4)
    net = nn.Sequential(
        Normalize([0.4, 0.5], [0.2, 0.3]), nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 4),
    ).double()
    x = torch.rand(7, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (7,))
    C = margin_spec(y, 4).double()
    for method in METHODS:
        for spec in (None, C):
            lo, hi = compute_bounds(net, x, 0.03, "linf", method, spec, alpha_steps=3)
            for i in range(7):
                one = None if spec is None else spec[i : i + 1]
                lo_i, hi_i = compute_bounds(net, x[i : i + 1], 0.03, "linf", method, one, alpha_steps=3)
                assert torch.allclose(lo[i : i + 1], lo_i, atol=1e-12, rtol=0), method
                assert torch.allclose(hi[i : i + 1], hi_i, atol=1e-12, rtol=0), method


def test_a_2d_spec_is_broadcast_over_the_batch() -> None:
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.rand(3, 3)
    C = torch.tensor([[1.0, -1.0]])
    a = compute_bounds(net, x, 0.1, method="crown", C=C)
    b = compute_bounds(net, x, 0.1, method="crown", C=C.expand(3, 1, 2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# -- modes, dtypes, gradients -------------------------------------------------------------------
def test_batchnorm_in_train_mode_uses_its_running_statistics_and_modes_are_restored() -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2))
    bn: Any = net[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(3))
        bn.running_var.copy_(torch.rand(3) + 0.5)
        bn.weight.copy_(torch.randn(3))
        bn.bias.copy_(torch.randn(3))
    x = torch.rand(2, 1, 6, 6)
    net.eval()
    want = compute_bounds(net, x, 0.05, method="crown")
    net.train()
    net[0].eval()  # a mixed mode must come back as it was
    got = compute_bounds(net, x, 0.05, method="crown")
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    assert net.training and bn.training and not net[0].training
    running = bn.running_mean.clone()
    compute_bounds(net, x, 0.05, method="ibp")
    assert torch.equal(running, bn.running_mean)  # nothing ran in train mode


def test_float32_and_float64_bounds_agree() -> None:
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(3, 5)
    for method in METHODS:
        lo32, hi32 = compute_bounds(net, x, 0.05, method=method)
        lo64, hi64 = compute_bounds(net, x.double(), 0.05, method=method)
        assert lo64.dtype == torch.float64 and lo32.dtype == torch.float32
        assert torch.allclose(lo32.double(), lo64, atol=1e-5) and torch.allclose(hi32.double(), hi64, atol=1e-5)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_bounds_are_differentiable_in_the_parameters(method: str) -> None:
    torch.manual_seed(7)
    net: Any = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    x = torch.rand(2, 1, 4, 4)
    C = margin_spec(torch.tensor([0, 2]), 3)
    lo, _ = compute_bounds(net, x, 0.1, method=method, C=C, bound_upper=False, intersect_ibp=False)
    lo.sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert float(net[0].weight.grad.abs().sum()) > 0


def test_bound_upper_false_returns_ibp_upper_bound() -> None:
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(2, 4)
    lo_full, _ = compute_bounds(net, x, 0.1, method="crown")
    lo, hi = compute_bounds(net, x, 0.1, method="crown", bound_upper=False)
    _, ibp_hi = compute_bounds(net, x, 0.1, method="ibp")
    assert torch.equal(lo, lo_full) and torch.equal(hi, ibp_hi)


# -- verification -------------------------------------------------------------------------------
def test_margin_spec_rows() -> None:
    C = margin_spec(torch.tensor([2, 0]), 4)
    assert C.shape == (2, 3, 4)
    assert C[0].tolist() == [[-1, 0, 1, 0], [0, -1, 1, 0], [0, 0, 1, -1]]
    assert C[1].tolist() == [[1, -1, 0, 0], [1, 0, -1, 0], [1, 0, 0, -1]]
    with pytest.raises(LabelError):
        margin_spec(torch.tensor([4]), 4)


def test_verified_points_are_correct_and_not_broken_by_pgd_margin() -> None:
    from robustlab import attacks

    torch.manual_seed(9)
    g = torch.Generator().manual_seed(9)
    centers = torch.rand(3, 6, generator=g) * 0.6 + 0.2
    y = torch.arange(120) % 3
    x = (centers[y] + 0.05 * torch.randn(120, 6, generator=g)).clamp(0, 1)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(200):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    threat = ThreatModel("linf", 0.03)
    clean = net(x).argmax(1) == y
    pgd = attacks.create("pgd", steps=100, loss="margin")
    broken = pgd(net, x, y, threat).success
    for method in METHODS:
        ok = verify(net, x, y, threat, method=method, alpha_steps=5)
        assert ok.dtype == torch.bool and ok.shape == (120,)
        assert int(ok.sum()) >= 20, method  # something to test
        assert not bool((ok & ~clean).any()), method
        assert not bool((ok & broken).any()), method
        acc = verified_accuracy(net, x, y, threat, method=method, batch_size=17, alpha_steps=5)
        assert acc == pytest.approx(float(ok.float().mean()))
    assert verified_accuracy(net, x[:0], y[:0], threat) != verified_accuracy(net, x[:0], y[:0], threat)  # NaN


# -- unsupported layers ---------------------------------------------------------------------------
class _LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 3, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0][:, -1]


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


@pytest.mark.parametrize(
    ("net", "x", "name"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)), torch.rand(2, 4), "GELU"),
        (nn.Sequential(nn.Linear(4, 4), nn.SiLU(), nn.Linear(4, 2)), torch.rand(2, 4), "SiLU"),
        (_LSTMNet(), torch.rand(2, 5, 4), "LSTM"),
        (nn.Sequential(nn.Linear(4, 2), nn.Softmax(dim=1)), torch.rand(2, 4), "Softmax"),
        (nn.Sequential(nn.Linear(4, 2), _Square()), torch.rand(2, 4), "mul"),
        (nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(-0.5), nn.Linear(4, 2)), torch.rand(2, 4), "LeakyReLU"),
    ],
    ids=["gelu", "silu", "lstm", "softmax", "product", "leaky-negative"],
)
def test_unsupported_layers_raise_a_typed_error_naming_them(net: nn.Module, x: torch.Tensor, name: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=name) as info:
        compute_bounds(net, x, 0.1, method="ibp")
    assert "Supported:" in str(info.value) and "Linear" in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_maxpool_is_ibp_only() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2))
    x = torch.rand(3, 1, 4, 4)
    lo, hi = compute_bounds(net, x, 0.05, method="ibp")
    with torch.no_grad():
        pts = (x[:, None] + (torch.rand(3, 2000, 1, 4, 4) * 2 - 1) * 0.05).clamp(0, 1)
        z = net(pts.reshape(-1, 1, 4, 4)).reshape(3, 2000, 2)
    assert bool((z >= lo[:, None] - 1e-5).all() and (z <= hi[:, None] + 1e-5).all())
    for method in ("crown", "crown-ibp", "alpha-crown"):
        with pytest.raises(UnsupportedLayerError, match="MaxPool2d.*ibp"):
            compute_bounds(net, x, 0.05, method=method)


def test_untraceable_model_raises_a_typed_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return self.lin(x)
            return -self.lin(x)

    with pytest.raises(UnsupportedLayerError, match="torch.fx cannot trace Branchy"):
        compute_bounds(Branchy(), torch.rand(2, 3), 0.1)


def test_tracing_leaves_the_model_unchanged() -> None:
    """torch.fx stores tensors made in forward as attributes of the traced root; the
    trace runs on a wrapper, so the user's model gains no attributes or state."""

    class WithConstant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x - torch.tensor([0.5, 0.25, 0.0]))

    net = WithConstant()
    before = (dict(vars(net)), {k: v.clone() for k, v in net.state_dict().items()})
    lo, hi = compute_bounds(net, torch.rand(2, 3), 0.1, method="crown")
    assert dict(vars(net)).keys() == before[0].keys()
    assert all(torch.equal(v, before[1][k]) for k, v in net.state_dict().items())
    assert bool((lo <= hi).all())


# -- bad input ------------------------------------------------------------------------------------
@pytest.fixture
def small() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return models.create("mlp", num_classes=3, in_channels=4, hidden=(5,)), torch.rand(2, 4)


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), 1.5])
def test_bad_eps_raises_epsilon_error(small: tuple[nn.Module, torch.Tensor], eps: float) -> None:
    model, x = small
    with pytest.raises(EpsilonError):
        compute_bounds(model, x, eps)


def test_l2_eps_beyond_the_box_raises(small: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = small
    with pytest.raises(EpsilonError):
        compute_bounds(model, x, 2.5, norm="l2")  # the diameter of [0,1]^4 is 2


@pytest.mark.parametrize(
    "C", [torch.ones(2, 4), torch.ones(3, 2, 3), torch.ones(3), torch.ones(2, 0, 3), torch.ones(1, 2, 2, 3)],
    ids=["wrong-K", "wrong-batch", "1d", "no-rows", "4d"],
)
def test_wrong_spec_shape_raises(small: tuple[nn.Module, torch.Tensor], C: torch.Tensor) -> None:
    model, x = small
    with pytest.raises(ShapeMismatchError, match="specification C"):
        compute_bounds(model, x, 0.1, C=C)


def test_bad_inputs_raise_typed_errors(small: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = small
    with pytest.raises(ShapeMismatchError, match="expects"):
        compute_bounds(model, torch.rand(2, 5), 0.1)
    with pytest.raises(ConfigError, match="method"):
        compute_bounds(model, x, 0.1, method="deeppoly")
    with pytest.raises(ConfigError, match="norm"):
        compute_bounds(model, x, 0.1, norm="l3")
    with pytest.raises(InvalidInputError):
        compute_bounds(model, x + 2.0, 0.1)
    with pytest.raises(InvalidInputError, match="NaN"):
        compute_bounds(model, x, 0.1, C=torch.full((1, 3), float("nan")))
    with pytest.raises(ConfigError, match="alpha_steps"):
        compute_bounds(model, x, 0.1, method="alpha-crown", alpha_steps=-1)
    with pytest.raises(ConfigError, match="threat"):
        verify(model, x, torch.tensor([0, 1]), 0.1)  # type: ignore[arg-type]
    with pytest.raises(LabelError):
        verify(model, x, torch.tensor([0, 3]), ThreatModel("linf", 0.1))
    with pytest.raises(ShapeMismatchError):
        verify(model, x, torch.tensor([0]), ThreatModel("linf", 0.1))


def test_batchnorm_without_running_stats_is_refused() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match="BatchNorm1d"):
        compute_bounds(net, torch.rand(2, 3), 0.1)


# -- BoundedModel: one trace, the current weights ------------------------------------------------
def _bn_net() -> nn.Sequential:
    torch.manual_seed(11)
    net = nn.Sequential(
        Normalize((0.5,), (0.25,)), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3),
    )
    bn = net[2]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bounded_model_sees_optimizer_steps_and_load_state_dict(dtype: torch.dtype) -> None:
    """A BoundedModel traces once and rebuilds its graph from the model's current
    parameters and buffers: after an optimiser step (in place, with the BN fold and the
    float64 cast recomputed) and after load_state_dict its bounds equal a fresh trace's,
    bit for bit, and it adds nothing to the model."""
    from robustlab.certify.bounds import BoundedModel

    net = _bn_net()
    x = torch.rand(5, 1, 8, 8, dtype=dtype)
    C = margin_spec(torch.tensor([0, 1, 2, 0, 1]), 3)
    before = dict(vars(net)).keys()
    bounded = BoundedModel(net)
    first = {m: compute_bounds(bounded, x, 0.05, "linf", m, C, alpha_steps=2) for m in METHODS}
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    lo, _ = bounded.compute_bounds(x.float(), 0.05, method="crown-ibp", C=C, bound_upper=False, intersect_ibp=False)
    (-lo.sum()).backward()  # gradients flow to the parameters through the cached trace
    assert net[5].weight.grad is not None and net[1].weight.grad is not None
    opt.step()
    with torch.no_grad():
        net[2].running_var.mul_(1.5)  # type: ignore[operator]
    for m in METHODS:
        got = compute_bounds(bounded, x, 0.05, "linf", m, C, alpha_steps=2)
        want = compute_bounds(net, x, 0.05, "linf", m, C, alpha_steps=2)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), m
        assert not torch.equal(got[0], first[m][0]), m  # the new weights were read
    fresh = _bn_net()
    net.load_state_dict(fresh.state_dict())
    for m in METHODS:
        got = bounded.compute_bounds(x, 0.05, "linf", m, C, alpha_steps=2)
        want = compute_bounds(fresh, x, 0.05, "linf", m, C, alpha_steps=2)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), m
        assert torch.equal(got[0], first[m][0]), m
    fc = net[5]
    assert isinstance(fc, nn.Linear)
    fc.weight = nn.Parameter(fc.weight.detach() * 2)  # a reassigned parameter is read too
    got = bounded.compute_bounds(x, 0.05, method="crown", C=C)
    want = compute_bounds(net, x, 0.05, method="crown", C=C)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert dict(vars(net)).keys() == before
    # one fx trace; one recorded graph per input dtype (float32 for the training step)
    assert len(bounded._traces) == (1 if dtype == torch.float32 else 2) and bounded._fx is not None


def test_bounded_model_trains_over_several_steps_and_verifies_in_batches() -> None:
    """Two training steps through one BoundedModel (no autograd graph is kept between
    calls), and verified_accuracy equals per-batch verify with a plain model."""
    from robustlab.certify.bounds import BoundedModel

    net = _bn_net()
    bounded = BoundedModel(net)
    x = torch.rand(6, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):
        lo, _ = compute_bounds(bounded, x, 0.02, method="crown-ibp", C=margin_spec(y, 3), bound_upper=False)
        opt.zero_grad()
        (-lo.sum()).backward()
        opt.step()
    threat = ThreatModel("linf", 0.01)
    want = torch.cat([verify(net, x[i : i + 4], y[i : i + 4], threat) for i in (0, 4)])
    assert torch.equal(bounded.verify(x, y, threat), verify(net, x, y, threat))
    assert verified_accuracy(bounded, x, y, threat, batch_size=4) == float(want.float().mean())
