"""Learning-rate schedules as pure functions of training progress.

The learning rate at optimiser step ``t`` of ``T`` is ``lr * factor(t, T)``; being a
pure function of the step, it needs no state and resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from robustlab.errors import ConfigError

SCHEDULES = ("constant", "cosine", "multistep", "onecycle")


def lr_factor(
    schedule: str,
    step: int,
    total_steps: int,
    *,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    peak: float = 0.4,
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    - ``constant``: 1.
    - ``cosine``: ``0.5 (1 + cos(pi t / T))`` (Loshchilov & Hutter 2017, SGDR, without restarts).
    - ``multistep``: ``gamma ** (#milestones passed)``; milestones >= 1 are epochs,
      milestones < 1 are fractions of training (e.g. 0.5, 0.75 as in Rice et al. 2020).
    - ``onecycle``: piecewise linear 0 -> 1 at ``peak`` of training -> 0 (the cyclic
      schedule of Wong, Rice & Kolter 2020, "Fast is better than free").
    - ``warmup_epochs`` > 0 multiplies by a linear ramp from 1/steps to 1 over that span.
    """
    if schedule not in SCHEDULES:
        from robustlab.registry import close_matches

        near = close_matches(schedule, SCHEDULES)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ConfigError(f"unknown schedule {schedule!r}.{hint} Available: {', '.join(SCHEDULES)}.")
    t = step / max(total_steps, 1)
    if schedule == "constant":
        f = 1.0
    elif schedule == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    elif schedule == "multistep":
        epochs = total_steps / max(steps_per_epoch, 1)
        passed = 0
        for m in milestones:
            at = m if m >= 1 else m * epochs
            if step >= at * steps_per_epoch:
                passed += 1
        f = gamma**passed
    else:  # onecycle
        f = t / peak if t < peak else max(0.0, (1.0 - t) / (1.0 - peak))
    warm = warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        f *= (step + 1) / warm
    return f
