"""End-of-epoch checks: those an objective runs (and that can stop a run), and the
Trainer's own check that training has not collapsed to chance.

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

:func:`chance_check` is the Trainer's ``training-at-chance`` check (see
:class:`~robustlab.train.Trainer`): is the model any better than a constant prediction?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab import attacks as _attacks
from robustlab.attacks import ThreatModel
from robustlab.errors import ConfigError
from robustlab.evaluate import predict_logits, robust_accuracy
from robustlab.validation import check_choice, check_float, check_int, check_subset

CO_ACTIONS = ("rollback", "stop", "record")
#: accuracy points above the best constant prediction below which training is "at chance"
CHANCE_MARGIN = 0.02


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


@dataclass
class ChanceCheck:
    """What :func:`chance_check` measured on ``points`` training points."""

    accuracy: float  # clean accuracy against the training labels
    majority_share: float  # accuracy of always predicting the most common label
    majority_label: int
    top_prediction: int  # the class the model predicts most often
    top_share: float  # ... and the share of predictions that are that class
    points: int
    margin: float = CHANCE_MARGIN

    @property
    def at_chance(self) -> bool:
        """No better than the best constant prediction plus ``margin``."""
        return self.accuracy <= self.majority_share + self.margin

    def __str__(self) -> str:
        return (
            f"the model classifies {100 * self.accuracy:.1f}% of {self.points} training points correctly "
            f"(clean inputs, eval mode) against {100 * self.majority_share:.1f}% for always predicting the "
            f"most common label, {self.majority_label}; {100 * self.top_share:.0f}% of its predictions are "
            f"class {self.top_prediction}"
        )


@torch.no_grad()
def chance_check(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, margin: float = CHANCE_MARGIN, batch_size: int = 512
) -> ChanceCheck:
    """Is ``model`` at chance on ``(x, y)``, i.e. no better than a constant classifier?

    Definition: the model's clean predictions (eval mode, mode restored afterwards) on
    ``x`` are compared with the labels ``y`` (the *training* labels, noisy or not); the
    model is at chance when its accuracy is at most the share of the most common label
    (the accuracy of the best constant prediction) plus ``margin`` (2 points).

    Why this works both ways: a constant classifier predicting class ``c`` scores exactly
    the share of ``c``, at most the majority share, so it is always at chance; a
    classifier whose predictions carry no information about the labels scores
    ``sum_c P(pred = c) share(c)``, again at most the majority share. A model that has
    learned the task is far above it even when most labels are wrong: with symmetric
    noise of rate ``rho`` over ``K`` balanced classes, predicting the clean class scores
    ``1 - rho`` (0.2 at 80% noise and K = 10) against a majority share near ``1 / K``.
    ``top_share`` (the share of the most predicted class) is reported to tell a collapse
    onto one class (100%) from predictions unrelated to the input.
    """
    if len(x) == 0:
        raise ConfigError("the chance check needs at least one point.")
    pred = predict_logits(model, x, batch_size=batch_size).argmax(1).cpu()
    y = y.cpu().long()
    n = len(y)
    k = int(max(int(y.max()), int(pred.max())) + 1)
    label_counts = torch.bincount(y, minlength=k)
    pred_counts = torch.bincount(pred, minlength=k)
    return ChanceCheck(
        accuracy=float((pred == y).sum()) / n,
        majority_share=float(label_counts.max()) / n,
        majority_label=int(label_counts.argmax()),
        top_prediction=int(pred_counts.argmax()),
        top_share=float(pred_counts.max()) / n,
        points=n,
        margin=margin,
    )


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
        self.threshold = check_float(threshold, "co_threshold", low=0.0, high=1.0, low_open=True)
        self.action = check_choice(action, "co_action", CO_ACTIONS)
        self.steps = check_int(steps, "co_steps", minimum=1)
        self.rel_step_size = check_float(rel_step_size, "co_rel_step_size", low=0.0, low_open=True)
        self.batch_size = check_subset(batch_size, "co_batch_size")
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
        acc = robust_accuracy(model, self.x, self.y, threat, self.attack, generator=generator).accuracy
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


__all__ = ["CHANCE_MARGIN", "CO_ACTIONS", "CatastrophicOverfittingCheck", "ChanceCheck", "EpochVerdict", "chance_check"]
