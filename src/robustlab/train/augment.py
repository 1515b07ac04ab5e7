"""Corruption augmentation: train on corrupted copies of the batch (any objective).

``Trainer(..., augment={"corruptions": "common", "severities": [1, 2, 3, 4, 5], "p": 0.5})``
replaces each training image, with probability ``p``, by a corrupted copy: a corruption
drawn uniformly from ``corruptions`` (``"common"``, ``"extra"``, ``"all"`` or a list of
names, ``robustlab ls corruptions``) at a severity drawn uniformly from ``severities``.
``{"corruptions": ["gaussian_noise"], "severities": [1, 2, 3, 4, 5], "p": 1.0}`` is
Gaussian noise augmentation at random strengths; ``p=0.5`` keeps half of every batch clean
(the usual mix for corruption robustness: Hendrycks et al. 2020, "AugMix", and Rusak et
al. 2020, "A Simple Way to Make Neural Networks Robust Against Diverse Image Corruptions",
train on a mix of clean and noisy images). The augmentation runs before the objective,
so adversarial objectives attack the corrupted batch.

Draws come from the Trainer's generator for the epoch (seeded by the run's seed and the
epoch), so a resumed run corrupts the same images the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from robustlab.corruptions import SEVERITIES, corrupt
from robustlab.errors import ConfigError, ShapeMismatchError
from robustlab.evaluate.shifts import check_severities, corruption_names
from robustlab.validation import check_float


class CorruptionAugmentation:
    """Replace each image with probability ``p`` by a corruption (uniform over
    ``corruptions``) at a severity (uniform over ``severities``); see the module docstring."""

    def __init__(self, corruptions: str | Sequence[str] = "common", severities: Sequence[int] = SEVERITIES,
                 p: float = 0.5) -> None:
        self.corruptions = corruption_names(corruptions)
        self.severities = check_severities(list(severities))
        self.p = check_float(p, "augment.p", low=0.0, high=1.0)

    def get_params(self) -> dict[str, Any]:
        return {"corruptions": list(self.corruptions), "severities": list(self.severities), "p": self.p}

    def check(self, x: torch.Tensor) -> None:
        """Refuse non-image data before training starts."""
        if x.dim() != 4:
            raise ShapeMismatchError(
                f"augment corrupts images (N, C, H, W), but the training data has shape {tuple(x.shape)}; "
                f"drop train.augment for vector data."
            )

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(x)
        pick = torch.rand(n, generator=generator) < self.p
        which = torch.randint(len(self.corruptions), (n,), generator=generator)
        sev = torch.randint(len(self.severities), (n,), generator=generator)
        if not bool(pick.any()):
            return x
        out = x.clone()
        for c in range(len(self.corruptions)):
            for s in range(len(self.severities)):
                m = (pick & (which == c) & (sev == s)).nonzero().reshape(-1)
                if len(m):
                    mi = m.to(x.device)
                    out[mi] = corrupt(x[mi], self.corruptions[c], self.severities[s], generator=generator)
        return out


def build_augmentation(spec: Mapping[str, Any] | None) -> CorruptionAugmentation | None:
    """The augmentation a Trainer's ``augment`` setting names (None: none)."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"augment must be a mapping like {{corruptions: common, severities: [1, 2, 3, 4, 5], p: 0.5}}, got {spec!r}."
        )
    allowed = {"corruptions", "severities", "p"}
    if set(spec) - allowed:
        raise ConfigError(f"augment takes {', '.join(sorted(allowed))}; got {', '.join(sorted(set(spec) - allowed))}.")
    return CorruptionAugmentation(**dict(spec))


__all__ = ["CorruptionAugmentation", "build_augmentation"]
