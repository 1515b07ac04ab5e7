"""``attack_report``: one call, every number an attack evaluation should come with.

>>> from robustlab import evaluate
>>> rep = evaluate.attack_report(model, x, y, ["2/255", "4/255", "8/255"], norm="linf")
>>> rep.results[-1].robust_accuracy        # at 8/255, the standard ensemble
>>> rep.results[-1].per_attack             # {"clean": .., "apgd-ce": .., "apgd-t": .., ...}
>>> [str(f) for f in rep.flags]            # audit findings, e.g. "zero-grad: 12.5% of ..."
>>> json.dumps(rep.to_dict())              # everything, JSON-able

All budgets run in one pass (increasing eps; points broken at a smaller eps are not
attacked again), in memory-aware batches on the model's device, then the audit
(:mod:`robustlab.attacks.audit`) inspects the model and the results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustlab.attacks import Attack, Flag, ThreatModel, attacks
from robustlab.attacks import create as create_attack
from robustlab.attacks.audit import audit as run_audit
from robustlab.attacks.base import model_device
from robustlab.attacks.threat import parse_eps
from robustlab.errors import ConfigError
from robustlab.evaluate.metrics import (
    _attack_name,
    per_class_accuracy,
    run_attack,
    stage_accuracies,
)


@dataclass
class EpsResult:
    """The numbers for one budget.

    ``per_attack``: robust accuracy after each ensemble member (``"clean"`` first;
    a single attack has one entry); ``per_class``: robust accuracy per true class
    (``None`` for absent classes); ``forwards``/``backwards``: samples passed through
    the model; ``stage_forwards``/``stage_backwards``/``stage_seconds``: per member.
    """

    eps: float
    robust_accuracy: float
    per_attack: dict[str, float]
    per_class: list[float | None]
    forwards: int
    backwards: int
    seconds: float
    stage_forwards: dict[str, int] = field(default_factory=dict)
    stage_backwards: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "robust_accuracy": self.robust_accuracy,
            "per_attack": dict(self.per_attack),
            "per_class": list(self.per_class),
            "forwards": self.forwards,
            "backwards": self.backwards,
            "seconds": self.seconds,
            "stage_forwards": dict(self.stage_forwards),
            "stage_backwards": dict(self.stage_backwards),
            "stage_seconds": dict(self.stage_seconds),
        }


@dataclass
class AttackReport:
    """Per-attack, per-eps and per-class robust accuracy, audit flags, counts and timings.

    ``robust`` maps each eps to the per-sample robust mask (CPU); ``x_adv`` (when kept)
    maps each eps to the adversarial inputs. :meth:`to_dict` leaves both out.
    """

    attack: str
    protocol: str
    params: dict[str, Any]
    norm: str
    num_points: int
    num_classes: int
    clean_accuracy: float
    clean_per_class: list[float | None]
    results: list[EpsResult]
    flags: list[Flag]
    skipped: list[dict[str, str]]
    device: str
    amp: bool
    batch_size: int | str
    seed: int | None
    seconds: float
    audit_seconds: float
    robust: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)
    clean_correct: torch.Tensor | None = field(default=None, repr=False)
    x_adv: dict[float, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def eps(self) -> list[float]:
        return [r.eps for r in self.results]

    @property
    def accuracy(self) -> dict[float, float]:
        """``{eps: robust accuracy}``."""
        return {r.eps: r.robust_accuracy for r in self.results}

    def flag_strings(self) -> list[str]:
        """Flags as ``"code: sentence"`` strings (what the CLI prints and results store)."""
        return [str(f) for f in self.flags]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors, as JSON-able Python values."""
        return {
            "attack": self.attack,
            "protocol": self.protocol,
            "params": _jsonable(self.params),
            "norm": self.norm,
            "num_points": self.num_points,
            "num_classes": self.num_classes,
            "clean_accuracy": self.clean_accuracy,
            "clean_per_class": list(self.clean_per_class),
            "results": [r.to_dict() for r in self.results],
            "flags": self.flag_strings(),
            "flag_details": [f.to_dict() for f in self.flags],
            "skipped": [dict(s) for s in self.skipped],
            "device": self.device,
            "amp": self.amp,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "seconds": self.seconds,
            "audit_seconds": self.audit_seconds,
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def as_threats(threats_or_eps: Any, norm: str | None = None) -> list[ThreatModel]:
    """Read a ThreatModel, a list of them, or eps value(s) (numbers or fractions like
    ``"8/255"``, with ``norm``, default ``"linf"``) into a list of threat models."""
    if isinstance(threats_or_eps, ThreatModel):
        items: list[Any] = [threats_or_eps]
    elif isinstance(threats_or_eps, (int, float, str)):
        items = [threats_or_eps]
    elif isinstance(threats_or_eps, Sequence) and len(threats_or_eps):
        items = list(threats_or_eps)
    else:
        raise ConfigError(
            f"give a ThreatModel, a list of them, or eps values (with norm=); got {threats_or_eps!r}."
        )
    out = []
    for it in items:
        if isinstance(it, ThreatModel):
            if norm is not None and ThreatModel(norm, 0).norm != it.norm:
                raise ConfigError(f"norm={norm!r} contradicts the threat model {it}.")
            out.append(it)
        else:
            out.append(ThreatModel(norm or "linf", parse_eps(it)))
    if len({t.norm for t in out}) > 1:
        raise ConfigError("one report covers one norm; call attack_report once per norm.")
    return out


def attack_report(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats_or_eps: Any,
    attack: str | Attack = "standard",
    *,
    norm: str | None = None,
    batch_size: int | str = "auto",
    generator: torch.Generator | None = None,
    seed: int = 0,
    amp: bool = False,
    audit: bool | str = True,
    audit_points: int = 128,
    keep_adversarials: bool = False,
    **attack_params: Any,
) -> AttackReport:
    """Evaluate ``model`` on ``(x, y)`` with ``attack`` at every budget, and audit it.

    Parameters
    ----------
    threats_or_eps: a :class:`ThreatModel`, a list of them (one norm), or eps values
        (``0.03``, ``"8/255"`` or a list) with ``norm`` (default ``"linf"``).
    attack: registry name (default ``"standard"``, AutoAttack's protocol
        ``robustlab-standard/1``) with ``attack_params``, or an :class:`Attack`.
    batch_size: points per batch, or ``"auto"`` (memory-aware on CUDA, 512 on CPU).
    generator / seed: the source of randomness (default: a generator seeded ``seed``).
    amp: CUDA autocast for the attack's passes; successes are re-checked in fp32.
    audit: ``True`` runs every check (two small extra attacks on ``audit_points``
        points), ``"cheap"`` only the checks without extra attacks, ``False`` none.

    Returns an :class:`AttackReport` (``to_dict()`` is JSON-able).
    """
    threats = as_threats(threats_or_eps, norm)
    atk = create_attack(attack, **attack_params) if isinstance(attack, str) else attack
    if not isinstance(attack, str) and attack_params:
        raise ConfigError("attack parameters go with an attack name, not with an Attack object.")
    if audit not in (True, False, "cheap"):
        raise ConfigError(f"audit must be True, False or 'cheap', got {audit!r}.")
    name = _attack_name(attack)
    dev = model_device(model) or x.device
    t0 = time.perf_counter()
    batches = run_attack(model, x, y, threats, atk, batch_size=batch_size, generator=generator, seed=seed, amp=amp)
    seconds = time.perf_counter() - t0
    y_cpu = y.detach().cpu().long()
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    results: list[EpsResult] = []
    robust_masks: dict[float, torch.Tensor] = {}
    advs: dict[float, torch.Tensor] | None = {} if keep_adversarials else None
    clean_correct = torch.zeros(0, dtype=torch.bool)
    protocol = getattr(atk, "protocol", name)
    skipped: list[dict[str, str]] = []
    stages: list[str] = []
    black_box: list[bool] = []
    broken_totals: list[int] = []
    largest = max(t.eps for t in threats)
    for k, t in enumerate(threats):
        rs = [b[k] for b in batches]
        robust = torch.cat([r.robust for r in rs])
        clean_correct = torch.cat([r.clean_correct for r in rs])
        info0 = rs[0].info
        stages = list(info0.get("stages", []))
        black_box = list(info0.get("stage_black_box", [False] * len(stages)))
        skipped = list(info0.get("skipped", skipped))
        protocol = info0.get("protocol", protocol)
        broken = torch.cat([r.info["broken_by"] for r in rs]) if "broken_by" in info0 else None
        if not num_classes:
            num_classes = int(y_cpu.max()) + 1 if len(y_cpu) else 0
        robust_masks[t.eps] = robust
        if advs is not None:
            advs[t.eps] = torch.cat([r.x_adv for r in rs])
        pred_ok = robust.clone()
        per_class = per_class_accuracy(torch.where(pred_ok, y_cpu, -1), y_cpu, num_classes)
        sf: dict[str, int] = {}
        sb: dict[str, int] = {}
        ss: dict[str, float] = {}
        for r in rs:
            for j, s in enumerate(r.info.get("stages", [])):
                sf[s] = sf.get(s, 0) + int(r.info["stage_forwards"][j])
                sb[s] = sb.get(s, 0) + int(r.info["stage_backwards"][j])
                ss[s] = ss.get(s, 0.0) + float(r.info["stage_seconds"][j])
        if broken is not None and stages and t.eps == largest:
            broken_totals = [int(((broken == j) & clean_correct).sum()) for j in range(len(stages))]
        results.append(
            EpsResult(
                eps=t.eps,
                robust_accuracy=int(robust.sum()) / len(robust) if len(robust) else float("nan"),
                per_attack=stage_accuracies(clean_correct, robust, broken, stages, name),
                per_class=per_class,
                forwards=sum(r.forwards for r in rs),
                backwards=sum(r.backwards for r in rs),
                seconds=sum(r.seconds for r in rs),
                stage_forwards=sf,
                stage_backwards=sb,
                stage_seconds=ss,
            )
        )
    clean_acc = int(clean_correct.sum()) / len(clean_correct) if len(clean_correct) else float("nan")
    clean_pc = per_class_accuracy(torch.where(clean_correct, y_cpu, -1), y_cpu, num_classes)
    t1 = time.perf_counter()
    flags: list[Flag] = []
    if audit:
        xa = x[:audit_points].to(dev)
        ya = y[:audit_points].to(dev)
        params = atk.get_params() if isinstance(attack, str) else {}
        flags = run_audit(
            model,
            xa,
            ya,
            threats,
            robust_accuracy=[r.robust_accuracy for r in results],
            stages=stages,
            stage_black_box=black_box,
            stage_broken=broken_totals,
            skipped=skipped,
            num_points=len(x),
            protocol=str(protocol),
            attack=name if name in attacks else "apgd-ce",
            params={k: v for k, v in params.items() if k != "members"},
            seed=seed,
            subset=audit_points,
            expensive=audit is True,
        )
    audit_seconds = time.perf_counter() - t1
    return AttackReport(
        attack=name,
        protocol=str(protocol),
        params=_jsonable(atk.get_params()),
        norm=threats[0].norm,
        num_points=len(x),
        num_classes=num_classes,
        clean_accuracy=clean_acc,
        clean_per_class=clean_pc,
        results=results,
        flags=flags,
        skipped=skipped,
        device=str(dev),
        amp=amp,
        batch_size=batch_size,
        seed=seed if generator is None else None,
        seconds=seconds,
        audit_seconds=audit_seconds,
        robust=robust_masks,
        clean_correct=clean_correct,
        x_adv=advs,
    )
