"""Corruption metrics: mean corruption accuracy, corruption error and (relative) mCE.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019), Sec. 3:

- the corruption error of model ``f`` on corruption ``c`` is normalised by a baseline
  model's: ``CE_c = sum_s E_{s,c}(f) / sum_s E_{s,c}(base)`` (errors summed over the five
  severities); the mean corruption error **mCE** averages ``CE_c`` over the 15 corruptions;
- the relative corruption error subtracts each model's clean error first:
  ``rCE_c = sum_s (E_{s,c}(f) - E_clean(f)) / sum_s (E_{s,c}(base) - E_clean(base))``,
  averaged into the **relative mCE**;
- RobustBench's CIFAR-10-C number is the **mean corruption accuracy**: the plain mean of
  the accuracy over the 15 corruptions x 5 severities (no baseline).

The paper's baseline for ImageNet is AlexNet; for our data sets the user names a baseline
run. The rows are the evaluation path's rows of kind ``"corruption"`` (``attack``: the
corruption, ``eps``: the severity, ``accuracy``), as objects or stored dicts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from robustlab.corruptions.base import COMMON, SEVERITIES
from robustlab.errors import ConfigError


def _get(row: Any, key: str) -> Any:
    return row.get(key) if isinstance(row, Mapping) else getattr(row, key, None)


def corruption_accuracies(rows: Iterable[Any]) -> dict[str, dict[int, float]]:
    """``{corruption: {severity: accuracy}}`` from rows of kind ``"corruption"`` (other rows
    are skipped; a corruption measured twice at one severity keeps the last)."""
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if _get(r, "kind") != "corruption":
            continue
        acc = _get(r, "accuracy")
        if acc is None or not math.isfinite(float(acc)):
            continue
        out.setdefault(str(_get(r, "attack")), {})[int(round(float(_get(r, "eps"))))] = float(acc)
    return out


def mean_corruption_accuracy(accs: Mapping[str, Mapping[int, float]],
                             corruptions: Sequence[str] = COMMON) -> float | None:
    """The mean accuracy over ``corruptions`` x the five severities (RobustBench's number);
    None unless every one of them was measured."""
    vals = [accs.get(c, {}).get(s) for c in corruptions for s in SEVERITIES]
    if any(v is None for v in vals):
        return None
    return sum(float(v) for v in vals if v is not None) / len(vals)


def corruption_errors(
    accs: Mapping[str, Mapping[int, float]],
    baseline: Mapping[str, Mapping[int, float]],
    *,
    clean_accuracy: float | None = None,
    baseline_clean_accuracy: float | None = None,
    relative: bool = False,
) -> dict[str, float]:
    """``CE_c`` (or ``rCE_c`` with ``relative=True``, which needs both clean accuracies) for
    every corruption measured at all five severities by both the model and the baseline.

    A baseline whose summed (relative) error on a corruption is not positive cannot
    normalise it; that corruption is left out (and a relative CE with a baseline that loses
    nothing to the corruption is undefined)."""
    if relative and (clean_accuracy is None or baseline_clean_accuracy is None):
        raise ConfigError("the relative corruption error needs the clean accuracy of the model and of the baseline.")
    out: dict[str, float] = {}
    for c, sev in accs.items():
        base = baseline.get(c, {})
        if not all(s in sev and s in base for s in SEVERITIES):
            continue
        num = sum(1 - sev[s] for s in SEVERITIES)
        den = sum(1 - base[s] for s in SEVERITIES)
        if relative:
            assert clean_accuracy is not None and baseline_clean_accuracy is not None
            num -= len(SEVERITIES) * (1 - clean_accuracy)
            den -= len(SEVERITIES) * (1 - baseline_clean_accuracy)
        if den > 0:
            out[c] = num / den
    return out


def corruption_summary(
    rows: Iterable[Any],
    *,
    clean_accuracy: float | None = None,
    baseline_rows: Iterable[Any] | None = None,
    baseline_clean_accuracy: float | None = None,
    baseline_name: str | None = None,
) -> dict[str, Any]:
    """Everything a report shows for one run's corruption rows: ``accuracy`` per
    corruption and severity, ``mean_accuracy`` (over the 15 common corruptions x 5
    severities; None unless all were measured), ``mean_accuracy_measured`` (over whatever
    was measured), ``per_corruption`` (mean over severities) and, with a baseline's rows,
    ``ce``, ``mce``, ``relative_ce`` and ``relative_mce`` (over the common corruptions
    that both measured at every severity; ``mce_corruptions`` says how many)."""
    accs = corruption_accuracies(rows)
    flat = [a for sev in accs.values() for a in sev.values()]
    out: dict[str, Any] = {
        "accuracy": {c: {str(s): a for s, a in sorted(sev.items())} for c, sev in accs.items()},
        "per_corruption": {c: sum(sev.values()) / len(sev) for c, sev in accs.items() if sev},
        "mean_accuracy": mean_corruption_accuracy(accs),
        "mean_accuracy_measured": sum(flat) / len(flat) if flat else None,
        "clean_accuracy": clean_accuracy,
    }
    if baseline_rows is not None:
        base = corruption_accuracies(baseline_rows)
        common_accs = {c: accs[c] for c in COMMON if c in accs}
        ce = corruption_errors(common_accs, base)
        out["baseline"] = baseline_name
        out["ce"] = ce
        out["mce"] = sum(ce.values()) / len(ce) if ce else None
        out["mce_corruptions"] = len(ce)
        if clean_accuracy is not None and baseline_clean_accuracy is not None:
            rce = corruption_errors(common_accs, base, clean_accuracy=clean_accuracy,
                                    baseline_clean_accuracy=baseline_clean_accuracy, relative=True)
            out["relative_ce"] = rce
            out["relative_mce"] = sum(rce.values()) / len(rce) if rce else None
    return out


__all__ = [
    "corruption_accuracies",
    "corruption_errors",
    "corruption_summary",
    "mean_corruption_accuracy",
]
