"""The corruption registry and :func:`corrupt`, the one entry point.

>>> from robustlab import corruptions
>>> xc = corruptions.corrupt(x, "gaussian_noise", 3, generator=torch.Generator().manual_seed(0))
>>> corruptions.available()            # the 19 names of the released CIFAR-10-C files
>>> corruptions.COMMON                 # the 15 of Hendrycks & Dietterich (2019), in their order

A corruption is a function ``fn(x, param, generator) -> x_c`` on a batch ``(N, C, H, W)``
in ``[0, 1]`` (``C`` = 1 or 3; colour-only corruptions see greyscale images as three equal
channels and give back their channel mean), registered with its family, whether it draws
random numbers, and one table of five parameters (severities 1..5) per image side. The
table for 32x32 holds the constants of CIFAR-10-C's ``make_cifar_c.py``; the 28x28 and 8x8
tables follow the rule stated in each corruption's docstring (lengths in pixels scale with
the image side, intensities do not). Any other size takes ``params=`` (the five-entry
table of your own, or the one parameter for the severity asked).

Randomness comes only from ``generator`` (a ``torch.Generator``; draws happen on the
generator's device and move to the images'), never from the global RNG: the same images,
severity and generator state give the same output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from robustlab.errors import ConfigError, InvalidInputError, ShapeMismatchError
from robustlab.registry import Registry
from robustlab.validation import check_inputs

#: the families of Hendrycks & Dietterich (2019), plus "extra" for the four held-out ones
FAMILIES: tuple[str, ...] = ("noise", "blur", "weather", "digital", "extra")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: the 15 corruptions of the benchmark (mean corruption accuracy and mCE average over these),
#: in the paper's order
COMMON: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
#: the four extra corruptions released with the data sets (validation corruptions)
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

CorruptionFn = Callable[[torch.Tensor, Any, "torch.Generator | None"], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """A registered corruption: ``fn(x, param, generator)``, its family, and its tables
    (image side -> five parameters, severity 1 first)."""

    name: str
    family: str
    fn: CorruptionFn
    tables: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    random: bool = False
    colour: bool = False  # needs three channels (greyscale is replicated, then averaged back)

    def param(self, side: int, severity: int, params: Sequence[Any] | Any | None = None) -> Any:
        """The parameter for ``severity`` at images of ``side`` pixels (or from ``params``)."""
        if params is not None:
            if isinstance(params, (list, tuple)) and len(params) == 5:
                return params[severity - 1]
            return params
        if side not in self.tables:
            sizes = ", ".join(f"{s}x{s}" for s in sorted(self.tables))
            raise ShapeMismatchError(
                f"corruption {self.name!r} has parameter tables for {sizes} images, not {side}x{side}; "
                f"pass params= (five values, severity 1 first, or the one value for this severity) "
                f"to corrupt(), or resize the images to one of those sizes."
            )
        return self.tables[side][severity - 1]

    def __call__(
        self, x: torch.Tensor, severity: int, *, generator: torch.Generator | None = None,
        params: Sequence[Any] | Any | None = None,
    ) -> torch.Tensor:
        return corrupt(x, self.name, severity, generator=generator, params=params)


corruptions: Registry[Corruption] = Registry("corruption")


def register_corruption(
    name: str, *, family: str, tables: dict[int, Sequence[Any]], random: bool = False, colour: bool = False,
) -> Callable[[CorruptionFn], CorruptionFn]:
    """Register ``fn(x, param, generator)`` as corruption ``name`` (see the module docstring)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown corruption family {family!r}")
    for side, tab in tables.items():
        if len(tab) != 5:
            raise ValueError(f"{name}: the {side}x{side} table must have 5 entries (severities 1..5)")

    def deco(fn: CorruptionFn) -> CorruptionFn:
        entry = Corruption(name, family, fn, {int(k): tuple(v) for k, v in tables.items()}, random, colour)
        corruptions.add(name, lambda: entry)
        return fn

    return deco


def get(name: str) -> Corruption:
    """The registered :class:`Corruption` called ``name`` (close matches if unknown)."""
    return corruptions.create(name)


def available(pattern: str = "*") -> list[str]:
    """Sorted names of the registered corruptions matching ``pattern``."""
    return corruptions.available(pattern)


def check_severity(severity: Any) -> int:
    """Severity as an int in 1..5, or a :class:`ConfigError` saying so."""
    if isinstance(severity, bool) or not isinstance(severity, (int, float)) or int(severity) != severity \
            or not 1 <= int(severity) <= 5:
        raise ConfigError(f"severity must be an integer from 1 to 5, got {severity!r}.")
    return int(severity)


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    *,
    generator: torch.Generator | None = None,
    params: Sequence[Any] | Any | None = None,
) -> torch.Tensor:
    """Corrupt the batch ``x`` (``(N, C, H, W)`` in ``[0, 1]``, C = 1 or 3, any device) with
    corruption ``name`` at ``severity`` (1..5). Returns a new tensor of the same shape,
    dtype and device, in ``[0, 1]``.

    ``generator``: where random corruptions draw from (default: a generator seeded with 0,
    so a call without one is still deterministic); ``params``: your own table (five
    values) or one value, for image sizes without a table or for other settings.
    """
    entry = get(name)
    severity = check_severity(severity)
    check_inputs(x, name="x")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ShapeMismatchError(
            f"corruptions take images (N, C, H, W) with 1 or 3 channels, got shape {tuple(x.shape)}; "
            f"reshape flat inputs to images first."
        )
    if x.shape[2] != x.shape[3] and params is None:
        raise ShapeMismatchError(
            f"corruption tables are for square images, got {x.shape[2]}x{x.shape[3]}; pass params= "
            f"(five values, severity 1 first) to corrupt() for other shapes."
        )
    param = entry.param(int(x.shape[-1]), severity, params)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if len(x) == 0:
        return x.clone()
    dtype = x.dtype
    xf = x.float()
    grey = entry.colour and x.shape[1] == 1
    if grey:
        xf = xf.expand(-1, 3, -1, -1)
    out = entry.fn(xf, param, generator)
    if grey:
        out = out.mean(1, keepdim=True)
    if out.shape != xf.shape[:1] + (1 if grey else xf.shape[1],) + xf.shape[2:]:
        raise InvalidInputError(f"corruption {name!r} changed the shape of the batch: a bug, please report it.")
    return out.clamp(0, 1).to(dtype)


# -- helpers for corruption functions: every draw goes through the generator ----------------------
def _gen_device(generator: torch.Generator) -> torch.device:
    return torch.device(generator.device)


def randn(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws of ``shape`` from ``generator``, on ``like``'s device and dtype."""
    z = torch.randn(tuple(shape), generator=generator, device=_gen_device(generator))
    return z.to(device=like.device, dtype=like.dtype)


def rand(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` from ``generator``, on ``like``'s device and dtype."""
    u = torch.rand(tuple(shape), generator=generator, device=_gen_device(generator))
    return u.to(device=like.device, dtype=like.dtype)


def poisson(rate: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Poisson draws with ``rate`` (any shape) from ``generator``, on ``rate``'s device."""
    r = rate.to(_gen_device(generator))
    return torch.poisson(r, generator=generator).to(rate.device)


def randint(low: int, high: int, shape: Sequence[int], generator: torch.Generator,
            device: torch.device) -> torch.Tensor:
    """Integers in ``[low, high)`` of ``shape`` from ``generator``, on ``device``."""
    return torch.randint(low, high, tuple(shape), generator=generator, device=_gen_device(generator)).to(device)


__all__ = [
    "COMMON",
    "EXTRA",
    "FAMILIES",
    "SEVERITIES",
    "Corruption",
    "available",
    "check_severity",
    "corrupt",
    "corruptions",
    "get",
    "rand",
    "randint",
    "randn",
    "poisson",
    "register_corruption",
]
