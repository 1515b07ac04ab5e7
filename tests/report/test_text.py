"""The plain-text table for the CLI: no line wider than asked, nothing cut."""

import pytest

from robustlab.report import format_value, text_table
from robustlab.report.table import normalize_rows
from tests.report.fakes import (
    FLAG_TEXT,
    STANDARD_STAGES,
    TRAIN_FLAG,
    evaluation_row,
    robust_row,
    row,
    suite_rows,
)

WIDTHS = [20, 33, 40, 60, 80, 100, 132, 250]


def bench_like_rows():
    """Nine runs shaped like the bench suite: PGD at 4 eps on all points, the standard
    ensemble on 100 points for three of them, names up to 22 characters."""
    names = ["ce/clean", "ce/sym-0.4", "gce/sym-0.4", "sce/sym-0.4", "elr/sym-0.4", "ce/clean (mnist_net)",
             "ce/sym-0.4 (mnist_net)", "pgd-at/clean", "trades/clean"]
    rows = []
    for i, name in enumerate(names):
        rate = 0.4 if "sym" in name else 0.0
        clean = round(0.97 - i / 50, 4)
        robust = [robust_row("pgd", e, round(clean * (1 - 3 * e), 4), clean=clean) for e in (0.02, 0.05, 0.1, 0.2)]
        if name in ("ce/clean", "pgd-at/clean", "trades/clean"):
            robust.append(robust_row("standard", 0.1, round(clean / 2, 4), clean=clean, n=100, stages=STANDARD_STAGES))
        rows.append(row(i, "mnist_net" if "mnist" in name else "mlp", rate, name=name, robust=robust))
    return rows


def mixed_rows():
    rows = suite_rows()
    return rows + [evaluation_row(0, weights_of=rows[2]), evaluation_row(1, weights_of=None),
                   row(30, "mlp", 0.0, name="a run whose name is rather long: lr=0.1, wd=5e-4, seed=3")]


def _segment(lines, name):
    """The lines that belong to run ``name``: its table row, or its block."""
    for i, line in enumerate(lines):
        if line == name or line.startswith(name + "  ") or line.startswith(name + " (failed)"):
            out = [line]
            for nxt in lines[i + 1:]:
                if not nxt.startswith("  "):
                    break
                out.append(nxt)
            return out
    raise AssertionError(f"run {name!r} has no line of its own")


def _numbers(run):
    return [format_value("accuracy", ev.accuracy) for ev in run.robust if ev.accuracy is not None]


@pytest.mark.parametrize("rows", [bench_like_rows(), suite_rows(), mixed_rows()], ids=["bench", "suite", "mixed"])
@pytest.mark.parametrize("width", WIDTHS)
def test_every_line_fits_and_every_name_and_number_is_whole(rows, width):
    text = text_table(rows, width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    assert "\u2026" not in text  # nothing is cut with an ellipsis
    for run in normalize_rows(rows):
        if len(run.label) > width:  # a name wider than the terminal wraps, whole words kept
            continue
        seg = _segment(lines, run.label)
        joined = " ".join(seg)
        clean = format_value("accuracy", run.clean_accuracy)
        if run.status == "done":
            assert clean in joined
        for number in _numbers(run):
            assert number in joined.split() or any(tok.startswith(number) for tok in joined.replace(",", " ").split())


def test_bench_at_80_columns_is_one_table_with_every_header_whole():
    text = text_table(bench_like_rows(), 80)
    lines = text.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("run ") or line == "run"]
    assert len(header) == 1  # one table
    rule = lines[header[0] + 1]
    assert set(rule) <= {"-", " "}
    body = lines[header[0] + 2:header[0] + 11]
    assert [line.split("  ")[0].strip() for line in body] == [r["name"] for r in bench_like_rows()]
    # every robust column is named in full, in the header or in the legend under the table
    for label in ("pgd linf eps=0.02 n=360", "pgd linf eps=0.2 n=360", "standard linf eps=0.1 n=100"):
        in_legend = any(label in line for line in lines)
        attack, norm, eps, n = label.split()
        stacked = all(any(line.split() and part in line.split() for line in lines[:header[0] + 1])
                      for part in (attack, eps, n))
        assert in_legend or stacked, label
    assert "[A]" in text and "[B]" in text  # clean/PGD on all points, standard on 100
    assert "B = 100 of 360 points" in " ".join(text.split())


def test_wide_terminal_gets_one_table_with_the_descriptive_columns():
    text = text_table(bench_like_rows(), 200)
    assert "symmetric 0.4" in text and "ECE" in text
    assert "[1]" not in text  # full headers, no legend
    assert "standard" in text.splitlines()[4] or any(line.split()[-1:] == ["standard"] for line in text.splitlines())


def test_narrow_terminal_gets_one_block_per_run():
    text = text_table(bench_like_rows(), 40)
    lines = text.splitlines()
    block = _segment(lines, "ce/sym-0.4 (mnist_net)")
    assert block[0] == "ce/sym-0.4 (mnist_net)"
    assert any(line.strip().startswith("pgd linf (n=360)") for line in block)
    assert " ".join(" ".join(block).split()).count("eps=") == 4


def test_failed_runs_flags_and_provenance_are_in_the_text():
    text = text_table(mixed_rows(), 80)
    flat = " ".join(text.split())
    assert "failed run (failed)" in text
    assert FLAG_TEXT in flat and TRAIN_FLAG in flat
    assert flat.index(TRAIN_FLAG) < flat.index(FLAG_TEXT)
    assert "weights of run mlp/sym-0.4 (symmetric 40% label noise)" in flat
    assert "weights of unknown origin" in flat
    assert "== suite fake (9 runs) ==" in text and "== suite evaluations: evaluations of saved weights (2 runs) ==" in text
    assert text_table(mixed_rows(), 80, flags=False).count("Flags") == 0


def test_no_runs():
    assert text_table([], 80) == "(no runs)"
