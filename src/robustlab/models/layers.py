"""Building blocks shared by the model zoo.

robustlab keeps input normalisation *inside* the model (see DESIGN, "Input space"):
every tensor handed to a model is a float in ``[0, 1]``, and the model's first layer,
:class:`Normalize`, maps it to the standardised space the weights were trained in.
Attacks, noise and certificates therefore all speak about the same ``[0, 1]`` space,
and an ``eps = 8/255`` budget means 8 grey levels whatever the dataset statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import ConfigError, ShapeMismatchError

INPUT_BOUNDS: tuple[float, float] = (0.0, 1.0)


def _as_vector(value: float | Sequence[float] | torch.Tensor, what: str) -> torch.Tensor:
    # explicit CPU: also under a ``torch.device("meta")`` context (load_model's shape check)
    t = torch.as_tensor(value, dtype=torch.float64, device="cpu").detach().reshape(-1)
    if t.numel() == 0:
        raise ConfigError(f"Normalize {what} is empty; give one value per channel.")
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"Normalize {what} contains NaN or inf: {t.tolist()}.")
    return t.to(torch.float32)


class Normalize(nn.Module):
    """Per-channel standardisation ``(x - mean) / std``, the first layer of every zoo model.

    Parameters
    ----------
    mean, std:
        One value per channel (images ``(N, C, H, W)``) or per feature (vectors
        ``(N, D)``), or a single value for all of them. Stored as float32 buffers of
        shape ``(C,)`` (part of the ``state_dict``, so a checkpoint carries its own
        normalisation); they are broadcast over the trailing spatial dimensions.
        ``mean=0, std=1`` is the identity (bit-exact).
    channels:
        The number of channels the model expects. Single values are repeated to this
        length, and inputs with another size in dimension 1 are refused even when the
        statistics would broadcast. ``None`` accepts any channel count that broadcasts.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        mean: float | Sequence[float] | torch.Tensor = 0.0,
        std: float | Sequence[float] | torch.Tensor = 1.0,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        m = _as_vector(mean, "mean")
        s = _as_vector(std, "std")
        if m.numel() != s.numel() and 1 not in (m.numel(), s.numel()):
            raise ConfigError(
                f"Normalize got {m.numel()} mean values but {s.numel()} std values; "
                f"give one of each per channel."
            )
        if bool((s <= 0).any()):
            raise ConfigError(
                f"Normalize std must be positive, got {s.tolist()}. A constant channel has "
                f"std 0: use std=1 for it."
            )
        n = max(m.numel(), s.numel())
        if channels is not None:
            if n not in (1, channels):
                raise ConfigError(
                    f"Normalize got {n} mean/std values for {channels} channels; give one "
                    f"value per channel (or a single value for all)."
                )
            n = channels
        self.channels = channels
        self.register_buffer("mean", m.expand(n).clone())
        self.register_buffer("std", s.expand(n).clone())

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.view(-1, *([1] * (x.dim() - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.mean.numel()
        if x.dim() < 2 or ((n != 1 or self.channels is not None) and x.shape[1] != n):
            raise ShapeMismatchError(
                f"inputs have shape {tuple(x.shape)} but the model normalises {n} channels "
                f"(dimension 1). Build the model with in_channels matching the data."
            )
        return (x - self._view(self.mean, x)) / self._view(self.std, x)

    @property
    def is_identity(self) -> bool:
        """True when this layer leaves its input unchanged (mean 0, std 1)."""
        return bool((self.mean == 0).all() and (self.std == 1).all())

    def extra_repr(self) -> str:
        def fmt(t: torch.Tensor) -> str:
            vals = [f"{v:.4g}" for v in t.tolist()[:4]]
            return "[" + ", ".join(vals) + (", ...]" if t.numel() > 4 else "]")

        return f"mean={fmt(self.mean)}, std={fmt(self.std)}, channels={self.channels}"


class ZooModel(nn.Module):
    """Base class of the zoo models: owns the :class:`Normalize` first layer and the
    attributes every robustlab model exposes.

    Attributes
    ----------
    normalize: the first child module (registered before any other layer).
    num_classes: number of output logits.
    input_shape: per-sample input shape, ``(C, H, W)`` or ``(D,)``.
    input_bounds: ``(0.0, 1.0)``: inputs are floats in ``[0, 1]``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int] | None,
        mean: float | Sequence[float] | torch.Tensor | None,
        std: float | Sequence[float] | torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(
            0.0 if mean is None else mean, 1.0 if std is None else std, channels=int(in_channels)
        )
        self.num_classes = int(num_classes)
        self.input_shape: tuple[int, ...] = (
            (int(in_channels),)
            if input_size is None
            else (int(in_channels), int(input_size[0]), int(input_size[1]))
        )
        self.input_bounds: tuple[float, float] = INPUT_BOUNDS


def flat_features(body: nn.Module, in_channels: int, input_size: tuple[int, int], what: str) -> int:
    """Number of features ``body`` outputs for one ``(in_channels, *input_size)`` input.

    Computed with a dummy forward pass (no grad, CPU) so that fixed-size classifier heads
    (MNIST-net, SmallCNN) fit any input resolution. Raises :class:`ConfigError` when the
    input is too small for the architecture.
    """
    try:
        with torch.no_grad():
            out = body(torch.zeros(1, in_channels, *input_size))
    except RuntimeError as e:
        raise ConfigError(
            f"{what} cannot take inputs of size {tuple(input_size)}: they are too small "
            f"for its convolutions and pooling ({e}). Use a larger input_size or a model "
            f"with padding/adaptive pooling (mnist_net, resnet18, preact_resnet18, "
            f"wide_resnet, mlp)."
        ) from e
    n = out.numel()
    if n == 0:
        raise ConfigError(f"{what} produces no features for inputs of size {tuple(input_size)}.")
    return int(n)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def conv_init_fan_out(module: nn.Module) -> None:
    """He initialisation ``N(0, 2 / (k*k*out_channels))`` used by the WideResNet
    (Zagoruyko & Komodakis 2016) and TRADES code: BN weight 1, bias 0; linear bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


__all__ = ["INPUT_BOUNDS", "Normalize", "ZooModel", "count_parameters", "flat_features"]
