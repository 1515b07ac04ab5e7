"""Small training problems shared by the train tests: separable blobs and a tiny MLP."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.data.base import Dataset


def blobs(n: int = 240, d: int = 6, k: int = 3, seed: int = 0) -> Dataset:
    """``n`` points around ``k`` random centres in ``[0, 1]^d`` (std 0.08), labels cycling."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(k, d, generator=g)
    y = torch.arange(n) % k
    x = (centers[y] + 0.08 * torch.randn(n, d, generator=g)).clamp(0, 1)
    return Dataset(x=x, y=y, num_classes=k, name="blobs")


class Net(nn.Module):
    """A 32-unit MLP for ``blobs`` (dropout off with ``dropout=0``)."""

    def __init__(self, d: int = 6, k: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        self.input_shape = (d,)
        self.num_classes = k
        self.body = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
