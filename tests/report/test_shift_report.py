"""Corruptions, detectors, calibration under shift and per-class disparity in the report:
every number shown is the stored one (or the stated function of stored ones), the
non-adaptive-only warning appears exactly when the adaptive AUROC is much lower, and runs
without the new rows get no new section."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from robustlab.corruptions.base import COMMON, EXTRA, FAMILIES
from robustlab.evaluate.metrics import disparity
from robustlab.report import render_report, text_table
from robustlab.report.calibration import calibration_view, pool
from robustlab.report.corruption import PARTIAL_MARK, corruption_view
from robustlab.report.detection import ADAPTIVE_GAP, adaptive_gaps, detection_view
from robustlab.report.plots import reliability_plot
from robustlab.report.table import normalize_rows
from robustlab.report.text import corruption_text, detection_text
from robustlab.report.view import table_view
from tests.report.fakes import suite_rows
from tests.report.shift_fakes import (
    ATTACK_EPS,
    BASELINE,
    CLEAN,
    DETECTIONS,
    accuracy_of,
    corruption_rows,
    detect_row,
    diagram,
    per_class,
    shift_run,
)


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def text_of(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


class _Cells(HTMLParser):
    """Every ``<table class=CLS>``: per ``<tr>`` its data-* attributes and, per cell, its
    data-* attributes, classes and text."""

    def __init__(self, cls: str) -> None:
        super().__init__()
        self.cls = cls
        self.tables: list[list[dict[str, Any]]] = []
        self.inside = False
        self.cell: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "br" and self.cell is not None:
            self.cell["text"] += " "
        if tag == "table" and self.cls in a.get("class", "").split():
            self.tables.append([])
            self.inside = True
        elif self.inside and tag == "tr":
            self.tables[-1].append({"attrs": a, "cells": []})
        elif self.inside and tag in ("td", "th"):
            self.cell = {"tag": tag, "attrs": a, "text": ""}
            self.tables[-1][-1]["cells"].append(self.cell)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        if tag in ("td", "th") and self.cell is not None:
            self.cell["text"] = " ".join(self.cell["text"].split())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell["text"] += data


def tables(html: str, cls: str) -> list[list[dict[str, Any]]]:
    p = _Cells(cls)
    p.feed(html)
    return p.tables


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    """Run ``full``: all 19 corruptions x 5 severities with a baseline; run ``partial``:
    5 corruptions, no baseline, no detectors."""
    return [shift_run(0, "full"), shift_run(1, "partial", corruptions=corruption_rows(COMMON[:5]),
                                             baseline=False, detections=[])]


@pytest.fixture(scope="module")
def html(rows: list[dict[str, Any]]) -> str:
    return render_report(rows)


# -- corruptions ----------------------------------------------------------------------------
def test_heatmap_cells_are_the_stored_accuracies_in_family_order(html):
    full, partial = tables(html, "heatmap")
    body = [r for r in full if "data-corruption" in r["attrs"]]
    order = [r["attrs"]["data-corruption"] for r in body]
    assert order == list(COMMON + EXTRA)  # grouped by family: COMMON is, EXTRA is "extra"
    fams = [r["attrs"]["data-family"] for r in body]
    assert list(dict.fromkeys(fams)) == list(FAMILIES)
    for r in body:
        c = r["attrs"]["data-corruption"]
        cells = {cell["attrs"]["data-severity"]: cell["text"] for cell in r["cells"]
                 if "data-severity" in cell["attrs"]}
        assert cells == {**{str(s): pct(accuracy_of(c, s)) for s in range(1, 6)},
                         "mean": pct(sum(accuracy_of(c, s) for s in range(1, 6)) / 5)}
    # the family cell spans the family's rows
    spans = {cell["text"]: cell["attrs"]["rowspan"] for r in body for cell in r["cells"]
             if "family" in cell["attrs"].get("class", "").split()}
    assert spans == {"noise": "3", "blur": "4", "weather": "3", "digital": "5", "extra": "4"}
    assert [r["attrs"]["data-corruption"] for r in partial if "data-corruption" in r["attrs"]] == list(COMMON[:5])


def test_heatmap_colour_scale_is_fixed_so_equal_accuracies_look_the_same_in_every_run():
    a = render_report([shift_run(0, "a")])
    b = render_report([shift_run(0, "b", corruptions=corruption_rows(COMMON[:1], (1,)))])

    def style(h: str) -> str:
        (t,) = tables(h, "heatmap")
        row = next(r for r in t if r["attrs"].get("data-corruption") == "gaussian_noise")
        return next(c["attrs"]["style"] for c in row["cells"] if c["attrs"].get("data-severity") == "1")

    assert style(a) == style(b)  # same accuracy, same colour, whatever else the run measured
    from robustlab.report.html import heat_colour

    assert heat_colour(0.0) != heat_colour(1.0) and heat_colour(0.0)[1] == "#ffffff"


def test_family_plot_has_one_panel_per_family_and_one_line_per_corruption(html):
    for i, fams in ((1, FAMILIES), (2, ("noise", "blur"))):
        sec = html[html.index(f'<section id="plot-corruption-{i}"'):]
        svg = sec[:sec.index("</svg>")]
        assert re.findall(rf'id="fig-corruption-{i}-family-(\w+)"', svg) == list(fams)
        lines = re.findall(rf'id="fig-corruption-{i}-corruption-(\w+)"', svg)
        assert sorted(lines) == sorted(COMMON + EXTRA if i == 1 else COMMON[:5])


def test_summary_shows_the_stored_mce_and_names_the_baseline(rows, html):
    stored = rows[0]["metrics"]["corruption"]
    text = text_of(html[html.index('id="corruption-1"'):html.index('id="corruption-2"')])
    assert (f"mean corruption accuracy {pct(stored['mean_accuracy'])}% (all 15 common corruptions "
            f"\u00d7 5 severities)") in text
    assert f"mCE {pct(stored['mce'])}%, relative mCE {pct(stored['relative_mce'])}% against baseline {BASELINE}" in text
    assert f"clean accuracy {pct(CLEAN)}%" in text
    # a partial run: the mean over the measured pairs, said so; no mCE without a baseline
    partial = text_of(html[html.index('id="corruption-2"'):html.index('id="plot-corruption-2"')])
    measured = rows[1]["metrics"]["corruption"]["mean_accuracy_measured"]
    assert f"mean corruption accuracy {pct(measured)}% over the 25 measured" in partial
    assert "mCE" not in partial


def test_comparison_table_and_results_column(rows, html):
    (comp,) = tables(html, "corruption-compare")
    head = [c["text"] for c in comp[0]["cells"]]
    assert head == ["run", "noise mean", "blur mean", "weather mean", "digital mean", "extra mean",
                    "mean corruption accuracy", "mCE", "clean"]
    view = corruption_view(normalize_rows(rows[:1])[0])
    assert view is not None
    noise = [accuracy_of(c, s) for c in COMMON[:3] for s in range(1, 6)]
    assert [c["text"] for c in comp[1]["cells"]][1] == pct(sum(noise) / len(noise))
    stored = rows[0]["metrics"]["corruption"]
    assert [c["text"] for c in comp[1]["cells"]][-3:-1] == [pct(stored["mean_accuracy"]), pct(stored["mce"])]
    assert [c["text"] for c in comp[2]["cells"]][-3:] == [
        pct(rows[1]["metrics"]["corruption"]["mean_accuracy_measured"]) + PARTIAL_MARK, "\u2014", pct(CLEAN)]
    # the results table: a key column, the partial mean marked and explained
    tv = table_view(normalize_rows(rows))
    col = next(c for c in tv.columns if c.id == "corruption_accuracy")
    assert col.key and [rv.cells["corruption_accuracy"].text for rv in tv.rows] == [
        pct(stored["mean_accuracy"]), pct(rows[1]["metrics"]["corruption"]["mean_accuracy_measured"]) + PARTIAL_MARK]
    assert any(n.startswith(PARTIAL_MARK) for n in tv.footnotes)
    assert "corruption_accuracy" not in [c.id for c in table_view(normalize_rows(rows[:1])).columns][:2]


def test_no_comparison_for_one_run_and_means_computed_without_a_stored_summary():
    html = render_report([shift_run(0, "alone", summary=False)])
    assert "corruption-compare" not in html
    view = corruption_view(normalize_rows([shift_run(0, "alone", summary=False)])[0])
    assert view is not None and view.mce is None
    allv = [accuracy_of(c, s) for c in COMMON for s in range(1, 6)]
    assert view.mean_accuracy == pytest.approx(sum(allv) / 75)


# -- detectors ------------------------------------------------------------------------------
def test_detection_table_shows_the_stored_auroc_tnr_and_undetected_success(html):
    (t,) = tables(html, "detect")
    got: dict[tuple[str, str, str], str] = {}
    for r in t[1:]:
        for c in r["cells"]:
            if "data-detector" in c["attrs"]:
                got[(r["attrs"]["data-shift"], r["attrs"]["data-level"], c["attrs"]["data-detector"])] = c["text"]
    want = {}
    for d, shift, level, auroc, tnr, und in DETECTIONS:
        want[(shift, repr(level), d)] = f"{pct(auroc)} / {pct(tnr)}" + (f" / {pct(und)}" if und is not None else "")
    missing = {k: "\u2014" for k in got if k not in want}
    assert got == {**want, **missing}
    assert set(missing) == {("adaptive/linf", "0.1", "msp"), ("data/fashion-mnist", "0.0", "energy"),
                            ("data/fashion-mnist", "0.0", "mahalanobis")}
    shifts = [r["attrs"]["data-shift"] for r in t[1:]]
    assert shifts.index("adaptive/linf") == shifts.index("adversarial/linf") + 1  # side by side
    assert t[1 + shifts.index("adaptive/linf")]["attrs"]["class"] == "adaptive"
    assert "adaptive" in t[1 + shifts.index("adaptive/linf")]["cells"][0]["text"]


def test_non_adaptive_only_warning_appears_exactly_when_the_adaptive_auroc_is_much_lower(html):
    warnings = re.findall(r'<p class="box warn adaptive-warning">(.*?)</p>', html, flags=re.S)
    # mahalanobis: 0.97 -> 0.55 (drop 0.42 > 0.10): warned; energy: 0.70 -> 0.65 (0.05): not
    assert len(warnings) == 1
    assert "mahalanobis detects only non-adaptive attacks" in warnings[0]
    assert "AUROC 97.0% against the linf attack" in warnings[0] and "55.0% against the adaptive" in warnings[0]
    assert "energy" not in warnings[0]


@pytest.mark.parametrize(("adaptive_auroc", "warned"), [(0.9 - ADAPTIVE_GAP - 0.01, True),
                                                         (0.9 - ADAPTIVE_GAP + 0.01, False)])
def test_threshold_on_both_sides(adaptive_auroc, warned):
    rows = [detect_row("energy", "adversarial/l2", 0.5, 0.9, undetected=0.1),
            detect_row("energy", "adaptive/l2", 0.5, adaptive_auroc, undetected=0.6),
            detect_row("energy", "adaptive/l2", 1.0, 0.1, undetected=0.9)]  # no non-adaptive twin at 1.0
    view = detection_view(normalize_rows([shift_run(0, detections=rows, corruptions=[])])[0])
    assert view is not None
    gaps = adaptive_gaps(view)
    assert bool(gaps) is warned and len(view.warnings) == int(warned)
    if warned:
        assert gaps == [("energy", "l2", 0.5, 0.9, adaptive_auroc)]
    text = " ".join(detection_text([shift_run(0, detections=rows, corruptions=[])]).split())
    assert ("! energy detects only non-adaptive attacks: AUROC 90.0% against the l2 attack at eps=0.5, "
            f"{pct(adaptive_auroc)}% against the adaptive l2 attack" in text) is warned
    assert ("detects only" in text) is warned


# -- calibration and disparity --------------------------------------------------------------
def _bar_heights(svg: str, prefix: str, panel: int) -> dict[int, float]:
    out = {}
    for b, path in re.findall(rf'<g id="{prefix}-bar-{panel}-(\d+)">\s*<path d="([^"]+)"', svg):
        ys = [float(y) for y in re.findall(r"[ML] [\d.]+ ([\d.]+)", path)]
        out[int(b)] = max(ys) - min(ys)
    return out


def test_reliability_bars_match_the_stored_bins(rows):
    run = normalize_rows(rows[:1])[0]
    view = calibration_view(run)
    assert view is not None
    assert [d.title for d in view.diagrams] == ["clean", "corruptions, severity 5", f"pgd linf \u03b5={ATTACK_EPS[-1]}"]
    svg, _ = reliability_plot(view, prefix="rel")
    assert svg is not None
    stored = [rows[0]["metrics"]["reliability"], None, rows[0]["metrics"]["robust"][2]["extra"]["reliability"]]
    at5 = [r["extra"]["reliability"] for r in rows[0]["metrics"]["robust"]
           if r.get("kind") == "corruption" and r["eps"] == 5.0]
    for p, diag in enumerate(stored):
        if diag is None:  # pooled: counts add up, accuracy is the count-weighted mean
            diag = {"count": [sum(d["count"][b] for d in at5) for b in range(15)]}
            diag["accuracy"] = [sum(d["count"][b] * (d["accuracy"][b] or 0) for d in at5) / diag["count"][b]
                                if diag["count"][b] else None for b in range(15)]
            assert view.diagrams[1].count == diag["count"]
        heights = _bar_heights(svg, "rel", p)
        assert sorted(heights) == [b for b in range(15) if diag["count"][b]]  # a bar per non-empty bin
        scale = {round(h / diag["accuracy"][b], 3) for b, h in heights.items() if diag["accuracy"][b] > 0}
        assert len(scale) == 1  # heights proportional to the stored accuracies (one axis scale)
    assert view.diagrams[0].ece == rows[0]["metrics"]["ece"]
    assert view.diagrams[2].ece == rows[0]["metrics"]["robust"][2]["extra"]["ece"]


def test_pooling_is_the_diagram_of_all_points_together():
    from robustlab.report.calibration import _diagram

    a, b = _diagram("a", diagram(1), None), _diagram("b", diagram(2), None)
    assert a is not None and b is not None
    p = pool("ab", [a, b])
    assert p is not None
    for k in range(15):
        n = a.count[k] + b.count[k]
        assert p.count[k] == n
        if n:
            acc = (a.count[k] * (a.accuracy[k] or 0) + b.count[k] * (b.accuracy[k] or 0)) / n
            assert p.accuracy[k] == pytest.approx(acc)
    total = sum(p.count)
    assert p.ece == pytest.approx(sum(c / total * abs(x - y) for c, x, y in zip(p.count, p.accuracy, p.confidence)
                                      if c and x is not None and y is not None))


def test_ece_line_names_clean_corruptions_and_attack(html, rows):
    sec = text_of(html[html.index('id="calibration-1"'):html.index('id="calibration-2"')])
    assert f"ECE: clean {rows[0]['metrics']['ece']:.3f}" in sec
    for j, e in enumerate(ATTACK_EPS):
        assert f"pgd linf \u03b5={e} {0.1 + 0.1 * j:.3f}" in sec
    ece5 = [r["extra"]["ece"] for r in rows[0]["metrics"]["robust"] if r.get("kind") == "corruption" and r["eps"] == 5]
    assert f"corruptions severity 5 (mean of 19) {sum(ece5) / len(ece5):.3f}" in sec


def test_disparity_table_matches_disparity(html, rows):
    t = tables(html, "disparity")[0]
    got = {r["cells"][0]["text"]: {c["attrs"]["data-col"]: c["text"] for c in r["cells"][1:]} for r in t[1:]}
    stored = rows[0]["metrics"]
    expect = {"clean": stored["per_class_accuracy"]}
    for r in stored["robust"]:
        if r.get("kind") == "attack":
            expect[f"pgd linf \u03b5={r['eps']} (n=360)"] = r["per_class"]
    corr = [r["per_class"] for r in stored["robust"] if r.get("kind") == "corruption"]
    expect[f"corruptions (mean of {len(corr)} corruption \u00d7 severity rows)"] = [
        sum(p[k] for p in corr) / len(corr) for k in range(10)]
    assert list(got) == list(expect)
    for what, pc in expect.items():
        d = disparity(pc)
        assert got[what]["worst"] == pct(d["worst"]) and got[what]["worst_class"] == str(d["worst_class"])
        assert got[what]["gap"] == pct(d["gap"]) and got[what]["best"] == pct(d["best"])
        assert got[what]["std"] == pct(d["std"])
    assert got["clean"]["worst_class"] == "3"  # the fake's worst class


def test_per_class_plot_draws_one_line_per_class_with_clean_at_eps_0(rows):
    view = calibration_view(normalize_rows(rows[:1])[0])
    assert view is not None
    assert sorted(view.per_class) == [0.0, *ATTACK_EPS]
    assert view.per_class[0.0] == per_class(CLEAN)
    from robustlab.report.plots import per_class_plot

    svg, _ = per_class_plot(view, prefix="pc")
    assert svg is not None
    assert sorted(re.findall(r'id="pc-class-(\w+)"', svg)) == sorted([str(k) for k in range(10)] + ["mean"])
    assert ">class 9</text>" in svg


# -- text -----------------------------------------------------------------------------------
def test_corruption_text_holds_the_numbers_and_fits_the_width(rows):
    text = corruption_text(rows, width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    stored = rows[0]["metrics"]["corruption"]
    flat = " ".join(text.split())
    assert f"mCE {pct(stored['mce'])}%" in flat and f"baseline {BASELINE}" in flat
    for c in COMMON + EXTRA:
        line = next(ln for ln in text.splitlines() if ln.split()[:1] == [c])
        nums = line.split()[2:]
        assert nums == [pct(accuracy_of(c, s)) for s in range(1, 6)] + [
            pct(sum(accuracy_of(c, s) for s in range(1, 6)) / 5)]
    assert "family means: noise" in text
    narrow = corruption_text(rows, width=40)
    assert all(len(line) <= 40 for line in narrow.splitlines())
    assert f"s1 {pct(accuracy_of('fog', 1))}" in " ".join(narrow.split())
    assert corruption_text(suite_rows()) == "no corruption results"


def test_detection_text_holds_the_numbers_and_the_warning(rows):
    text = detection_text(rows, width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    flat = " ".join(text.split())
    assert "! mahalanobis detects only non-adaptive attacks" in flat
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("adversarial/linf"))
    assert line.split()[2:] == ["60.0/10.0/80.0", "70.0/15.0/70.0", "97.0/90.0/5.0"]
    assert detection_text(suite_rows()) == "no detection results"


def test_text_table_folds_the_blocks_in(rows):
    text = text_table(rows, width=80)
    assert corruption_text(rows, width=80) in text and detection_text(rows, width=80) in text
    assert "corruption" in text.splitlines()[text.splitlines().index(next(
        ln for ln in text.splitlines() if ln.startswith("---"))) - 2]  # the column header


# -- older runs -----------------------------------------------------------------------------
def test_runs_without_the_new_rows_get_no_new_section():
    old = suite_rows()
    html = render_report(old)
    html = html[html.index("<body>"):]  # (the stylesheet holds the new sections' rules)
    for marker in ("Corruptions<", "Detectors<", "Calibration and per-class", 'class="heatmap"', 'class="detect"',
                   'class="disparity"', "corruption_accuracy", "adaptive-warning"):
        assert marker not in html
    text = text_table(old)
    assert "Corruptions of" not in text and "Detectors of" not in text and "corruption" not in text
    # attack rows with ECE/reliability alone make a run "new": its calibration section appears
    r = shift_run(0, corruptions=[], detections=[])
    r["metrics"].pop("reliability")
    html2 = render_report([r])
    assert "Calibration and per-class" in html2 and "Corruptions<" not in html2 and "Detectors<" not in html2


def test_a_named_baseline_without_mce_says_why():
    r = shift_run(0, "no-mce", baseline=False)
    r["metrics"]["corruption"].update(baseline="ce/clean", baseline_missing="no finished run called 'ce/clean'.")
    view = corruption_view(normalize_rows([r])[0])
    assert view is not None
    assert "mCE against baseline ce/clean: \u2014 (no finished run called 'ce/clean')" in view.summary()
    text = " ".join(corruption_text([r, shift_run(1, "other", baseline=False)]).split())
    assert "mCE against baseline" not in text.split("Corruptions of")[0]  # no mCE column, no baseline note
