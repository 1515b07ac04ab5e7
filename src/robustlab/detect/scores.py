"""Detectors that read the logits only: maximum softmax probability and energy."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.engine import model_device
from robustlab.detect.base import Detector, detectors
from robustlab.errors import InvalidInputError
from robustlab.validation import check_float


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dev = model_device(model) or x.device
    logits = model(x.to(dev))
    if logits.dim() != 2:
        raise InvalidInputError(
            f"the model returned outputs of shape {tuple(logits.shape)}; detectors need "
            f"logits of shape (N, num_classes)."
        )
    return logits


@detectors.register("msp", aliases=("baseline", "max-softmax"))
class MSP(Detector):
    """Maximum softmax probability (Hendrycks & Gimpel 2017, "A Baseline for Detecting
    Misclassified and Out-of-Distribution Examples in Neural Networks", Sec. 2):
    ``score(x) = max_k softmax(f(x) / T)_k``.

    ``temperature`` ``T`` (default 1, the paper's baseline) is the temperature scaling of
    ODIN (Liang et al. 2018); ODIN's input preprocessing is not part of this detector.
    Nothing is learned from data: :meth:`fit` only records the number of classes.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = check_float(temperature, "temperature", low=0.0, low_open=True)

    def forward_score(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = _forward(model, x)
        return logits, torch.softmax(logits / self.temperature, dim=1).amax(1)


@detectors.register("energy")
class Energy(Detector):
    """Negative free energy (Liu, Wang, Owens & Li 2020, "Energy-based Out-of-distribution
    Detection", Eq. (5) and Sec. 3): ``E(x; f) = -T * logsumexp_k(f_k(x) / T)`` and the
    score is ``-E(x; f) = T * logsumexp(f(x) / T)`` (higher = more in-distribution),
    ``T = 1`` as in the paper's inference-time detector. The energy-bounded fine-tuning
    of the paper's Sec. 4 is training and not part of the detector.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = check_float(temperature, "temperature", low=0.0, low_open=True)

    def forward_score(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = _forward(model, x)
        t = self.temperature
        return logits, t * torch.logsumexp(logits / t, dim=1)


__all__ = ["MSP", "Energy"]
