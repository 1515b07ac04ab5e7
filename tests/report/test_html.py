"""The HTML report: self-contained, escaped, one SVG per drawn plot, flags on top."""

import re

import pytest

from robustlab.report import render_report, write_report
from robustlab.report.plots import history_keys, noise_groups
from robustlab.report.table import normalize_rows
from tests.report.fakes import FLAG_TEXT, row, suite_rows


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    path = tmp_path_factory.mktemp("rep") / "report.html"
    out = write_report(suite_rows(), path, title="digits <suite>", notes=["Data: digits & friends", "protocol <b>x</b>"])
    assert out == path
    return path.read_text(encoding="utf-8")


def _svgs(text):
    return re.findall(r"<svg\b.*?</svg>", text, flags=re.S)


def test_one_svg_per_plot(html):
    assert html.count("<svg") == 3
    sections = {k: html.index(f'id="plot-{k}"') for k in ("noise", "robust", "history")}
    noise, robust, history = _svgs(html)
    # each figure sits in its own section, in order
    assert sections["noise"] < html.index(noise) < sections["robust"] < html.index(robust)
    assert sections["history"] < html.index(history)


def test_every_run_name_appears_escaped(html):
    for r in suite_rows():
        name = r["name"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert name in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    assert "digits &lt;suite&gt;" in html and "protocol &lt;b&gt;x&lt;/b&gt;" in html
    assert "Data: digits &amp; friends" in html


def test_no_external_resources(html):
    assert "http://" not in html and "https://" not in html
    refs = re.findall(r"""(?:href|src)\s*=\s*["']([^"']*)["']""", html, flags=re.I)
    assert refs and all(r.startswith("#") for r in refs)  # only links to ids inside the page
    assert "@import" not in html and "url(http" not in html
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))  # several inline SVGs without id clashes
    assert {r[1:] for r in refs} <= set(ids)
    assert set(re.findall(r"url\(#([^)]+)\)", html)) <= set(ids)


def test_flags_are_shown_before_the_results(html):
    assert FLAG_TEXT in html
    i = html.index(FLAG_TEXT)
    assert i < html.index("<table") and i < html.index("<svg")
    assert "1 evaluation flagged" in html
    assert "standard linf eps=8/255 (n=100)" in html[:i]
    # the failed run is announced at the top too, with the first line of its error
    assert html.index("RuntimeError: out of memory") < html.index("<table")


def test_per_attack_breakdown(html):
    section = html[html.index('id="per-attack"'):]
    assert re.search(r"apgd-ce: 47\.0</span> &rarr; <span[^>]*>apgd-t: 43\.0</span> &rarr; "
                     r"<span[^>]*>fab-t: 43\.0</span> &rarr; <span[^>]*>square: 41\.0", section)
    # the clean accuracy on the 100 attacked points, not the run's clean accuracy on all 360
    row_html = re.search(r"<tr><td>[^<]*</td><td>standard</td>.*?</tr>", section, flags=re.S).group(0)
    assert '<td class="num">100</td><td class="num">90.0</td>' in row_html
    # single attacks have no breakdown: a header and one row
    assert section[:section.index("</table>")].count("<tr>") == 2


def test_history_plot_shows_new_keys_without_code_changes(html):
    runs = normalize_rows(suite_rows())
    assert history_keys(runs) == ["train_loss", "train_accuracy", "done_entropy", "robust_val_accuracy"]
    history_svg = _svgs(html)[2]
    for title in ("train_loss", "train_accuracy (%)", "done_entropy", "robust_val_accuracy (%)"):
        assert f">{title}</text>" in history_svg
    for skipped in ("samples_per_s", ">lr<", "note"):
        assert skipped not in history_svg


def test_noise_groups_put_clean_runs_at_rate_zero_of_each_kind():
    runs = normalize_rows(suite_rows())
    groups, actual = noise_groups(runs)
    assert actual  # every run stores its actual flip rate (0 for clean runs)
    assert set(groups) == {("digits", m, "erm", "ce", "symmetric") for m in ("mlp", "mnist_net")}
    mlp = groups[("digits", "mlp", "erm", "ce", "symmetric")]
    # mlp runs at 0, 0.2, 0.4 and the clean "<script>" run; the failed run is left out
    assert sorted(r.flip_rate for r in mlp) == [0.0, 0.0, 0.183, 0.357]
    assert all(r.status == "done" for g in groups.values() for r in g)


def test_placeholders_when_plots_cannot_be_drawn():
    one_rate = [row(0, "mlp", 0.2, robust=[]), row(1, "mnist_net", 0.4, robust=[])]
    for r in one_rate:
        r["metrics"]["history"] = []
    text = render_report(one_rate, title="t")
    assert "<svg" not in text
    assert "two or more label-noise rates" in text
    assert "No robust evaluations were recorded" in text
    assert "No per-epoch training history" in text
    assert "no robust evaluations" in text  # audit line
    assert 'id="per-attack"' not in text


def test_unaudited_evaluations_are_not_reported_as_clean():
    text = render_report([row(0, "mlp", 0.0, legacy=True)], title="t")
    assert "carry no audit" in text and "flagged" not in text
    audited = row(1, "mlp", 0.0)
    text = render_report([audited], title="t")
    assert "Audit: no flags (3 audited evaluations)" in text


def test_rendering_is_deterministic_apart_from_the_timestamp():
    a, b = (re.sub(r"generated \S+", "", render_report(suite_rows(), title="t")) for _ in range(2))
    assert a == b


def test_dollar_signs_and_underscores_in_names_stay_literal():
    rows = [row(0, "mlp", 0.0, name="$x$ cost"), row(1, "mlp", 0.2, name="_hidden")]
    svg = _svgs(render_report(rows, title="t"))[1]  # robust plot legend
    assert ">$x$ cost \u00b7 pgd (n=360)</text>" in svg
    assert "_hidden \u00b7 pgd (n=360)</text>" in svg


def test_runs_of_one_loss_with_different_parameters_are_separate_noise_groups():
    from robustlab.report.plots import noise_groups
    from robustlab.report.table import normalize_rows

    from .fakes import row

    rows = []
    for i, (tau, rate) in enumerate([(0.5, 0.0), (0.5, 0.4), (1.5, 0.0), (1.5, 0.4)]):
        r = row(i, "mlp", rate, name=f"comp-sum tau={tau} rate={rate}")
        r["config"]["train"]["loss"] = {"name": "comp-sum", "params": {"tau": tau}}
        rows.append(r)
    groups, _ = noise_groups(normalize_rows(rows))
    losses = sorted({key[3] for key in groups})
    assert losses == ["comp-sum(tau=0.5)", "comp-sum(tau=1.5)"]
    assert all(len(members) == 2 for members in groups.values())
