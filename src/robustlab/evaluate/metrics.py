"""Metrics: clean, robust, per-class accuracy and calibration, with per-sample records.

>>> from robustlab import evaluate
>>> from robustlab.attacks import ThreatModel
>>> evaluate.clean_accuracy(model, x, y)
0.97
>>> res = evaluate.robust_accuracy(model, x, y, ThreatModel("linf", 0.1), attack="pgd", steps=20)
>>> res.accuracy, res.robust  # a float and the per-sample mask
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Attack, ThreatModel
from robustlab.attacks import create as create_attack
from robustlab.validation import check_inputs, check_labels, check_shape


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode (mode restored), on x's device."""
    check_inputs(x, bounds=getattr(model, "input_bounds", (0.0, 1.0)))
    expected = getattr(model, "input_shape", None)
    if expected is not None:
        check_shape(x, expected)
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
    except StopIteration:
        dev = x.device
    try:
        out = [model(x[i : i + batch_size].to(dev)).float().to(x.device) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.empty(0, 0)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    logits = predict_logits(model, x, batch_size=batch_size)
    check_labels(y, logits.shape[1], n=len(x))
    return float((logits.argmax(1) == y.to(logits.device)).float().mean())


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy restricted to each true class (``None`` for classes absent from ``y``)."""
    out: list[float | None] = []
    for c in range(num_classes):
        m = y == c
        out.append(float((pred[m] == c).float().mean()) if bool(m.any()) else None)
    return out


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, *, bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural
    Networks", Eq. (3)): ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|`` over ``bins``
    equal-width confidence bins on (0, 1] (bins closed on the right)."""
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype, device=conf.device)
    ece = torch.zeros((), dtype=torch.float64)
    n = len(y)
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if bool(m.any()):
            ece += m.sum().double() / n * (correct[m].mean() - conf[m].mean()).abs().double()
    return float(ece)


@dataclass
class RobustEvaluation:
    """Robust accuracy of one attack at one threat model, with per-sample records."""

    attack: str
    threat: ThreatModel
    robust: torch.Tensor  # bool per sample: correct and not broken
    clean_correct: torch.Tensor
    x_adv: torch.Tensor | None = None
    forwards: int = 0
    backwards: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "norm": self.threat.norm,
            "eps": self.threat.eps,
            "accuracy": self.accuracy,
            "forwards": self.forwards,
            "backwards": self.backwards,
            "params": self.params,
        }


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    attack: str | Attack = "pgd",
    *,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
    seed: int = 0,
    keep_adversarials: bool = False,
    **attack_params: Any,
) -> RobustEvaluation:
    """Robust accuracy of ``model`` on ``(x, y)`` under ``attack`` within ``threat``.

    A sample counts as robust iff the model classifies it correctly *and* the attack
    does not change that. ``attack`` is a registry name (with ``attack_params``) or an
    :class:`Attack`. Randomness comes from ``generator`` (or a fresh one seeded with
    ``seed``); the global RNG is never touched.
    """
    atk = create_attack(attack, **attack_params) if isinstance(attack, str) else attack
    name = attack if isinstance(attack, str) else getattr(type(attack), "registry_name", type(attack).__name__)
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    robust, correct, advs = [], [], []
    fw = bw = 0
    for i in range(0, len(x), batch_size):
        res = atk(model, x[i : i + batch_size], y[i : i + batch_size], threat, generator=gen)
        robust.append(res.robust.cpu())
        correct.append(res.clean_correct.cpu())
        if keep_adversarials:
            advs.append(res.x_adv.cpu())
        fw += res.forwards
        bw += res.backwards
    return RobustEvaluation(
        attack=name,
        threat=threat,
        robust=torch.cat(robust) if robust else torch.zeros(0, dtype=torch.bool),
        clean_correct=torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool),
        x_adv=torch.cat(advs) if advs else None,
        forwards=fw,
        backwards=bw,
        params=atk.get_params(),
    )
