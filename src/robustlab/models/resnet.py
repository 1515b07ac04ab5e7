"""ResNet-18 with the CIFAR stem.

K. He, X. Zhang, S. Ren, J. Sun. "Deep Residual Learning for Image Recognition."
CVPR 2016. The CIFAR adaptation of the ImageNet ResNet-18 widely used in robustness work
(e.g. the ``ResNet18`` of github.com/kuangliu/pytorch-cifar, used by TRADES, MART and
many adversarial-training codebases): a 3x3 stride-1 stem without max-pool, four stages
of two basic blocks (64, 128, 256, 512 channels), global average pooling, a linear layer.
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


class BasicBlock(nn.Module):
    """``conv3x3 -> BN -> ReLU -> conv3x3 -> BN``, plus the shortcut, then ReLU.

    The shortcut is the identity, or a 1x1 convolution + BN when the shape changes
    (He et al.'s option B).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@models.register("resnet18")
class ResNet18(ZooModel):
    """ResNet-18 (He et al. 2016) with the CIFAR stem (3x3 conv, stride 1, no max-pool).

    Adaptive global average pooling before the classifier, so any input size works
    (8x8 digits, 28x28 MNIST, 32x32 CIFAR). 11,173,962 parameters with 10 classes and
    3 input channels. PyTorch default initialisation.

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
                "resnet18 is convolutional and needs image inputs: pass in_channels=C and "
                "input_size=(H, W) (use 'mlp' for vector data)."
            )
        width = check_int(width, "resnet18 width", minimum=1)
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            mean=mean,
            std=std,
        )
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = width
        stages = []
        for i, stride in enumerate((1, 2, 2, 2)):
            out_planes = width * 2**i
            stages.append(
                nn.Sequential(
                    BasicBlock(planes, out_planes, stride), BasicBlock(out_planes, out_planes, 1)
                )
            )
            planes = out_planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))
