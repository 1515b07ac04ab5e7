"""Optional adapters for `timm <https://github.com/huggingface/pytorch-image-models>`_ and
`torchvision <https://pytorch.org/vision>`_ architectures.

Neither package is a dependency of robustlab: they are imported only when an adapter is
used, and a missing *or broken* installation (torchvision compiled against another torch
raises ``RuntimeError`` at import) becomes a :class:`~robustlab.errors.ConfigError`
that says how to install it.

>>> net = models.create("timm", arch="resnet18", num_classes=10, in_channels=3,
...                     input_size=32)                         # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn

from robustlab.errors import ConfigError
from robustlab.models.layers import ZooModel
from robustlab.models.registry import models


def _import_optional(package: str, pip_name: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except (ImportError, RuntimeError, OSError) as e:
        raise ConfigError(
            f"the {package!r} model adapter needs the optional package {pip_name!r}, which "
            f"could not be imported ({type(e).__name__}: {e}). Install a version matching "
            f"your torch ({torch.__version__}) with `pip install {pip_name}`, or use a "
            f"built-in model (robustlab.models.available())."
        ) from e


def timm_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)``, imported lazily (no Normalize layer)."""
    timm = _import_optional("timm", "timm")
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:  # timm raises RuntimeError for unknown architectures
        raise ConfigError(f"timm cannot build {name!r}: {e}") from e


def torchvision_model(name: str, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, **kwargs)``, imported lazily (no Normalize)."""
    tv = _import_optional("torchvision", "torchvision")
    try:
        return tv.models.get_model(name, **kwargs)
    except ValueError as e:  # unknown architecture
        raise ConfigError(f"torchvision cannot build {name!r}: {e}") from e


class AdaptedModel(ZooModel):
    """``Normalize`` followed by an external network ``net`` (timm or torchvision)."""

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            mean=mean,
            std=std,
        )
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


@models.register("timm")
def timm_adapter(
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int] | None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    arch: str = "resnet18",
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Any ``timm`` architecture ``arch`` behind robustlab's Normalize layer.

    ``num_classes`` and ``in_chans`` are passed to ``timm.create_model``; remaining
    keywords go there too. With ``pretrained=True`` give the pretraining ``mean``/``std``
    (timm's are in ``net.pretrained_cfg``), since robustlab inputs are in ``[0, 1]``.
    """
    if input_size is None:
        raise ConfigError("the timm adapter needs image inputs (in_channels=C, input_size=(H, W)).")
    net = timm_model(
        arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs
    )
    return AdaptedModel(
        net,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        mean=mean,
        std=std,
    )


@models.register("torchvision")
def torchvision_adapter(
    *,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int] | None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    arch: str = "resnet18",
    **kwargs: Any,
) -> nn.Module:
    """Any ``torchvision.models`` architecture ``arch`` behind robustlab's Normalize layer.

    ``num_classes`` and the remaining keywords go to ``torchvision.models.get_model``.
    torchvision models expect 3 input channels (ImageNet stems); their first layer is not
    adapted here.
    """
    if input_size is None:
        raise ConfigError(
            "the torchvision adapter needs image inputs (in_channels=C, input_size=(H, W))."
        )
    net = torchvision_model(arch, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        raise ConfigError(
            f"torchvision architectures take 3 input channels, the data has {in_channels}. "
            f"Use the 'timm' adapter (in_chans) or a built-in model."
        )
    return AdaptedModel(
        net,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        mean=mean,
        std=std,
    )


__all__ = ["AdaptedModel", "timm_model", "torchvision_model"]
