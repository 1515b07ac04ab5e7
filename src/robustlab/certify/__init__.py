"""Certified robustness: guarantees to show beside the attacks' upper bounds.

- randomized smoothing (Cohen, Rosenfeld & Kolter 2019): :class:`Smooth` (PREDICT and
  CERTIFY), :func:`certify_dataset` (per-point certificates, the reference's TSV,
  certified accuracy at a radius), the statistics in :mod:`robustlab.certify.stats`;
- dual randomized smoothing (Xia et al. 2024) with the tight two-half radius:
  :class:`~robustlab.certify.dual.DualSmooth`;
- the soft smoothed classifier as a module, for attacks and SmoothAdv:
  :class:`~robustlab.certify.soft.SoftSmoothed`;
- conformal prediction, plain and robust (RSCP+, Yan, Romano & Weng 2024):
  :class:`~robustlab.certify.conformal.SplitConformal`,
  :class:`~robustlab.certify.conformal.RSCPPlus`;
- bound propagation (IBP, CROWN, CROWN-IBP, alpha-CROWN): :func:`compute_bounds`,
  :func:`margin_spec`, :func:`verify`, :func:`verified_accuracy` — deterministic
  certificates of the model itself (:mod:`robustlab.certify.bounds`);
- certifiers for the evaluation path (``Measurement(kind="certify")``): the
  ``certifiers`` registry (``robustlab ls certifiers``).

>>> from robustlab import certify
>>> pred, radius = certify.Smooth(model, num_classes=10, sigma=0.25).certify(x, n=10_000, seed=0)
>>> res = certify.certify_dataset(model, x, y, sigma=0.25, n=10_000)
>>> res.certified_accuracy(0.5)
>>> certify.verified_accuracy(model, x, y, ThreatModel("linf", 0.1), method="crown-ibp")
"""

from __future__ import annotations

from robustlab.certify import bounds, conformal, dual, soft, stats
from robustlab.certify.base import (
    BoundCertifier,
    Certification,
    Certifier,
    SmoothingCertifier,
    available,
    certifiers,
    create,
)
from robustlab.certify.bounds import compute_bounds, margin_spec, verified_accuracy, verify
from robustlab.certify.conformal import (
    RSCPPlus,
    SplitConformal,
    conformal_attack,
    evaluate_conformal,
)
from robustlab.certify.dual import DualSmooth, dual_radius, split_halves
from robustlab.certify.smoothing import (
    ABSTAIN,
    NOISE_BLOCK,
    Certificates,
    CertificationResult,
    Smooth,
    certify_dataset,
    sample_counts,
)
from robustlab.certify.soft import SoftSmoothed

__all__ = [
    "ABSTAIN",
    "BoundCertifier",
    "bounds",
    "compute_bounds",
    "margin_spec",
    "verified_accuracy",
    "verify",
    "DualSmooth",
    "RSCPPlus",
    "SoftSmoothed",
    "SplitConformal",
    "conformal",
    "conformal_attack",
    "dual",
    "dual_radius",
    "evaluate_conformal",
    "soft",
    "split_halves",
    "NOISE_BLOCK",
    "Certificates",
    "Certification",
    "CertificationResult",
    "Certifier",
    "Smooth",
    "SmoothingCertifier",
    "available",
    "certifiers",
    "certify_dataset",
    "create",
    "sample_counts",
    "stats",
]
