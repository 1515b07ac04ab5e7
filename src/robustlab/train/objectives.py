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
        self.progress: float = 0.0  # fractional epochs done when the current step started
        self.total_epochs: int = 1

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample losses ``(B,)`` and per-sample metrics (each ``(B,)``) for a batch."""
        raise NotImplementedError

    def start_epoch(self, epoch: int, generator: torch.Generator) -> None:
        """Called by the Trainer before each epoch (0-based)."""
        self.generator = generator

    def bind(self, model: nn.Module, seed: int) -> None:
        """Called by the Trainer before :meth:`setup` with the model being trained (already
        on the training device) and the run's seed, for objectives that build modules from
        the model (co-teaching's peer network)."""

    def setup(self, num_samples: int, num_classes: int) -> None:
        """Called once before training with the training-set size (for per-sample state)."""

    def check_training(self, epochs: int) -> None:
        """Called before training starts with the number of epochs; raise
        :class:`~robustlab.errors.ConfigError` for settings that cannot work with it
        (e.g. a warm-up longer than training)."""

    def ramp_epochs(self) -> float:
        """Epochs over which the objective ramps its difficulty up (e.g. an eps warm-up);
        the Trainer's training-at-chance check only judges epochs that end after it."""
        return 0.0

    def set_progress(self, epoch: float, total_epochs: int) -> None:
        """Called by the Trainer before every optimiser step with the fractional number of
        epochs done (``epoch + batch / batches_per_epoch``), for per-step schedules such as
        an eps warm-up."""
        self.progress = float(epoch)
        self.total_epochs = int(total_epochs)

    def after_backward(self, model: nn.Module) -> None:
        """Called by the Trainer between the backward pass and the optimiser step (AWP
        restores its perturbed weights here, so the step applies to the original ones)."""

    def end_epoch(self, model: nn.Module, epoch: int) -> Any:
        """Called by the Trainer after each epoch (0-based); may return a
        :class:`~robustlab.train.monitors.EpochVerdict` to add metrics to the epoch's record
        or to stop or roll back training (the catastrophic-overfitting check of
        ``fgsm-rs``). The base class returns ``None``, and the Trainer then keeps no
        per-epoch weight snapshot."""
        return None

    def trainable_modules(self) -> list[nn.Module]:
        """Modules besides the model whose parameters the Trainer optimises too (e.g. the
        peer network of co-teaching). They are switched to train/eval mode with the model;
        their weights must be part of :meth:`state_dict` to survive a checkpoint."""
        return []

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


class CriterionObjective(Objective):
    """An objective built around one per-sample loss from the losses registry (ERM and the
    adversarial objectives): it hands the Trainer's hooks (dataset size, epochs, indices)
    on to a stateful loss."""

    def _init_criterion(self, loss: str | Loss, loss_params: dict[str, Any]) -> None:
        self.criterion = as_loss(loss, **loss_params)
        self.loss_name = loss if isinstance(loss, str) else getattr(type(loss), "registry_name", type(loss).__name__)
        self.loss_params = dict(loss_params)

    @property
    def needs_indices(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.criterion, "needs_indices", False))

    def setup(self, num_samples: int, num_classes: int) -> None:
        loss_setup(self.criterion, num_samples, num_classes)

    def start_epoch(self, epoch: int, generator: torch.Generator) -> None:
        super().start_epoch(epoch, generator)
        self.epoch = epoch
        hook = getattr(self.criterion, "start_epoch", None)
        if callable(hook):
            hook(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "criterion" in state:
            self.criterion.load_state_dict(state["criterion"])


@objectives.register("erm")
class ERM(CriterionObjective):
    """Empirical risk minimisation: the mean of a per-sample loss from the losses registry.

    ``ERM("gce", q=0.7)`` trains with GCE; ``ERM()`` with cross-entropy.
    """

    def __init__(self, loss: str | Loss = "ce", **loss_params: Any) -> None:
        super().__init__()
        self._init_criterion(loss, loss_params)

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(x)
        return apply_loss(self.criterion, logits, y, index), {"accuracy": accuracy_metric(logits, y)}

    def get_params(self) -> dict[str, Any]:
        return {"loss": self.loss_name, **self.loss_params}


def as_loss(loss: str | Loss, **loss_params: Any) -> Loss:
    """A per-sample (``reduction="none"``) loss from a registry name or a Loss instance."""
    if isinstance(loss, Loss):
        if loss_params:
            from robustlab.errors import ConfigError

            raise ConfigError("pass loss parameters either to the Loss instance or by name, not both.")
        criterion = loss
    else:
        criterion = create_loss(loss, reduction="none", **loss_params)
    criterion.reduction = "none"
    return criterion


def loss_setup(criterion: nn.Module, num_samples: int, num_classes: int) -> None:
    """Give a stateful loss (``needs_indices``) its per-sample state for the training set."""
    hook = getattr(criterion, "setup", None)
    if callable(hook):
        hook(num_samples, num_classes)


def apply_loss(
    criterion: nn.Module, logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
) -> torch.Tensor:
    """Per-sample losses; stateful losses get the batch's dataset indices."""
    if getattr(criterion, "needs_indices", False):
        return criterion(logits, y, index=index)
    return criterion(logits, y)


def create(name: str, /, **params: Any) -> Objective:
    """Build a registered objective: ``objectives.create("erm", loss="ce")``."""
    return objectives.create(name, **params)


def available(pattern: str = "*") -> list[str]:
    return objectives.available(pattern)
