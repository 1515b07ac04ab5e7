"""CSV and JSON exports, atomic writes, and a cheap ``import robustlab.report``."""

import csv
import json
import subprocess
import sys

import pytest

import robustlab.report._io as report_io
from robustlab.errors import RobustlabError
from robustlab.report import ReportError, results_table, write_csv, write_json, write_report
from robustlab.report import plots as report_plots
from tests.report.fakes import row, suite_rows


def _parse(col, text):
    if text == "":
        return None
    if col == "best_epoch":
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def test_csv_parses_back_to_the_table(tmp_path):
    rows = suite_rows()
    out = write_csv(rows, tmp_path / "r.csv")
    with open(out, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        back = [{c: _parse(c, v) for c, v in r.items()} for r in reader]
    table = results_table(rows)
    assert header == list(table[0])
    assert back == [{c: (float(v) if isinstance(v, float) else v) for c, v in r.items()} for r in table]
    assert back[1]["flip_rate"] == 0.183 and back[6]["clean_accuracy"] is None
    assert back[7]["name"] == "<script>alert(1)</script>"  # CSV keeps text as is


def test_json_round_trips_the_full_rows(tmp_path):
    rows = suite_rows()
    out = write_json(rows, tmp_path / "r.json", title="digits")
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["title"] == "digits" and doc["generated_at"].endswith("Z")
    assert doc["runs"] == rows
    assert "title" not in json.loads(write_json(rows, tmp_path / "s.json").read_text())


def test_json_is_strict_non_finite_floats_become_null(tmp_path):
    r = row(0, "mlp", 0.0)
    r["metrics"]["ece"] = float("nan")
    r["metrics"]["history"][0]["train_loss"] = float("inf")
    text = write_json([r], tmp_path / "r.json").read_text()

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    doc = json.loads(text, parse_constant=refuse)
    assert doc["runs"][0]["metrics"]["ece"] is None
    assert doc["runs"][0]["metrics"]["history"][0]["train_loss"] is None
    assert doc["runs"][0]["metrics"]["clean_accuracy"] == r["metrics"]["clean_accuracy"]


class _HalfWriter:
    """A file whose write stores half of the text and then fails, like a full disk."""

    def __init__(self, path, *args, **kwargs):
        self.fh = open(path, *args, **kwargs)  # the real builtin open

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        return False

    def write(self, text):
        self.fh.write(text[: len(text) // 2])
        self.fh.flush()
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("writer", [write_report, write_csv, write_json])
def test_interrupted_write_leaves_the_existing_file_untouched(tmp_path, monkeypatch, writer):
    path = tmp_path / "out.file"
    path.write_bytes(b"previous report\n")
    monkeypatch.setattr(report_io, "open", _HalfWriter, raising=False)
    rows = [row(0, "mlp", 0.0, robust=[])]
    for r in rows:
        r["metrics"]["history"] = []
    with pytest.raises(ReportError, match="(?i)no space left") as info:
        writer(rows, path)
    assert isinstance(info.value, RobustlabError)
    assert str(info.value).count(str(path)) == 1  # one sentence, the file named once
    assert path.read_bytes() == b"previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.file"]  # no temporary file left


def test_failure_while_rendering_leaves_the_existing_report_untouched(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    path.write_text("old")

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_plots, "robust_plot", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report([row(0, "mlp", 0.0)], path)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_writing_onto_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="folder"):
        write_csv([row(0, "mlp", 0.0)], tmp_path)


def test_import_is_cheap():
    code = (
        "import sys, robustlab.report as r; r.results_table([]); "
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
