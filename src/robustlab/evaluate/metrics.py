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


def reliability(probs: torch.Tensor, y: torch.Tensor, *, bins: int = 15) -> dict[str, list[float | int | None]]:
    """The reliability diagram of Guo et al. 2017 ("On Calibration of Modern Neural Networks",
    Sec. 2): over ``bins`` equal-width confidence bins on (0, 1] (closed on the right), the
    mean confidence, the accuracy and the number of points in each (None for empty bins).
    ``{"confidence": [...], "accuracy": [...], "count": [...]}``."""
    conf, pred = probs.detach().max(1)
    return reliability_of(conf, pred == y.to(pred.device), bins=bins)


def reliability_of(conf: torch.Tensor, correct: torch.Tensor, *, bins: int = 15) -> dict[str, list[float | int | None]]:
    """:func:`reliability` from each point's confidence (its top probability, in the
    dtype the probabilities had) and whether its prediction is correct: the same numbers,
    for callers that keep these two per-sample arrays instead of every probability."""
    check_int(bins, "bins", minimum=1)
    correct = correct.to(conf.device).double()
    # bin b holds conf in (e_b, e_(b+1)] with the edges in conf's own dtype (so 0.8 lands where
    # a comparison with linspace's 0.8 puts it); conf = 0 (impossible for a softmax) joins bin 0
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype, device=conf.device)
    idx = (torch.searchsorted(edges, conf.contiguous()) - 1).clamp(0, bins - 1)
    conf = conf.double()
    count = torch.bincount(idx, minlength=bins)
    sum_conf = torch.zeros(bins, dtype=torch.float64, device=conf.device).index_add_(0, idx, conf)
    sum_acc = torch.zeros(bins, dtype=torch.float64, device=conf.device).index_add_(0, idx, correct)
    cnt = count.tolist()
    return {
        "confidence": [float(sum_conf[b] / cnt[b]) if cnt[b] else None for b in range(bins)],
        "accuracy": [float(sum_acc[b] / cnt[b]) if cnt[b] else None for b in range(bins)],
        "count": [int(c) for c in cnt],
    }


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, *, bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural
    Networks", Eq. (3)): ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|`` over ``bins``
    equal-width confidence bins on (0, 1] (bins closed on the right; see :func:`reliability`)."""
    return ece_of(reliability(probs, y, bins=bins))


def ece_of(diagram: dict[str, list[float | int | None]]) -> float:
    """The expected calibration error of a :func:`reliability` diagram."""
    n = sum(int(c or 0) for c in diagram["count"])
    if n == 0:
        return 0.0
    return float(sum(int(c or 0) / n * abs(float(a or 0) - float(f or 0))
                     for c, a, f in zip(diagram["count"], diagram["accuracy"], diagram["confidence"], strict=True)
                     if c))


def disparity(per_class: Sequence[float | None]) -> dict[str, float | int | None]:
    """Accuracy disparity across classes (the quantities studied in Hu et al. 2023,
    "Understanding the Impact of Adversarial Robustness on Accuracy Disparity"): the
    worst-class accuracy and which class it is, the best-class accuracy, the gap
    max - min and the (population) standard deviation across the classes present
    (``None`` entries, classes absent from the points, are left out)."""
    vals = [(c, float(v)) for c, v in enumerate(per_class) if v is not None]
    if not vals:
        return {"worst": None, "worst_class": None, "best": None, "gap": None, "std": None}
    accs = [v for _, v in vals]
    worst_class, worst = min(vals, key=lambda cv: (cv[1], cv[0]))
    mean = sum(accs) / len(accs)
    return {
        "worst": worst,
        "worst_class": worst_class,
        "best": max(accs),
        "gap": max(accs) - worst,
        "std": (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5,
    }


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
