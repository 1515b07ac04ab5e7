"""Certifiers: the ``certify`` kind of measurement of the evaluation path.

A :class:`Certifier` turns a model and points into per-point certificates at one or
several radii; :func:`robustlab.evaluate.evaluate` runs it for a
``Measurement(kind="certify", attack=<certifier name>, norm=..., eps=<radii>, params=...)``
and stores one :class:`~robustlab.evaluate.results.ResultRow` of kind ``"certify"`` per
radius, whose ``accuracy`` is the *certified* accuracy (correct and certified at that
radius). Certifiers live in the ``certifiers`` registry (``robustlab ls certifiers``):

>>> from robustlab.certify import certifiers
>>> certifiers.create("smoothing", sigma=0.25, n=10_000)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from robustlab.attacks.engine import eval_mode, model_device
from robustlab.attacks.threat import ThreatModel
from robustlab.certify import stats
from robustlab.certify.smoothing import CertificationResult, certify_dataset
from robustlab.errors import ConfigError
from robustlab.progress import Progress
from robustlab.registry import Registry
from robustlab.validation import check_float, check_int

certifiers: Registry[Certifier] = Registry("certifier")


@dataclass
class Certification:
    """A certifier's output on ``N`` points: ``certified[r]`` (bool per point: correct
    and certified at radius ``r``), ``predict`` (the certified model's prediction, -1 for
    an abstention), ``radius`` (per point, when the certifier computes one), ``forwards``
    (samples passed through the model), per-point ``records`` to store, and ``extra``
    numbers per radius (e.g. a high-probability lower bound)."""

    certified: dict[float, torch.Tensor]
    predict: torch.Tensor
    radius: torch.Tensor | None = None
    forwards: int = 0
    seconds: float = 0.0
    records: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict[float, dict[str, float]] = field(default_factory=dict)
    details: Any = None


class Certifier:
    """Base class: ``check(norm, radii)`` before any work, ``run(model, x, y, threats, ...)``
    to certify the points at every threat model (one norm, increasing radii)."""

    protocol: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("l2",)

    def get_params(self) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, norm: str, radii: Sequence[float]) -> None:
        if norm not in self.norms:
            name = getattr(type(self), "registry_name", type(self).__name__)
            raise ConfigError(
                f"the {name!r} certificate covers the {', '.join(self.norms)} norm, not {norm!r}; "
                f"use norm={self.norms[0]!r}."
            )
        if any(r < 0 for r in radii):
            raise ConfigError(f"radii must be non-negative, got {list(radii)}.")

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threats: Sequence[ThreatModel],
        *,
        num_classes: int,
        indices: torch.Tensor,
        seed: int,
        batch_size: int | str,
        progress: Progress | None,
    ) -> Certification:
        raise NotImplementedError


@certifiers.register("smoothing")
class SmoothingCertifier(Certifier):
    """Randomized smoothing's CERTIFY over points (Cohen et al. 2019; see
    :mod:`robustlab.certify.smoothing`), at noise level ``sigma`` with ``n0`` selection
    and ``n`` estimation samples at level ``alpha`` (the paper's defaults: 100, 100,000,
    0.001). A point is certified at radius ``r`` when its certificate is correct and its
    radius is at least ``r``. Each point's noise derives from ``(seed, point index)``.
    ``extra`` per radius: ``lower`` (:func:`~robustlab.certify.stats.accuracy_lower_bound`
    at ``gamma``)."""

    protocol = "robustlab-smoothing/1"
    norms = ("l2",)

    def __init__(self, sigma: float = 0.25, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                 gamma: float = 0.001) -> None:
        self.sigma = stats.check_sigma(sigma)
        self.n0 = check_int(n0, "n0", minimum=1)
        self.n = check_int(n, "n", minimum=1)
        self.alpha = stats.check_alpha(alpha)
        self.gamma = stats.check_alpha(gamma, "gamma")
        stats.check_budget(self.n, self.alpha)

    def get_params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "n0": self.n0, "n": self.n, "alpha": self.alpha, "gamma": self.gamma}

    def check(self, norm: str, radii: Sequence[float]) -> None:
        super().check(norm, radii)
        stats.check_radii(list(radii), self.n, self.alpha, self.sigma)

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threats: Sequence[ThreatModel],
        *,
        num_classes: int,
        indices: torch.Tensor,
        seed: int,
        batch_size: int | str,
        progress: Progress | None,
    ) -> Certification:
        radii = [t.eps for t in threats]
        res: CertificationResult = certify_dataset(
            model, x, y, self.sigma, num_classes=num_classes, n0=self.n0, n=self.n, alpha=self.alpha,
            batch_size=batch_size, seed=seed, indices=indices, progress=progress if progress is not None else False,
        )
        certified = {float(r): torch.from_numpy(res.certified(r)) for r in radii}
        extra = {
            float(r): {"lower": res.certified_accuracy_lower(r, gamma=self.gamma)} for r in radii
        }
        return Certification(
            certified=certified,
            predict=torch.from_numpy(res.predict),
            radius=torch.from_numpy(res.radius),
            forwards=(self.n0 + self.n) * len(x),
            seconds=float(res.seconds.sum()),
            records={"predict": res.predict, "radius": res.radius},
            extra=extra,
            details=res,
        )


class BoundCertifier(Certifier):
    """Deterministic verification by bound propagation (:mod:`robustlab.certify.bounds`):
    a point is certified at ``eps`` when it is classified correctly and every margin
    ``z_y - z_j`` has a positive lower bound over the ``norm`` ball of radius ``eps``
    intersected with the input box. ``batch_size``: points per bound computation
    (``"auto"``: 128). The certificate holds for every point it counts (no failure
    probability)."""

    protocol = "robustlab-bounds/1"
    norms = ("linf", "l2", "l1")
    method: ClassVar[str] = "crown-ibp"

    def get_params(self) -> dict[str, Any]:
        return {}

    def _verify(self, model: Any, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        from robustlab.certify.bounds import verify

        return verify(model, x, y, threat, self.method, **self.get_params())

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threats: Sequence[ThreatModel],
        *,
        num_classes: int,
        indices: torch.Tensor,
        seed: int,
        batch_size: int | str,
        progress: Progress | None,
    ) -> Certification:
        bs = 128 if batch_size == "auto" else check_int(batch_size, "batch_size", minimum=1)
        t0 = time.perf_counter()
        dev = model_device(model) or x.device
        with torch.no_grad(), eval_mode(model):
            pred = torch.cat([model(x[i : i + bs].to(dev)).argmax(1).cpu() for i in range(0, len(x), bs)])
        from robustlab.certify.bounds import BoundedModel

        bounded = BoundedModel(model)  # traced once for every batch and eps
        certified: dict[float, torch.Tensor] = {}
        for t in threats:
            masks = [self._verify(bounded, x[i : i + bs].to(dev), y[i : i + bs].to(dev), t).cpu()
                     for i in range(0, len(x), bs)]
            certified[t.eps] = torch.cat(masks)
        if progress is not None:
            progress.advance(len(x))
        records = {f"verified/{r:g}": m.numpy().astype(np.int64) for r, m in certified.items()}
        return Certification(certified=certified, predict=pred, forwards=0, seconds=time.perf_counter() - t0,
                             records=records)


@certifiers.register("ibp")
class IBPCertifier(BoundCertifier):
    """Interval bound propagation (Gowal et al. 2018): the cheapest bounds (about two
    forward passes), tight only for models trained with them."""

    method = "ibp"


@certifiers.register("crown-ibp")
class CrownIBPCertifier(BoundCertifier):
    """CROWN-IBP (Zhang et al. ICLR 2020): IBP intermediate bounds, one CROWN backward
    pass for the margins (never looser than IBP's)."""

    method = "crown-ibp"


@certifiers.register("crown")
class CrownCertifier(BoundCertifier):
    """CROWN (Zhang et al. NeurIPS 2018): linear relaxations for the margins and every
    intermediate layer (one backward pass per unstable neuron: small models)."""

    method = "crown"


@certifiers.register("alpha-crown")
class AlphaCrownCertifier(BoundCertifier):
    """alpha-CROWN (Xu et al. ICLR 2021): CROWN with the final pass's lower ReLU slopes
    optimised by ``alpha_steps`` Adam steps of size ``alpha_lr``; never looser than CROWN."""

    method = "alpha-crown"

    def __init__(self, alpha_steps: int = 20, alpha_lr: float = 0.1) -> None:
        self.alpha_steps = check_int(alpha_steps, "alpha_steps", minimum=0)
        self.alpha_lr = check_float(alpha_lr, "alpha_lr", low=0.0, low_open=True)

    def get_params(self) -> dict[str, Any]:
        return {"alpha_steps": self.alpha_steps, "alpha_lr": self.alpha_lr}


def create(name: str, /, **params: Any) -> Certifier:
    """Build a registered certifier: ``create("smoothing", sigma=0.5)``."""
    return certifiers.create(name, **params)


def available(pattern: str = "*") -> list[str]:
    return certifiers.available(pattern)
