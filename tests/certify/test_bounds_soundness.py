"""Soundness of bound propagation: no input of the ball ∩ [0, 1] has outputs outside the
bounds.

For random networks (MLP, strided/padded/dilated/grouped conv nets, a residual block
with BatchNorm, AvgPool and adaptive pooling, robustlab's ``Normalize`` and the same
normalisation written as tensor arithmetic on plain attributes, monotone activations) and
for the zoo's models, 10^4 points of the ball per image (half of them corners of the
clipped box, the rest uniform inside) and PGD-100 on every row of the margin
specification (both directions) must stay inside the bounds of every method, in float32
(tolerance 1e-5) and float64 (1e-12: rounding only, see F64_TOL), for batches of 1 and 7 images. The CROWN
methods are checked *without* the IBP intersection (``intersect_ibp=False``), so a wrong
CROWN bound cannot hide behind IBP's.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab import models
from robustlab.attacks import ThreatModel
from robustlab.certify.bounds import METHODS, compute_bounds, margin_spec
from robustlab.models.layers import Normalize

torch.set_num_threads(1)
N_SAMPLES = 10_000
#: float64: "exact" up to rounding. Where a bound is attained (a stable ReLU pattern, a
#: corner of the box), the model's own forward pass and the bound's arithmetic round
#: differently and disagree in the last bit (observed: 2.2e-16 = 1 ulp at 1.9); any real
#: error is many orders of magnitude larger.
F64_TOL = 1e-12
PGD_STEPS = 100


# -- random networks ------------------------------------------------------------------------
class PlainNormalize(nn.Module):
    """Normalisation as plain tensor arithmetic with constants held as plain attributes
    (not buffers): what auto_LiRPA got wrong for batches of several images."""

    def __init__(self, body: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)

    def _apply(self, fn: Any, recurse: bool = True) -> PlainNormalize:  # .double() converts the constants too
        super()._apply(fn, recurse)
        self.mean, self.std = fn(self.mean), fn(self.std)
        return self


class ResidualNet(nn.Module):
    """conv-BN-relu stem, one basic block with a strided 1x1 projection shortcut (F.relu,
    residual sum), adaptive average pooling, torch.flatten, linear."""

    def __init__(self, c: int = 2, w: int = 4, k: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c, w, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(w)
        self.conv1 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * w)
        self.conv2 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.short = nn.Sequential(nn.Conv2d(w, 2 * w, 1, stride=2, bias=False), nn.BatchNorm2d(2 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = F.relu(out + self.short(x))
        return self.fc(torch.flatten(self.pool(out), 1))


class FunctionalNet(nn.Module):
    """The functional and arithmetic forms: ``1 - x``, a parameter scale, F.conv2d,
    F.avg_pool2d, ``view(x.size(0), -1)``, torch.relu, F.linear, F.leaky_relu, a
    difference of two traced tensors, a constant made in forward, ``.neg()``."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.l1 = nn.Linear(4 * 3 * 3, 8)
        self.l2 = nn.Linear(8, k)
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (1.0 - x) * self.scale + torch.tensor(0.1)
        h = F.avg_pool2d(F.relu(F.conv2d(x, self.c1.weight, self.c1.bias, padding=1)), 2)
        h = h.view(h.size(0), -1)
        h = torch.relu(F.linear(h, self.l1.weight, self.l1.bias))
        h = F.leaky_relu(h, 0.2) - 0.5 * h
        return self.l2(h).neg()


def _conv_body(c: int, k: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=3), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 12), nn.ReLU(), nn.Linear(12, k),
    )


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            elif isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net.eval()


def make_net(name: str) -> tuple[nn.Module, tuple[int, ...], float]:
    """(network, per-sample input shape, eps) with a mix of stable and unstable ReLUs."""
    k = 3
    if name == "mlp":
        net: nn.Module = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, k))
        return _randomise(net, 0), (12,), 0.05
    if name == "conv":
        return _randomise(_conv_body(2, k), 1), (2, 6, 6), 0.04
    if name == "residual-bn":
        return _randomise(ResidualNet(2, 4, k), 2), (2, 6, 6), 0.03
    if name == "bn-avgpool":
        net = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(4, 4, 2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 2)),
            nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, k),
        )
        return _randomise(net, 3), (2, 6, 6), 0.05
    if name == "normalize-layer":
        net = nn.Sequential(Normalize([0.4, 0.6], [0.25, 0.3], channels=2), _conv_body(2, k))
        return _randomise(net, 4), (2, 6, 6), 0.02
    if name == "normalize-plain":
        return _randomise(PlainNormalize(_conv_body(2, k), [0.4, 0.6], [0.25, 0.3]), 4), (2, 6, 6), 0.02
    if name == "functional":
        return _randomise(FunctionalNet(k), 7), (2, 6, 6), 0.04
    if name == "activations":
        net = nn.Sequential(
            nn.Linear(8, 12), nn.LeakyReLU(0.1), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 12), nn.Sigmoid(),
            nn.Linear(12, 12), nn.ELU(), nn.Linear(12, 12), nn.Softplus(), nn.Linear(12, k),
        )
        return _randomise(net, 5), (8,), 0.1
    raise KeyError(name)


NETS = ["mlp", "conv", "residual-bn", "bn-avgpool", "normalize-layer", "normalize-plain", "functional", "activations"]


# -- the attackers ------------------------------------------------------------------------------
def sample_ball(x: torch.Tensor, eps: float, n: int, norm: str, seed: int) -> torch.Tensor:
    """``(B, n, *shape)`` points of the ball ∩ [0, 1]: half on corners (L-inf) or the
    sphere (L2), half inside."""
    g = torch.Generator().manual_seed(seed)
    b, shape = len(x), tuple(x.shape[1:])
    half = n // 2
    if norm == "linf":
        corners = torch.randint(0, 2, (b, half, *shape), generator=g).to(x.dtype) * 2 - 1
        inside = torch.rand((b, n - half, *shape), generator=g, dtype=x.dtype) * 2 - 1
        d = torch.cat([corners, inside], 1) * eps
    else:
        dim = x[0].numel()
        dirs = torch.randn((b, n, dim), generator=g, dtype=x.dtype)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        radius = torch.cat([torch.ones(half, dtype=x.dtype), torch.rand(n - half, generator=g, dtype=x.dtype) ** (1 / dim)])
        d = (dirs * radius[None, :, None] * eps).reshape(b, n, *shape)
    return (x[:, None] + d).clamp(0, 1)


def pgd_extremes(
    model: nn.Module, x: torch.Tensor, eps: float, C: torch.Tensor, norm: str, steps: int = PGD_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest and largest value of each row of ``C z`` PGD finds (sign steps for
    L-inf, normalised-gradient steps for L2, step eps/20, uniform random start; the best
    over all iterates), shape ``(B, S)`` each."""
    b, s, k = C.shape
    coef = torch.cat([C, -C], 1).reshape(b * 2 * s, k)  # minimise coef . z
    xr = x.repeat_interleave(2 * s, 0)
    threat = ThreatModel(norm, eps)
    xa = threat.random_start(xr, (0.0, 1.0), torch.Generator().manual_seed(0))
    best = torch.full((len(xr),), float("inf"), dtype=x.dtype)
    step = eps / 20
    for t in range(steps + 1):
        xa = xa.detach().requires_grad_(True)
        val = (model(xa) * coef).sum(1)
        best = torch.minimum(best, val.detach())
        if t == steps:
            break
        (grad,) = torch.autograd.grad(val.sum(), xa)
        xa = threat.project(xa.detach() - step * threat.ascent_direction(grad), xr, (0.0, 1.0))
    found = best.reshape(b, 2 * s)
    return found[:, :s], -found[:, s:]


def check_sound(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
    methods: tuple[str, ...] = METHODS, n_samples: int = N_SAMPLES, pgd: bool = True,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Assert every method's bounds (logits and margins) contain the sampled points and
    PGD's extremes. Returns the margin bounds per method."""
    tol = 1e-5 if x.dtype == torch.float32 else F64_TOL
    k = int(model(x[:1]).shape[1])
    C = margin_spec(y, k).to(x.dtype)
    logit_b = {m: compute_bounds(model, x, eps, norm, m, None, alpha_steps=10, intersect_ibp=False) for m in methods}
    margin_b = {m: compute_bounds(model, x, eps, norm, m, C, alpha_steps=10, intersect_ibp=False) for m in methods}
    logit_b = {m: (lo.detach(), hi.detach()) for m, (lo, hi) in logit_b.items()}
    margin_b = {m: (lo.detach(), hi.detach()) for m, (lo, hi) in margin_b.items()}
    pts = sample_ball(x, eps, n_samples, norm, seed=len(x))
    with torch.no_grad():
        z = torch.cat([model(p) for p in pts.reshape(-1, *x.shape[1:]).split(4096)]).reshape(len(x), n_samples, k)
    margins = torch.einsum("bsk,bnk->bns", C, z)
    found: list[tuple[str, torch.Tensor, torch.Tensor]] = [("samples", margins.amin(1), margins.amax(1))]
    if pgd:
        found.append(("pgd", *pgd_extremes(model, x, eps, C, norm)))
    for m in methods:
        lo, hi = logit_b[m]
        assert float((lo[:, None] - z).max()) <= tol, f"{m}: a sampled logit below the lower bound by {float((lo[:, None] - z).max()):.3g}"
        assert float((z - hi[:, None]).max()) <= tol, f"{m}: a sampled logit above the upper bound by {float((z - hi[:, None]).max()):.3g}"
        lo, hi = margin_b[m]
        for who, f_lo, f_hi in found:
            assert float((lo - f_lo).max()) <= tol, f"{m}: {who} found a margin below the lower bound by {float((lo - f_lo).max()):.3g}"
            assert float((f_hi - hi).max()) <= tol, f"{m}: {who} found a margin above the upper bound by {float((f_hi - hi).max()):.3g}"
    return margin_b


# -- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("name", NETS)
def test_bounds_contain_sampled_points_and_pgd(name: str, batch: int, dtype: torch.dtype) -> None:
    net, shape, eps = make_net(name)
    net = net.to(dtype)
    g = torch.Generator().manual_seed(10 + batch)
    x = torch.rand(batch, *shape, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (batch,), generator=g)
    res = check_sound(net, x, y, eps)
    # not a trivial case: IBP does not verify every margin, and no bound interval is a point
    assert bool((res["ibp"][0] < 0).any())
    for lo, hi in res.values():
        assert bool((hi - lo > 1e-3).all())


@pytest.mark.parametrize("name", ["mlp", "conv", "residual-bn"])
def test_l2_bounds_contain_sampled_points_and_pgd(name: str) -> None:
    net, shape, eps = make_net(name)
    net = net.double()
    g = torch.Generator().manual_seed(20)
    x = torch.rand(3, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (3,), generator=g)
    check_sound(net, x, y, eps * 3, norm="l2")


def test_plain_attribute_and_layer_normalisation_give_the_same_bounds() -> None:
    """The two ways of writing the same normalisation are the same function, so their
    bounds agree (up to the rounding of ``(x - m) / s`` vs ``x / s - m / s``)."""
    a, shape, eps = make_net("normalize-layer")
    b, _, _ = make_net("normalize-plain")
    x = torch.rand(7, *shape, generator=torch.Generator().manual_seed(3))
    for m in METHODS:
        la, ha = compute_bounds(a, x, eps, method=m, alpha_steps=5)
        lb, hb = compute_bounds(b, x, eps, method=m, alpha_steps=5)
        assert torch.allclose(la, lb, atol=1e-5) and torch.allclose(ha, hb, atol=1e-5), m


# -- the zoo ------------------------------------------------------------------------------------
def _zoo(name: str, size: tuple[int, int], **kw: Any) -> nn.Module:
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, in_channels=1, input_size=size, mean=[0.13], std=[0.31], **kw)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "size", "kw", "eps"),
    [
        ("mlp", (8, 8), {"hidden": (32, 32)}, 0.02),
        ("mnist_net", (8, 8), {}, 0.02),
        ("mnist_net", (28, 28), {}, 0.005),
    ],
    ids=["mlp-8x8", "mnist_net-8x8", "mnist_net-28x28"],
)
def test_zoo_models_are_bounded_soundly(name: str, size: tuple[int, int], kw: dict[str, Any], eps: float) -> None:
    model = _zoo(name, size, **kw)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, *size, generator=g)
    y = torch.randint(0, 10, (2,), generator=g)
    res = check_sound(model, x, y, eps, n_samples=2000 if size == (28, 28) else N_SAMPLES)
    # CROWN is not looser than CROWN-IBP here, and IBP is the loosest in total
    assert float(res["crown"][0].sum()) >= float(res["crown-ibp"][0].sum()) >= float(res["ibp"][0].sum())


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18"])
def test_tiny_zoo_resnets_are_bounded_soundly(name: str) -> None:
    start = time.perf_counter()
    model = _zoo(name, (8, 8), width=1)
    _randomise(model, 6)  # non-trivial BatchNorm statistics
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (2,), generator=g)
    check_sound(model, x, y, 0.002, n_samples=2000)
    assert time.perf_counter() - start < 30
