"""Threat models, attacks and (later) the standard ensemble.

>>> from robustlab import attacks
>>> pgd = attacks.create("pgd", steps=20)
>>> result = pgd(model, x, y, threat=attacks.ThreatModel("linf", 8 / 255))
>>> result.success.float().mean()

Every attack follows one template (:class:`Attack`): validated inputs, eval mode,
input gradients only, best iterate kept, per-sample success.
"""

from __future__ import annotations

from robustlab.attacks import pgd  # noqa: F401  (registers pgd, fgsm)
from robustlab.attacks.base import (
    Attack,
    AttackContext,
    AttackResult,
    BestTracker,
    attacks,
    available,
    create,
    margin_loss,
)
from robustlab.attacks.threat import ThreatModel, parse_eps

__all__ = [
    "Attack",
    "AttackContext",
    "AttackResult",
    "BestTracker",
    "ThreatModel",
    "attacks",
    "available",
    "create",
    "margin_loss",
    "parse_eps",
]
