"""Small data and models for the detector tests (one thread, a few hundred points)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab import models


def blobs(seed: int, n: int, k: int = 3, d: int = 8, spread: float = 0.06) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs in [0, 1]^d around fixed centres (the same for every seed)."""
    centres = 0.2 + 0.6 * torch.rand(k, d, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    return (centres[y] + spread * torch.randn(n, d, generator=g)).clamp(0, 1), y


def trained_mlp(x: torch.Tensor, y: torch.Tensor, k: int, hidden: tuple[int, ...] = (32,), steps: int = 200) -> nn.Module:
    torch.manual_seed(0)  # the model's init only; the code under test never reads the global RNG
    model = models.create("mlp", num_classes=k, in_channels=x.shape[1], hidden=hidden)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()
