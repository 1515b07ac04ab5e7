"""GREAT Score: an attack-free, forward-only estimate of global L2 robustness.

Z. Li, P.-Y. Chen, T.-Y. Ho. "GREAT Score: Global Robustness Evaluation of Adversarial
Perturbation using Generative Models." NeurIPS 2024 (arXiv:2304.09875). Official code:
github.com/IBM/GREAT-Score (``src/main.py``, ``src/callibration_cifar10.py``).

For a classifier with scores ``f(x) in [0, 1]^K`` (a softmax of the logits) the local score
of a labelled point is (the paper's Eq. (3))::

    g(x, y) = sqrt(pi / 2) * max(0, f_y(x) - max_{k != y} f_k(x))

which is ``sqrt(pi/2) * (p_top1 - p_top2)`` when the model classifies ``x`` correctly and 0
otherwise. The GREAT Score is the mean of ``g`` over points drawn from a (conditional)
generative model ``x = G(z | y)``, ``z ~ N(0, I)`` (Eq. (4)); by the paper's Theorem 1 it is
a lower bound on the mean minimal L2 perturbation of the *Gaussian-smoothed* classifier over
that distribution. Without a generator the mean runs over the given test points.

>>> from robustlab.evaluate.great import great_score
>>> great_score(model, x_test, y_test).score                      # on test data  # doctest: +SKIP
>>> z, y = sample_latents(500, latent_dim=128, num_classes=10)      # doctest: +SKIP
>>> great_score(model, z, y, generator=G).score                    # G(z, y) -> images in [0, 1]  # doctest: +SKIP

**Calibration** (paper Sec. 3.4, official ``callibration_cifar10.py``): the raw softmax of
different models is not comparably scaled, so the scores are computed on
``f = act(logits / T)`` with one temperature ``T`` for every model, chosen by a grid search
that maximises the Spearman rank correlation between the models' GREAT scores and a
reference ranking (RobustBench robust accuracy in the paper), optionally subject to every
model's score staying below its measured attack distortion (the official constraint
against the C&W L2 bounds, since the score is a lower bound). :func:`calibrate_temperature`
does this on logits already computed (one forward pass per model). ``activation`` is
``"softmax"`` (the paper's definition, default), ``"sigmoid"`` (official option 1) or
``"sigmoid-softmax"`` (official option 3, the CIFAR-10 default of ``main.py``, with
``T = 0.00742``).

Deviations: official ``main.py`` takes the top-2 class from the *raw* logits and the
difference on the calibrated scores; for every activation here the order of classes is
the same, so they coincide. The official grid is ``T in [0, 2)`` in steps of 1e-4; here
the default grid is 60 log-spaced temperatures in ``[1e-3, 1e2]`` (the useful range depends
on the logits' scale, and ``T = 0`` is undefined).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from robustlab.errors import ConfigError, InvalidInputError
from robustlab.evaluate.metrics import predict_logits
from robustlab.validation import check_choice, check_float, check_int, check_labels

SQRT_PI_OVER_2 = math.sqrt(math.pi / 2)
ACTIVATIONS = ("softmax", "sigmoid", "sigmoid-softmax")


def _scores(logits: torch.Tensor, temperature: float, activation: str) -> torch.Tensor:
    z = logits.double()
    if activation == "softmax":
        return torch.softmax(z / temperature, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(z / temperature)
    return torch.softmax(torch.sigmoid(z) / temperature, dim=1)


def local_scores(
    logits: torch.Tensor, y: torch.Tensor, *, temperature: float = 1.0, activation: str = "softmax"
) -> torch.Tensor:
    """Per-point ``g = sqrt(pi/2) * (f_top1 - f_top2)`` for correctly classified points, 0
    for the others (float64, shape ``(N,)``), with ``f = activation(logits / temperature)``."""
    temperature = check_float(temperature, "temperature", low=0.0, low_open=True)
    activation = check_choice(activation, "activation", ACTIVATIONS)
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise InvalidInputError(f"GREAT Score needs logits of shape (N, K >= 2), got {tuple(logits.shape)}.")
    check_labels(y, logits.shape[1], n=len(logits))
    f = _scores(logits.detach().cpu(), temperature, activation)
    top2 = f.topk(2, dim=1).values
    correct = logits.detach().cpu().argmax(1) == y.detach().cpu()
    return torch.where(correct, SQRT_PI_OVER_2 * (top2[:, 0] - top2[:, 1]), torch.zeros_like(top2[:, 0]))


@dataclass
class GreatScore:
    """``score`` (the mean local score), ``per_sample`` scores, ``accuracy`` on the scored
    points, ``num_points``, and the ``temperature``/``activation`` used."""

    score: float
    per_sample: torch.Tensor
    accuracy: float
    num_points: int
    temperature: float
    activation: str
    generated: bool


def sample_latents(
    n: int, *, latent_dim: int, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` latent vectors ``z ~ N(0, I)`` of size ``latent_dim`` and class labels drawn
    uniformly, from a generator seeded by ``seed``: the inputs of ``great_score(..., generator=G)``."""
    n = check_int(n, "n", minimum=1)
    gen = torch.Generator().manual_seed(check_int(seed, "seed", minimum=0))
    z = torch.randn(n, check_int(latent_dim, "latent_dim", minimum=1), generator=gen)
    y = torch.randint(0, check_int(num_classes, "num_classes", minimum=2), (n,), generator=gen)
    return z, y


def great_score(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    generator: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    temperature: float = 1.0,
    activation: str = "softmax",
    batch_size: int = 512,
) -> GreatScore:
    """The GREAT Score of ``model``: forward passes only, no attack.

    Without ``generator``, ``x`` are inputs in ``[0, 1]`` (test data) and ``y`` their
    labels. With ``generator`` (a conditional generative model, ``generator(z, y)`` returning
    images in ``[0, 1]`` of the model's input shape, as the class-conditional GANs of the
    paper), ``x`` are latent vectors ``z`` (e.g. from :func:`sample_latents`) and ``y`` the
    classes to generate; the generated images are scored against ``y``. ``temperature`` and
    ``activation`` are the calibration (default: the plain softmax of the paper's Eq. (3)).
    """
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) == 0 or len(x) != len(y):
        raise InvalidInputError("great_score needs non-empty tensors x and y of the same length.")
    if generator is not None:
        if not callable(generator):
            raise ConfigError(f"generator must be a module or function G(z, y) -> images, got {type(generator).__name__}.")
        parts = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                parts.append(generator(x[i:i + batch_size], y[i:i + batch_size]).detach())
        images = torch.cat(parts)
        if len(images) != len(x):
            raise InvalidInputError(f"the generator returned {len(images)} images for {len(x)} latent vectors.")
    else:
        images = x
    logits = predict_logits(model, images, batch_size=batch_size)
    per = local_scores(logits, y.to(logits.device), temperature=temperature, activation=activation)
    acc = float((logits.argmax(1).cpu() == y.cpu()).double().mean())
    return GreatScore(score=float(per.mean()), per_sample=per, accuracy=acc, num_points=len(per),
                      temperature=float(temperature), activation=activation, generated=generator is not None)


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=np.float64)
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0  # ties share their mean rank
        i = j + 1
    return ranks


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (ties get mean ranks);
    ``nan`` when either is constant."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise InvalidInputError(f"rank_correlation needs two sequences of one length >= 2, got {x.shape} and {y.shape}.")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float("nan") if den == 0 else float((rx * ry).sum() / den)


@dataclass
class Calibration:
    """The chosen ``temperature``, the ``correlation`` it reaches, the models' ``scores`` at
    it, and the whole search (``grid``, ``correlations``)."""

    temperature: float
    correlation: float
    scores: list[float]
    grid: list[float]
    correlations: list[float]


def calibrate_temperature(
    logits: Sequence[torch.Tensor],
    y: torch.Tensor,
    reference: Sequence[float],
    *,
    activation: str = "softmax",
    temperatures: Sequence[float] | None = None,
    upper_bounds: Sequence[float] | None = None,
) -> Calibration:
    """The temperature whose GREAT scores rank the models most like ``reference``.

    ``logits[m]`` are model ``m``'s logits on the same points with labels ``y`` (one forward
    pass per model), ``reference[m]`` its reference robustness (e.g. robust accuracy from
    the ``standard`` attack ensemble). With ``upper_bounds`` (e.g. each model's mean minimal
    L2 perturbation found by an attack) temperatures that put any model's score above its
    bound are skipped (the official constraint). Ties go to the smallest temperature.
    """
    if len(logits) != len(reference) or len(logits) < 2:
        raise InvalidInputError(f"calibration needs >= 2 models with one reference value each; got {len(logits)} "
                                f"logit tensors and {len(reference)} reference values.")
    if upper_bounds is not None and len(upper_bounds) != len(logits):
        raise InvalidInputError("give one upper bound per model (or none).")
    grid = [float(t) for t in (np.logspace(-3, 2, 60) if temperatures is None else temperatures)]
    for t in grid:
        check_float(t, "temperatures", low=0.0, low_open=True)
    best: tuple[float, float, list[float]] | None = None
    cors = []
    for t in grid:
        scores = [float(local_scores(z, y, temperature=t, activation=activation).mean()) for z in logits]
        if upper_bounds is not None and any(s > b for s, b in zip(scores, upper_bounds, strict=True)):
            cors.append(float("nan"))
            continue
        c = rank_correlation(scores, reference)
        cors.append(c)
        if not math.isnan(c) and (best is None or c > best[1]):
            best = (t, c, scores)
    if best is None:
        raise ConfigError("no temperature of the grid gives a defined rank correlation within the bounds; "
                          "widen the grid or check the upper bounds.")
    return Calibration(temperature=best[0], correlation=best[1], scores=best[2], grid=grid, correlations=cors)


__all__ = [
    "ACTIVATIONS",
    "SQRT_PI_OVER_2",
    "Calibration",
    "GreatScore",
    "calibrate_temperature",
    "great_score",
    "local_scores",
    "rank_correlation",
    "sample_latents",
]
