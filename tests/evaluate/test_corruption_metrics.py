"""Corruption metrics against hand computations (Hendrycks & Dietterich 2019, Sec. 3)."""

from __future__ import annotations

import pytest

from robustlab.corruptions.base import COMMON
from robustlab.errors import ConfigError
from robustlab.evaluate.corruption import corruption_errors, corruption_summary, mean_corruption_accuracy


def _rows(acc_of: dict[str, list[float]]) -> list[dict]:
    return [{"kind": "corruption", "attack": c, "norm": "severity", "eps": float(s + 1), "accuracy": a}
            for c, accs in acc_of.items() for s, a in enumerate(accs)]


def test_ce_and_relative_ce_by_hand() -> None:
    model = {"fog": [0.9, 0.8, 0.7, 0.6, 0.5]}       # errors .1 .2 .3 .4 .5 -> 1.5
    base = {"fog": [0.8, 0.7, 0.6, 0.5, 0.4]}        # errors .2 .3 .4 .5 .6 -> 2.0
    s = corruption_summary(_rows(model), clean_accuracy=0.95, baseline_rows=_rows(base) + [
        {"kind": "attack", "attack": "pgd", "eps": 0.1, "accuracy": 0.0}], baseline_clean_accuracy=0.9)
    assert s["ce"] == {"fog": pytest.approx(1.5 / 2.0)}
    assert s["mce"] == pytest.approx(0.75) and s["mce_corruptions"] == 1
    # relative: (1.5 - 5*0.05) / (2.0 - 5*0.1)
    assert s["relative_mce"] == pytest.approx(1.25 / 1.5)
    assert s["mean_accuracy"] is None  # only one of the 15 measured
    assert s["mean_accuracy_measured"] == pytest.approx(0.7)
    assert s["per_corruption"]["fog"] == pytest.approx(0.7)


def test_mean_corruption_accuracy_needs_all_75_and_is_their_mean() -> None:
    accs = {c: {s: (i + s) / 100 for s in range(1, 6)} for i, c in enumerate(COMMON)}
    want = sum((i + s) / 100 for i in range(15) for s in range(1, 6)) / 75
    assert mean_corruption_accuracy(accs) == pytest.approx(want)
    del accs["fog"][3]
    assert mean_corruption_accuracy(accs) is None


def test_a_baseline_that_loses_nothing_cannot_normalise_and_relative_needs_clean() -> None:
    accs = {"fog": {s: 0.5 for s in range(1, 6)}}
    assert corruption_errors(accs, {"fog": {s: 1.0 for s in range(1, 6)}}) == {}
    with pytest.raises(ConfigError, match="clean accuracy"):
        corruption_errors(accs, accs, relative=True)
