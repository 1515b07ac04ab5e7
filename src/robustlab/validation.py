"""Input checks shared by every room: robustlab's input space is float tensors in
``[0, 1]`` (or a model's declared bounds), shape ``(N, C, H, W)`` or ``(N, D)``,
with int64 labels in ``[0, num_classes)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from robustlab.errors import (
    ConfigError,
    InvalidInputError,
    LabelError,
    NonFiniteInputError,
    ShapeMismatchError,
)


def check_inputs(
    x: torch.Tensor,
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    name: str = "x",
    atol: float = 1e-6,
) -> None:
    """Refuse non-float, non-finite or out-of-bounds inputs with a message that says why."""
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if not torch.is_floating_point(x):
        raise InvalidInputError(
            f"{name} has dtype {x.dtype}; robustlab expects float inputs in [0, 1]. "
            f"Convert images with x.float() / 255."
        )
    if x.dim() < 2:
        raise ShapeMismatchError(
            f"{name} has shape {tuple(x.shape)}; expected a batch (N, D) or (N, C, H, W)."
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).reshape(len(x), -1).any(1).sum())
        raise NonFiniteInputError(
            f"{name} contains NaN or inf values in {bad} of {len(x)} samples; "
            f"clean or drop those samples first."
        )
    if bounds is not None and x.numel():
        lo, hi = bounds
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - atol or xmax > hi + atol:
            raise InvalidInputError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}] but must lie in [{lo}, {hi}]. "
                f"robustlab keeps normalisation inside the model: pass raw pixels scaled "
                f"to [0, 1] and let the model's Normalize layer do the rest."
            )


def check_labels(y: torch.Tensor, num_classes: int, *, n: int | None = None, name: str = "y") -> None:
    """Refuse labels that are not integers in ``[0, num_classes)`` (or do not fit ``n``)."""
    if not isinstance(y, torch.Tensor):
        raise LabelError(f"{name} must be a torch.Tensor, got {type(y).__name__}.")
    if y.dtype in (torch.bool,) or torch.is_floating_point(y) or torch.is_complex(y):
        raise LabelError(f"{name} has dtype {y.dtype}; labels must be integer class indices.")
    if y.dim() != 1:
        raise LabelError(f"{name} has shape {tuple(y.shape)}; labels must be a 1-D tensor.")
    if n is not None and len(y) != n:
        raise ShapeMismatchError(f"{name} has {len(y)} labels for {n} inputs; they must match.")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise LabelError(
                f"{name} has labels in [{lo}, {hi}] but the model/dataset has {num_classes} "
                f"classes, so labels must lie in [0, {num_classes - 1}]. Remap the labels or "
                f"set num_classes correctly."
            )


def check_shape(x: torch.Tensor, expected: Sequence[int], *, what: str = "model") -> None:
    """Refuse a batch whose per-sample shape differs from ``expected``."""
    got = tuple(x.shape[1:])
    if got != tuple(expected):
        raise ShapeMismatchError(
            f"inputs have per-sample shape {got} but the {what} expects {tuple(expected)}. "
            f"Build the model with the dataset's input_shape (models.create(name, "
            f"in_channels=..., input_size=...)) or use data that fits it."
        )


# -- parameters -------------------------------------------------------------------------------
# One set of validators for every room: attacks, objectives, losses, the Trainer, configs
# and the CLI check their numbers here, so ``steps=2.5`` or ``steps=True`` is refused the
# same way everywhere instead of being truncated to 2 or read as 1.


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer parameter (``bool`` and non-integral floats refused), within the bounds.

    Integral floats from YAML or JSON (``10.0``) are accepted as the integer they are.
    """
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):
        raise ConfigError(f"{name} must be an integer, got the boolean {value!r}.")
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    if not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
        except ImportError:  # pragma: no cover
            pass
    if not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be an integer <= {maximum}, got {value!r}.")
    return int(value)


def check_float(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real parameter in the interval given by ``low``/``high`` (open ends with
    ``low_open``/``high_open``). Booleans and strings are refused, not coerced."""
    if isinstance(value, (bool, str, bytes)) or value is None or type(value).__name__ in ("bool", "bool_"):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}.") from None
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if not math.isfinite(v) or below or above:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{name} must be a finite number in {interval}, got {value!r}.")
    return v


def check_bool(value: Any, name: str) -> bool:
    """A flag that must be ``True`` or ``False`` (``1``, ``"yes"``, ``None`` are refused)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}.")
    return value


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """One of ``choices`` (else a ConfigError listing them and the close matches)."""
    options = list(choices)
    if value in options:
        return value
    from robustlab.registry import close_matches

    near = close_matches(str(value), [str(c) for c in options])
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    raise ConfigError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}.{hint}")


def check_subset(value: Any, name: str = "subset") -> int | None:
    """A number of points to evaluate on: ``None`` (all) or an integer >= 1."""
    if value is None:
        return None
    return check_int(value, name, minimum=1)


def check_device(device: Any, name: str = "device") -> torch.device:
    """A device this process can use: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, or a
    ``torch.device``. Unknown names and accelerators this torch build or machine lacks
    are refused with what is available, before any work or any stored row."""
    if isinstance(device, torch.device):
        dev = device
    else:
        if not isinstance(device, str) or not device.strip():
            raise ConfigError(f"{name} must be a device name such as 'cpu' or 'cuda:0', got {device!r}.")
        try:
            dev = torch.device(device.strip())
        except (RuntimeError, ValueError):
            raise ConfigError(
                f"unknown {name} {device!r}; use 'cpu', 'cuda', 'cuda:N' (an NVIDIA GPU) or 'mps' (Apple)."
            ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "has no CUDA support" if torch.version.cuda is None else "finds no CUDA GPU on this machine"
            raise ConfigError(
                f"{name} {str(dev)!r} was asked for, but this torch ({torch.__version__}) {build}; "
                f"use --device cpu (or install a CUDA build of torch on a machine with a GPU)."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"{name} {str(dev)!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}."
            )
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"{name} 'mps' was asked for, but Apple's MPS is not available here; use cpu.")
        return dev
    raise ConfigError(
        f"{name} {str(dev)!r} is not supported by robustlab; use 'cpu', 'cuda', 'cuda:N' or 'mps'."
    )


def default_device() -> str:
    """``"cuda"`` when a CUDA GPU is usable, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = [
    "check_bool",
    "check_choice",
    "check_device",
    "check_float",
    "check_inputs",
    "check_int",
    "check_labels",
    "check_shape",
    "check_subset",
    "default_device",
]
