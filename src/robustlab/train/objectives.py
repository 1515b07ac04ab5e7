"""Training objectives: what differs between ERM, adversarial and noisy-label training.

An :class:`Objective` has one method that matters, :meth:`Objective.loss`, returning
per-sample losses and per-sample metrics for a batch. The :class:`~robustlab.train.Trainer`
owns everything else (optimiser, schedule, checkpoints, progress).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robustlab.losses import Loss
from robustlab.losses import create as create_loss
from robustlab.registry import Registry

objectives: Registry[Objective] = Registry("objective")


class Objective:
    """Base class. Subclasses implement :meth:`loss`.

    Attributes
    ----------
    needs_indices: the objective keeps per-sample state and must receive the batch's
        dataset indices (the Trainer refuses data without them before training starts).
    generator: a ``torch.Generator`` set by the Trainer at the start of every epoch
        (seeded from the run's seed and the epoch), for random starts and sampling.
    """

    needs_indices: ClassVar[bool] = False

    def __init__(self) -> None:
        self.generator: torch.Generator | None = None

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample losses ``(B,)`` and per-sample metrics (each ``(B,)``) for a batch."""
        raise NotImplementedError

    def start_epoch(self, epoch: int, generator: torch.Generator) -> None:
        """Called by the Trainer before each epoch (0-based)."""
        self.generator = generator

    def setup(self, num_samples: int, num_classes: int) -> None:
        """Called once before training with the training-set size (for per-sample state)."""

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a checkpoint (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def get_params(self) -> dict[str, Any]:
        return {}


def accuracy_metric(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample 0/1 correctness of ``argmax(logits)`` against ``y``."""
    return (logits.detach().argmax(1) == y).float()


@objectives.register("erm")
class ERM(Objective):
    """Empirical risk minimisation: the mean of a per-sample loss from the losses registry.

    ``ERM("gce", q=0.7)`` trains with GCE; ``ERM()`` with cross-entropy.
    """

    def __init__(self, loss: str | Loss = "ce", **loss_params: Any) -> None:
        super().__init__()
        if isinstance(loss, Loss):
            self.criterion = loss
            self.loss_name = getattr(type(loss), "registry_name", type(loss).__name__)
        else:
            self.criterion = create_loss(loss, reduction="none", **loss_params)
            self.loss_name = loss
        self.loss_params = dict(loss_params)
        self.criterion.reduction = "none"

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(x)
        return self.criterion(logits, y), {"accuracy": accuracy_metric(logits, y)}

    def get_params(self) -> dict[str, Any]:
        return {"loss": self.loss_name, **self.loss_params}


def create(name: str, /, **params: Any) -> Objective:
    """Build a registered objective: ``objectives.create("erm", loss="ce")``."""
    return objectives.create(name, **params)


def available(pattern: str = "*") -> list[str]:
    return objectives.available(pattern)
