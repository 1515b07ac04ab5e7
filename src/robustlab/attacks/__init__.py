"""Threat models, attacks, ensembles and the audit.

>>> from robustlab import attacks
>>> pgd = attacks.create("pgd", steps=20)
>>> result = pgd(model, x, y, threat=attacks.ThreatModel("linf", 8 / 255))
>>> result.success.float().mean()
>>> # several budgets in one call (successes at a smaller eps are reused):
>>> results = attacks.create("standard")(model, x, y, attacks.ThreatModel.grid("linf", ["2/255", "8/255"]))

Every attack follows one template (:class:`Attack`): validated inputs, eval mode,
input gradients only, best iterate kept, per-sample success re-checked in full
precision. Registered: ``fgsm``, ``pgd``, ``apgd`` (any loss), ``apgd-ce``,
``apgd-dlr``, ``apgd-t``, ``pma``, ``eot`` (wrapper for randomised models), the
ensembles ``standard`` (AutoAttack's protocol, :data:`PROTOCOL`), ``fast``, ``rand``
and ``ensemble`` (custom members), ``fab``, ``fab-t``, ``square`` and ``cw-l2``.
Training objectives call :meth:`Attack.generate`.

Modules: :mod:`~robustlab.attacks.threat` (norm geometry), :mod:`~robustlab.attacks.losses`
(objectives), :mod:`~robustlab.attacks.engine` (results, context, active rows),
:mod:`~robustlab.attacks.base` (the template and the registry), one module per attack
family, :mod:`~robustlab.attacks.ensemble` and :mod:`~robustlab.attacks.audit`.
"""

from __future__ import annotations

from robustlab.attacks import apgd, cw, ensemble, eot, fab, pgd, square, transfer  # noqa: F401  (register the attacks)
from robustlab.attacks.apgd import APGDStepSchedule, L1SparsitySchedule, apgd_checkpoints
from robustlab.attacks.audit import Flag, audit
from robustlab.attacks.base import (
    Attack,
    AttackWarning,
    ProbabilityOutputWarning,
    attacks,
    available,
    create,
)
from robustlab.attacks.engine import ActiveSet, AttackContext, AttackResult, BestTracker
from robustlab.attacks.ensemble import FAST_PROTOCOL, PROTOCOL, RAND_PROTOCOL, Ensemble
from robustlab.attacks.losses import (
    attack_loss,
    ce_loss,
    dlr_loss,
    kl_loss,
    logit_change_loss,
    margin_loss,
    probability_margin_loss,
)
from robustlab.attacks.threat import ThreatModel, parse_eps, project_l1_box

__all__ = [
    "APGDStepSchedule",
    "ActiveSet",
    "Attack",
    "AttackContext",
    "AttackResult",
    "AttackWarning",
    "BestTracker",
    "Ensemble",
    "FAST_PROTOCOL",
    "Flag",
    "L1SparsitySchedule",
    "PROTOCOL",
    "ProbabilityOutputWarning",
    "RAND_PROTOCOL",
    "ThreatModel",
    "apgd_checkpoints",
    "attack_loss",
    "attacks",
    "audit",
    "available",
    "ce_loss",
    "create",
    "dlr_loss",
    "kl_loss",
    "logit_change_loss",
    "margin_loss",
    "parse_eps",
    "probability_margin_loss",
    "project_l1_box",
]
