"""Corruptions in the report: what it shows of rows of kind ``corruption``.

A stored run's ``metrics["robust"]`` may hold one row per corruption and severity
(``kind: "corruption"``, ``attack``: the corruption, ``eps``: the severity 1..5,
``accuracy``, ``extra["family"]``, ``extra["ece"]``, ``extra["reliability"]``) and
``metrics["corruption"]`` the run's summary (:func:`robustlab.evaluate.corruption.corruption_summary`:
mean corruption accuracy, and against a named baseline the mCE and relative mCE of
Hendrycks & Dietterich 2019, Sec. 3). Every run with such rows gets one
:class:`CorruptionView`:

- a corruption x severity grid of accuracies, corruptions grouped by family in the order
  of :data:`robustlab.corruptions.base.COMMON` then :data:`~robustlab.corruptions.base.EXTRA`
  (names the library does not know go last, under the family their rows name), with a
  *mean* column: the mean of the row's measured severities;
- the family means: the mean of every measured accuracy of the family's corruptions;
- the summary numbers: the mean corruption accuracy over the 15 common corruptions x 5
  severities (RobustBench's number; ``None`` unless all 75 were measured, then the mean
  over what was measured is shown with a mark), the clean accuracy, mCE and relative mCE
  with the baseline's name. Numbers of the stored summary are shown as stored; without
  a summary the means are computed here from the rows (no baseline, so no mCE).

Pure Python; the corruption names and families come from :mod:`robustlab.corruptions.base`,
imported when a run with corruption rows is shown (it imports torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from robustlab.report.table import Run, _num

PARTIAL_MARK = "\u2020"
"""Marks a mean corruption accuracy over only the measured (corruption, severity) pairs."""


def _order() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    """(COMMON, EXTRA, FAMILIES, SEVERITIES) of the corruption benchmark."""
    from robustlab.corruptions.base import COMMON, EXTRA, FAMILIES, SEVERITIES

    return COMMON, EXTRA, FAMILIES, SEVERITIES


def _mean(vals: Sequence[float | None]) -> float | None:
    xs = [float(v) for v in vals if v is not None and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


def _sev(eps: float) -> int:
    return int(round(eps))


@dataclass
class CorruptionView:
    """One run's corruption results (see the module docstring).

    ``accuracy[c][s]``: the stored accuracy of corruption ``c`` at severity ``s``;
    ``row_mean[c]``: the mean over its measured severities; ``families``: family ->
    its corruptions in display order; ``family_mean[f]``: the mean of every measured
    accuracy of family ``f``. ``mean_accuracy``: over all 15 common corruptions x 5
    severities (None unless complete); ``mean_measured``: over the measured pairs.
    """

    run: Run
    corruptions: list[str]
    family_of: dict[str, str]
    severities: list[int]
    accuracy: dict[str, dict[int, float | None]]
    row_mean: dict[str, float | None]
    families: dict[str, list[str]]
    family_mean: dict[str, float | None]
    clean_accuracy: float | None
    mean_accuracy: float | None
    mean_measured: float | None
    measured_common: int  # (corruption, severity) pairs of the 15 x 5 that were measured
    total_common: int  # 75
    ece: dict[str, dict[int, float]]
    num_points: int | None
    baseline: str | None = None
    mce: float | None = None
    relative_mce: float | None = None
    mce_corruptions: int | None = None
    baseline_missing: str | None = None  # why a named baseline gave no mCE (stored by the evaluation)
    flags: list[str] = field(default_factory=list)
    id: str = ""  # HTML anchor (set by the report)

    @property
    def complete(self) -> bool:
        """All 15 common corruptions were measured at all 5 severities."""
        return self.mean_accuracy is not None

    @property
    def has_baseline(self) -> bool:
        return self.baseline is not None or self.mce is not None

    def headline(self) -> tuple[float | None, bool]:
        """(the mean corruption accuracy to show, whether it is over all 75 pairs)."""
        if self.mean_accuracy is not None:
            return self.mean_accuracy, True
        return self.mean_measured, False

    def summary(self, *, plain: bool = False) -> str:
        """The summary line: mean corruption accuracy, clean accuracy, mCE and relative
        mCE against the named baseline (percent, one decimal; ``plain``: ASCII only)."""
        times = "x" if plain else "\u00d7"
        mean, full = self.headline()
        if mean is None:
            text = "mean corruption accuracy \u2014"
        elif full:
            text = (f"mean corruption accuracy {_pct(mean)}% (all {len(self.common_names())} common "
                    f"corruptions {times} 5 severities)")
        else:
            text = (f"mean corruption accuracy {_pct(mean)}% over the {self.measured_pairs()} measured "
                    f"corruption {times} severity pairs only ({self.measured_common} of the "
                    f"{self.total_common} of the benchmark: not the benchmark's number)")
        text += f"; clean accuracy {_pct(self.clean_accuracy)}%" if self.clean_accuracy is not None else ""
        if self.has_baseline:
            who = f"baseline {self.baseline}" if self.baseline else "a baseline"
            if self.mce is None:
                why = self.baseline_missing.rstrip(".") if self.baseline_missing else \
                    "no corruption measured at every severity by both"
                text += f"; mCE against {who}: \u2014 ({why})"
            else:
                text += f"; mCE {_pct(self.mce)}%"
                if self.relative_mce is not None:
                    text += f", relative mCE {_pct(self.relative_mce)}%"
                n = f" over {self.mce_corruptions} corruptions" if self.mce_corruptions is not None else ""
                text += f" against {who}{n} (100% = the baseline's error; lower is better)"
        if plain:
            text = text.replace("\u2014", "-")
        return text + "."

    def measured_pairs(self) -> int:
        return sum(1 for c in self.corruptions for v in self.accuracy[c].values() if v is not None)

    def common_names(self) -> tuple[str, ...]:
        return _order()[0]


def _pct(v: float | None) -> str:
    if v is None:
        return "\u2014"
    return "nan" if math.isnan(v) else f"{100 * v:.1f}"


def corruption_view(run: Run) -> CorruptionView | None:
    """The :class:`CorruptionView` of ``run``, or None when it has no corruption rows."""
    if not run.corruptions:
        return None
    common, extra, families_order, severities = _order()
    accuracy: dict[str, dict[int, float | None]] = {}
    family_of: dict[str, str] = {}
    ece: dict[str, dict[int, float]] = {}
    flags: dict[str, None] = {}
    for ev in run.corruptions:
        c = ev.attack
        accuracy.setdefault(c, {})[_sev(ev.eps)] = ev.accuracy  # a repeat keeps the last, as the summary does
        fam = ev.extra.get("family")
        family_of.setdefault(c, str(fam) if fam else ("extra" if c in extra else "unknown"))
        e = _num(ev.extra.get("ece"))
        if e is not None:
            ece.setdefault(c, {})[_sev(ev.eps)] = e
        for f in ev.flags or []:
            flags.setdefault(f"{c} severity {_sev(ev.eps)}: {f}", None)
    known = {c: i for i, c in enumerate((*common, *extra))}
    fam_rank = {f: i for i, f in enumerate(families_order)}
    first = {c: i for i, c in enumerate(accuracy)}
    names = sorted(accuracy, key=lambda c: (fam_rank.get(family_of[c], len(fam_rank)), family_of[c],
                                            known.get(c, len(known)), first[c]))
    families: dict[str, list[str]] = {}
    for c in names:
        families.setdefault(family_of[c], []).append(c)
    sevs = sorted({s for row in accuracy.values() for s in row} | set(severities))
    row_mean = {c: _mean(list(accuracy[c].values())) for c in names}
    family_mean = {f: _mean([v for c in cs for v in accuracy[c].values()]) for f, cs in families.items()}
    measured_common = sum(1 for c in common for s in severities if accuracy.get(c, {}).get(s) is not None)
    summary = run.corruption or {}
    if "mean_accuracy" in summary or "mean_accuracy_measured" in summary:
        mean_accuracy = _num(summary.get("mean_accuracy"))
        mean_measured = _num(summary.get("mean_accuracy_measured"))
    else:  # rows stored without the run-level summary: the same summary, computed from them
        from robustlab.evaluate.corruption import corruption_summary

        computed = corruption_summary(run.corruptions)
        mean_measured, mean_accuracy = computed["mean_accuracy_measured"], computed["mean_accuracy"]
    clean = _num(summary.get("clean_accuracy"))
    nums = [ev.num_points for ev in run.corruptions if ev.num_points is not None]
    return CorruptionView(
        run=run, corruptions=names, family_of=family_of, severities=sevs, accuracy=accuracy,
        row_mean=row_mean, families=families, family_mean=family_mean,
        clean_accuracy=clean if clean is not None else run.clean_accuracy,
        mean_accuracy=mean_accuracy, mean_measured=mean_measured, measured_common=measured_common,
        total_common=len(common) * len(severities), ece=ece,
        num_points=nums[0] if nums and len(set(nums)) == 1 else None,
        baseline=str(summary["baseline"]) if summary.get("baseline") else None,
        mce=_num(summary.get("mce")), relative_mce=_num(summary.get("relative_mce")),
        mce_corruptions=int(summary["mce_corruptions"]) if _num(summary.get("mce_corruptions")) is not None
        else None,
        baseline_missing=str(summary["baseline_missing"]) if summary.get("baseline_missing") else None,
        flags=list(flags),
    )


def corruption_views(runs: Sequence[Run]) -> list[CorruptionView]:
    """One :class:`CorruptionView` per run with corruption rows, in run order."""
    return [v for r in runs for v in [corruption_view(r)] if v is not None]


def mean_cell(run: Run) -> tuple[float | None, bool] | None:
    """The results table's *corruption acc.* of ``run``: (value, over all 75 pairs), or
    None when the run has no corruption rows."""
    view = corruption_view(run)
    return None if view is None else view.headline()


@dataclass
class Comparison:
    """Several runs' corruption results side by side: per run the family means, the
    mean corruption accuracy (and whether it is over all 75 pairs) and the mCE."""

    families: list[str]
    rows: list[tuple[CorruptionView, dict[str, float | None]]]

    @property
    def any_mce(self) -> bool:
        return any(v.mce is not None for v, _ in self.rows)

    @property
    def baselines(self) -> list[str]:
        return list(dict.fromkeys(v.baseline for v, _ in self.rows if v.baseline))


def comparison(views: Sequence[CorruptionView]) -> Comparison | None:
    """The run x family comparison of ``views``; None for fewer than two runs."""
    if len(views) < 2:
        return None
    _, _, order, _ = _order()
    rank = {f: i for i, f in enumerate(order)}
    fams = sorted({f for v in views for f in v.families}, key=lambda f: (rank.get(f, len(rank)), f))
    return Comparison(fams, [(v, {f: v.family_mean.get(f) for f in fams}) for v in views])


def explanation(*, plain: bool = False) -> str:
    """What the corruption tables show (``plain``: ASCII only)."""
    text = ("Accuracy (%) on the test points corrupted by each common corruption at severities 1 (mild) to 5 "
            "(Hendrycks & Dietterich 2019); mean: the mean of the row. The mean corruption accuracy "
            "averages the 15 common corruptions \u00d7 5 severities (the four extra corruptions are shown, "
            "not averaged in); the corruption error CE of a corruption is the model's error summed over "
            "the severities divided by the baseline's, and mCE averages it over the corruptions (relative "
            "mCE: the same after subtracting each model's clean error).")
    return text.replace("\u00d7", "x") if plain else text
