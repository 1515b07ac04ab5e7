"""Detectors in the report: what it shows of rows of kind ``detect``.

A stored run's ``metrics["robust"]`` may hold one row per detector, shift and level
(``kind: "detect"``, ``attack``: the detector, e.g. ``msp``; ``norm``: the shift, e.g.
``uniform``, ``corruption/fog``, ``adversarial/linf``, ``adaptive/linf``,
``data/fashion-mnist``; ``eps``: the level, a severity or an attack's eps, 0 when the
shift has none; ``accuracy``: the AUROC; ``extra``: ``auroc``, ``aupr_in``, ``aupr_out``,
``tnr_at_95_tpr``, ``num_in``, ``num_out`` and, for attacks, ``attack_success`` and
``undetected_success``). Every run with such rows gets one :class:`DetectionView`:

- rows: (shift, level) pairs, shifts in order of first appearance, levels ascending; the
  rows of an adaptive attack (``adaptive/<norm>``) follow the non-adaptive attack under
  the same norm at the same eps, so the two read next to each other;
- columns: the detectors, in order of first appearance;
- cells: AUROC and TNR at 95% TPR and, for attacks, the undetected attack success (the
  share of attacked points where the attack succeeded *and* the detector accepted the
  example at the threshold that keeps 95% of in-distribution points).

A detector that separates a non-adaptive attack's examples well but not those of an
attack that knows the detector does not stop attacks; every such (detector, norm, eps)
gets a warning: :data:`ADAPTIVE_GAP` is the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robustlab.report.table import RobustEval, Run, _num, eps_text

ADAPTIVE_GAP = 0.10
"""A detector is reported as detecting only non-adaptive attacks when its AUROC against an
attack exceeds its AUROC against the adaptive attack under the same norm and eps by more
than this (10 percentage points of AUROC)."""

ADVERSARIAL = "adversarial/"
ADAPTIVE = "adaptive/"


@dataclass
class DetectionCell:
    """One detector on one (shift, level): the stored numbers (fractions)."""

    auroc: float | None
    tnr: float | None = None
    undetected: float | None = None
    success: float | None = None
    aupr_in: float | None = None
    aupr_out: float | None = None

    def text(self, *, plain: bool = False) -> str:
        """``"95.3 / 80.1"`` (+ ``" / 12.0"`` undetected success when stored), percent."""
        if self.auroc is None:
            return "-" if plain else "\u2014"
        out = f"{_pct(self.auroc)} / {_pct(self.tnr)}"
        if self.undetected is not None:
            out += f" / {_pct(self.undetected)}"
        return out.replace("\u2014", "-") if plain else out


@dataclass
class DetectionRow:
    """One (shift, level) of a detection table."""

    shift: str
    level: float
    num_in: int | None
    num_out: int | None

    @property
    def adaptive(self) -> bool:
        return self.shift.startswith(ADAPTIVE)

    @property
    def attack(self) -> bool:
        return self.shift.startswith((ADVERSARIAL, ADAPTIVE))

    @property
    def key(self) -> tuple[str, float]:
        return self.shift, self.level

    def label(self, *, plain: bool = False) -> str:
        """``"adaptive/linf ε=8/255"``, ``"corruption/fog severity 3"``, ``"uniform"``."""
        if self.attack:
            return f"{self.shift} {'eps' if plain else chr(0x3b5)}={eps_text(self.level)}"
        if self.shift.startswith("corruption/"):
            return f"{self.shift} severity {self.level:g}"
        return self.shift if self.level == 0 else f"{self.shift} level {self.level:g}"


@dataclass
class DetectionView:
    """One run's detection results (see the module docstring)."""

    run: Run
    detectors: list[str]
    rows: list[DetectionRow]
    cells: dict[tuple[str, float], dict[str, DetectionCell]]
    warnings: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    id: str = ""  # HTML anchor (set by the report)

    def cell(self, row: DetectionRow, detector: str) -> DetectionCell:
        return self.cells.get(row.key, {}).get(detector) or DetectionCell(None)

    @property
    def any_attack(self) -> bool:
        return any(r.attack for r in self.rows)


def _pct(v: float | None) -> str:
    if v is None:
        return "\u2014"
    return "nan" if math.isnan(v) else f"{100 * v:.1f}"


def _int(v: Any) -> int | None:
    x = _num(v)
    return int(x) if x is not None and math.isfinite(x) else None


def _cell(ev: RobustEval) -> DetectionCell:
    x = ev.extra
    auroc = _num(x.get("auroc"))
    return DetectionCell(
        auroc=auroc if auroc is not None else ev.accuracy,
        tnr=_num(x.get("tnr_at_95_tpr")),
        undetected=_num(x.get("undetected_success")),
        success=_num(x.get("attack_success")),
        aupr_in=_num(x.get("aupr_in")),
        aupr_out=_num(x.get("aupr_out")),
    )


def _lkey(level: float) -> float:
    return round(float(level), 12)


def adaptive_gaps(view: DetectionView, threshold: float = ADAPTIVE_GAP) -> list[tuple[str, str, float, float, float]]:
    """(detector, norm, eps, AUROC against the attack, AUROC against the adaptive attack)
    for every detector whose AUROC drops by more than ``threshold`` when the attack adapts
    to it (same norm, same eps)."""
    out = []
    for row in view.rows:
        if not row.shift.startswith(ADVERSARIAL):
            continue
        norm = row.shift[len(ADVERSARIAL):]
        twin = (ADAPTIVE + norm, row.level)
        for d in view.detectors:
            plain = view.cells.get(row.key, {}).get(d)
            adapt = view.cells.get(twin, {}).get(d)
            if plain is None or adapt is None or plain.auroc is None or adapt.auroc is None:
                continue
            if plain.auroc - adapt.auroc > threshold:
                out.append((d, norm, row.level, plain.auroc, adapt.auroc))
    return out


def warning_text(d: str, norm: str, eps: float, plain_auroc: float, adaptive_auroc: float, *,
                 plain: bool = False) -> str:
    e = "eps" if plain else "\u03b5"
    return (f"{d} detects only non-adaptive attacks: AUROC {_pct(plain_auroc)}% against the {norm} attack at "
            f"{e}={eps_text(eps)}, {_pct(adaptive_auroc)}% against the adaptive {norm} attack at the same "
            f"{e}; it does not stop an attacker who knows it.")


def detection_view(run: Run) -> DetectionView | None:
    """The :class:`DetectionView` of ``run``, or None when it has no detect rows."""
    if not run.detections:
        return None
    detectors = list(dict.fromkeys(ev.attack for ev in run.detections))
    shifts = list(dict.fromkeys(ev.norm for ev in run.detections))
    rows: dict[tuple[str, float], DetectionRow] = {}
    cells: dict[tuple[str, float], dict[str, DetectionCell]] = {}
    flags: dict[str, None] = {}
    for ev in run.detections:
        key = (ev.norm, _lkey(ev.eps))
        if key not in rows:
            rows[key] = DetectionRow(ev.norm, key[1], _int(ev.extra.get("num_in")), _int(ev.extra.get("num_out")))
        cells.setdefault(key, {}).setdefault(ev.attack, _cell(ev))
        for f in ev.flags or []:
            flags.setdefault(f"{ev.attack} on {rows[key].label()}: {f}", None)

    def group(shift: str) -> tuple[int, int]:
        # an adaptive attack sorts with the non-adaptive one under the same norm
        if shift.startswith(ADAPTIVE):
            twin = ADVERSARIAL + shift[len(ADAPTIVE):]
            return (shifts.index(twin) if twin in shifts else shifts.index(shift)), 1
        return shifts.index(shift), 0

    order = sorted(rows.values(), key=lambda r: (group(r.shift)[0], r.level, group(r.shift)[1]))
    view = DetectionView(run, detectors, order, cells, flags=list(flags))
    view.warnings = [warning_text(*g) for g in adaptive_gaps(view)]
    return view


def detection_views(runs: Sequence[Run]) -> list[DetectionView]:
    """One :class:`DetectionView` per run with detect rows, in run order."""
    return [v for r in runs for v in [detection_view(r)] if v is not None]


def explanation(views: Sequence[DetectionView], *, plain: bool = False) -> str:
    """What the detection tables show (``plain``: ASCII only)."""
    text = ("Each cell: AUROC / TNR at 95% TPR, in %. A detector scores every input; AUROC is the chance "
            "that a shifted (out-of-distribution) input scores as more anomalous than a clean test input "
            "(50 = chance, 100 = perfect separation), TNR at 95% TPR the share of shifted inputs rejected "
            "at the threshold that keeps 95% of clean inputs.")
    if any(v.any_attack for v in views):
        text += (" Attack rows add a third number, the undetected attack success: the share of attacked "
                 "points where the attack changed the prediction and the detector accepted the example at "
                 "that threshold (what gets through; lower is better). Adaptive rows attack the model and "
                 "the detector together; a detector is only as good as its adaptive rows, so every "
                 f"detector whose AUROC drops by more than {100 * ADAPTIVE_GAP:g} points from the attack "
                 "to the adaptive attack at the same eps is flagged as detecting only non-adaptive attacks.")
    return text.replace("\u03b5", "eps") if plain else text
