"""Fully connected ReLU network (multi-layer perceptron)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models.layers import ZooModel
from robustlab.models.registry import models


@models.register("mlp")
class MLP(ZooModel):
    """``Normalize -> Flatten -> [Linear -> ReLU] * len(hidden) -> Linear``.

    Takes vector data (``input_size=None``, ``in_channels=D``) or images
    ``(C, H, W)``, which it flattens to ``C*H*W`` features after per-channel
    normalisation. ``hidden=()`` gives a linear (softmax-regression) model, whose
    adversarial and certified behaviour is known in closed form, which makes it the
    reference model for testing attacks and certificates.

    Parameters
    ----------
    hidden: widths of the hidden layers, default ``(256, 256)``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        hidden: Sequence[int] = (256, 256),
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            mean=mean,
            std=std,
        )
        if isinstance(hidden, int) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
        ):
            raise ConfigError(
                f"mlp hidden must be a list of positive layer widths, e.g. [256, 256] "
                f"(or [] for a linear model), got {hidden!r}."
            )
        dim = in_channels if input_size is None else in_channels * input_size[0] * input_size[1]
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(dim, int(width)), nn.ReLU()]
            dim = int(width)
        layers.append(nn.Linear(dim, num_classes))
        self.flatten = nn.Flatten()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.flatten(self.normalize(x)))
