"""Class imbalance for any dataset: seeded long-tailed or step subsampling.

>>> from robustlab import data
>>> train = data.load("digits", split="train")
>>> lt = data.imbalance.make_imbalanced(train, 10, seed=0)        # exponential profile
>>> data.imbalance.class_counts(lt.y, 10).tolist()
[139, 107, 83, 64, 49, 38, 29, 23, 17, 13]
>>> data.load("digits", split="train", imbalance=10).y.bincount().tolist()   # the same

Profiles (``K`` classes, ``n_max`` samples kept of class 0, ratio ``R >= 1``):

``"exponential"``
    Cui, Jia, Lin, Song & Belongie (2019), "Class-Balanced Loss Based on Effective Number
    of Samples" (CVPR), Sec. 6.1 / Fig. 1: the long-tailed CIFAR versions keep
    ``n_c = n_max * R^(-c / (K - 1))`` images of class ``c``, so class 0 keeps the most,
    counts fall geometrically and ``n_0 / n_{K-1} = R``.
``"step"``
    Buda, Maki & Mazurowski (2018), "A systematic study of the class imbalance problem in
    convolutional neural networks" (Neural Networks 106), step imbalance with
    ``mu = 0.5``: the first ``K - floor(K/2)`` classes keep ``n_max``, the last
    ``floor(K/2)`` keep ``n_max / R``.

Rounding: every count is ``floor`` of its real value (after rounding that value to 9
decimals, so ``500 * 10^-1`` is 50, not 49), as in the long-tailed CIFAR generator of the
official LDAM-DRW / class-balanced-loss code (``int(n_max * (1/R)^(c/(K-1)))``). The
largest/smallest count ratio is therefore exactly ``R`` when ``n_max / R`` is a whole
number, and otherwise ``n_max / floor(n_max / R)``, which lies in
``[R, n_max / (n_max / R - 1))``.

``n_max`` defaults to the smallest class size of the input, so every class has enough
samples and a balanced input keeps all of class 0. Which samples stay is drawn per class
(class order) from one ``np.random.default_rng(seed)``; the kept indices are returned in
their original order, so ``R = 1`` on a balanced dataset gives back the same tensors in
the same order. The subset is made with :meth:`Dataset.subset`, so ``clean_y`` (label
noise bookkeeping) and any per-sample fields of subclasses follow the kept rows;
:func:`long_tail_indices` gives the indices into the original dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar, cast

import numpy as np
import torch

from robustlab.data.base import Dataset
from robustlab.errors import ConfigError, DataError
from robustlab.validation import check_float, check_int

PROFILES: tuple[str, ...] = ("exponential", "step")

D = TypeVar("D", bound=Dataset)


def _labels(y: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"labels must be a 1-D integer array, got {arr.dtype} {arr.shape}.")
    return arr.astype(np.int64)


def class_counts(y: torch.Tensor | np.ndarray | Sequence[int], num_classes: int) -> torch.Tensor:
    """Samples per class, ``(num_classes,)`` int64 (classes without samples count 0)."""
    return torch.from_numpy(np.bincount(_labels(y), minlength=num_classes)[:num_classes].astype(np.int64))


def _check_ratio(ratio: Any) -> float:
    r = check_float(ratio, "imbalance ratio")
    if not math.isfinite(r) or r < 1:
        raise ConfigError(
            f"imbalance ratio must be a finite number >= 1 (largest / smallest class count; "
            f"1 = balanced), got {ratio!r}."
        )
    return r


def target_counts(num_classes: int, n_max: int, ratio: float, profile: str = "exponential") -> list[int]:
    """Per-class counts of the ``profile`` with ``n_max`` for class 0 (see the module docstring).

    Raises :class:`ConfigError` for ``ratio < 1``, an unknown profile, fewer than two
    classes, or a ratio that leaves a class with no sample (``n_max / R < 1``).
    """
    k = check_int(num_classes, "num_classes", minimum=2)
    n_max = check_int(n_max, "n_max", minimum=1)
    r = _check_ratio(ratio)
    if profile not in PROFILES:
        raise ConfigError(f"imbalance profile must be one of {', '.join(PROFILES)}, got {profile!r}.")
    if profile == "exponential":
        reals = [n_max * r ** (-c / (k - 1)) for c in range(k)]
    else:
        minority = k // 2
        reals = [float(n_max)] * (k - minority) + [n_max / r] * minority
    counts = [math.floor(round(v, 9)) for v in reals]
    if min(counts) < 1:
        raise ConfigError(
            f"imbalance ratio {r:g} leaves class {counts.index(min(counts))} with no sample "
            f"(n_max = {n_max}, n_max / ratio = {n_max / r:.3g}); use a ratio <= {n_max}."
        )
    return counts


def long_tail_indices(
    y: torch.Tensor | np.ndarray | Sequence[int],
    num_classes: int,
    ratio: float,
    *,
    seed: int = 0,
    profile: str = "exponential",
    n_max: int | None = None,
) -> torch.Tensor:
    """Sorted int64 indices of the samples an imbalanced subset keeps.

    ``n_max`` (samples of class 0) defaults to the smallest class size. Raises
    :class:`DataError` when a class has fewer samples than its target count (or none),
    :class:`ConfigError` for bad parameters (see :func:`target_counts`).
    """
    labels = _labels(y)
    k = check_int(num_classes, "num_classes", minimum=2)
    seed = check_int(seed, "seed", minimum=0)
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise DataError(f"labels must lie in [0, {k}), got values in [{labels.min()}, {labels.max()}].")
    have = np.bincount(labels, minlength=k)
    if n_max is None:
        n_max = int(have.min())
        if n_max == 0:
            raise DataError(
                f"class {int(np.argmin(have))} has no samples; an imbalanced subset needs every one "
                f"of the {k} classes."
            )
    want = target_counts(k, n_max, ratio, profile)
    short = [c for c in range(k) if have[c] < want[c]]
    if short:
        c = short[0]
        raise DataError(
            f"class {c} has {have[c]} samples but the {profile} profile with n_max={n_max} and "
            f"ratio {ratio:g} needs {want[c]}; pass a smaller n_max (default: the smallest class size)."
        )
    rng = np.random.default_rng(seed)
    parts = [rng.permutation(np.flatnonzero(labels == c))[: want[c]] for c in range(k)]
    return torch.from_numpy(np.sort(np.concatenate(parts)).astype(np.int64))


def make_imbalanced(
    dataset: D,
    ratio: float,
    *,
    seed: int = 0,
    profile: str = "exponential",
    n_max: int | None = None,
) -> D:
    """A class-imbalanced subset of ``dataset`` (long-tailed by default).

    Parameters
    ----------
    dataset: any :class:`~robustlab.data.base.Dataset` (labels ``y`` decide the classes;
        with label noise applied, the *observed* labels ``y`` are used, ``clean_y`` follows).
    ratio: ``R >= 1``, the count of class 0 over that of the rarest class (1: balanced).
    seed: which samples of each class stay (``np.random.default_rng(seed)``).
    profile: ``"exponential"`` (Cui et al. 2019) or ``"step"`` (Buda et al. 2018).
    n_max: samples kept of class 0 (default: the smallest class size of ``dataset``).

    Returns the subset (rows in their original order, same type as ``dataset``) with its
    ``description`` saying how it was made. The indices into ``dataset`` are
    :func:`long_tail_indices` with the same arguments.
    """
    idx = long_tail_indices(
        dataset.y, dataset.num_classes, ratio, seed=seed, profile=profile, n_max=n_max
    )
    out = cast(D, dataset.subset(idx))  # subclasses (CorruptedDataset) return their own type
    counts = class_counts(out.y, dataset.num_classes).tolist()
    out.description = (
        f"{dataset.description} Class-imbalanced subset ({profile} profile, ratio {ratio:g}, "
        f"seed {seed}): {len(out):,} of {len(dataset):,} samples, per class {counts}."
    ).strip()
    return out


__all__ = ["PROFILES", "class_counts", "long_tail_indices", "make_imbalanced", "target_counts"]
