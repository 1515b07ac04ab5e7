"""Dual randomized smoothing: two half-resolution smoothed classifiers, one certificate.

Xia, Yu, Jiang & Ding (2024), "Mitigating the Curse of Dimensionality for Certified
Robustness via Dual Randomized Smoothing" (ICLR). The image ``x`` is split into two
sub-images of half the pixels, ``x_l`` and ``x_r`` (:func:`split_halves`); each has its
own base classifier (``f_l``, ``f_r``) smoothed with Gaussian noise of the same ``sigma``
in its own, lower-dimensional space, and the dual classifier predicts the class with the
largest *averaged* smoothed probability::

    g(x) = argmax_c  1/2 * ( p_l^c(x_l) + p_r^c(x_r) ),
    p_h^c(x_h) = P( f_h(x_h + e_h) = c ),  e_h ~ N(0, sigma^2 I)  (h in {l, r}).

**The split.** A checkerboard: pixel ``(row, col)`` (every channel alike) goes to the left
sub-image when ``row + col`` is even and to the right one when it is odd, so each row
gives half of its pixels to each side, alternating from row to row. Sub-image pixel
``(row, j)`` is ``x[row, 2j + row % 2]`` (left) and ``x[row, 2j + 1 - row % 2]`` (right);
both have shape ``(C, H, W / 2)`` (``W`` must be even). The official code
(``xiasong0501/DRS``, ``get_res_index`` in ``core1_lowres_2.py``) builds the same
checkerboard with one artifact: its row counter is updated after each row's first pair
of pixels, so columns 0 and 1 of every row carry the previous row's parity. The
certificate needs only that the two halves are disjoint sets of coordinates (then
``||delta||^2 = ||delta_l||^2 + ||delta_r||^2``), which both versions satisfy.

**The certified radius (what we found).** Cohen et al.'s Theorem 1 in its Lipschitz form
(as Salman et al. 2019 prove it): ``Phi^-1(p_h^c(x_h + delta_h))`` moves by at most
``||delta_h|| / sigma``. Let ``a = Phi^-1(pA_l)``, ``b = Phi^-1(pA_r)`` for lower bounds
``pA_l``, ``pA_r`` of the two halves' probabilities of the class ``c_A``, and let the
adversary spend ``(rho cos t, rho sin t)`` of an L2 budget ``rho`` on the two halves, which
moves the probits to ``a'``, ``b'``. Then

    Phi(a') + Phi(b') > 1  <=>  a' + b' > 0            (since 1 - Phi(s) = Phi(-s)),
    a' + b' >= a + b - rho (cos t + sin t) / sigma >= a + b - sqrt(2) rho / sigma,

because ``max_t (cos t + sin t) = sqrt(2)`` at ``t = pi/4``. The averaged probability of
``c_A`` stays above 1/2 -- so ``c_A`` stays the argmax -- for every ``||delta|| < R`` with

    R = sigma * (a + b) / sqrt(2) = (R_l + R_r) / sqrt(2),   R_h = sigma * Phi^-1(pA_h),

and ``R`` is tight: linear base classifiers attain the bounds with equality, and the
perturbation ``-rho / sqrt(2) * (w_l / ||w_l||, w_r / ||w_r||)`` flips ``g`` at any
``rho > R``. ``R_l`` and ``R_r`` enter *signed*: a half whose ``pA_h`` lies below 1/2 pulls
the radius down, and the point is certified only when ``a + b > 0``.

**How this differs from the public code.** ``core1_lowres_2.py`` (the CIFAR-10 certify)
returns ``sqrt(R_l^2 + R_r^2)``, which equals ``R`` only when ``R_l = R_r`` and is larger
otherwise (for ``R_l = 1, R_r = 0`` it claims 1 where the tight radius is ``1/sqrt(2)``);
it also replaces a negative ``R_h`` by 0 (so a half voting against ``c_A`` is treated as
neutral, and a point can be "certified" whose averaged probability of ``c_A`` is below
1/2), and it bounds each half at the full ``alpha`` (the pair is then wrong with
probability up to ``2 alpha``). The ImageNet variant in the same repository
(``core_imagenet_lowres_2.py``, not runnable as published) reports ``(R_l + R_r) /
sqrt(2)`` and keeps the root-sum-square as ``radius_org``; the paper's abstract gives the
upper bound's rate as ``1/sqrt(m) + 1/sqrt(n)``, the additive form's. We could not check
the statement of the paper's theorem against its text; robustlab implements the additive,
signed form above, which the derivation proves and the tests check.

**Multiclass.** As in Cohen et al.'s CERTIFY, only the top class is bounded: each half's
runner-up is bounded by ``1 - pA_h`` (no separate upper bound on ``p_B``), so the
averaged ``p_B <= 1 - averaged p_A`` and the condition "averaged ``p_A > 1/2``" above
certifies ``c_A`` against every other class. The same class ``c_A`` -- the most frequent
among the ``n0`` selection samples of *both* halves, as in the official code -- is used for
both halves.

**Statistics.** Each half's ``pA_h`` is the one-sided Clopper--Pearson bound at
``alpha / 2`` from its own ``n`` estimation samples (union bound: both hold together with
probability at least ``1 - alpha``, whatever the dependence between halves), so each
returned certificate is wrong with probability at most ``alpha``. Official defaults kept:
``n0`` and ``n`` as Cohen et al. (``n0 = 100``, ``n = 100_000``; the official DRS script uses
``N0 = 200``), ``alpha = 0.001``.

Other deviations from the official code, each deliberate: the base classifiers receive the
half-size sub-image ``(C, H, W/2)`` (the official CIFAR code feeds a full-size image with
the other half zeroed and a 2x2 max-pool of the noisy half added; the ImageNet code
upsamples the sub-image) -- any such up-sampling is a deterministic function of the noisy
half and belongs inside the model, which leaves the certificate unchanged; noise follows
:mod:`robustlab.certify.smoothing` (per-image seeded blocks, streams ``select-left``,
``select-right``, ``estimate-left``, ``estimate-right``, never the global RNG); noisy
inputs are not clipped. There is no PREDICT: Cohen et al.'s binomial test is about one
multinomial, and the averaged classifier's pooled counts of two fixed-size samples are not
one (use :meth:`DualSmooth.certify`, whose class is ``g(x)`` with probability at least
``1 - alpha`` when it does not abstain).

>>> dual = DualSmooth(model_left, model_right, num_classes=10, sigma=0.25)
>>> pred, radius = dual.certify(x, n0=100, n=100_000, alpha=0.001, seed=0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab.attacks.engine import eval_mode, model_device
from robustlab.certify import stats
from robustlab.certify.smoothing import (
    ABSTAIN,
    Certificates,
    check_deterministic,
    image_seeds,
    sample_counts,
)
from robustlab.errors import ConfigError, InvalidInputError
from robustlab.validation import check_inputs, check_int

#: the halves, in the order of every ``(left, right)`` pair and of the columns of ``*_halves``
HALVES = ("left", "right")


def _check_image(x: Any, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidInputError(
            f"{name} must be a batch of images (N, C, H, W) for dual smoothing, got {shape}; "
            f"add the missing batch or channel dimension."
        )
    if x.shape[-1] < 2 or x.shape[-1] % 2:
        raise InvalidInputError(
            f"{name} has width {x.shape[-1]}; dual smoothing splits each row into two halves, so the "
            f"width must be even: pad or crop the images to an even width."
        )
    return x


def _half_columns(height: int, width: int, parity: int, device: torch.device) -> torch.Tensor:
    """``(H, W/2)`` column indices of one half: ``2j + (row + parity) % 2``."""
    rows = torch.arange(height, device=device)[:, None]
    return 2 * torch.arange(width // 2, device=device)[None, :] + (rows + parity) % 2


def split_halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two checkerboard sub-images of a batch of images ``x`` ``(N, C, H, W)``, ``W``
    even: left holds the pixels with ``row + col`` even, right those with ``row + col``
    odd (every channel alike); sub-image pixel ``(row, j)`` is ``x[..., row, 2j + row % 2]``
    (left) and ``x[..., row, 2j + 1 - row % 2]`` (right). Each is ``(N, C, H, W/2)``;
    :func:`merge_halves` is the inverse."""
    x = _check_image(x)
    h, w = x.shape[-2:]
    out = []
    for parity in (0, 1):
        idx = _half_columns(h, w, parity, x.device).expand(*x.shape[:-1], w // 2)
        out.append(torch.gather(x, -1, idx))
    return out[0], out[1]


def merge_halves(x_left: torch.Tensor, x_right: torch.Tensor) -> torch.Tensor:
    """The image whose :func:`split_halves` is ``(x_left, x_right)`` (both ``(N, C, H, W/2)``)."""
    if not isinstance(x_left, torch.Tensor) or not isinstance(x_right, torch.Tensor) or x_left.dim() != 4 \
            or x_left.shape != x_right.shape:
        raise InvalidInputError(
            "x_left and x_right must be sub-image batches (N, C, H, W/2) of the same shape, as "
            "split_halves returns them."
        )
    h, w = x_left.shape[-2], 2 * x_left.shape[-1]
    out = torch.empty((*x_left.shape[:-1], w), dtype=x_left.dtype, device=x_left.device)
    for parity, half in ((0, x_left), (1, x_right)):
        idx = _half_columns(h, w, parity, half.device).expand(*half.shape)
        out.scatter_(-1, idx, half)
    return out


def dual_radius(radius_left: float | np.ndarray, radius_right: float | np.ndarray) -> np.ndarray:
    """The tight L2 radius ``(R_l + R_r) / sqrt(2)`` of the averaged smoothed classifier
    from the halves' *signed* Cohen radii ``R_h = sigma * Phi^-1(pA_h)`` (derivation in the
    module docstring). Positive exactly when the averaged ``pA`` exceeds 1/2; not the
    ``sqrt(R_l^2 + R_r^2)`` of the public code, which is larger unless ``R_l = R_r``."""
    r_l = np.asarray(radius_left, dtype=np.float64)
    r_r = np.asarray(radius_right, dtype=np.float64)
    return (r_l + r_r) / math.sqrt(2.0)


@dataclass
class DualCertificates(Certificates):
    """CERTIFY's output for dual smoothing. ``predict`` (class, or -1 to abstain) and
    ``radius`` (the tight ``(R_l + R_r) / sqrt(2)``, 0 when abstaining) as in
    :class:`~robustlab.certify.smoothing.Certificates`; here ``p_lower`` is the mean of the
    halves' Clopper--Pearson bounds -- a lower bound, valid with probability ``1 - alpha``,
    on the *averaged* smoothed probability of the predicted class at ``x`` (the radius is
    not a function of it alone) -- and ``count`` is ``n_A^l + n_A^r``, the estimation
    samples of both halves (``2 n`` in all) on the predicted class. ``p_lower_halves`` and
    ``count_halves`` (``(N, 2)``, columns left and right) hold each half's bound (at
    ``alpha / 2``) and count; for an abstention they describe the selected class."""

    p_lower_halves: torch.Tensor
    count_halves: torch.Tensor


class DualSmooth:
    """The dual smoothed classifier of ``model_left`` and ``model_right`` at noise level
    ``sigma`` (Xia et al. 2024; see the module docstring for the split, the radius and
    every deviation from the official code).

    Each model is the base classifier of its sub-image: it takes ``(N, C, H, W/2)`` inputs
    in ``[0, 1]`` (normalisation and any up-sampling inside it) and returns
    ``num_classes`` scores. Both are put in eval mode for every call (each module's mode is
    restored afterwards); a model whose eval-mode outputs are random is refused. Noise
    comes from ``generator`` (one seed per image, drawn in order), ``seed`` (per image
    ``derive_seed("smoothing", seed, i)``, as :class:`~robustlab.certify.smoothing.Smooth`)
    or explicit ``seeds``; each half and stage draws its own stream.
    """

    def __init__(self, model_left: nn.Module, model_right: nn.Module, num_classes: int, sigma: float) -> None:
        self.model_left = model_left
        self.model_right = model_right
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)
        self.sigma = stats.check_sigma(sigma)

    def get_params(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "sigma": self.sigma}

    def _models(self) -> tuple[nn.Module, nn.Module]:
        return self.model_left, self.model_right

    def _prepare(self, x: torch.Tensor, batch_size: int | str) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        x = _check_image(x)
        if len(x) == 0:
            raise InvalidInputError("x is an empty batch; pass at least one image (N, C, H, W) in [0, 1].")
        halves = split_halves(x)
        for model, half in zip(self._models(), halves, strict=True):
            check_inputs(half, bounds=getattr(model, "input_bounds", (0.0, 1.0)), name="x")
        if batch_size == "auto":
            return halves, 512
        if isinstance(batch_size, str):
            raise ConfigError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}.")
        return halves, check_int(batch_size, "batch_size", minimum=1)

    def _seeds(self, count: int, generator: torch.Generator | None, seed: int | None,
               seeds: Sequence[int] | None) -> list[int]:
        if seeds is None:
            return image_seeds(count, generator=generator, seed=seed)
        if generator is not None or seed is not None:
            raise ConfigError("give one of generator, seed or seeds, not several.")
        out = [check_int(s, "seeds") for s in seeds]
        if len(out) != count:
            raise InvalidInputError(f"seeds has {len(out)} entries for {count} images; give one seed per image.")
        return out

    def counts(self, x: torch.Tensor, n: int, *, stage: str = "estimate", batch_size: int | str = "auto",
               generator: torch.Generator | None = None, seed: int | None = None,
               seeds: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(counts_left, counts_right)``: each half's class counts of ``n`` noisy copies of its
        sub-image (``(N, num_classes)`` each), from the streams ``"{stage}-left"`` and
        ``"{stage}-right"`` of each image's seed (one :func:`sample_counts` call per half)."""
        halves, bs = self._prepare(x, batch_size)
        n = check_int(n, "n", minimum=1)
        if not isinstance(stage, str) or not stage:
            raise ConfigError(f"stage must be a non-empty name such as 'estimate', got {stage!r}.")
        image_seed = self._seeds(len(x), generator, seed, seeds)
        out = []
        for model, half, side in zip(self._models(), halves, HALVES, strict=True):
            with eval_mode(model):
                check_deterministic(model, half.to(model_device(model) or half.device))
                out.append(sample_counts(model, half, sigma=self.sigma, n=n, num_classes=self.num_classes,
                                         seeds=image_seed, stream=f"{stage}-{side}", batch_size=bs))
        return out[0], out[1]

    def certify(self, x: torch.Tensor, n0: int = 100, n: int = 100_000, alpha: float = 0.001, *,
                batch_size: int | str = "auto", generator: torch.Generator | None = None,
                seed: int | None = None, seeds: Sequence[int] | None = None) -> DualCertificates:
        """CERTIFY for dual smoothing: ``c_A`` = the class most frequent among the ``n0``
        selection copies of both halves together; each half's ``n_A^h`` = its count of
        ``c_A`` among ``n`` new, independent copies and ``pA_h`` = the one-sided
        Clopper--Pearson bound at ``alpha / 2``; the radius ``(R_l + R_r) / sqrt(2)`` with
        ``R_h = sigma * Phi^-1(pA_h)``. Abstain (class -1, radius 0) unless that radius is
        positive, i.e. unless the averaged ``pA`` bound exceeds 1/2 in ``Phi^-1`` space
        (``Phi^-1(pA_l) + Phi^-1(pA_r) > 0``). Each returned certificate is wrong with
        probability at most ``alpha``. ``pred, radius = dual.certify(x)`` unpacks."""
        x = _check_image(x)
        alpha = stats.check_alpha(alpha)
        n0 = check_int(n0, "n0", minimum=1)
        n = check_int(n, "n", minimum=1)
        need = stats.min_samples(alpha / 2.0)
        if n < need:
            raise ConfigError(
                f"n={n} samples per half can never give a certificate at alpha={alpha:g} (each half's "
                f"Clopper-Pearson bound, at alpha/2, stays below 1/2); use n >= {need}."
            )
        image_seed = self._seeds(len(x), generator, seed, seeds)
        sel_l, sel_r = self.counts(x, n0, stage="select", batch_size=batch_size, seeds=image_seed)
        c_a = (sel_l + sel_r).argmax(1)
        est = self.counts(x, n, stage="estimate", batch_size=batch_size, seeds=image_seed)
        n_a = torch.stack([e.gather(1, c_a[:, None]).squeeze(1) for e in est], dim=1)  # (N, 2)
        p_halves = stats.lower_confidence_bound(n_a.numpy(), n, alpha / 2.0)
        rad = torch.from_numpy(dual_radius(stats.radius(p_halves[:, 0], self.sigma),
                                           stats.radius(p_halves[:, 1], self.sigma)))
        certified = rad > 0
        p_halves_t = torch.from_numpy(p_halves)
        return DualCertificates(
            predict=torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN)),
            radius=torch.where(certified, rad, torch.zeros_like(rad)),
            p_lower=p_halves_t.mean(1),
            count=n_a.sum(1),
            p_lower_halves=p_halves_t,
            count_halves=n_a,
        )


__all__ = ["HALVES", "DualCertificates", "DualSmooth", "dual_radius", "merge_halves", "split_halves"]
