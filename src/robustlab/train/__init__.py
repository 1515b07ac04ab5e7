"""One training loop (:class:`Trainer`) plus pluggable objectives (:class:`Objective`).

>>> from robustlab import train
>>> trainer = train.Trainer(model, train.create("erm", loss="ce"), epochs=20)
>>> history = trainer.fit(train_set, val_set)

Adversarial training is an objective like any other (see :mod:`robustlab.train.adversarial`):

>>> obj = train.create("trades", eps="8/255", beta=6.0)
>>> train.Trainer(model, obj, epochs=20, val_attack="pgd", select="robust").fit(train_set, val_set)
"""

from __future__ import annotations

from robustlab.train import adversarial, dverge, noisy, pubdef  # noqa: F401  (register their objectives)
from robustlab.train.adversarial import (
    AAER,
    AWP,
    DONE,
    FGSMRS,
    MART,
    PGDAT,
    TRADES,
    AdvCompSum,
    AdversarialObjective,
    DONEMinibatch,
    GradAlign,
    done_weights,
)
from robustlab.train.certified import CrownIBPTraining, IBPTraining
from robustlab.train.ema import WeightEMA
from robustlab.train.monitors import (
    CatastrophicOverfittingCheck,
    ChanceCheck,
    EpochVerdict,
    chance_check,
)
from robustlab.train.nested_dropout import NestedCoTeaching, NestedDropout
from robustlab.train.noisy import ELR, ELR_PRESETS, PSKD, CoTeaching
from robustlab.train.objectives import ERM, Objective, available, create, objectives
from robustlab.train.schedules import SCHEDULES, lr_factor
from robustlab.train.smoothing import ConsistencyRegularization, GaussianAugmentation, SmoothAdv
from robustlab.train.trainer import Trainer, clean_accuracy_of, derive_seed

__all__ = [
    "ELR",
    "ELR_PRESETS",
    "PSKD",
    "CoTeaching",
    "NestedCoTeaching",
    "NestedDropout",
    "AAER",
    "AWP",
    "AdvCompSum",
    "AdversarialObjective",
    "CatastrophicOverfittingCheck",
    "ChanceCheck",
    "ConsistencyRegularization",
    "CrownIBPTraining",
    "DONE",
    "DONEMinibatch",
    "ERM",
    "EpochVerdict",
    "FGSMRS",
    "GaussianAugmentation",
    "GradAlign",
    "IBPTraining",
    "MART",
    "Objective",
    "PGDAT",
    "SCHEDULES",
    "SmoothAdv",
    "TRADES",
    "Trainer",
    "WeightEMA",
    "available",
    "chance_check",
    "clean_accuracy_of",
    "create",
    "derive_seed",
    "done_weights",
    "lr_factor",
    "objectives",
]
