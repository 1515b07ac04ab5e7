"""Noise corruptions: gaussian, shot, impulse (family "noise") and speckle (an extra).

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), Sec. 3 and Fig. 1; definitions and constants from the
CIFAR-10-C generator ``ImageNet-C/create_c/make_cifar_c.py`` (github.com/hendrycks/
robustness), functions of the same names. Each docstring writes the operation out.

**Other image sides.** Every parameter here is an intensity (a standard deviation in
``[0, 1]`` pixel units, a Poisson rate per unit intensity, a probability), not a length,
so the 28x28 and 8x8 tables are the 32x32 ones (the rule of
:mod:`robustlab.corruptions.blur`: lengths scale with the side, intensities do not).

Noise is drawn independently per value (image, channel, pixel), so greyscale images get
one-channel noise of the stated strength. All draws come from ``generator``. Outputs are
clipped to ``[0, 1]``; the reference also rounds them to ``uint8`` when saving, which we
do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from robustlab.corruptions.base import poisson, rand, randn, register_corruption
from robustlab.corruptions.blur import generator_or_default
from robustlab.errors import ConfigError

SIDES: tuple[int, ...] = (32, 28, 8)
GAUSSIAN_NOISE: tuple[float, ...] = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_NOISE: tuple[float, ...] = (500, 250, 100, 75, 50)
IMPULSE_NOISE: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE_NOISE: tuple[float, ...] = (0.06, 0.1, 0.12, 0.16, 0.2)


def _same(table: tuple[float, ...]) -> dict[int, Sequence[Any]]:
    return {s: table for s in SIDES}


def _nonneg(name: str, value: float) -> float:
    v = float(value)
    if not v >= 0:
        raise ConfigError(f"{name}: the parameter must be a number >= 0, got {value!r}.")
    return v


@register_corruption("gaussian_noise", family="noise", tables=_same(GAUSSIAN_NOISE), random=True)
def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive Gaussian noise: ``clip(x + std * z, 0, 1)``, ``z ~ N(0, 1)`` per value.
    Severities 1-5: ``std = .04, .06, .08, .09, .10``."""
    std = _nonneg("gaussian_noise", std)
    return (x + std * randn(x.shape, generator_or_default(generator), x)).clamp(0, 1)


@register_corruption("shot_noise", family="noise", tables=_same(SHOT_NOISE), random=True)
def shot_noise(x: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shot (Poisson) noise: ``clip(Poisson(rate * x) / rate, 0, 1)`` per value, so the
    mean is ``x`` and the variance ``x / rate`` (before clipping). Severities 1-5:
    ``rate = 500, 250, 100, 75, 50`` (lower rate = stronger noise)."""
    rate = _nonneg("shot_noise", rate)
    if rate == 0:
        raise ConfigError("shot_noise: the Poisson rate must be > 0, got 0.")
    return (poisson(x * rate, generator_or_default(generator)) / rate).clamp(0, 1)


@register_corruption("impulse_noise", family="noise", tables=_same(IMPULSE_NOISE), random=True)
def impulse_noise(x: torch.Tensor, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Impulse (salt-and-pepper) noise: each value independently becomes 0 or 1 (one half
    each) with probability ``amount``, else stays; this is
    ``skimage.util.random_noise(x, mode="s&p", amount=amount)`` (``salt_vs_pepper=0.5``)
    as the reference calls it. Severities 1-5: ``amount = .01, .02, .03, .05, .07``.

    Deviation: skimage draws "flipped" and "salted" from two Bernoulli arrays; we draw one
    uniform ``u`` per value (pepper if ``u < amount/2``, salt if ``amount/2 <= u < amount``),
    the same distribution. Noise is per value, so a colour pixel can get salt in one
    channel only, as in skimage.
    """
    amount = _nonneg("impulse_noise", amount)
    if amount > 1:
        raise ConfigError(f"impulse_noise: amount is a probability in [0, 1], got {amount}.")
    u = rand(x.shape, generator_or_default(generator), x)
    out = torch.where(u < amount, (u >= amount / 2).to(x.dtype), x)
    return out.clamp(0, 1)


@register_corruption("speckle_noise", family="extra", tables=_same(SPECKLE_NOISE), random=True)
def speckle_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Speckle (multiplicative) noise: ``clip(x + x * std * z, 0, 1)``, ``z ~ N(0, 1)``
    per value, so the variance is ``x^2 std^2`` (before clipping). Severities 1-5:
    ``std = .06, .1, .12, .16, .2``."""
    std = _nonneg("speckle_noise", std)
    return (x + x * std * randn(x.shape, generator_or_default(generator), x)).clamp(0, 1)


__all__ = [
    "GAUSSIAN_NOISE",
    "IMPULSE_NOISE",
    "SHOT_NOISE",
    "SPECKLE_NOISE",
    "gaussian_noise",
    "impulse_noise",
    "shot_noise",
    "speckle_noise",
]
