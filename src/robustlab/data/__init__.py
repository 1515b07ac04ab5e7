"""Datasets as tensors in [0, 1], label-noise models, and the embedded default (digits).

>>> from robustlab import data
>>> train = data.load("digits", split="train")
>>> train.x.shape, train.num_classes
(torch.Size([1437, 1, 8, 8]), 10)
>>> res = data.noise.corrupt_labels(train.y, "symmetric", 0.4, 10, seed=0)
>>> noisy_train = train.with_labels(res.noisy_labels)   # res.flip_rate, res.transition
"""

from __future__ import annotations

from robustlab.data import corrupted, imbalance, noise  # corrupted registers cifar10-c, mnist-c
from robustlab.data.base import Dataset
from robustlab.data.datasets import available, datasets, load, stratified_split

__all__ = [
    "Dataset", "available", "corrupted", "datasets", "imbalance", "load", "noise", "stratified_split",
]
