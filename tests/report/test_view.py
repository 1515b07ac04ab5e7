"""The results table as the report shows it: key columns first, attack and n in every robust
header, results on different points marked, constant columns in a caption, the optimistic
number marked, a section per suite, evaluations labelled by the weights' provenance."""

import re

import pytest

from robustlab.report import render_report
from robustlab.report.plots import noise_groups
from robustlab.report.table import normalize_rows
from robustlab.report.view import MIXED, table_view
from tests.report.fakes import (
    FLAG_TEXT,
    TRAIN_FLAG,
    evaluation_row,
    robust_row,
    row,
    suite_rows,
)


@pytest.fixture(scope="module")
def html():
    return render_report(suite_rows(), title="t")


def _results(text, index=0):
    """The i-th results table (``<table class="results">...</table>``)."""
    return re.findall(r'<table class="results">.*?</table>', text, flags=re.S)[index]


def _headers(table_html):
    return re.findall(r'<th class="[^"]*" data-col="([^"]*)" title="[^"]*">(.*?)</th>', table_html, flags=re.S)


def test_key_columns_come_first_and_every_robust_header_names_attack_eps_and_n(html):
    headers = _headers(_results(html))
    ids = [c for c, _ in headers]
    assert ids[:6] == ["name", "clean_accuracy", "pgd linf eps=0.05 (n=360)", "pgd linf eps=0.1 (n=360)",
                       "pgd linf eps=0.2 (n=360)", "standard linf eps=8/255 (n=100)"]
    assert ids[-1] == "id"
    head = dict(headers)
    assert "standard<br>linf \u03b5=8/255<br>n=100" in head["standard linf eps=8/255 (n=100)"]
    assert "pgd<br>linf \u03b5=0.1<br>n=360" in head["pgd linf eps=0.1 (n=360)"]
    assert "clean<br>n=360" in head["clean_accuracy"]
    assert len(re.findall(r'<th class="key', _results(html))) == 6  # name, clean and 4 robust columns


def test_results_on_different_points_are_marked_and_explained(html):
    head = dict(_headers(_results(html)))
    # clean and PGD on all 360 test points (A), the standard ensemble on 100 of them (B)
    assert head["clean_accuracy"].endswith('<sup class="ps">A</sup>')
    assert all(head[f"pgd linf eps={e} (n=360)"].endswith('<sup class="ps">A</sup>') for e in ("0.05", "0.1", "0.2"))
    assert head["standard linf eps=8/255 (n=100)"].endswith('<sup class="ps">B</sup>')
    note = re.search(r'<p class="caption points">(.*?)</p>', html, flags=re.S).group(1)
    assert html.index(note) < html.index('<table class="results">')  # a caption above the table
    assert "A = all 360 points of the split: clean (n=360); pgd linf eps=0.05, 0.1, 0.2 (n=360)" in note
    assert "B = 100 of 360 points (a fixed subset, point-set id 5e7a1c2b9d00): standard linf eps=8/255 (n=100)" in note


def test_no_marks_when_every_number_is_on_the_same_points():
    text = render_report([row(0, "mlp", 0.0), row(1, "mlp", 0.4)], title="t")
    assert 'class="ps"' not in text and "Point sets." not in text


def test_a_column_whose_runs_were_attacked_on_different_points_is_marked_mixed_cell_by_cell():
    rows = []
    for i, ps in enumerate(["aaaaaaaaaaaa", "bbbbbbbbbbbb"]):
        rows.append(row(i, "mlp", 0.0, name=f"run{i}",
                        robust=[robust_row("standard", 0.1, 0.5 + i / 10, clean=0.9, n=100, point_set=ps)]))
    view = table_view(normalize_rows(rows))
    col = view.robust_columns[0]
    assert col.id == "standard linf eps=0.1 (n=100)" and col.mark == MIXED
    assert [rv.cells[col.id].mark for rv in view.rows] == ["B", "C"]  # A: all points (clean)
    assert "mixed" in view.point_note and "B = 100 of 360 points" in view.point_note
    text = render_report(rows, title="t")
    assert '50.0<sup class="ps">B</sup>' in text and '60.0<sup class="ps">C</sup>' in text


def test_old_rows_without_point_set_ids_are_grouped_by_n_and_say_so():
    old = row(0, "mlp", 0.0, legacy=True)
    old["metrics"]["robust"].append(robust_row("standard", 0.1, 0.4, clean=0.9, n=100, legacy=True))
    view = table_view(normalize_rows([old]))
    # old rows do not store the split size: nothing says the 360 PGD points are the clean ones
    assert len(view.point_sets) == 3
    assert "100 points (which points was not recorded; grouped by n)" in view.point_note


def test_constant_columns_move_to_a_caption_above_the_table(html):
    ids = [c for c, _ in _headers(_results(html))]
    for constant in ("dataset", "objective", "loss"):
        assert constant not in ids
    caption = re.search(r'<p class="caption constants">(.*?)</p>', html, flags=re.S).group(1)
    assert "dataset <em>digits</em>" in caption and "objective <em>erm</em>" in caption
    assert "loss <em>ce</em>" in caption
    assert html.index(caption) < html.index('<table class="results">')
    assert "model" in ids and "status" in ids  # these differ between runs
    # one run: nothing to factor out
    single = render_report([row(0, "mlp", 0.0)], title="t")
    assert 'class="caption constants"' not in single and 'data-col="dataset"' in single


def test_best_epoch_test_accuracy_is_marked_optimistic(html):
    head = dict(_headers(_results(html)))
    assert "(optimistic)" in head["test_accuracy_best"] and head["test_accuracy_best"].endswith("<sup>*</sup>")
    assert "optimistic" not in head["test_accuracy_last"]
    foot = re.search(r'<p class="caption footnote">(\* .*?)</p>', html, flags=re.S).group(1)
    assert "chosen on the test set itself" in foot and "optimistic" in foot
    assert html.index(foot) > html.index('<table class="results">')


def test_training_flags_are_shown_first_with_the_audit_flags(html):
    box = html[html.index('<div class="box alert">'):html.index("</div>", html.index('<div class="box alert">'))]
    assert "1 training run, 1 evaluation flagged" in box
    assert TRAIN_FLAG in box and FLAG_TEXT in box
    assert box.index(TRAIN_FLAG) < box.index(FLAG_TEXT)
    assert html.index(TRAIN_FLAG) < html.index("<table") and html.index(TRAIN_FLAG) < html.index("<svg")


def test_a_training_flag_alone_still_says_how_the_audit_went():
    flagged = row(0, "mlp", 0.0)
    flagged["metrics"]["training"]["flags"] = [TRAIN_FLAG]
    text = render_report([flagged], title="t")
    box = text[text.index('<div class="box alert">'):text.index("</div>", text.index('<div class="box alert">'))]
    assert "Flags: 1 training run flagged" in box and TRAIN_FLAG in box
    assert "none of the 3 audited robust evaluations is flagged" in box


def _mixed_rows():
    rows = suite_rows()
    noisy = rows[2]  # mlp trained under 40% symmetric noise
    assert noisy["config"]["noise"]["rate"] == 0.4
    other = [row(20 + i, "mlp", r, name=f"other/{r}", suite="other") for i, r in enumerate((0.0, 0.2))]
    evals = [evaluation_row(0, weights_of=noisy, name="noisy.safetensors standard linf on digits/test"),
             evaluation_row(1, weights_of=None, name="user.safetensors standard linf on digits/test")]
    return rows[:3] + evals + other + rows[3:], noisy


def test_mixed_suites_get_a_section_each_and_evaluations_are_labelled_by_provenance():
    rows, noisy = _mixed_rows()
    text = render_report(rows, title="t")
    heads = re.findall(r'<section class="suite" id="(suite-\d)">\s*<h2>(.*?)</h2>', text)
    assert heads == [("suite-1", "Suite fake (8 runs)"),
                     ("suite-2", "Suite evaluations: evaluations of saved weights (2 runs)"),
                     ("suite-3", "Suite other (2 runs)")]
    sections = re.split(r'<section class="suite" id="suite-\d">', text)[1:]
    assert all(s.count('<table class="results">') == 1 for s in sections)
    evaluations = sections[1]
    assert f"weights of run {noisy['name']} (symmetric 40% label noise)" in evaluations
    assert "weights of unknown origin" in evaluations
    assert "clean labels only" not in evaluations and "noisy.safetensors" not in sections[0]
    assert evaluations.count("<svg") == 1  # the robust plot only: evaluations train nothing
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    # the label-noise plot leaves evaluations out (their weights' noise is not a run of this suite)
    groups, _ = noise_groups(normalize_rows(rows))
    assert all(not r.is_evaluation for g in groups.values() for r in g)


def test_evaluation_of_noisy_weights_never_says_clean_labels():
    rows, _ = _mixed_rows()
    evals = [r for r in rows if r["suite"] == "evaluations"]
    text = render_report(evals, title="t")
    assert "clean labels" not in text
    assert "symmetric 40% label noise" in text
    view = table_view(normalize_rows(evals))
    noise = {rv.run.name: rv.cells["noise"].text for rv in view.rows}
    assert noise == {"noisy.safetensors standard linf on digits/test": "symmetric 0.4",
                     "user.safetensors standard linf on digits/test": "unknown"}


def test_one_suite_keeps_one_plain_section(html):
    assert 'class="suite"' not in html
    assert html.count('<table class="results">') == 1
