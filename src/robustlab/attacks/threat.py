"""Threat models: the set of allowed perturbations, and the geometry that goes with it.

Projection, random starts and the steepest-ascent direction live here and nowhere
else, so no attack repeats projection or clamping code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robustlab.errors import ConfigError, EpsilonError

NORMS = ("linf", "l2")
_ALIASES = {"inf": "linf", "linfty": "linf", "l_inf": "linf", "2": "l2", "l_2": "l2"}

Bounds = tuple[float, float]


def _flat_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    flat = v.reshape(len(v), -1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector ``(N,)`` so it broadcasts against ``like``."""
    return v.reshape((len(v),) + (1,) * (like.dim() - 1))


def parse_eps(value: float | str) -> float:
    """Parse an eps written as a number or a fraction such as ``"8/255"``."""
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


@dataclass(frozen=True)
class ThreatModel:
    """An ``Lp`` ball of radius ``eps`` around each input, intersected with the input box.

    Parameters
    ----------
    norm: ``"linf"`` or ``"l2"``.
    eps: radius (in the [0, 1] input space, before the model's normalisation).
    """

    norm: str
    eps: float

    def __post_init__(self) -> None:
        norm = _ALIASES.get(str(self.norm).lower(), str(self.norm).lower())
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; robustlab supports {', '.join(NORMS)}.")
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

    # -- checks --------------------------------------------------------------------
    def check_fits(self, x: torch.Tensor, bounds: Bounds) -> None:
        """Refuse an eps beyond the largest distance inside the input box."""
        lo, hi = bounds
        width = hi - lo
        limit = width if self.norm == "linf" else width * math.sqrt(x[0].numel())
        if self.eps > limit + 1e-12:
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
        """Project ``x_adv`` onto the eps-ball around ``x`` and then onto the box.

        For L-inf the intersection of the ball and the box is a box, so this is the exact
        Euclidean projection. For L2 it is the ball projection followed by clamping
        (the convention of every major attack library). ``eps`` may be a per-sample tensor.
        """
        e = self.eps if eps is None else eps
        delta = x_adv - x
        if self.norm == "linf":
            e_t = _per_sample(torch.as_tensor(e, dtype=x.dtype, device=x.device).expand(len(x)), x)
            delta = torch.maximum(torch.minimum(delta, e_t), -e_t)
        else:
            n = _flat_norm(delta, "l2")
            e_v = torch.as_tensor(e, dtype=x.dtype, device=x.device).expand(len(x))
            factor = torch.clamp(e_v / n.clamp_min(1e-12), max=1.0)
            delta = delta * _per_sample(factor, x)
        return (x + delta).clamp(bounds[0], bounds[1])

    def random_start(
        self, x: torch.Tensor, bounds: Bounds, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A uniformly random point of the ball around ``x`` (then clamped to the box)."""
        g_dev = generator.device if generator is not None else torch.device("cpu")
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=g_dev, dtype=x.dtype)
            delta = (2 * u - 1).to(x.device) * self.eps
        else:
            d = x[0].numel()
            z = torch.randn(x.shape, generator=generator, device=g_dev, dtype=x.dtype).to(x.device)
            z = z / _per_sample(_flat_norm(z, "l2").clamp_min(1e-12), z)
            r = torch.rand(len(x), generator=generator, device=g_dev, dtype=x.dtype).to(x.device)
            delta = z * _per_sample(self.eps * r.pow(1.0 / d), z)
        return (x + delta).clamp(bounds[0], bounds[1])

    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit norm for this norm: sign(g) for L-inf,
        g/||g||_2 for L2 (zero gradients give a zero direction)."""
        if self.norm == "linf":
            return grad.sign()
        n = _flat_norm(grad, "l2")
        return grad / _per_sample(n.clamp_min(1e-12), grad)

    def with_eps(self, eps: float) -> ThreatModel:
        return ThreatModel(self.norm, eps)

    def __str__(self) -> str:
        return f"{self.norm} eps={self.eps:g}"
