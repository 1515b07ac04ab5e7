"""The small MNIST CNN of Wong, Rice & Kolter (2020).

E. Wong, L. Rice, J. Z. Kolter. "Fast is better than free: Revisiting adversarial
training." ICLR 2020. Architecture from the official code, ``MNIST/mnist_net.py`` in
github.com/locuslab/fast_adversarial (the same network as the "small" model of Wong &
Kolter 2018, "Provable defenses against adversarial examples via the convex outer
adversarial polytope").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models.layers import ZooModel, flat_features
from robustlab.models.registry import models


@models.register("mnist_net")
class MnistNet(ZooModel):
    """``conv(16, 4x4, s2, p1) -> ReLU -> conv(32, 4x4, s2, p1) -> ReLU -> flatten ->
    fc(100) -> ReLU -> fc(num_classes)``.

    On 28x28 MNIST the flatten size is ``32*7*7`` exactly as in the official code; for
    other input sizes it is computed with a dummy forward pass, so the network also runs
    on 8x8 digits (``32*2*2``) or 32x32 images (``32*8*8``). PyTorch default
    initialisation, as in the official code. The layer indices inside ``layers`` match the
    official ``nn.Sequential`` (``layers.0`` conv1, ``layers.2`` conv2, ``layers.5`` fc1,
    ``layers.7`` fc2), so official checkpoints convert with ``prefix="layers."``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if input_size is None:
            raise ConfigError(
                "mnist_net is convolutional and needs image inputs: pass in_channels=C and "
                "input_size=(H, W) (use 'mlp' for vector data)."
            )
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            mean=mean,
            std=std,
        )
        convs = [
            nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        ]
        flat = flat_features(nn.Sequential(*convs), in_channels, input_size, "mnist_net")
        self.layers = nn.Sequential(
            *convs, nn.Linear(flat, 100), nn.ReLU(), nn.Linear(100, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(x))
