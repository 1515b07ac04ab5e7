"""One training loop (:class:`Trainer`) plus pluggable objectives (:class:`Objective`).

>>> from robustlab import train
>>> trainer = train.Trainer(model, train.create("erm", loss="ce"), epochs=20)
>>> history = trainer.fit(train_set, val_set)
"""

from __future__ import annotations

from robustlab.train.ema import WeightEMA
from robustlab.train.objectives import ERM, Objective, available, create, objectives
from robustlab.train.schedules import SCHEDULES, lr_factor
from robustlab.train.trainer import Trainer, clean_accuracy_of, derive_seed

__all__ = [
    "ERM",
    "Objective",
    "SCHEDULES",
    "Trainer",
    "WeightEMA",
    "available",
    "clean_accuracy_of",
    "create",
    "derive_seed",
    "lr_factor",
    "objectives",
]
