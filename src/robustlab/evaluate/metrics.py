"""Metrics: clean and per-class accuracy, calibration, per-stage robust accuracy.

>>> from robustlab import evaluate
>>> from robustlab.attacks import ThreatModel
>>> evaluate.clean_accuracy(model, x, y)
0.97

Robust accuracy and everything else that attacks a model goes through the evaluation
path, :mod:`robustlab.evaluate.path`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.attacks.engine import attack_mode, eval_mode, model_device
from robustlab.errors import InvalidInputError
from robustlab.validation import check_inputs, check_int, check_labels, check_shape


def _not_empty(x: torch.Tensor, what: str) -> None:
    if isinstance(x, torch.Tensor) and len(x) == 0:
        raise InvalidInputError(f"{what} got no points (x is empty); pass at least one input.")


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode (every module's mode restored), on x's device."""
    _not_empty(x, "predict_logits")
    check_int(batch_size, "batch_size", minimum=1)
    check_inputs(x, bounds=getattr(model, "input_bounds", (0.0, 1.0)))
    expected = getattr(model, "input_shape", None)
    if expected is not None:
        check_shape(x, expected)
    dev = model_device(model) or x.device
    with eval_mode(model):
        out = [model(x[i : i + batch_size].to(dev)).float().to(x.device) for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (the exact fraction of correct points)."""
    _not_empty(x, "clean_accuracy")
    logits = predict_logits(model, x, batch_size=batch_size)
    check_labels(y, logits.shape[1], n=len(x))
    return int((logits.argmax(1) == y.to(logits.device)).sum()) / len(x)


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
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if bool(m.any()):
            ece += m.sum().double() / n * (correct[m].mean() - conf[m].mean()).abs().double()
    return float(ece)


def auto_batch_size(model: nn.Module, x: torch.Tensor, *, cpu_default: int = 512, max_size: int = 4096) -> int:
    """A batch size that fits the device: on CUDA, measure the peak memory of one
    forward+backward pass on a few points and fill ~60% of the free memory
    (``torch.cuda.mem_get_info``); on CPU ``cpu_default``. Never more than ``len(x)``."""
    n = max(len(x), 1)
    dev = model_device(model) or x.device
    if dev.type != "cuda":
        return min(cpu_default, n)
    probe = min(8, len(x))
    if probe == 0:
        return 1
    torch.cuda.synchronize(dev)
    free, _ = torch.cuda.mem_get_info(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    with attack_mode(model):
        xb = x[:probe].to(dev).detach().requires_grad_(True)
        with torch.enable_grad():
            out = model(xb).float()
            torch.autograd.grad(out.logsumexp(1).sum(), xb)
    peak = max(torch.cuda.max_memory_allocated(dev) - base, 1)
    per_point = peak / probe
    return int(max(1, min(max_size, n, 0.6 * free / per_point)))


def stage_accuracies(
    clean_correct: torch.Tensor, robust: torch.Tensor, broken_by: torch.Tensor | None, stages: Sequence[str], name: str
) -> dict[str, float]:
    """Robust accuracy after each ensemble member (AutoAttack's ``robust_accuracy_dict``):
    a point counts after member ``j`` if it is clean-correct and no member ``<= j`` broke it."""
    n = max(len(clean_correct), 1)
    out = {"clean": float(clean_correct.float().sum()) / n}
    if broken_by is None or not stages:
        out[name] = float(robust.float().sum()) / n
        return out
    for j, stage in enumerate(stages):
        alive = clean_correct & ((broken_by == -1) | (broken_by > j))
        out[stage] = float(alive.float().sum()) / n
    return out
