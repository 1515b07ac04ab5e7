"""Certificates beside attacks in the report (issue 10): the numbers in the HTML table
and the text block are exactly the stored ones, the plot draws one line per sigma plus
the attack, certify rows never become robust columns, and point sets that differ are
marked."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from robustlab.report import render_report, results_table, text_table
from robustlab.report.certificates import certificate_views
from robustlab.report.table import normalize_rows
from robustlab.report.view import table_view
from tests.report.fakes import FULL_SET, NUM_TEST, SUBSET_100, robust_row, row, suite_rows

SUBSET_50 = "93556d4d13c9"
# (radius, certified accuracy, lower bound) per sigma, and the attack's (eps, robust accuracy)
SIGMA_025 = [(0.0, 0.62, 0.5), (0.25, 0.4, 0.3), (0.5, 0.18, 0.1)]
SIGMA_05 = [(0.0, 0.5, 0.41), (0.25, 0.38, 0.27), (0.5, 0.26, 0.16), (0.75, 0.12, 0.04)]
ATTACK = [(0.25, 0.3), (0.5, 0.1), (0.75, 0.02)]
ATTACK_CLEAN = 0.84  # the base model's clean accuracy on the attacked points


def cert_row(eps: float, acc: float, lower: float, *, sigma: float, n: int = 50,
             point_set: str = SUBSET_50, samples: int = 2000) -> dict[str, Any]:
    """A stored row of kind certify (the shape of ``ResultRow.to_dict()``)."""
    return {
        "kind": "certify", "attack": "smoothing", "norm": "l2", "eps": eps, "accuracy": acc,
        "num_points": n, "num_total": NUM_TEST, "subset": n, "point_set": point_set,
        "protocol": "robustlab-smoothing/1",
        "params": {"sigma": sigma, "n0": 100, "n": samples, "alpha": 0.001, "gamma": 0.001},
        "stages": ["smoothing"], "per_attack": {"clean": acc, "smoothing": acc}, "per_class": [acc] * 10,
        "forwards": 105000, "backwards": 0, "flags": [], "flag_codes": [], "extra": {"lower": lower},
    }


def certs(sigma: float, table: list[tuple[float, float, float]], **kw: Any) -> list[dict[str, Any]]:
    return [cert_row(e, a, lo, sigma=sigma, **kw) for e, a, lo in table]


def l2_attack(n: int = 50, point_set: str = SUBSET_50, clean: float = ATTACK_CLEAN) -> list[dict[str, Any]]:
    return [robust_row("standard", e, a, clean=clean, norm="l2", n=n, point_set=point_set) for e, a in ATTACK]


def certified_run(i: int = 0, name: str = "certified", extra: list[dict[str, Any]] | None = None,
                  **kw: Any) -> dict[str, Any]:
    robust = [robust_row("pgd", 0.1, 0.5, clean=0.9)] + certs(0.25, SIGMA_025) + certs(0.5, SIGMA_05)
    robust += l2_attack() if extra is None else extra
    return row(i, "mlp", 0.0, name=name, robust=robust, **kw)


# -- parsing the HTML --------------------------------------------------------------------
class _Tables(HTMLParser):
    """Every ``table.certify``: its header cells (data-col -> text, point-set mark) and, per
    row (data-radius), each cell's accuracy, lower bound, mark and classes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self.stack: list[str] = []  # what the text being read belongs to
        self.cell: dict[str, Any] | None = None
        self.radius: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "table" and "certify" in classes:
            self.tables.append({"run": a.get("data-run"), "head": {}, "rows": {}})
        if not self.tables or self.tables[-1].get("done"):
            return
        t = self.tables[-1]
        if tag == "tr" and a.get("data-radius") is not None:
            self.radius = a["data-radius"]
            t["rows"][self.radius] = {}
        elif tag in ("th", "td"):
            self.cell = {"col": a.get("data-col") or "radius", "classes": classes, "text": "", "acc": None,
                         "lower": None, "mark": None}
            self.stack = []
        elif self.cell is not None and tag in ("span", "sup"):
            self.stack.append("acc" if "acc" in classes else "lower" if "bound" in classes
                              else "mark" if tag == "sup" else "")

    def handle_endtag(self, tag: str) -> None:
        if not self.tables or self.tables[-1].get("done"):
            return
        t = self.tables[-1]
        if tag == "table":
            t["done"] = True
        elif tag in ("span", "sup") and self.stack:
            self.stack.pop()
        elif tag in ("th", "td") and self.cell is not None:
            c, self.cell = self.cell, None
            c["text"] = " ".join(c["text"].split())
            if tag == "th":
                t["head"][c["col"]] = c
            else:
                t["rows"][self.radius][c["col"]] = c

    def handle_data(self, data: str) -> None:
        if self.cell is None:
            return
        where = next((s for s in reversed(self.stack) if s), None)
        if where in ("acc", "lower", "mark"):
            self.cell[where] = (self.cell[where] or "") + data.strip()
        if where != "mark":
            self.cell["text"] += data


def certify_tables(html: str) -> list[dict[str, Any]]:
    p = _Tables()
    p.feed(html)
    return p.tables


def _section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}"')
    return html[start:html.index("</figure>", start)]


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


@pytest.fixture(scope="module")
def certified_html() -> str:
    return render_report([certified_run()])


# -- the table ------------------------------------------------------------------------------
def test_html_table_holds_exactly_the_certified_numbers_and_the_attack_at_the_same_radii(certified_html):
    (t,) = certify_tables(certified_html)
    head = {k: (v["text"], v["mark"]) for k, v in t["head"].items()}
    # B: the letter of the 50 points in the results table (A: all 360, the clean accuracy)
    assert head == {
        "radius": ("l2 radius", None),
        "cert-0": ("smoothing \u03c3=0.25certifiedn=50", "B"),  # lines joined by <br>
        "cert-1": ("smoothing \u03c3=0.5certifiedn=50", "B"),
        "attack-0": ("standardattack onbase modeln=50", "B"),
    }
    got = {r: {c: (v["acc"], v["lower"]) for c, v in cells.items() if c != "radius"}
           for r, cells in t["rows"].items()}
    want: dict[str, dict[str, tuple[str | None, str | None]]] = {
        repr(r): {"cert-0": (None, None), "cert-1": (None, None), "attack-0": (None, None)}
        for r in (0.0, 0.25, 0.5, 0.75)
    }
    for col, table in (("cert-0", SIGMA_025), ("cert-1", SIGMA_05)):
        for r, acc, lower in table:
            want[repr(r)][col] = (_pct(acc), _pct(lower))
    for r, acc in ATTACK:
        want[repr(r)]["attack-0"] = (_pct(acc), None)
    want["0.0"]["attack-0"] = (_pct(ATTACK_CLEAN), None)  # radius 0: the base model's clean accuracy
    assert got == want
    assert list(t["rows"]) == ["0.0", "0.25", "0.5", "0.75"]  # radii ascending
    assert t["rows"]["0.75"]["cert-0"]["text"] == "\u2014"  # sigma 0.25 was not certified at 0.75
    assert "clean-at-0" in t["rows"]["0.0"]["attack-0"]["classes"]
    assert "clean-at-0" not in t["rows"]["0.25"]["attack-0"]["classes"]


def test_the_section_says_what_the_bounds_are_and_names_the_settings(certified_html):
    sec = _section(certified_html, "certify")
    text = " ".join(re.sub(r"<[^>]+>", " ", sec).split())
    assert "Certified accuracy (randomized smoothing) is a lower bound" in text and "1\u2212\u03b1 per point" in text
    assert "Attack accuracy is an upper bound" in text
    assert "the standard attack on the base model, not on the smoothed classifier" in text
    assert ("smoothing \u03c3=0.25, \u03c3=0.5: n0 = 100 selection and N = 2000 estimation noise samples "
            "per point, \u03b1 = 0.001, \u03b3 = 0.001") in text
    # the run's row in the results table points to its certificates
    results = certified_html[certified_html.index('id="results"'):certified_html.index('id="certify"')]
    assert 'certified: see <a href="#certify-1">below</a>' in results
    assert 'id="certify-1"' in sec


# -- the plot -------------------------------------------------------------------------------
def test_plot_draws_one_line_per_sigma_plus_the_attack_per_run():
    html = render_report([certified_run(0, "first"), certified_run(1, "second", extra=[])])
    svg = _section(html, "plot-certify")
    assert svg.count("<svg") == 1
    ids = re.findall(r'id="fig-certify-((?:certified|attack|clean)-\d+(?:-\d+)?)"', svg)
    assert sorted(ids) == ["attack-0-2", "certified-0-0", "certified-0-1",  # panel 0: 2 sigmas + attack
                           "certified-1-0", "certified-1-1", "clean-1"]  # panel 1: no attack, clean point
    for label in ("certified: smoothing \u03c3=0.25", "certified: smoothing \u03c3=0.5",
                  "attack on the base model: standard", "base model, clean accuracy"):
        assert f">{label}</text>" in svg  # one legend naming every series
    assert ">first</text>" in svg and ">second</text>" in svg  # one panel per run


def test_certified_lines_are_steps_through_every_certified_radius():
    views = certificate_views(normalize_rows([certified_run()]))
    from robustlab.report.plots import certify_plot

    svg, _ = certify_plot(views)
    assert svg is not None
    group = re.search(r'<g id="fig-certify-certified-0-1">(.*?)</g>', svg, flags=re.S)
    assert group is not None
    path = re.search(r'\bd="([^"]+)"', group.group(1))
    assert path is not None
    # a step line through 4 radii: 4 points joined by 3 vertical + 3 horizontal segments
    assert len(re.findall(r"[ML]", path.group(1))) == 2 * len(SIGMA_05) - 1


# -- certify rows are no robust columns -------------------------------------------------------
def test_robust_columns_are_unchanged_by_certify_rows():
    attacks_only = [robust_row("pgd", 0.1, 0.5, clean=0.9)] + l2_attack()
    plain = row(0, "mlp", 0.0, name="certified", robust=attacks_only)
    assert results_table([certified_run()]) == results_table([plain])
    (view,) = [table_view(normalize_rows([certified_run()]))]
    assert [c.id for c in view.robust_columns] == [c.id for c in table_view(normalize_rows([plain])).robust_columns]


def test_a_run_with_only_certificates_shows_no_robust_columns():
    only = row(0, "mlp", 0.0, name="only certificates", robust=certs(0.25, SIGMA_025))
    (flat,) = results_table([only])
    assert not any("eps=" in k for k in flat)
    html = render_report([only])
    thead = html[html.index('<table class="results">'):]
    thead = thead[:thead.index("</thead>")]
    assert re.findall(r'<th class="key[^"]*" data-col="([^"]+)"', thead) == ["name", "clean_accuracy"]
    # its certificates are still shown, beside the base model's clean accuracy on all points
    (t,) = certify_tables(html)
    assert list(t["head"]) == ["radius", "cert-0", "clean"]
    assert t["rows"]["0.0"]["clean"]["acc"] == _pct(only["metrics"]["clean_accuracy"])
    assert t["rows"]["0.25"]["clean"]["acc"] is None


def test_runs_without_certificates_get_no_certificate_section():
    html = render_report(suite_rows())
    assert certify_tables(html) == []
    assert 'class="certificates"' not in html and "Certified vs attacked" not in html
    assert "certified: see" not in html and "plot-certify" not in html
    assert html.count("<svg") == 3
    assert "Certificates of" not in text_table(suite_rows(), width=120)
    # in a suite with one certified run, only that run gets a table and a panel
    html = render_report([*suite_rows()[:2], certified_run(9, "the certified one")])
    assert [t["run"] for t in certify_tables(html)] == [certified_run(9)["id"][:10]]
    assert html.count("certified: see") == 1


# -- point sets -----------------------------------------------------------------------------
def test_point_sets_that_differ_are_marked():
    run = certified_run(extra=l2_attack(n=100, point_set=SUBSET_100))  # attack on other points
    (t,) = certify_tables(render_report([run]))
    marks = {c: h["mark"] for c, h in t["head"].items() if c != "radius"}
    # the results table already lettered its sets (A: all points, B: the attack's 100 points)
    assert marks == {"cert-0": "C", "cert-1": "C", "attack-0": "B"}
    (view,) = certificate_views(normalize_rows([run]), table_view(normalize_rows([run])))
    assert view.point_note is not None and "not directly comparable" in view.point_note
    assert "B = 100 of 360 points" in view.point_note and "C = 50 of 360 points" in view.point_note


def test_one_point_set_is_not_marked_but_named():
    run = row(0, "mlp", 0.0, name="same points", robust=certs(0.25, SIGMA_025, n=NUM_TEST, point_set=FULL_SET)
              + l2_attack(n=NUM_TEST, point_set=FULL_SET))
    rows = normalize_rows([run])
    (view,) = certificate_views(rows, table_view(rows))
    assert not view.marks_shown and view.point_note is None
    assert view.same_points == "Every column: all 360 points of the split."
    (t,) = certify_tables(render_report([run]))
    assert all(h["mark"] is None for h in t["head"].values())


def test_an_attack_row_without_clean_accuracy_takes_the_run_clean_accuracy_marked_as_other_points():
    legacy = [dict(r, per_attack={"standard": r["accuracy"]}) for r in l2_attack()]
    run = row(0, "mlp", 0.0, name="older attack rows", clean=0.77,
              robust=certs(0.25, SIGMA_025) + legacy)
    (view,) = certificate_views(normalize_rows([run]))
    cell = view.cell("attack-0", 0.0)
    assert cell.accuracy == 0.77 and cell.clean
    assert view.columns[-1].mark == "A" and cell.mark == "B"  # all 360 points, not the attack's 50


def test_same_sigma_with_other_settings_gets_its_own_column():
    run = row(0, "mlp", 0.0, name="two budgets",
              robust=certs(0.25, SIGMA_025) + certs(0.25, SIGMA_025[:1], samples=100_000))
    (view,) = certificate_views(normalize_rows([run]))
    assert [c.name for c in view.columns if c.kind == "certify"] == [
        "smoothing \u03c3=0.25, N=2000", "smoothing \u03c3=0.25, N=100000"]


# -- text -----------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [40, 80, 132])
def test_text_report_lists_the_same_numbers_within_its_width(width):
    text = text_table([certified_run()], width=width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    block = text[text.index("Certificates of certified"):]
    flat = " ".join(block.split())
    for _, acc, lower in SIGMA_025 + SIGMA_05:
        assert f"{_pct(acc)} (>={_pct(lower)})" in flat
    for _, acc in ATTACK:
        assert _pct(acc) in flat
    assert f"{_pct(ATTACK_CLEAN)} (clean)" in flat
    assert "the standard attack on the base model" in " ".join(text.split())


def test_text_grid_rows_are_radii():
    lines = text_table([certified_run()], width=80).splitlines()
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines if re.match(r"^  (0|0\.25|0\.5|0\.75) ", ln)}
    assert rows == {
        "0": ["62.0", "(>=50.0)", "50.0", "(>=41.0)", "84.0", "(clean)"],
        "0.25": ["40.0", "(>=30.0)", "38.0", "(>=27.0)", "30.0"],
        "0.5": ["18.0", "(>=10.0)", "26.0", "(>=16.0)", "10.0"],
        "0.75": ["-", "12.0", "(>=4.0)", "2.0"],
    }


def test_the_explanation_names_the_attack_that_was_run():
    pgd = [robust_row("pgd", e, a, clean=0.8, norm="l2", n=50, point_set=SUBSET_50) for e, a in ATTACK]
    html = render_report([row(0, "mlp", 0.0, name="pgd l2", robust=certs(0.25, SIGMA_025) + pgd)])
    assert "the attack here is the pgd attack on the base model, not on the smoothed classifier" in html
    html = render_report([row(0, "mlp", 0.0, name="alone", robust=certs(0.25, SIGMA_025))])
    assert "No attack under the same norm was run" in html and "attack on the base model" not in html
    text = text_table([row(0, "mlp", 0.0, name="alone", robust=certs(0.25, SIGMA_025))], width=80)
    assert "no attack under the same norm was run" in " ".join(text.split())


def verified_row(method: str, eps: float, acc: float, *, n: int = 50, point_set: str = SUBSET_50) -> dict[str, Any]:
    """A stored row of a bound-propagation certificate (deterministic: no lower bound)."""
    return {
        "kind": "certify", "attack": method, "norm": "linf", "eps": eps, "accuracy": acc,
        "num_points": n, "num_total": NUM_TEST, "subset": n, "point_set": point_set,
        "protocol": "robustlab-bounds/1", "params": {}, "stages": [method],
        "per_attack": {"clean": 0.9, method: acc}, "per_class": [acc] * 10,
        "forwards": 0, "backwards": 0, "flags": [], "flag_codes": [],
    }


def test_verified_accuracy_sits_between_nothing_and_the_attack_with_its_own_wording() -> None:
    verified = [verified_row("ibp", 0.1, 0.3), verified_row("crown-ibp", 0.1, 0.42),
                verified_row("ibp", 0.2, 0.1), verified_row("crown-ibp", 0.2, 0.16)]
    attack = [robust_row("standard", e, a, clean=0.88, norm="linf", n=50, point_set=SUBSET_50)
              for e, a in [(0.1, 0.6), (0.2, 0.35)]]
    html = render_report([row(0, "mlp", 0.0, name="verified", robust=verified + attack)])
    (t,) = certify_tables(html)
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    assert "Verified accuracy (bound propagation) is a lower bound that holds for every point it counts" in text
    assert "smoothed classifier" not in text and "lies between the verified and the attack accuracy" in text
    plain = " ".join(text_table([row(0, "mlp", 0.0, name="verified", robust=verified + attack)], 100).split())
    assert "verified accuracy (bound propagation)" in plain.lower() and "1-alpha" not in plain
    got = {r: {c: (v["acc"], v["lower"]) for c, v in cells.items() if c != "radius"} for r, cells in t["rows"].items()}
    assert got["0.1"] == {"cert-0": ("30.0", None), "cert-1": ("42.0", None), "attack-0": ("60.0", None)}
    assert got["0.2"] == {"cert-0": ("10.0", None), "cert-1": ("16.0", None), "attack-0": ("35.0", None)}
