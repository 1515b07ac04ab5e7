"""Calibration under shift and per-class disparity: what the report shows of the
reliability diagrams and per-class accuracies of a run.

Reliability diagrams (Guo et al. 2017, "On Calibration of Modern Neural Networks",
Sec. 2) are stored as ``{"confidence": [...], "accuracy": [...], "count": [...]}`` over
equal-width confidence bins (``None`` for empty bins): the clean one in
``metrics["reliability"]`` (its ECE in ``metrics["ece"]``), and one per robust row in
``extra["reliability"]`` (ECE in ``extra["ece"]``), computed on the attacked or corrupted
inputs. A :class:`CalibrationView` has up to three panels per run:

- *clean*;
- *corruptions*: every corruption's diagram at the highest severity measured, pooled bin
  by bin (counts added, confidence and accuracy averaged with the counts as weights: the
  diagram of all those corrupted points together); its ECE is that diagram's;
- *attack*: the run's main attack (:func:`main_attack`) at its largest eps with a diagram.

The ECE line lists the clean ECE, the mean over corruptions of their ECE at each
severity, and the ECE of the main attack at each eps.

Per-class accuracy (every row's ``per_class``, the clean one in
``metrics["per_class_accuracy"]``) gives the disparity table (clean, each eps of each
attack, the mean over corruption rows of their per-class accuracy) through
:func:`robustlab.evaluate.metrics.disparity`, and the per-class lines of the main attack
against eps. Runs that store none of the newer numbers (no clean diagram, no row diagram,
no corruption rows) get no view, so older reports stay as they were.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from robustlab.report.table import RobustEval, Run, _num, eps_text


@dataclass
class Diagram:
    """One reliability diagram: per bin the mean confidence, accuracy (None: empty) and
    count; ``ece`` as stored (or of the pooled diagram)."""

    title: str
    confidence: list[float | None]
    accuracy: list[float | None]
    count: list[int]
    ece: float | None
    note: str = ""

    @property
    def bins(self) -> int:
        return len(self.count)


@dataclass
class DisparityRow:
    """One line of the disparity table: what was measured and ``disparity(per_class)``."""

    what: str
    kind: str  # "clean", "attack", "corruption"
    mean: float | None
    worst: float | None
    worst_class: int | None
    best: float | None
    gap: float | None
    std: float | None


@dataclass
class CalibrationView:
    """One run's calibration panels, ECE line, disparity table and per-class lines."""

    run: Run
    diagrams: list[Diagram]
    ece_line: list[tuple[str, float]]
    disparity: list[DisparityRow]
    attack: tuple[str, str] | None  # the main attack (name, norm)
    per_class: dict[float, list[float | None]]  # eps -> per-class accuracy of the main attack (0: clean)
    flags: list[str] = field(default_factory=list)
    id: str = ""

    @property
    def num_classes(self) -> int:
        return max((len(v) for v in self.per_class.values()), default=0)


def _diagram(title: str, d: Any, ece: float | None, note: str = "") -> Diagram | None:
    if not isinstance(d, Mapping):
        return None
    count = d.get("count")
    if not isinstance(count, (list, tuple)) or not count:
        return None
    n = len(count)
    conf, acc = d.get("confidence") or [None] * n, d.get("accuracy") or [None] * n
    if len(conf) != n or len(acc) != n:
        return None
    counts = [int(c) if _num(c) is not None else 0 for c in count]
    return Diagram(title, [_num(v) if counts[i] else None for i, v in enumerate(conf)],
                   [_num(v) if counts[i] else None for i, v in enumerate(acc)], counts, ece, note)


def ece_of(d: Diagram) -> float | None:
    """Expected calibration error of a diagram (:func:`robustlab.evaluate.metrics.ece_of`,
    Guo et al. 2017, Eq. (3)); None for a diagram without points."""
    if sum(d.count) == 0:
        return None
    from robustlab.evaluate.metrics import ece_of as diagram_ece

    return diagram_ece({"count": list(d.count), "accuracy": list(d.accuracy), "confidence": list(d.confidence)})


def pool(title: str, diagrams: Sequence[Diagram], note: str = "") -> Diagram | None:
    """The diagrams (same bins) pooled into one: counts added, confidence and accuracy
    averaged weighted by the counts; its ECE is computed from the pooled bins."""
    ds = [d for d in diagrams if d.bins == diagrams[0].bins] if diagrams else []
    if not ds:
        return None
    bins = ds[0].bins
    count = [sum(d.count[b] for d in ds) for b in range(bins)]
    conf: list[float | None] = []
    acc: list[float | None] = []
    for b in range(bins):
        if not count[b]:
            conf.append(None)
            acc.append(None)
            continue
        conf.append(sum(d.count[b] * (d.confidence[b] or 0.0) for d in ds) / count[b])
        acc.append(sum(d.count[b] * (d.accuracy[b] or 0.0) for d in ds) / count[b])
    out = Diagram(title, conf, acc, count, None, note)
    out.ece = ece_of(out)
    return out


def main_attack(run: Run) -> tuple[str, str] | None:
    """(attack, norm) of the run's main attack: the one measured at the most eps (first
    in run order on a tie); None without attack rows."""
    counts: dict[tuple[str, str], set[float]] = {}
    for ev in run.robust:
        counts.setdefault((ev.attack, ev.norm), set()).add(ev.eps)
    if not counts:
        return None
    return max(counts, key=lambda k: len(counts[k]))  # max keeps the first of equals


def _mean_per_class(rows: Sequence[RobustEval]) -> list[float | None] | None:
    lists = [ev.per_class for ev in rows if ev.per_class]
    if not lists:
        return None
    k = max(len(p) for p in lists)
    out: list[float | None] = []
    for c in range(k):
        vals = [p[c] for p in lists if c < len(p) and p[c] is not None]
        out.append(sum(v for v in vals if v is not None) / len(vals) if vals else None)
    return out


def _disparity_row(what: str, kind: str, per_class: Sequence[float | None] | None) -> DisparityRow | None:
    if not per_class or all(v is None for v in per_class):
        return None
    from robustlab.evaluate.metrics import disparity

    d = disparity(list(per_class))
    vals = [v for v in per_class if v is not None]
    wc = d["worst_class"]
    return DisparityRow(what, kind, sum(vals) / len(vals), _num(d["worst"]),
                        int(wc) if wc is not None else None, _num(d["best"]), _num(d["gap"]), _num(d["std"]))


def has_calibration(run: Run) -> bool:
    """Whether ``run`` stores any of the numbers this view shows beyond older stores:
    a clean reliability diagram, a row's diagram, or corruption rows."""
    return (run.reliability is not None or bool(run.corruptions)
            or any("reliability" in ev.extra or "ece" in ev.extra for ev in run.robust))


def calibration_view(run: Run) -> CalibrationView | None:
    """The :class:`CalibrationView` of ``run`` (None for runs without the newer numbers,
    see :func:`has_calibration`)."""
    if not has_calibration(run):
        return None
    diagrams: list[Diagram] = []
    clean = _diagram("clean", run.reliability, run.ece)
    if clean is not None:
        if clean.ece is None:
            clean.ece = ece_of(clean)
        diagrams.append(clean)
    if run.corruptions:
        top = max(int(round(ev.eps)) for ev in run.corruptions)
        at_top = [d for ev in run.corruptions if int(round(ev.eps)) == top
                  for d in [_diagram(ev.attack, ev.extra.get("reliability"), _num(ev.extra.get("ece")))]
                  if d is not None]
        pooled = pool(f"corruptions, severity {top}", at_top,
                      note=f"{len(at_top)} corruption{'' if len(at_top) == 1 else 's'} pooled")
        if pooled is not None:
            diagrams.append(pooled)
    attack = main_attack(run)
    rows = [ev for ev in run.robust if attack is not None and (ev.attack, ev.norm) == attack]
    with_diagram = [ev for ev in rows if isinstance(ev.extra.get("reliability"), Mapping)]
    if with_diagram:
        ev = max(with_diagram, key=lambda e: e.eps)
        d = _diagram(f"{ev.attack} {ev.norm} \u03b5={eps_text(ev.eps)}", ev.extra["reliability"],
                     _num(ev.extra.get("ece")))
        if d is not None:
            if d.ece is None:
                d.ece = ece_of(d)
            diagrams.append(d)

    ece_line: list[tuple[str, float]] = []
    if run.ece is not None:
        ece_line.append(("clean", run.ece))
    by_sev: dict[int, list[float]] = {}
    for ev in run.corruptions:
        e = _num(ev.extra.get("ece"))
        if e is not None:
            by_sev.setdefault(int(round(ev.eps)), []).append(e)
    for s in sorted(by_sev):
        ece_line.append((f"corruptions severity {s} (mean of {len(by_sev[s])})", sum(by_sev[s]) / len(by_sev[s])))
    for ev in sorted(rows, key=lambda e: e.eps):
        e = _num(ev.extra.get("ece"))
        if e is not None:
            ece_line.append((f"{ev.attack} {ev.norm} \u03b5={eps_text(ev.eps)}", e))

    disp: list[DisparityRow] = []
    first = _disparity_row("clean", "clean", run.per_class)
    if first is not None:
        disp.append(first)
    groups: dict[tuple[str, str], list[RobustEval]] = {}
    for ev in run.robust:
        groups.setdefault((ev.attack, ev.norm), []).append(ev)
    for (name, norm), evs in groups.items():
        for ev in sorted(evs, key=lambda e: e.eps):
            n = f" (n={ev.num_points})" if ev.num_points is not None else ""
            row = _disparity_row(f"{name} {norm} \u03b5={eps_text(ev.eps)}{n}", "attack", ev.per_class)
            if row is not None:
                disp.append(row)
    mean_corr = _mean_per_class(run.corruptions)
    if mean_corr is not None:
        k = len(run.corruptions)
        row = _disparity_row(f"corruptions (mean of {k} corruption \u00d7 severity rows)", "corruption", mean_corr)
        if row is not None:
            disp.append(row)

    per_class: dict[float, list[float | None]] = {}
    if run.per_class:
        per_class[0.0] = list(run.per_class)
    for ev in sorted(rows, key=lambda e: e.eps):
        if ev.per_class:
            per_class.setdefault(ev.eps, list(ev.per_class))
    if len(per_class) < 2:
        per_class = {}
    return CalibrationView(run, diagrams, ece_line, disp, attack, per_class)


def calibration_views(runs: Sequence[Run]) -> list[CalibrationView]:
    """One :class:`CalibrationView` per run with the newer numbers, in run order."""
    out = []
    for r in runs:
        v = calibration_view(r)
        if v is not None and (v.diagrams or v.ece_line or v.disparity):
            out.append(v)
    return out


def ece_text(view: CalibrationView) -> str:
    """``"ECE: clean 0.031 · corruptions severity 5 (mean of 15) 0.120 · pgd linf ε=0.1 0.310"``."""
    return "ECE: " + " \u00b7 ".join(f"{what} {v:.3f}" for what, v in view.ece_line) if view.ece_line else ""


def _fmt(v: float | None) -> str:
    return "\u2014" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


EXPLANATION = (
    "Reliability diagrams: over equal-width confidence bins, the accuracy of the points in each bin (bars) "
    "against their mean confidence (the diagonal is perfect calibration; a bar below it is over-confidence). "
    "ECE (expected calibration error) is the count-weighted mean gap between the two. Disparity: from the "
    "accuracy on each true class, the worst class (and which), the best, the gap best \u2212 worst and the "
    "standard deviation across classes, for the clean points, each attack eps and the mean over corruptions.")
