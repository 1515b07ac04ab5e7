"""Threat models: the set of allowed perturbations, and the geometry that goes with it.

Projection, random starts and the steepest-ascent direction live here and nowhere
else, so no attack repeats projection or clamping code. Three norms are supported:

- ``linf``: the ball is a box, its intersection with the input box is a box, and the
  projection is a clamp;
- ``l2``: projection onto the ball followed by clamping to the input box (the
  convention of every major attack library);
- ``l1``: the *exact* Euclidean projection onto the intersection of the L1 ball and the
  input box (:func:`project_l1_box`), as used by L1-APGD (Croce & Hein 2021, "Mind the
  box: l1-APGD for sparse adversarial attacks on image classifiers", Sec. 3.1).

The input box is the model's (``model.input_bounds``, default ``(0, 1)``), passed in
as ``bounds`` by the attack template; nothing here hard-codes ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robustlab.errors import ConfigError, EpsilonError

NORMS = ("linf", "l2", "l1")
_ALIASES = {
    "inf": "linf",
    "linfty": "linf",
    "l_inf": "linf",
    "l-inf": "linf",
    "2": "l2",
    "l_2": "l2",
    "1": "l1",
    "l_1": "l1",
}
START_KINDS = ("uniform", "apgd")

Bounds = tuple[float, float]


def _flat_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    flat = v.reshape(len(v), -1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    return flat.norm(p=2, dim=1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(N,)`` so it broadcasts against ``like``."""
    return v.reshape((len(v),) + (1,) * (like.dim() - 1))


def _eps_vector(eps: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(eps, dtype=like.dtype, device=like.device).expand(len(like))


def draw(
    shape: Sequence[int],
    like: torch.Tensor,
    generator: torch.Generator | None,
    *,
    normal: bool = False,
) -> torch.Tensor:
    """Random numbers for attacks: uniform on ``[0, 1)`` (or standard normal when
    ``normal``) of ``shape``, drawn from ``generator`` on the generator's own device (CPU
    when ``None``), in ``like``'s dtype (float32 for non-float32/64 inputs) and moved to
    ``like``'s device. Attacks pass their ``torch.Generator``; ``None`` would draw from
    the global RNG, which the attack template never does."""
    g_dev = generator.device if generator is not None else torch.device("cpu")
    dt = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    fn = torch.randn if normal else torch.rand
    return fn(tuple(shape), generator=generator, device=g_dev, dtype=dt).to(like.device)


def parse_eps(value: float | str) -> float:
    """Parse an eps written as a number or a fraction such as ``"8/255"`` (booleans are
    refused: ``True`` is not a budget)."""
    if isinstance(value, bool):
        raise EpsilonError(f"cannot read eps {value!r}; write a number like 0.1 or 8/255.")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise EpsilonError(f"cannot read eps {value!r}; write a number like 0.1 or 8/255.") from exc


def normalize_norm(norm: str) -> str:
    """Canonical norm name (``"Linf"``, ``"inf"`` -> ``"linf"``); unknown names raise ConfigError."""
    key = _ALIASES.get(str(norm).lower(), str(norm).lower())
    if key not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; robustlab supports {', '.join(NORMS)}.")
    return key


def project_l1_box(
    delta: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | float, bounds: Bounds
) -> torch.Tensor:
    """Exact Euclidean projection of perturbations onto ``{d : ||d||_1 <= eps, lo <= x + d <= hi}``.

    Croce & Hein (2021), "Mind the box", Sec. 3.1 (and ``L1_projection`` of the official
    fra31/auto-attack code, which solves the same problem by bisection over sorted
    breakpoints). Write ``a = |v|`` and ``c`` for the room the box leaves in the
    direction of ``sign(v)``. If clipping ``v`` to the box already gives L1 norm
    ``<= eps``, that clip is the projection. Otherwise the KKT conditions give
    ``d_i = sign(v_i) * clip(a_i - lam, 0, c_i)`` with the unique ``lam > 0`` such that
    ``sum_i clip(a_i - lam, 0, c_i) = eps``; this sum is piecewise linear in ``lam``
    with breakpoints ``{a_i, a_i - c_i}``, so ``lam`` is found exactly by sorting the
    breakpoints (O(d log d) per sample) and interpolating on the right piece.

    ``delta`` and ``x`` have the same shape; ``eps`` is a float or a per-sample tensor.
    Computed in float64 and returned in ``delta``'s dtype.
    """
    shape, dtype = delta.shape, delta.dtype
    n = len(delta)
    if n == 0:
        return delta.clone()
    v = delta.reshape(n, -1).double()
    xf = x.reshape(n, -1).double()
    lo, hi = bounds
    upper = (hi - xf).clamp_min(0.0)
    lower = (lo - xf).clamp_max(0.0)
    e = torch.as_tensor(eps, dtype=torch.float64, device=v.device).expand(n).clone()
    clipped = torch.maximum(torch.minimum(v, upper), lower)
    inside = clipped.abs().sum(1) <= e
    out = clipped
    need = (~inside) & (e > 0)
    if bool(need.any()):
        rows = need.nonzero().squeeze(1)
        vr, er = v[rows], e[rows]
        a = vr.abs()
        cap = torch.where(vr >= 0, upper[rows], -lower[rows])
        d = a.shape[1]
        # going down in lam: passing a_i adds coordinate i to the free set (+1),
        # passing a_i - c_i saturates it at its box limit (-1)
        bp = torch.cat([a, a - cap], 1)
        slope = torch.cat([torch.ones_like(a), -torch.ones_like(a)], 1)
        t, order = bp.sort(1, descending=True)
        active = slope.gather(1, order).cumsum(1)
        gaps = t[:, :-1] - t[:, 1:]
        f_at = torch.cat([torch.zeros_like(t[:, :1]), (active[:, :-1] * gaps).cumsum(1)], 1)
        j = (f_at < er[:, None]).sum(1).clamp(1, 2 * d - 1) - 1  # last breakpoint with f < eps
        f_j = f_at.gather(1, j[:, None]).squeeze(1)
        t_j = t.gather(1, j[:, None]).squeeze(1)
        n_j = active.gather(1, j[:, None]).squeeze(1).clamp_min(1.0)
        lam = (t_j - (er - f_j) / n_j).clamp_min(0.0)
        mag = torch.minimum((a - lam[:, None]).clamp_min(0.0), cap)
        out = out.clone()
        out[rows] = torch.sign(vr) * mag
    zero = e <= 0
    if bool(zero.any()):
        out = out.clone()
        out[zero] = 0.0
    return out.reshape(shape).to(dtype)


def l1_sparse_direction(
    grad: torch.Tensor,
    sparsity: torch.Tensor | float,
    *,
    x: torch.Tensor | None = None,
    bounds: Bounds | None = None,
) -> torch.Tensor:
    """The sparse steepest-ascent direction of L1-APGD (Croce & Hein 2021, Sec. 3.2).

    Keep the coordinates whose ``|g_i|`` is at least the ``(1 - sparsity)``-quantile of
    ``|g|`` (i.e. the top ``sparsity`` share of coordinates; the quantile index is
    ``floor((1 - sparsity) * d)`` clamped to ``[0, d-1]``, as in the official code),
    take ``sign(g)`` there, and divide by the number of kept non-zero coordinates, so
    the direction has unit L1 norm. With ``x`` and ``bounds`` the direction also
    respects the box: coordinates already on the bound towards which ``g`` points are
    dropped before choosing the top coordinates (a step there would be undone by the
    projection). ``sparsity`` is a float or a per-sample tensor in (0, 1].
    """
    n = len(grad)
    g = grad.reshape(n, -1)
    if x is not None and bounds is not None:
        xf = x.reshape(n, -1)
        blocked = ((xf >= bounds[1]) & (g > 0)) | ((xf <= bounds[0]) & (g < 0))
        g = g.masked_fill(blocked, 0.0)
    d = g.shape[1]
    k = torch.as_tensor(sparsity, dtype=torch.float32, device=g.device).expand(n)
    idx = ((1.0 - k) * d).clamp(0, d - 1).long()
    thr = g.abs().sort(1).values.gather(1, idx[:, None])
    s = torch.sign(g) * (g.abs() >= thr)
    count = s.abs().sum(1, keepdim=True)
    return (s / (count + 1e-10)).reshape(grad.shape)


@dataclass(frozen=True)
class ThreatModel:
    """An ``Lp`` ball of radius ``eps`` around each input, intersected with the input box.

    Parameters
    ----------
    norm: ``"linf"``, ``"l2"`` or ``"l1"`` (aliases such as ``"Linf"``, ``"inf"``, ``"2"``).
    eps: radius (in the input space, before the model's normalisation); a number or a
        fraction string such as ``"8/255"``.

    Several budgets are attacked in one call by passing a list of threat models
    (``[ThreatModel("linf", e) for e in eps_list]``) or :meth:`ThreatModel.grid`.
    """

    norm: str
    eps: float

    def __post_init__(self) -> None:
        norm = normalize_norm(self.norm)
        object.__setattr__(self, "norm", norm)
        eps = parse_eps(self.eps)
        if not math.isfinite(eps) or eps < 0:
            raise EpsilonError(f"eps must be a finite number >= 0, got {self.eps!r}.")
        if norm == "linf" and eps > 1.0:
            raise EpsilonError(
                f"L-inf eps={eps} is larger than the whole [0, 1] input range; every input "
                f"would be reachable. Did you mean {eps:g}/255 = {eps / 255:.4g}?"
            )
        object.__setattr__(self, "eps", eps)

    @classmethod
    def grid(cls, norm: str, eps: Sequence[float | str]) -> list[ThreatModel]:
        """One threat model per budget: ``ThreatModel.grid("linf", ["2/255", "8/255"])``."""
        return [cls(norm, parse_eps(e)) for e in eps]

    # -- checks --------------------------------------------------------------------
    def diameter(self, x: torch.Tensor, bounds: Bounds) -> float:
        """The largest distance between two points of the input box in this norm."""
        width = bounds[1] - bounds[0]
        d = x[0].numel()
        if self.norm == "linf":
            return width
        if self.norm == "l2":
            return width * math.sqrt(d)
        return width * d

    def check_fits(self, x: torch.Tensor, bounds: Bounds) -> None:
        """Refuse an eps beyond the largest distance inside the input box."""
        lo, hi = bounds
        limit = self.diameter(x, bounds)
        if self.eps > limit * (1 + 1e-9) + 1e-12:
            raise EpsilonError(
                f"{self.norm} eps={self.eps:g} exceeds the diameter {limit:g} of the input box "
                f"[{lo}, {hi}]^{x[0].numel()}; such a budget reaches every input."
            )

    # -- geometry ------------------------------------------------------------------
    def norm_of(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of ``delta`` in this threat model's norm."""
        return _flat_norm(delta, self.norm)

    def project(
        self, x_adv: torch.Tensor, x: torch.Tensor, bounds: Bounds, eps: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """Project ``x_adv`` onto the eps-ball around ``x`` intersected with the box.

        L-inf: exact (the intersection is a box). L2: ball projection, then clamp (the
        convention of every major attack library). L1: exact Euclidean projection onto
        the intersection (:func:`project_l1_box`). ``eps`` may be a per-sample tensor.
        """
        e = self.eps if eps is None else eps
        delta = x_adv - x
        if self.norm == "linf":
            if isinstance(e, torch.Tensor):
                e_t = _per_sample(_eps_vector(e, x), x)
                delta = torch.maximum(torch.minimum(delta, e_t), -e_t)
            else:  # a scalar bound: one clamp (same values, no broadcast tensors)
                delta = delta.clamp(-e, e)
        elif self.norm == "l2":
            n = _flat_norm(delta, "l2")
            factor = torch.clamp(_eps_vector(e, x) / n.clamp_min(1e-12), max=1.0)
            delta = delta * _per_sample(factor, x)
        else:
            delta = project_l1_box(delta, x, e, bounds)
        return self.clip_to_box(x + delta, bounds)

    @staticmethod
    def clip_to_box(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
        """Clamp ``x`` into the input box ``[lo, hi]`` (no ball constraint): for attacks such
        as FAB whose iterates must stay valid inputs but are not bound to the eps-ball."""
        return x.clamp(bounds[0], bounds[1])

    def random_start(
        self,
        x: torch.Tensor,
        bounds: Bounds,
        generator: torch.Generator | None = None,
        *,
        kind: str = "uniform",
        eps: float | None = None,
    ) -> torch.Tensor:
        """A random point of the ball around ``x`` (inside the input box).

        ``kind="uniform"`` (PGD, Madry et al. 2018): uniform in the ball (L-inf: uniform
        in the cube; L2: uniform in the ball; L1: uniform in the L1 ball via normalised
        exponential variables), then clipped to the box.
        ``kind="apgd"`` (the official APGD code, Croce & Hein 2020): L-inf
        ``eps * t / ||t||_inf`` with ``t ~ U[-1, 1]^d``; L2 ``eps * t / ||t||_2`` with
        ``t ~ N(0, I)`` (both on the sphere); L1 the projection of ``t ~ N(0, I)`` onto
        the L1 ball intersected with the box; then clamped to the box.
        Random numbers are drawn on the generator's device (CPU when ``None``; a ``None``
        generator draws from the global RNG, which the attack template never passes).
        """
        if kind not in START_KINDS:
            raise ConfigError(f"unknown random start {kind!r}; use one of {', '.join(START_KINDS)}.")
        e = self.eps if eps is None else float(eps)

        def rand(*shape: int) -> torch.Tensor:
            return draw(shape, x, generator)

        def randn(*shape: int) -> torch.Tensor:
            return draw(shape, x, generator, normal=True)

        shape = tuple(x.shape)
        if kind == "apgd":
            if self.norm == "linf":
                t = 2 * rand(*shape) - 1
                delta = e * t / (_per_sample(_flat_norm(t, "linf"), t) + 1e-12)
            elif self.norm == "l2":
                t = randn(*shape)
                delta = e * t / (_per_sample(_flat_norm(t, "l2"), t) + 1e-12)
            else:
                delta = project_l1_box(randn(*shape), x, e, bounds)
            return self.clip_to_box(x + delta.to(x.dtype), bounds)
        if self.norm == "linf":
            delta = (2 * rand(*shape) - 1) * e
            return self.clip_to_box(x + delta.to(x.dtype), bounds)
        d = x[0].numel()
        if self.norm == "l2":
            z = randn(*shape)
            z = z / _per_sample(_flat_norm(z, "l2").clamp_min(1e-12), z)
            r = rand(len(x))
            delta = z * _per_sample(e * r.pow(1.0 / d), z)
        else:
            # uniform in the L1 ball: signs times the first d of d+1 normalised Exp(1) draws
            expo = -torch.log(rand(len(x), d + 1).clamp_min(1e-12))
            mag = expo[:, :d] / expo.sum(1, keepdim=True)
            signs = torch.where(rand(len(x), d) < 0.5, -1.0, 1.0).to(mag.dtype)
            delta = (e * signs * mag).reshape(shape)
        return self.clip_to_box(x + delta.to(x.dtype), bounds)

    def ascent_direction(
        self,
        grad: torch.Tensor,
        *,
        sparsity: torch.Tensor | float | None = None,
        x: torch.Tensor | None = None,
        bounds: Bounds | None = None,
    ) -> torch.Tensor:
        """Steepest-ascent direction of unit norm for this norm.

        L-inf: ``sign(g)``; L2: ``g / ||g||_2``; L1: the sparse direction of L1-APGD
        (:func:`l1_sparse_direction`) over the top ``sparsity`` share of coordinates
        (default 0.2, the official code's initial value), respecting the box when ``x``
        and ``bounds`` are given. Zero gradients give a zero direction.
        """
        if self.norm == "linf":
            return grad.sign()
        if self.norm == "l2":
            n = _flat_norm(grad, "l2")
            return grad / _per_sample(n.clamp_min(1e-12), grad)
        return l1_sparse_direction(grad, 0.2 if sparsity is None else sparsity, x=x, bounds=bounds)

    def with_eps(self, eps: float) -> ThreatModel:
        return ThreatModel(self.norm, eps)

    def __str__(self) -> str:
        return f"{self.norm} eps={self.eps:g}"
