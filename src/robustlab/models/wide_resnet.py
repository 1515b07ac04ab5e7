"""Wide residual networks, in the layout of the TRADES / MART code.

S. Zagoruyko, N. Komodakis. "Wide Residual Networks." BMVC 2016. Layout from
``models/wideresnet.py`` of github.com/yaodongyu/TRADES (Zhang et al., ICML 2019), also
used by MART (Wang et al., ICLR 2020) and most adversarial-training work since Madry et
al. (2018): a 3x3 stem with 16 channels, three groups of ``n = (depth - 4) / 6``
pre-activation basic blocks with ``16k, 32k, 64k`` channels (``k = widen_factor``;
strides 1, 2, 2), BN + ReLU, global average pooling, linear layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models.layers import ZooModel, conv_init_fan_out
from robustlab.models.registry import models
from robustlab.validation import check_float, check_int


class WideBasic(nn.Module):
    """Pre-activation block of the TRADES WideResNet (``BasicBlock`` there).

    ``BN -> ReLU -> conv3x3 -> BN -> ReLU -> [dropout] -> conv3x3``; when the number of
    channels changes, the pre-activated input also feeds a 1x1 projection shortcut
    (``convShortcut``). Module names follow the official code.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = float(dropout)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Module | None = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A group of ``n`` :class:`WideBasic` blocks (the first one may downsample)."""

    def __init__(
        self, n: int, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasic(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    dropout,
                )
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@models.register("wide_resnet", aliases=("wideresnet",))
class WideResNet(ZooModel):
    """WRN-``depth``-``widen_factor`` (Zagoruyko & Komodakis 2016), TRADES layout.

    Differences from the official TRADES file, none of which changes the function on
    32x32 inputs: the ``sub_block1`` module that TRADES constructs but never uses is left
    out (so WRN-34-10 has the usual 46,160,474 parameters, not 48.5M), and the final
    ``avg_pool2d(out, 8)`` is an adaptive average pool so any input size works.
    Initialisation as in TRADES: conv weights ``N(0, 2 / (9 * out_channels))``, BN 1/0,
    linear bias 0.

    Parameters
    ----------
    depth: ``6n + 4`` (TRADES' default 34).
    widen_factor: channel multiplier ``k`` (TRADES' default 10).
    dropout: dropout between the two convolutions of each block (default 0.0).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        depth: int = 34,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ) -> None:
        if input_size is None:
            raise ConfigError(
                "wide_resnet is convolutional and needs image inputs: pass in_channels=C and "
                "input_size=(H, W) (use 'mlp' for vector data)."
            )
        depth = check_int(depth, "wide_resnet depth", minimum=10)
        if (depth - 4) % 6 != 0:
            raise ConfigError(
                f"wide_resnet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), "
                f"got {depth!r}."
            )
        widen_factor = check_int(widen_factor, "wide_resnet widen_factor", minimum=1)
        dropout = check_float(dropout, "wide_resnet dropout", low=0.0, high=1.0, high_open=True)
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            mean=mean,
            std=std,
        )
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, dropout)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, dropout)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch[3], num_classes)
        conv_init_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.pool(out), 1))


def _preset(depth: int, widen_factor: int, name: str) -> type[WideResNet]:
    class Preset(WideResNet):
        __doc__ = (
            f"WRN-{depth}-{widen_factor} (Zagoruyko & Komodakis 2016), the TRADES/MART "
            f"layout of :class:`WideResNet` with depth={depth}, widen_factor={widen_factor}."
            f"\n\n    Parameters\n    ----------\n    dropout: dropout inside each block "
            f"(default 0.0)."
        )

        def __init__(
            self,
            *,
            num_classes: int,
            in_channels: int,
            input_size: tuple[int, int] | None,
            mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None,
            dropout: float = 0.0,
        ) -> None:
            super().__init__(
                num_classes=num_classes,
                in_channels=in_channels,
                input_size=input_size,
                mean=mean,
                std=std,
                depth=depth,
                widen_factor=widen_factor,
                dropout=dropout,
            )

    Preset.__name__ = Preset.__qualname__ = f"WRN{depth}x{widen_factor}"
    models.add(name, Preset)
    return Preset


WRN28x10 = _preset(28, 10, "wrn-28-10")
WRN34x10 = _preset(34, 10, "wrn-34-10")
