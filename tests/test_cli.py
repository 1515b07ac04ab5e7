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
    for cmd in ("bench", "run", "train", "evaluate", "attack", "certify", "ls", "runs", "report"):
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
        if (section.get("train") or {}).get("objective") in ("ibp", "crown-ibp"):
            section["train"]["objective_params"].update(warmup=0, rampup=1)  # the ramp fits 2 epochs
        for c in (section.get("evaluate") or {}).get("certify", []):
            c["subset"] = 30
            if c["method"] == "smoothing":
                c["params"]["n"] = 6000  # certifies up to radius 0.76 at sigma 0.25
    suite = tmp_path / "bench-tiny.yaml"
    suite.write_text(yaml.safe_dump(tree))
    res = tmp_path / "res"
    args = ["bench", "--suite", str(suite), "--results", str(res), "train.epochs=2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    # written to a pipe (as in a log): every line fits 80 columns and names are whole
    assert max(len(line) for line in out.splitlines() if str(res) not in line) <= 80
    assert "ce/sym-0.4 [epochs=2]" in out and "trades/clean [epochs=2]" in out
    # one progress line per epoch and per measurement reaches the log
    assert "epoch 2/2" in captured.err and "standard linf on 30 of 360 points" in captured.err
    report = res / "report.html"
    assert report.exists() and f"report: {report.resolve()}" in out.replace("\n", "")
    rows = json.loads((res / "report.json").read_text())
    runs = rows["runs"] if isinstance(rows, dict) and "runs" in rows else rows
    assert len(runs) == n_runs and all(r["status"] == "done" for r in runs)
    html = report.read_text()
    assert "ce/sym-0.4" in html and "trades/clean" in html and "<svg" in html
    standard = [row for r in runs for row in r["metrics"]["robust"] if row["attack"] == "standard"]
    assert standard and all(row["num_points"] == 30 and "per_attack" in row for row in standard)
    # certificates sit on the standard L2 attack's points and fall with the radius
    gauss = next(r for r in runs if r["name"].startswith("gaussian"))["metrics"]["robust"]
    certs = [row for row in gauss if row["kind"] == "certify"]
    l2 = [row for row in gauss if row["kind"] == "attack" and row["norm"] == "l2"]
    assert len(certs) >= 3 and {row["point_set"] for row in certs} == {row["point_set"] for row in l2}
    accs = [row["accuracy"] for row in certs]
    assert accs == sorted(accs, reverse=True) and all(row["extra"]["lower"] <= row["accuracy"] for row in certs)
    # verified accuracy: IBP <= CROWN-IBP, each never above PGD's robust accuracy on the same points
    crown = next(r for r in runs if r["name"].startswith("crown-ibp"))["metrics"]["robust"]
    ver = {(row["attack"], row["eps"]): row for row in crown if row["kind"] == "certify"}
    pgd = {row["eps"]: row for row in crown if row["attack"] == "pgd"}
    assert {m for m, _ in ver} == {"ibp", "crown-ibp"}
    for (_m, e), row in ver.items():
        assert row["accuracy"] <= ver["crown-ibp", e]["accuracy"]
        if row["point_set"] == pgd[e]["point_set"]:
            assert row["accuracy"] <= pgd[e]["accuracy"]
    # a rerun of finished configs is a no-op
    from robustlab.experiments import ResultsStore

    assert main(args) == 0
    assert all(r.attempts == 1 for r in ResultsStore(res).list())
    again = capsys.readouterr().out
    assert again.count("stored, 0.0 s") == n_runs and f"0 runs computed, {n_runs} reused" in again
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
    assert text.count("per class: 0:") == 2  # one line per eps
    assert "weights: unknown origin" not in text and "with clean labels" in text
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


def _trained(tmp_path):
    res = tmp_path / "res"
    weights = tmp_path / "net.safetensors"
    assert main(["--quiet", "train", "--epochs", "1", "--results", str(res), "-o", str(weights),
                 "model.params.hidden=[16]", "evaluate.attacks=[]"]) == 0
    return res, weights


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--subset", "0"], "--subset must be an integer >= 1"),
        (["--subset", "-5"], "--subset must be an integer >= 1"),
        (["--device", "tpu"], "'tpu'"),
        (["--device", "cuda:7"], "cuda"),
        (["--eps", "2"], "eps"),
        (["--attack", "pgdd"], "pgd"),
        (["--batch-size", "0"], "--batch-size"),
        (["--data", "digitz"], "digits"),
    ],
)
def test_bad_attack_inputs_are_one_line_and_store_nothing(tmp_path, capsys, args, words):
    res, weights = _trained(tmp_path)
    capsys.readouterr()
    assert main(["attack", "-m", str(weights), "--results", str(res), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err and "Traceback" not in err
    from robustlab.experiments import ResultsStore

    assert ResultsStore(res).list(suite="evaluations") == []  # no failed row either


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["runs", "--status", "finished"], "'done'"),
        (["train", "--noise", "symmetric"], "KIND:RATE"),
        (["train", "--noise", "symmetric:1.5"], "[0, 1)"),
        (["--threads", "0", "runs"], "--threads"),
        (["train", "--epochs", "0"], "epochs"),
        (["train", "--device", "tpu"], "'tpu'"),
        (["train", "train.objective_params={steps: 2.5}", "train.objective=pgd-at"], "steps"),
        (["train", "train.objective_params={steps: true}", "train.objective=pgd-at"], "steps"),
        (["train", "train.loss.name=gce", "train.loss.params={q: 7e-1, x: 1}"], "'x'"),
    ],
)
def test_bad_inputs_are_refused_in_one_line(tmp_path, capsys, argv, words):
    assert main([*argv, "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err and "Traceback" not in err
    from robustlab.experiments import ResultsStore

    assert not (tmp_path / "r" / "results.db").exists() or ResultsStore(tmp_path / "r").list() == []


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import robustlab.experiments as experiments

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "run_suite", interrupted)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epochs: 1}\n")
    assert main(["run", str(cfg), "--results", str(tmp_path / "r")]) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err


def test_init_writes_an_example_that_runs(tmp_path, capsys):
    path = tmp_path / "my.yaml"
    assert main(["init", str(path)]) == 0
    assert "robustlab run" in capsys.readouterr().out and path.read_text().startswith("#")
    assert main(["init", str(path)]) == 2  # never overwritten silently
    args = ["--quiet", "run", str(path), "train.epochs=1", "evaluate.attacks[0].eps=[0.05]",
            "evaluate.attacks[1].subset=10", "--results", str(tmp_path / "r")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "digits-mlp-ce-sym0.2 [epochs=1, eps=[0.05], subset=10]" in out and "done" in out


def test_train_prints_selection_and_early_stopping(tmp_path, capsys):
    args = ["--quiet", "train", "--epochs", "3", "--results", str(tmp_path / "r"), "model.params.hidden=[16]",
            "data.val_fraction=0.2", "train.select=clean", "train.early_stopping=1", "evaluate.attacks=[]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "best epoch" in out and "validation accuracy" in out and "early stopping:" in out


def test_your_own_model_as_the_readme_shows(tmp_path, capsys, monkeypatch):
    import pickle

    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynet_readme.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))\n"
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    args = ["attack", "-m", "net.pt", "--factory", "mynet_readme:build", "--data", "digits", "--eps", "0.1",
            "--attack", "fgsm", "--audit", "none", "--results", str(tmp_path / "r")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "weights: unknown origin" in out and "robust accuracy" in out

    class Payload:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').write('x')",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": Payload()}))
    args[2] = "evil.pt"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "never unpickles" in err and "weights_only=False" not in err and not (tmp_path / "pwned").exists()


def test_certify_command_stores_certificates_beside_the_attack(tmp_path, capsys):
    res, weights = _trained(tmp_path)
    args = ["certify", "-m", str(weights), "--sigma", "0.25", "--n", "500", "--n0", "20", "--subset", "30",
            "--radius", "0", "--radius", "0.2", "--results", str(res)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Certificates of" in text and "sigma=0.25" in text and "standard" in text and "(clean)" in text
    from robustlab.experiments import ResultsStore

    run = ResultsStore(res).list(suite="evaluations")[0]
    rows = run.metrics["robust"]
    certs = [r for r in rows if r["kind"] == "certify"]
    attack = [r for r in rows if r["kind"] == "attack"]
    assert [r["eps"] for r in certs] == [0.0, 0.2] and [r["eps"] for r in attack] == [0.2]
    assert certs[0]["point_set"] == attack[0]["point_set"]  # the same 30 points
    tsv = next((res / "artifacts" / run.id).glob("certify-*.tsv")).read_text().splitlines()
    assert len(tsv) == 31 and tsv[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time"]
    hits = sum(1 for line in tsv[1:] if line.split("\t")[4] == "1" and float(line.split("\t")[3]) >= 0.2)
    assert certs[1]["accuracy"] == hits / 30
    assert main(args) == 0 and "(stored, 0.0 s)" in capsys.readouterr().out
    assert main(["certify", "-m", str(weights), "--n", "5", "--results", str(res)]) == 2
    assert "--n >= 10" in capsys.readouterr().err
    assert main(["certify", "-m", str(weights), "--n", "100", "--radius", "3", "--results", str(res)]) == 2
    assert "beyond the largest radius" in capsys.readouterr().err
    assert main(["certify", "-m", str(weights), "--sigma", "-1", "--results", str(res)]) == 2


def test_certify_command_with_bound_propagation_verifies_below_the_attack(tmp_path, capsys):
    res, weights = _trained(tmp_path)
    args = ["certify", "-m", str(weights), "--method", "ibp", "--method", "crown-ibp", "--eps", "0.005",
            "--eps", "0.02", "--subset", "30", "--results", str(res)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Verified accuracy (bound propagation)" in " ".join(text.split())
    from robustlab.experiments import ResultsStore

    rows = ResultsStore(res).list(suite="evaluations")[0].metrics["robust"]
    attack = {r["eps"]: r["accuracy"] for r in rows if r["kind"] == "attack"}
    ver = {(r["attack"], r["eps"]): r["accuracy"] for r in rows if r["kind"] == "certify"}
    assert set(attack) == {0.005, 0.02} and set(ver) == {(m, e) for m in ("ibp", "crown-ibp") for e in attack}
    for (_m, e), acc in ver.items():
        assert acc <= attack[e]  # a verified point is never broken
        assert ver["ibp", e] <= ver["crown-ibp", e]  # CROWN-IBP is never looser than IBP
    assert main(["certify", "-m", str(weights), "--method", "crown-ibq", "--results", str(res)]) == 2
    assert "crown-ibp" in capsys.readouterr().err
