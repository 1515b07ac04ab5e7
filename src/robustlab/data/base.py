"""The one dataset type every room speaks: float inputs in [0, 1] plus int64 labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from robustlab.validation import check_inputs, check_labels


@dataclass
class Dataset(torch.utils.data.Dataset):
    """In-memory classification data in robustlab's input space.

    Attributes
    ----------
    x: float32 tensor in ``[0, 1]``, shape ``(N, C, H, W)`` for images or ``(N, D)``.
    y: int64 labels in ``[0, num_classes)``.
    num_classes: number of classes.
    class_names: one name per class.
    name: registry name of the source (``"digits"``, ``"mnist"``, ...).
    description: where the data came from and how it was split (said in reports).
    clean_y: the labels before any label noise was applied (``None`` if never corrupted).

    Indexing returns ``(x[i], y[i], i)`` so that training objectives that keep
    per-sample state receive dataset indices.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    name: str = "custom"
    description: str = ""
    clean_y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        check_inputs(self.x, name=f"{self.name}.x")
        check_labels(self.y, self.num_classes, n=len(self.x), name=f"{self.name}.y")
        self.y = self.y.long()
        if self.clean_y is not None:
            check_labels(self.clean_y, self.num_classes, n=len(self.x), name=f"{self.name}.clean_y")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape: ``(C, H, W)`` or ``(D,)``."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], i

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Dataset:
        """A new dataset holding only ``indices`` (labels and clean labels follow)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return replace(
            self,
            x=self.x[idx],
            y=self.y[idx],
            clean_y=None if self.clean_y is None else self.clean_y[idx],
        )

    def with_labels(self, y: torch.Tensor) -> Dataset:
        """A copy with labels replaced by ``y`` (e.g. noisy labels); keeps the clean ones."""
        clean = self.clean_y if self.clean_y is not None else self.y
        return replace(self, y=torch.as_tensor(y, dtype=torch.long), clean_y=clean)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


__all__ = ["Dataset"]
