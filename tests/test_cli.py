"""The command line: --help without torch, errors as one line with exit code 2, bench end to end."""

import json
import subprocess
import sys

import pytest

from robustlab.cli import main


def test_help_does_not_import_torch():
    code = "import sys; from robustlab.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    helped = subprocess.run([sys.executable, "-m", "robustlab", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    for cmd in ("bench", "run", "train", "evaluate", "ls", "runs", "report"):
        assert cmd in helped.stdout


def test_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["ls", "lossses"]) == 2
    err = capsys.readouterr().err
    assert "losses" in err and "Traceback" not in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epochs: 1}\n")
    assert main(["run", str(cfg), "train.epoch=2", "--results", str(tmp_path / "r")]) == 2
    assert "'epochs'" in capsys.readouterr().err
    assert main(["train", "--data", "digitz", "--results", str(tmp_path / "r")]) == 2
    assert "digits" in capsys.readouterr().err
    assert not (tmp_path / "r" / "artifacts").exists() or not any((tmp_path / "r" / "artifacts").iterdir())


def test_ls_lists_registries(capsys):
    assert main(["ls", "attacks"]) == 0
    out = capsys.readouterr().out
    assert "pgd" in out and "fgsm" in out


@pytest.mark.slow
def test_bench_end_to_end_tiny(tmp_path, capsys):
    """The packaged bench suite, shrunk (2 epochs, 30 attacked points, PGD-2), end to end."""
    import yaml

    from robustlab.experiments import packaged_config

    tree = yaml.safe_load(packaged_config("bench").read_text())
    n_runs = len(tree["runs"])
    for section in [tree["base"], *tree["runs"]]:
        for a in (section.get("evaluate") or {}).get("attacks", []):
            a["subset"] = 30
            if a["name"] == "pgd":
                a["params"]["steps"] = 2
    suite = tmp_path / "bench-tiny.yaml"
    suite.write_text(yaml.safe_dump(tree))
    res = tmp_path / "res"
    args = ["bench", "--suite", str(suite), "--results", str(res), "train.epochs=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    report = res / "report.html"
    assert report.exists() and f"report: {report.resolve()}" in out.replace("\n", "")
    rows = json.loads((res / "report.json").read_text())
    runs = rows["runs"] if isinstance(rows, dict) and "runs" in rows else rows
    assert len(runs) == n_runs and all(r["status"] == "done" for r in runs)
    html = report.read_text()
    assert "ce/sym-0.4" in html and "trades/clean" in html and "<svg" in html
    standard = [row for r in runs for row in r["metrics"]["robust"] if row["attack"] == "standard"]
    assert standard and all(row["num_points"] == 30 and "per_attack" in row for row in standard)
    # a rerun of finished configs is a no-op
    from robustlab.experiments import ResultsStore

    assert main(args) == 0
    assert all(r.attempts == 1 for r in ResultsStore(res).list())
    assert main(["runs", "--results", str(res)]) == 0


def test_labels_find_issues_reports_precision_recall_of_injected_noise(tmp_path, capsys):
    pytest.importorskip("cleanlab", reason="label-issue detection needs the optional extra robustlab[noise]")
    out = tmp_path / "issues.json"
    args = ["labels", "find-issues", "--noise", "symmetric:0.3", "--folds", "3", "--epochs", "8",
            "--top", "3", "--out", str(out)]
    assert main(args) == 0
    payload = json.loads(out.read_text())
    assert payload["noise"]["kind"] == "symmetric" and payload["dataset"] == "digits"
    # most flagged labels are truly flipped, and most flips are found (measured ~0.9 / ~0.85)
    assert payload["precision"] > 0.75 and payload["recall"] > 0.6
    assert "precision" in capsys.readouterr().out
    assert main(["labels", "find-issues", "--noise", "symmetric0.3"]) == 2


def test_attack_command_stores_the_evaluation_as_a_run(tmp_path, capsys):
    res = tmp_path / "res"
    weights = tmp_path / "net.safetensors"
    assert main(["train", "--epochs", "3", "--results", str(res), "-o", str(weights), "model.params.hidden=[32]"]) == 0
    out_json = tmp_path / "eval.json"
    args = ["attack", "-m", str(weights), "--attack", "fast", "--eps", "0.05", "--eps", "0.2", "--subset", "40",
            "--audit", "cheap", "--results", str(res), "--json", str(out_json)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "robust accuracy" in text and "after apgd-ce" in text
    rep = json.loads(out_json.read_text())
    accs = [r["robust_accuracy"] for r in rep["results"]]
    assert accs[0] >= accs[1] and rep["clean_accuracy"] >= accs[0]  # monotone in eps, below clean
    from robustlab.experiments import ResultsStore

    runs = ResultsStore(res).list(suite="evaluations")
    assert len(runs) == 1 and runs[0].status == "done"
    assert [r["accuracy"] for r in runs[0].metrics["robust"]] == accs
    assert main(args) == 0  # the same evaluation again is a no-op
    again = ResultsStore(res).list(suite="evaluations")
    assert len(again) == 1 and again[0].attempts == 1
    assert main(["attack", "-m", str(weights), "--audit", "sometimes", "--results", str(res)]) == 2
