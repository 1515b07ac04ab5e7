"""A tiny user model without robustlab attributes, loaded via ``factory=`` in test_io."""

from __future__ import annotations

from torch import nn


def make(in_features: int = 5, hidden: int = 4, num_classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def not_a_module() -> object:
    return object()
