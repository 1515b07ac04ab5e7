"""Base class and registry of classification losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustlab.errors import ConfigError
from robustlab.registry import Registry

losses: Registry[nn.Module] = Registry("loss")

_REDUCTIONS = ("mean", "sum", "none")


class Loss(nn.Module):
    """A loss on logits ``(N, K)`` and integer targets ``(N,)``.

    Subclasses implement :meth:`per_sample`, returning one loss per sample; the base
    class applies ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``). Constructors
    store their parameters only (scikit-learn style) so that :meth:`get_params`
    round-trips through configs.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ConfigError(
                f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}."
            )
        self.reduction = reduction

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.per_sample(logits, target)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters of this loss (for configs and reports)."""
        import inspect

        sig = inspect.signature(type(self).__init__)
        return {n: getattr(self, n) for n in sig.parameters if n != "self" and hasattr(self, n)}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())


def create(name: str, /, **params: Any) -> Loss:
    """Build a registered loss: ``losses.create("gce", q=0.7, reduction="none")``."""
    return losses.create(name, **params)  # type: ignore[return-value]


def available(pattern: str = "*") -> list[str]:
    """Names of the registered losses matching ``pattern``."""
    return losses.available(pattern)
