"""End-of-epoch checks that can stop a run, and robust accuracy on a small held-out set.

An objective may implement ``end_epoch(model, epoch) -> EpochVerdict | None``; the
:class:`~robustlab.train.Trainer` calls it after every epoch's last optimiser step, puts
the verdict's ``metrics`` into that epoch's history record and acts on its ``action``:

- ``None``: carry on;
- ``"stop"``: stop training after this epoch, keeping the current weights;
- ``"rollback"``: restore the weights (and EMA) the model had when this epoch began,
  then stop.

Either way the history record of that epoch says so (``record["stopped"]`` holds the
reason) and the checkpoint remembers it, so resuming a stopped run does not train on.

:class:`CatastrophicOverfittingCheck` is the check of Wong, Rice & Kolter (2020) used by
the single-step objectives (``fgsm-rs``, and optionally ``gradalign``/``aaer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab import attacks as _attacks
from robustlab.attacks import ThreatModel
from robustlab.errors import ConfigError

CO_ACTIONS = ("rollback", "stop", "record")


@dataclass
class EpochVerdict:
    """What an end-of-epoch check found: metrics for the history and an optional action
    (``None``, ``"stop"`` or ``"rollback"``) with a sentence saying why."""

    metrics: dict[str, Any] = field(default_factory=dict)
    action: str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.action not in (None, "stop", "rollback"):
            raise ConfigError(f"EpochVerdict.action must be None, 'stop' or 'rollback', got {self.action!r}.")


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: _attacks.Attack,
    threat: ThreatModel,
    *,
    generator: torch.Generator,
    batch_size: int = 512,
) -> float:
    """Share of ``(x, y)`` that ``model`` classifies correctly and ``attack`` does not
    break (the attack's evaluation call: eval mode, full precision re-check)."""
    if len(x) == 0:
        return float("nan")
    dev = next(model.parameters()).device
    robust = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        res = attack(model, xb, yb, threat, generator=generator)
        robust += int(res.robust.sum())
    return robust / len(x)


class CatastrophicOverfittingCheck:
    """The catastrophic-overfitting check of Wong, Rice & Kolter (2020), "Fast is better
    than free: Revisiting adversarial training", Sec. 5.1 and the ``--early-stop`` option
    of the official code (locuslab/fast_adversarial, ``CIFAR10/train_fgsm.py``).

    After every epoch the model's PGD accuracy on a training minibatch is measured; when
    it falls by more than ``threshold`` below the previous epoch's value, catastrophic
    overfitting is declared. The official code then stops and keeps the previous
    epoch's weights (``action="rollback"``, the default); ``"stop"`` stops and keeps the
    current weights; ``"record"`` only records the finding.

    Defaults from the official code: PGD with ``steps=5``, 1 restart, step ``2/255`` at
    ``eps = 8/255`` (``rel_step_size=0.25``), threshold ``0.2``. Deviation: the official
    code checks the first minibatch of each epoch; here the minibatch is the first one
    the objective sees and stays **fixed** for the whole run (and is checkpointed), so the
    per-epoch numbers are comparable and resume is exact.
    """

    def __init__(
        self,
        threshold: float = 0.2,
        action: str = "rollback",
        steps: int = 5,
        rel_step_size: float = 0.25,
        batch_size: int | None = None,
    ) -> None:
        if not 0.0 < float(threshold) <= 1.0:
            raise ConfigError(f"the catastrophic-overfitting threshold must lie in (0, 1], got {threshold}.")
        if action not in CO_ACTIONS:
            raise ConfigError(f"co_action must be one of {', '.join(CO_ACTIONS)}, got {action!r}.")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"co_batch_size must be >= 1, got {batch_size}.")
        self.threshold = float(threshold)
        self.action = action
        self.steps = int(steps)
        self.rel_step_size = float(rel_step_size)
        self.batch_size = batch_size
        self.attack = _attacks.create("pgd", steps=self.steps, rel_step_size=self.rel_step_size, restarts=1)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.previous: float | None = None
        self.fired_at: int | None = None

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Remember the first training minibatch (later calls are ignored)."""
        if self.x is None:
            n = len(x) if self.batch_size is None else min(self.batch_size, len(x))
            self.x = x[:n].detach().clone()
            self.y = y[:n].detach().clone()

    def check(self, model: nn.Module, threat: ThreatModel, generator: torch.Generator, epoch: int) -> EpochVerdict:
        """PGD accuracy on the check batch after ``epoch`` (0-based) and the verdict."""
        if self.x is None or self.y is None:
            return EpochVerdict()
        acc = robust_accuracy(model, self.x, self.y, self.attack, threat, generator=generator)
        prev = self.previous
        fired = prev is not None and acc < prev - self.threshold
        metrics: dict[str, Any] = {"co_pgd_accuracy": acc, "co_detected": bool(fired)}
        if not fired:
            self.previous = acc
            return EpochVerdict(metrics)
        assert prev is not None
        self.fired_at = epoch
        what = (
            f"catastrophic overfitting in epoch {epoch + 1}: PGD-{self.steps} accuracy on the fixed "
            f"check batch fell from {prev:.3f} to {acc:.3f} (drop {prev - acc:.3f} > threshold "
            f"{self.threshold:g})"
        )
        if self.action == "rollback":
            return EpochVerdict(metrics, "rollback", what + f"; weights rolled back to the end of epoch {epoch}; training stopped")
        if self.action == "stop":
            return EpochVerdict(metrics, "stop", what + "; training stopped with the current weights")
        self.previous = acc
        return EpochVerdict(metrics)

    def state_dict(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "y": self.y,
            "previous": self.previous,
            "fired_at": self.fired_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x = state.get("x")
        self.y = state.get("y")
        self.previous = state.get("previous")
        self.fired_at = state.get("fired_at")


__all__ = ["CO_ACTIONS", "CatastrophicOverfittingCheck", "EpochVerdict", "robust_accuracy"]
