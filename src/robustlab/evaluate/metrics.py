"""Metrics: clean, robust, per-class accuracy and calibration, with per-sample records.

>>> from robustlab import evaluate
>>> from robustlab.attacks import ThreatModel
>>> evaluate.clean_accuracy(model, x, y)
0.97
>>> res = evaluate.robust_accuracy(model, x, y, ThreatModel("linf", 0.1))  # the standard ensemble
>>> res.accuracy, res.robust  # a float and the per-sample mask
>>> res = evaluate.robust_accuracy(model, x, y, ThreatModel("linf", 0.1), attack="pgd", steps=20)

For per-attack, per-eps and per-class numbers, audit flags, counts and timings use
:func:`robustlab.evaluate.attack_report`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Attack, AttackResult, ThreatModel, attacks
from robustlab.attacks import create as create_attack
from robustlab.attacks.base import attack_mode, model_device
from robustlab.errors import ConfigError
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
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if bool(m.any()):
            ece += m.sum().double() / n * (correct[m].mean() - conf[m].mean()).abs().double()
    return float(ece)


@dataclass
class RobustEvaluation:
    """Robust accuracy of one attack at one threat model, with per-sample records.

    ``per_attack``: for ensembles, robust accuracy after each member (``{"clean": ...,
    member: ...}``); for single attacks ``{"clean": ..., attack: accuracy}``.
    """

    attack: str
    threat: ThreatModel
    robust: torch.Tensor  # bool per sample: correct and not broken
    clean_correct: torch.Tensor
    x_adv: torch.Tensor | None = None
    forwards: int = 0
    backwards: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    per_attack: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return int(self.robust.sum()) / len(self.robust) if len(self.robust) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "norm": self.threat.norm,
            "eps": self.threat.eps,
            "accuracy": self.accuracy,
            "forwards": self.forwards,
            "backwards": self.backwards,
            "params": self.params,
            "per_attack": dict(self.per_attack),
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


def _attack_name(attack: str | Attack) -> str:
    if isinstance(attack, str):
        return attacks.canonical(attack)
    return getattr(type(attack), "registry_name", type(attack).__name__)


def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: Sequence[ThreatModel],
    attack: Attack,
    *,
    batch_size: int | str = "auto",
    generator: torch.Generator | None = None,
    seed: int = 0,
    amp: bool = False,
) -> list[list[AttackResult]]:
    """Run ``attack`` over ``(x, y)`` in batches for every threat model of one norm.

    Batches go to the model's device; results come back on CPU, one list per batch
    (each a list with one :class:`AttackResult` per threat). ``batch_size="auto"`` uses
    :func:`auto_batch_size`; on a CUDA out-of-memory error the batch size is halved and
    the batch retried. Randomness comes from ``generator`` (default: a generator on the
    model's device seeded with ``seed``).
    """
    dev = model_device(model) or x.device
    if generator is None:
        generator = torch.Generator(device=dev).manual_seed(seed)
    if batch_size == "auto":
        bs = auto_batch_size(model, x)
    elif isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1:
        bs = batch_size
    else:
        raise ConfigError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}.")
    out: list[list[AttackResult]] = []
    i = 0
    while i < len(x):
        xb, yb = x[i : i + bs].to(dev), y[i : i + bs].to(dev)
        try:
            res = attack(model, xb, yb, list(threats), generator=generator, amp=amp)
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            bs = max(1, bs // 2)
            torch.cuda.empty_cache()
            continue
        for r in res:
            r.x_adv, r.success, r.clean_correct = r.x_adv.cpu(), r.success.cpu(), r.clean_correct.cpu()
            r.info = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in r.info.items()}
        out.append(res)
        i += len(xb)
    return out


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


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel | Sequence[ThreatModel],
    attack: str | Attack = "standard",
    *,
    batch_size: int | str = 512,
    generator: torch.Generator | None = None,
    seed: int = 0,
    keep_adversarials: bool = False,
    amp: bool = False,
    **attack_params: Any,
) -> Any:
    """Robust accuracy of ``model`` on ``(x, y)`` under ``attack`` within ``threat``.

    A sample counts as robust iff the model classifies it correctly *and* the attack
    does not change that. ``attack`` is a registry name (with ``attack_params``; default
    the ``standard`` ensemble, AutoAttack's protocol) or an :class:`Attack`.
    ``threat`` may be a list of threat models of one norm: then a list of results comes
    back, computed in one pass (points broken at a smaller eps are not attacked again).
    Randomness comes from ``generator`` (or a fresh one seeded with ``seed``); the global
    RNG is never touched. ``batch_size`` may be ``"auto"`` (memory-aware on CUDA).
    """
    atk = create_attack(attack, **attack_params) if isinstance(attack, str) else attack
    if not isinstance(attack, str) and attack_params:
        raise ConfigError("attack parameters go with an attack name, not with an Attack object.")
    name = _attack_name(attack)
    single = isinstance(threat, ThreatModel)
    threats: list[ThreatModel] = [threat] if isinstance(threat, ThreatModel) else list(threat)
    t0 = time.perf_counter()
    batches = run_attack(model, x, y, threats, atk, batch_size=batch_size, generator=generator, seed=seed, amp=amp)
    seconds = time.perf_counter() - t0
    evals = []
    for k, t in enumerate(threats):
        rs = [b[k] for b in batches]
        robust = torch.cat([r.robust for r in rs]) if rs else torch.zeros(0, dtype=torch.bool)
        correct = torch.cat([r.clean_correct for r in rs]) if rs else torch.zeros(0, dtype=torch.bool)
        stages = rs[0].info.get("stages", []) if rs else []
        broken = torch.cat([r.info["broken_by"] for r in rs]) if rs and "broken_by" in rs[0].info else None
        evals.append(
            RobustEvaluation(
                attack=name,
                threat=t,
                robust=robust,
                clean_correct=correct,
                x_adv=torch.cat([r.x_adv for r in rs]) if keep_adversarials and rs else None,
                forwards=sum(r.forwards for r in rs),
                backwards=sum(r.backwards for r in rs),
                params=atk.get_params(),
                per_attack=stage_accuracies(correct, robust, broken, stages, name),
                seconds=sum(r.seconds for r in rs) if rs else seconds,
            )
        )
    return evals[0] if single else evals
