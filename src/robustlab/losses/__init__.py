"""Robust losses for learning with noisy labels + registry and published presets.

>>> from robustlab import losses
>>> loss = losses.create("gce", q=0.7, reduction="none")
>>> sce = losses.create("sce", reduction="none", **losses.preset("sce", "cifar100"))
>>> losses.available("nce*")
['nce', 'nce+mae', 'nce+rce']

Every loss is an ``nn.Module`` whose ``forward(logits, target)`` returns per-sample
losses when built with ``reduction="none"``. The number of classes is read from
``logits.shape[1]``.

Registered losses: ``ce``, ``label_smoothing``, ``focal``, ``mae``, ``gce``, ``rce``,
``sce``, ``nce``, ``nfl``, ``ngce``, the active-passive pairs ``nce+rce``, ``nce+mae``,
``nfl+rce``, ``nfl+mae``, ``ngce+rce``, ``ngce+mae``, ``comp-sum``, ``ldr-kl``,
``bootstrap-soft``, ``bootstrap-hard`` and the stateful ``truncated-lq`` and ``aldr-kl``.

Stateful losses (``loss.needs_indices`` is True) keep per-sample state and are called as
``loss(logits, target, index)`` with the batch's dataset indices; ``loss.setup(n, k)``
and ``loss.start_epoch(epoch)`` complete the protocol (see :mod:`robustlab.losses.base`).
"""

from __future__ import annotations

from robustlab.losses import (  # noqa: F401  (modules register their losses)
    active_passive,
    bootstrap,
    compsum,
    functional,
    ldr,
    robust,
    standard,
    truncated,
)
from robustlab.losses.base import Loss, StatefulLoss, available, create, losses
from robustlab.losses.presets import Preset, preset, presets

__all__ = [
    "Loss",
    "Preset",
    "StatefulLoss",
    "available",
    "create",
    "functional",
    "losses",
    "preset",
    "presets",
]
