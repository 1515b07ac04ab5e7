"""Series in every plot can be told apart: a colour of their own and a (line style, marker)
pair of their own; training curves name every run in a legend."""

import itertools
import re

import pytest

from robustlab.report.plots import (
    LINESTYLES,
    MARKERS,
    history_plot,
    robust_plot,
    robust_series,
    series_styles,
)
from robustlab.report.table import normalize_rows
from tests.report.fakes import STANDARD_STAGES, robust_row, row


@pytest.mark.parametrize("n", [25, 72])
def test_series_styles_are_pairwise_distinct(n):
    styles = series_styles(n)
    colors = [s["color"].lower() for s in styles]
    assert len(set(colors)) == n
    pairs = [(repr(s["linestyle"]), s["marker"]) for s in styles]
    assert len(set(pairs)) == n
    assert n <= len(MARKERS) * len(LINESTYLES)
    for a, b in itertools.combinations(styles, 2):
        assert a["color"] != b["color"] and (a["linestyle"], a["marker"]) != (b["linestyle"], b["marker"])


def test_colours_stay_distinct_past_the_palette():
    colors = [s["color"] for s in series_styles(300)]
    assert len(set(colors)) == 300
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colors)
    assert series_styles(10) == series_styles(300)[:10]  # a series keeps its style as more are added


def _rows_with_two_attacks(n_runs):
    rows = []
    for i in range(n_runs):
        clean = 0.9 - i / 100
        robust = [robust_row("pgd", e, clean - e, clean=clean) for e in (0.05, 0.1)]
        robust.append(robust_row("standard", 0.1, clean - 0.2, clean=clean - 0.01, n=100, stages=STANDARD_STAGES))
        rows.append(row(i, "mlp", 0.0, name=f"run {i}", robust=robust))
    return rows


def _strokes(svg):
    return {c.lower() for c in re.findall(r"stroke: (#[0-9a-fA-F]{6})", svg)}


def test_a_runs_pgd_and_standard_lines_look_different():
    runs = normalize_rows(_rows_with_two_attacks(11))  # 22 series
    series = robust_series(runs)
    labels = [label for _, label, _ in series]
    assert labels[:2] == ["run 0 \u00b7 pgd (n=360)", "run 0 \u00b7 standard (n=100)"]
    assert len(series) == 22
    svg, _ = robust_plot(runs)
    # every series' own colour is drawn, and every label is in the legend
    assert {s["color"] for s in series_styles(22)} <= _strokes(svg)
    for label in labels:
        assert f">{label}</text>" in svg
    # the standard line starts at the clean accuracy on its own 100 points
    std = series[1][2]
    assert std[0] == (0.0, pytest.approx(89.0)) and series[0][2][0] == (0.0, pytest.approx(90.0))


def test_training_curves_have_a_legend_naming_every_run():
    rows = [row(i, "mlp", 0.0, name=f"curve {i}") for i in range(21)]
    runs = normalize_rows(rows)
    svg, _ = history_plot(runs)
    for i in range(21):
        assert f">curve {i}</text>" in svg
    assert {s["color"] for s in series_styles(21)} <= _strokes(svg)
