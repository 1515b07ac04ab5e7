"""Fake stored rows of kinds ``corruption`` and ``detect``, reliability diagrams and the
run-level corruption summary, in the shape the evaluation path stores them
(``ResultRow.to_dict()``; ``metrics["corruption"]`` from ``corruption_summary``)."""

from __future__ import annotations

from typing import Any

from robustlab.corruptions.base import COMMON, EXTRA
from robustlab.evaluate.corruption import corruption_summary
from tests.report.fakes import FULL_SET, NUM_TEST, robust_row, row

FAMILY = {
    **{c: "noise" for c in COMMON[:3]}, **{c: "blur" for c in COMMON[3:7]},
    **{c: "weather" for c in COMMON[7:10]}, **{c: "digital" for c in COMMON[10:]},
    **{c: "extra" for c in EXTRA},
}
CLEAN = 0.9
BASELINE = "erm-baseline"


def accuracy_of(corruption: str, severity: int, *, shift: float = 0.0) -> float:
    """A distinct accuracy per (corruption, severity) that falls with the severity."""
    i = (COMMON + EXTRA).index(corruption)
    return round(0.85 - 0.1 * severity - 0.007 * i + shift, 4)


def diagram(seed: int, bins: int = 15) -> dict[str, list[Any]]:
    """A reliability diagram with some empty bins and distinct numbers per ``seed``."""
    conf: list[float | None] = []
    acc: list[float | None] = []
    count: list[int] = []
    for b in range(bins):
        n = 0 if b < 3 or (b + seed) % 5 == 0 else 10 + 3 * b + seed
        count.append(n)
        mid = (b + 0.5) / bins
        conf.append(round(mid, 4) if n else None)
        acc.append(round(max(0.0, min(1.0, mid - 0.02 * ((b + seed) % 4))), 4) if n else None)
    return {"confidence": conf, "accuracy": acc, "count": count}


def per_class(base: float, k: int = 10) -> list[float | None]:
    """Per-class accuracies around ``base`` (class 3 the worst, class 7 the best)."""
    out: list[float | None] = []
    for c in range(k):
        v = base + 0.01 * ((c * 7) % 5) - (0.2 if c == 3 else 0.0) + (0.08 if c == 7 else 0.0)
        out.append(round(max(0.0, min(1.0, v)), 4))
    return out


def corruption_row(corruption: str, severity: int, accuracy: float, *, n: int = NUM_TEST) -> dict[str, Any]:
    return {
        "kind": "corruption", "attack": corruption, "norm": "severity", "eps": float(severity),
        "accuracy": accuracy, "num_points": n, "num_total": NUM_TEST, "subset": None,
        "point_set": FULL_SET, "protocol": "robustlab-corruption/1", "params": {"seed": 0},
        "per_class": per_class(accuracy), "forwards": n, "backwards": 0, "flags": [], "flag_codes": [],
        "extra": {"family": FAMILY[corruption], "ece": round(0.02 * severity + 0.001 * len(corruption), 4),
                  "reliability": diagram(severity + len(corruption))},
    }


def corruption_rows(names: tuple[str, ...] = COMMON + EXTRA, severities: tuple[int, ...] = (1, 2, 3, 4, 5),
                    *, shift: float = 0.0) -> list[dict[str, Any]]:
    return [corruption_row(c, s, accuracy_of(c, s, shift=shift)) for c in names for s in severities]


def detect_row(detector: str, shift: str, level: float, auroc: float, *, tnr: float = 0.5,
               undetected: float | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"auroc": auroc, "aupr_in": round(auroc - 0.01, 4), "aupr_out": round(auroc - 0.02, 4),
                             "tnr_at_95_tpr": tnr, "num_in": 300, "num_out": 200}
    if undetected is not None:
        extra.update(attack_success=0.9, undetected_success=undetected)
    return {
        "kind": "detect", "attack": detector, "norm": shift, "eps": level, "accuracy": auroc,
        "num_points": 200, "num_total": NUM_TEST, "subset": 200, "point_set": "d37ec7ed0000",
        "protocol": "robustlab-detect/1", "params": {}, "per_class": [None] * 10,
        "forwards": 500, "backwards": 0, "flags": [], "flag_codes": [], "extra": extra,
    }


#: (detector, shift, level, AUROC, TNR@95, undetected success): mahalanobis separates the
#: plain linf attack (0.97) but not the adaptive one (0.55: a drop of 0.42 > 0.10); energy
#: drops by only 0.05 (no warning); msp has no adaptive row at eps 0.1.
DETECTIONS = [
    ("msp", "uniform", 0.0, 0.91, 0.6, None),
    ("energy", "uniform", 0.0, 0.93, 0.65, None),
    ("mahalanobis", "uniform", 0.0, 0.99, 0.95, None),
    ("msp", "corruption/fog", 3.0, 0.71, 0.2, None),
    ("energy", "corruption/fog", 3.0, 0.72, 0.25, None),
    ("mahalanobis", "corruption/fog", 3.0, 0.8, 0.4, None),
    ("msp", "adversarial/linf", 0.1, 0.6, 0.1, 0.8),
    ("energy", "adversarial/linf", 0.1, 0.7, 0.15, 0.7),
    ("mahalanobis", "adversarial/linf", 0.1, 0.97, 0.9, 0.05),
    ("energy", "adaptive/linf", 0.1, 0.65, 0.1, 0.75),
    ("mahalanobis", "adaptive/linf", 0.1, 0.55, 0.05, 0.82),
    ("msp", "data/fashion-mnist", 0.0, 0.88, 0.5, None),
]


def detect_rows(table: list[tuple[Any, ...]] = DETECTIONS) -> list[dict[str, Any]]:
    return [detect_row(d, s, lvl, a, tnr=t, undetected=u) for d, s, lvl, a, t, u in table]


ATTACK_EPS = (0.05, 0.1, 0.2)


def attack_rows(clean: float = CLEAN) -> list[dict[str, Any]]:
    """PGD at three eps with ECE, reliability and per-class numbers."""
    out = []
    for j, e in enumerate(ATTACK_EPS):
        acc = round(clean * (1 - 2 * e), 4)
        r = robust_row("pgd", e, acc, clean=clean)
        r["per_class"] = per_class(acc)
        r["extra"] = {"ece": round(0.1 + 0.1 * j, 4), "reliability": diagram(20 + j)}
        out.append(r)
    return out


def shift_run(i: int = 0, name: str = "shifted", *, corruptions: list[dict[str, Any]] | None = None,
              detections: list[dict[str, Any]] | None = None, baseline: bool = True,
              summary: bool = True, suite: str = "fake", clean: float = CLEAN) -> dict[str, Any]:
    """A run with attacks, corruption rows (all 19 x 5 unless given), detect rows, the clean
    reliability diagram and (``summary``) the stored corruption summary against a baseline."""
    corr = corruption_rows() if corruptions is None else corruptions
    robust = attack_rows(clean) + corr + (detect_rows() if detections is None else detections)
    metrics: dict[str, Any] = {"reliability": diagram(0), "per_class_accuracy": per_class(clean)}
    if summary and corr:
        kw: dict[str, Any] = {}
        if baseline:
            kw = {"baseline_rows": corruption_rows(COMMON, shift=-0.1), "baseline_clean_accuracy": 0.85,
                  "baseline_name": BASELINE}
        metrics["corruption"] = corruption_summary(corr, clean_accuracy=clean, **kw)
    r = row(i, "mlp", 0.0, name=name, clean=clean, robust=robust, metrics_extra=metrics, suite=suite)
    return r
