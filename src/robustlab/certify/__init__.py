"""Certified robustness: guarantees to show beside the attacks' upper bounds.

- randomized smoothing (Cohen, Rosenfeld & Kolter 2019): :class:`Smooth` (PREDICT and
  CERTIFY), :func:`certify_dataset` (per-point certificates, the reference's TSV,
  certified accuracy at a radius), the statistics in :mod:`robustlab.certify.stats`;
- certifiers for the evaluation path (``Measurement(kind="certify")``): the
  ``certifiers`` registry (``robustlab ls certifiers``).

>>> from robustlab import certify
>>> pred, radius = certify.Smooth(model, num_classes=10, sigma=0.25).certify(x, n=10_000, seed=0)
>>> res = certify.certify_dataset(model, x, y, sigma=0.25, n=10_000)
>>> res.certified_accuracy(0.5)
"""

from __future__ import annotations

from robustlab.certify import stats
from robustlab.certify.base import (
    Certification,
    Certifier,
    SmoothingCertifier,
    available,
    certifiers,
    create,
)
from robustlab.certify.smoothing import (
    ABSTAIN,
    NOISE_BLOCK,
    CertificationResult,
    Certificates,
    Smooth,
    certify_dataset,
    sample_counts,
)

__all__ = [
    "ABSTAIN",
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
