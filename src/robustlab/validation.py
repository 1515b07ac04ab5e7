"""Input checks shared by every room: robustlab's input space is float tensors in
``[0, 1]`` (or a model's declared bounds), shape ``(N, C, H, W)`` or ``(N, D)``,
with int64 labels in ``[0, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from robustlab.errors import (
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


__all__ = ["check_inputs", "check_labels", "check_shape"]
