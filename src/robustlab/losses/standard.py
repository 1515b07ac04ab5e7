"""Standard losses: cross-entropy and label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustlab.losses.base import Loss, losses, param_name
from robustlab.validation import check_float


@losses.register("ce", aliases=("cross_entropy", "cross-entropy"))
class CrossEntropy(Loss):
    """Cross-entropy ``-log softmax(z)_y``."""

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, reduction="none")


@losses.register("label_smoothing", aliases=("ls",))
class LabelSmoothing(Loss):
    """Cross-entropy against smoothed targets (Szegedy et al. 2016, "Rethinking the
    Inception Architecture", Sec. 7): ``q = (1 - smoothing) * onehot(y) + smoothing / K``.

    This is the convention of ``torch.nn.functional.cross_entropy(label_smoothing=...)``
    (the smoothing mass is spread over all ``K`` classes, including the true one).
    """

    def __init__(self, smoothing: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.smoothing = check_float(
            smoothing, param_name(self, "smoothing"), low=0.0, high=1.0, high_open=True
        )

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, reduction="none", label_smoothing=self.smoothing)
