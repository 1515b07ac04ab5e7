"""Robust losses + registry.

>>> from robustlab import losses
>>> loss = losses.create("label_smoothing", smoothing=0.1, reduction="none")

Every loss is an ``nn.Module`` whose ``forward(logits, target)`` returns per-sample
losses when built with ``reduction="none"``.
"""

from __future__ import annotations

from robustlab.losses import standard  # noqa: F401  (registers the built-ins)
from robustlab.losses.base import Loss, available, create, losses

__all__ = ["Loss", "available", "create", "losses"]
