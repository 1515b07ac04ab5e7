"""Exponential moving average of model weights (Polyak averaging as used in robust
training, e.g. Gowal et al. 2020, "Uncovering the Limits of Adversarial Training")."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustlab.validation import check_bool, check_float


class WeightEMA:
    """``ema <- decay * ema + (1 - decay) * w`` after every optimiser step.

    Floating-point buffers (e.g. batch-norm statistics) are averaged the same way;
    integer buffers are copied. ``warmup=True`` uses ``min(decay, (1+n)/(10+n))`` for
    the n-th update so early averages are not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        self.decay = check_float(decay, "ema_decay", low=0.0, high=1.0, low_open=True, high_open=True)
        self.warmup = check_bool(warmup, "warmup")
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay
        if self.warmup:
            d = min(d, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if torch.is_floating_point(v):
                s.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                s.copy_(v)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model``."""
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
