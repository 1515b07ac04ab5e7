"""The report that ``robustlab bench`` writes, opened in a real headless Chromium.

The bench suite is shrunk (2 epochs, PGD-2 on all 360 test points, the standard
ensemble on 30 of them) and run through the CLI; its ``report.html`` is loaded from
disk at a 1,400 x 900 viewport, and the test asserts what a reader would see:

- no console errors or page errors, and no network request at all (the report is
  offline: inline CSS and SVG; the browser context is also offline, so nothing leaves
  the machine even if a request were made);
- every plot has drawn pixels: the full-page screenshot cropped to each plot's
  bounding box is not blank and holds coloured (series) pixels;
- no key column (run name, clean accuracy, robust accuracies) of a results table lies
  beyond the right edge of its scroll box, and the page itself does not scroll sideways;
- the robust column headers name their n;
- a report of synthetic runs with corruption and detect rows, reliability diagrams and
  per-class numbers renders the same way: no console errors, no sideways scrolling, its
  heatmap, detection, disparity and comparison tables fit the window, every plot drawn;
- the certificate tables (the bench certifies two runs by randomized smoothing beside the
  standard L2 attack) are visible without scrolling sideways, name their n and mark the
  certificate's points apart from the attack's (the test shrinks the attack to 30 points,
  the certificates keep their 100).

Chromium is Debian's (``apt-get install chromium``), driven by Playwright from PyPI
with ``executable_path`` (no browser download). Without Chromium or Playwright the test
skips and says why, unless ``ROBUSTLAB_REQUIRE_BROWSER=1`` (set by ``.ci/run`` after it
installed Chromium), where a missing browser is a failure.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

VIEWPORT = {"width": 1400, "height": 900}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # plus --headless (Playwright adds it for headless=True) and a fresh --user-data-dir
REQUIRED = os.environ.get("ROBUSTLAB_REQUIRE_BROWSER") == "1"


def _chromium() -> str | None:
    explicit = os.environ.get("ROBUSTLAB_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason}; ROBUSTLAB_REQUIRE_BROWSER=1 says the browser check must run here.")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _chromium()
    if path is None:
        _unavailable("Chromium is not installed (as root: apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[browser]')")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def bench_report(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``robustlab bench`` on the packaged suite, shrunk; returns its report.html."""
    import yaml

    from robustlab.cli import main
    from robustlab.experiments import packaged_config

    tree = yaml.safe_load(packaged_config("bench").read_text())
    for section in [tree["base"], *tree["runs"]]:
        if (section.get("train") or {}).get("objective") in ("ibp", "crown-ibp"):
            section["train"]["objective_params"].update(warmup=0, rampup=1)  # the ramp fits 2 epochs
        for a in (section.get("evaluate") or {}).get("attacks", []):
            if a["name"] == "pgd":
                a["params"]["steps"] = 2  # on every test point, as in the real suite
            else:
                a["subset"] = 30
    root = tmp_path_factory.mktemp("bench")
    suite = root / "bench-tiny.yaml"
    suite.write_text(yaml.safe_dump(tree))
    res = root / "res"
    assert main(["bench", "--suite", str(suite), "--results", str(res), "train.epochs=2"]) == 0
    return res / "report.html"


_MEASURE = """() => {
  const rect = (e) => { const r = e.getBoundingClientRect();
    return {left: r.left + window.scrollX, top: r.top + window.scrollY, right: r.right + window.scrollX,
            width: r.width, height: r.height}; };
  return {
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    tables: [...document.querySelectorAll('table.results')].map((t) => ({
      box: rect(t.closest('.scroll')),
      keys: [...t.querySelectorAll('thead th.key')].map((th) => ({col: th.dataset.col, text: th.innerText,
                                                                   ...rect(th)})),
    })),
    plots: [...document.querySelectorAll('figure svg')].map((s) => ({section: s.closest('section').id, ...rect(s)})),
    certify: [...document.querySelectorAll('table.certify')].map((t) => ({
      box: rect(t.closest('.scroll')),
      heads: [...t.querySelectorAll('thead th')].map((th) => ({col: th.dataset.col || 'radius', text: th.innerText,
        mark: th.querySelector('sup.ps') ? th.querySelector('sup.ps').textContent : null, ...rect(th)})),
      radii: [...t.querySelectorAll('tbody tr')].map((tr) => tr.dataset.radius),
    })),
    shift: [...document.querySelectorAll('table.heatmap, table.detect, table.disparity, table.corruption-compare')]
      .map((t) => ({kind: t.className, box: rect(t.closest('.scroll')), table: rect(t),
                    cells: [...t.querySelectorAll('th, td')].map((c) => rect(c))})),
  };
}"""


def open_in_chromium(report: Path, chromium: str, profile: Path) -> dict[str, Any]:
    """Load ``report`` in headless Chromium (fresh profile ``profile``, offline) and return
    what the tests look at: console messages, page errors, every request made, the
    layout measurements of :data:`_MEASURE` and a full-page PNG screenshot."""
    from playwright.sync_api import sync_playwright

    url = report.resolve().as_uri()
    console: list[tuple[str, str]] = []
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport=VIEWPORT, device_scale_factor=1, offline=True,
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            measured = page.evaluate(_MEASURE)
            png = page.screenshot(full_page=True)
        finally:
            context.close()
    return {"url": url, "console": console, "errors": errors, "requests": requests, "png": png, **measured}


def plot_pixels(rendered: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    """(section, pixels, ink pixels, coloured pixels) of every plot's box in the screenshot."""
    import numpy as np
    from PIL import Image

    shot = Image.open(io.BytesIO(rendered["png"])).convert("RGB")
    out = []
    for p in rendered["plots"]:
        box = (round(p["left"]), round(p["top"]), round(p["left"] + p["width"]), round(p["top"] + p["height"]))
        assert box[2] <= shot.width and box[3] <= shot.height, (box, shot.size)
        px = np.asarray(shot.crop(box), dtype=np.int16).reshape(-1, 3)
        ink = int((px.min(axis=1) < 235).sum())  # anything not (near) white
        colour = int((px.max(axis=1) - px.min(axis=1) > 60).sum())  # series, not black/grey axes
        out.append((p["section"], len(px), ink, colour))
    return out


def hidden_key_columns(rendered: dict[str, Any]) -> list[str]:
    """Key columns of any results table that lie outside its scroll box or the viewport."""
    hidden = []
    for table in rendered["tables"]:
        right = min(table["box"]["right"], rendered["innerWidth"])
        hidden += [k["col"] for k in table["keys"]
                   if k["right"] > right + 0.5 or k["left"] < table["box"]["left"] - 0.5]
    return hidden


@pytest.fixture(scope="module")
def rendered(chromium: str, bench_report: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return open_in_chromium(bench_report, chromium, tmp_path_factory.mktemp("chromium-profile"))


def test_no_console_errors_and_no_network_requests(rendered):
    assert [m for m in rendered["console"] if m[0] == "error"] == []
    assert rendered["errors"] == []
    assert rendered["requests"] == [rendered["url"]]  # the report file itself, nothing else


def test_every_plot_has_drawn_pixels(rendered):
    plots = rendered["plots"]
    sections = [p["section"] for p in plots]
    assert sections[:4] == ["plot-noise", "plot-robust", "plot-history", "plot-certify"]
    # then, for the bench runs measured under corruptions, their family plots and calibration panels
    assert all(re.fullmatch(r"plot-corruption-\d+|calibration", s) for s in sections[4:]), sections
    assert all(p["width"] > 300 and p["height"] > 200 for p in plots), plots
    for section, n, ink, colour in plot_pixels(rendered):
        assert ink > 0.01 * n, (section, ink, n)
        assert colour > 300, (section, colour)


def test_key_columns_are_visible_without_scrolling_at_1400px(rendered):
    assert rendered["innerWidth"] == VIEWPORT["width"]
    assert rendered["scrollWidth"] <= rendered["innerWidth"]  # the page itself does not scroll sideways
    (table,) = rendered["tables"]
    keys = table["keys"]
    assert [k["col"] for k in keys][:2] == ["name", "clean_accuracy"]
    robust = [k for k in keys[2:] if k["col"] != "corruption_accuracy"]
    assert len(robust) == 8  # pgd linf at 4 eps, standard linf at 1 and standard l2 at 3 (bench suite)
    assert hidden_key_columns(rendered) == []
    headers = {k["col"]: " ".join(k["text"].split()) for k in keys}
    assert "n=30" in headers["standard linf eps=0.1 (n=30)"] and "standard" in headers["standard linf eps=0.1 (n=30)"]
    assert "n=360" in headers["pgd linf eps=0.1 (n=360)"]


def test_certificate_tables_are_visible_and_mark_their_points(rendered):
    tables = rendered["certify"]
    assert len(tables) == 3  # ce/clean, gaussian-0.25/clean (smoothing) and crown-ibp/clean (bounds)
    right = rendered["innerWidth"]
    for t in tables:  # every header cell inside its table and the window
        assert all(h["left"] >= t["box"]["left"] - 0.5 and h["right"] <= min(t["box"]["right"], right) + 0.5
                   for h in t["heads"]), t["heads"]
    verified = {h["col"]: h for h in tables[2]["heads"]}
    assert list(verified) == ["radius", "cert-0", "cert-1", "attack-0", "attack-1"]
    assert "crown-ibp" in verified["cert-0"]["text"] and "ibp" in verified["cert-1"]["text"]
    assert tables[2]["radii"] == ["0.0", "0.02", "0.05", "0.1", "0.2"]
    for t in tables[:2]:
        heads = {h["col"]: h for h in t["heads"]}
        assert list(heads) == ["radius", "cert-0", "attack-0"]
        assert all(h["left"] >= t["box"]["left"] - 0.5 and h["right"] <= min(t["box"]["right"], right) + 0.5
                   for h in heads.values()), heads
        assert "n=100" in heads["cert-0"]["text"] and "smoothing" in heads["cert-0"]["text"]
        assert "n=30" in heads["attack-0"]["text"] and "base model" in heads["attack-0"]["text"]
        # different points (100 certified, 30 attacked): different letters
        assert heads["cert-0"]["mark"] and heads["attack-0"]["mark"]
        assert heads["cert-0"]["mark"] != heads["attack-0"]["mark"]
        assert t["radii"] == ["0.0", "0.25", "0.5", "0.75"]


# -- corruptions, detectors, calibration (synthetic rows) ------------------------------------
@pytest.fixture(scope="module")
def shift_rendered(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from robustlab.report import write_report
    from tests.report.shift_fakes import COMMON, corruption_rows, shift_run

    root = tmp_path_factory.mktemp("shift")
    rows = [shift_run(0, "all corruptions"),
            shift_run(1, "five corruptions", corruptions=corruption_rows(COMMON[:5]), baseline=False)]
    path = write_report(rows, root / "report.html")
    return open_in_chromium(path, chromium, root / "profile")


def test_shift_sections_render_without_errors_or_overflow(shift_rendered):
    r = shift_rendered
    assert [m for m in r["console"] if m[0] == "error"] == [] and r["errors"] == []
    assert r["requests"] == [r["url"]]
    assert r["scrollWidth"] <= r["innerWidth"]
    kinds = [t["kind"] for t in r["shift"]]
    assert kinds.count("heatmap") == 2 and kinds.count("detect") == 2 and kinds.count("disparity") == 2
    assert kinds.count("corruption-compare") == 1
    for t in r["shift"]:  # the whole table inside its scroll box and the window: nothing hidden
        assert t["table"]["right"] <= min(t["box"]["right"], r["innerWidth"]) + 0.5, t["kind"]
        assert all(c["width"] > 0 and c["height"] > 0 for c in t["cells"])
    sections = [p[0] for p in plot_pixels(r)]
    assert sections.count("plot-corruption-1") == 1 and sections.count("plot-corruption-2") == 1
    assert sections.count("calibration") == 4  # reliability + per-class, two runs
    for section, n, ink, colour in plot_pixels(r):
        assert ink > 0.01 * n, (section, ink, n)
        assert colour > 300, (section, colour)
