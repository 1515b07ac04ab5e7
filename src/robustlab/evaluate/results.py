"""What the evaluation path returns: one row type for every measurement.

:class:`ResultRow` is the row the CLI prints, the store keeps (``metrics["robust"]``),
the report draws and the benchmarks read. One row is one measurement at one budget:

- ``kind``: ``"attack"``, ``"certify"``, ``"corruption"`` (``attack`` is the
  corruption, ``norm`` is ``"severity"``, ``eps`` the severity 1..5, ``accuracy`` the
  accuracy on the corrupted points) or ``"detect"`` (``attack`` is the detector, ``norm``
  the shift, e.g. ``"uniform"`` or ``"adaptive/linf"``, ``eps`` its level, ``accuracy``
  the AUROC of in-distribution vs shifted points, ``extra`` every detection metric);
  later kinds add rows of their own kind, not new entry points;
- ``attack``, ``norm``, ``eps``, ``accuracy``: for an attack, robust accuracy (correct
  and not broken) at budget ``eps``; for a certificate, ``attack`` names the certifier
  (``smoothing``) and ``accuracy`` is the certified accuracy at radius ``eps`` (correct
  and certified there; abstentions count as wrong);
- ``num_points`` (points measured), ``num_total`` (points in the split), ``subset``
  (the requested N, or None for all), ``point_set`` (a short id of the measured indices:
  equal ids mean the same points, so results on different points are never compared
  unknowingly);
- ``protocol`` (e.g. ``robustlab-standard/1``, else the attack's name), ``params``;
- ``stages`` (ensemble members in the order they ran; a single attack: ``[attack]``) and
  ``per_attack`` (``{"clean": .., stage: robust accuracy after that stage, ...}`` in that
  order);
- ``per_class`` (robust accuracy per true class, None where absent);
- ``forwards``/``backwards`` (samples passed through the model at this budget);
- ``flags``/``flag_codes`` (audit findings, ``"code: sentence"`` and the codes alone);
- ``extra`` (kind-specific numbers, stored only when present: a certificate's
  high-probability lower bound ``lower`` on the certified accuracy; calibration on the
  attacked or corrupted inputs, ``ece`` and ``reliability``; a corruption's ``family``).

Wall-clock timings stay out of rows (reruns must compare equal).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robustlab.attacks import Flag, ThreatModel


def point_set_id(indices: torch.Tensor | np.ndarray | Sequence[int], total: int) -> str:
    """A short stable id of a set of point indices out of ``total`` (sha256 prefix)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    h = hashlib.sha256(f"{total}:".encode() + np.sort(idx).astype("<i8").tobytes())
    return h.hexdigest()[:12]


def jsonable(v: Any) -> Any:
    """Plain JSON values (dict keys as strings; tensors and numpy scalars unpacked)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


@dataclass
class ResultRow:
    """One measurement at one budget (the keys are documented in the module docstring)."""

    attack: str
    norm: str
    eps: float
    accuracy: float
    num_points: int
    num_total: int
    point_set: str
    protocol: str
    params: dict[str, Any]
    stages: list[str]
    per_attack: dict[str, float]
    per_class: list[float | None]
    forwards: int
    backwards: int
    subset: int | None = None
    flags: list[str] = field(default_factory=list)
    flag_codes: list[str] = field(default_factory=list)
    kind: str = "attack"
    extra: dict[str, Any] = field(default_factory=dict)

    def add_flag(self, flag: Flag) -> None:
        if flag.code not in self.flag_codes:
            self.flags.append(str(flag))
            self.flag_codes.append(flag.code)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "attack": self.attack,
            "norm": self.norm,
            "eps": self.eps,
            "accuracy": self.accuracy,
            "num_points": self.num_points,
            "num_total": self.num_total,
            "subset": self.subset,
            "point_set": self.point_set,
            "protocol": self.protocol,
            "params": jsonable(self.params),
            "stages": list(self.stages),
            "per_attack": dict(self.per_attack),
            "per_class": list(self.per_class),
            "forwards": self.forwards,
            "backwards": self.backwards,
            "flags": list(self.flags),
            "flag_codes": list(self.flag_codes),
            **({"extra": jsonable(self.extra)} if self.extra else {}),
        }


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
    #: the reliability diagram on the attacked inputs (see ``evaluate.metrics.reliability``)
    reliability: dict[str, list[Any]] | None = None

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
    """Per-attack, per-eps and per-class robust accuracy, audit flags, counts and timings
    of one attack measurement.

    ``robust`` maps each eps to the per-sample robust mask (CPU); ``x_adv`` (when kept)
    maps each eps to the adversarial inputs. :meth:`to_dict` leaves the tensors out.
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
    stages: list[str] = field(default_factory=list)
    robust: dict[float, torch.Tensor] = field(default_factory=dict, repr=False)
    clean_correct: torch.Tensor | None = field(default=None, repr=False)
    x_adv: dict[float, torch.Tensor] | None = field(default=None, repr=False)
    #: per eps, when asked for (``per_sample``; a sharded evaluation merges them): the stage
    #: that broke each point (-1: none; ensembles only), and the confidence and prediction
    #: on each attacked input
    broken_by: dict[float, torch.Tensor] | None = field(default=None, repr=False)
    adv_confidence: dict[float, torch.Tensor] | None = field(default=None, repr=False)
    adv_pred: dict[float, torch.Tensor] | None = field(default=None, repr=False)

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
            "params": jsonable(self.params),
            "norm": self.norm,
            "num_points": self.num_points,
            "num_classes": self.num_classes,
            "clean_accuracy": self.clean_accuracy,
            "clean_per_class": list(self.clean_per_class),
            "stages": list(self.stages),
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

    def evaluation(self, k: int) -> RobustEvaluation:
        """The :class:`RobustEvaluation` view of budget ``k``."""
        r = self.results[k]
        return RobustEvaluation(
            attack=self.attack,
            threat=ThreatModel(self.norm, r.eps),
            robust=self.robust[r.eps],
            clean_correct=self.clean_correct if self.clean_correct is not None else torch.zeros(0, dtype=torch.bool),
            x_adv=None if self.x_adv is None else self.x_adv[r.eps],
            forwards=r.forwards,
            backwards=r.backwards,
            params=self.params,
            per_attack=dict(r.per_attack),
            seconds=r.seconds,
        )


@dataclass
class Evaluation:
    """Everything one call of :func:`robustlab.evaluate.evaluate` measured.

    ``clean``: ``clean_accuracy``, ``ece``, ``per_class_accuracy``, ``num_test``;
    ``rows``: one :class:`ResultRow` per measurement and budget; ``reports``: the full
    :class:`AttackReport` of each attack measurement (in order); ``certifications``: the
    :class:`~robustlab.certify.base.Certification` of each certify measurement (in order);
    ``records``: per-sample arrays (``index``, ``label``, ``pred``, ``confidence``, and
    one ``robust/<attack>/<norm>/<eps>`` int8 array per row: 1 robust, 0 not, -1 not
    measured); ``seconds``/``attack_seconds``: wall-clock timings; ``threads``: the
    intra-op thread count used on CPU.
    """

    clean: dict[str, Any]
    rows: list[ResultRow]
    reports: list[AttackReport]
    records: dict[str, np.ndarray]
    certifications: list[Any] = field(default_factory=list)
    detections: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    attack_seconds: list[dict[str, Any]] = field(default_factory=list)
    threads: int | None = None

    def metrics(self) -> dict[str, Any]:
        """The JSON-able metrics a stored run keeps (with ``corruption``, the summary of
        :func:`robustlab.evaluate.corruption.corruption_summary`, when corruptions were measured)."""
        out = {
            **self.clean,
            "robust": [r.to_dict() for r in self.rows],
            "attack_seconds": list(self.attack_seconds),
            "eval_seconds": self.seconds,
            "threads": self.threads,
        }
        summary = self.corruption_summary()
        if summary is not None:
            out["corruption"] = summary
        return out

    def corruption_summary(self, baseline: Evaluation | None = None, baseline_name: str | None = None
                           ) -> dict[str, Any] | None:
        """Mean corruption accuracy (and, against a ``baseline`` evaluation, CE/mCE and the
        relative mCE) of the rows of kind ``"corruption"``; None without such rows."""
        from robustlab.evaluate.corruption import corruption_summary

        if not any(r.kind == "corruption" for r in self.rows):
            return None
        kwargs: dict[str, Any] = {}
        if baseline is not None:
            kwargs = {"baseline_rows": baseline.rows, "baseline_clean_accuracy": baseline.clean.get("clean_accuracy"),
                      "baseline_name": baseline_name}
        return corruption_summary(self.rows, clean_accuracy=self.clean.get("clean_accuracy"), **kwargs)


__all__ = [
    "AttackReport",
    "EpsResult",
    "Evaluation",
    "ResultRow",
    "RobustEvaluation",
    "jsonable",
    "point_set_id",
]
