"""Pre-activation ResNet-18, CIFAR variant.

K. He, X. Zhang, S. Ren, J. Sun. "Identity Mappings in Deep Residual Networks."
ECCV 2016 (full pre-activation unit, their Fig. 4(e)). CIFAR layout as used by
E. Wong, L. Rice, J. Z. Kolter, "Fast is better than free: Revisiting adversarial
training", ICLR 2020 (``CIFAR10/preact_resnet.py`` in github.com/locuslab/fast_adversarial)
and L. Rice, E. Wong, J. Z. Kolter, "Overfitting in adversarially robust deep learning",
ICML 2020 (``preactresnet.py`` in github.com/locuslab/robust_overfitting): 3x3 stem with
stride 1 and no max-pool, four stages of two blocks (64, 128, 256, 512 channels), a final
BN + ReLU, global average pooling and a linear layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models.layers import ZooModel
from robustlab.models.registry import models
from robustlab.validation import check_int


class PreActBlock(nn.Module):
    """``BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3`` plus the shortcut.

    When the shape changes, the 1x1 projection shortcut takes the *pre-activated* input
    (as in He et al.'s code and Rice et al. 2020); otherwise the shortcut is the identity.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


@models.register("preact_resnet18", aliases=("preactresnet18",))
class PreActResNet18(ZooModel):
    """Pre-activation ResNet-18 for small images (He et al. 2016; Rice et al. 2020).

    Global *adaptive* average pooling replaces the official ``avg_pool2d(out, 4)`` so
    the network takes any input size (identical on 32x32 inputs). 11,172,170 parameters
    with 10 classes and 3 input channels (the final BN of Rice et al. included). PyTorch default initialisation (the official
    model file has none of its own).

    Parameters
    ----------
    width: channels of the first stage (64 in the paper; stages use 1x, 2x, 4x, 8x).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        width: int = 64,
    ) -> None:
        if input_size is None:
            raise ConfigError(
                "preact_resnet18 is convolutional and needs image inputs: pass "
                "in_channels=C and input_size=(H, W) (use 'mlp' for vector data)."
            )
        width = check_int(width, "preact_resnet18 width", minimum=1)
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            mean=mean,
            std=std,
        )
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        planes = width
        stages = []
        for i, stride in enumerate((1, 2, 2, 2)):
            out_planes = width * 2**i
            stages.append(
                nn.Sequential(
                    PreActBlock(planes, out_planes, stride), PreActBlock(out_planes, out_planes, 1)
                )
            )
            planes = out_planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.pool(out), 1))
