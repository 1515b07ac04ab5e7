"""`robustlab corrupt` and `robustlab detect`: stored runs whose numbers are the rows',
mCE against a named baseline, and clear errors (exit code 2) for bad input."""

from __future__ import annotations

import pytest

from robustlab.cli import main
from robustlab.experiments import ResultsStore
from tests.test_cli import _trained


def test_corrupt_stores_rows_and_computes_mce_against_a_named_baseline(tmp_path, capsys):
    res, weights = _trained(tmp_path)
    base = ["corrupt", "-m", str(weights), "--corruption", "gaussian_noise", "--corruption", "fog",
            "--severity", "1", "--severity", "5", "--results", str(res)]
    assert main(base) == 0
    text = capsys.readouterr().out
    assert "gaussian_noise" in text and "fog" in text
    run = ResultsStore(res).list(suite="evaluations")[0]
    rows = [r for r in run.metrics["robust"] if r["kind"] == "corruption"]
    assert [(r["attack"], r["eps"]) for r in rows] == [("gaussian_noise", 1.0), ("gaussian_noise", 5.0),
                                                        ("fog", 1.0), ("fog", 5.0)]
    acc = {(r["attack"], r["eps"]): r["accuracy"] for r in rows}
    summary = run.metrics["corruption"]
    assert summary["accuracy"]["fog"] == {"1": acc["fog", 1.0], "5": acc["fog", 5.0]}
    assert f"{100 * acc['fog', 5.0]:.1f}" in text
    # the same weights against themselves as the baseline: every CE is exactly 1 ... but only
    # corruptions measured at all five severities count, so measure those
    full = ["corrupt", "-m", str(weights), "--corruption", "fog", "--results", str(res)]
    assert main(full) == 0
    capsys.readouterr()
    baseline_id = [r for r in ResultsStore(res).list(suite="evaluations")
                   if len([x for x in r.metrics["robust"] if x["kind"] == "corruption"]) == 5][0].id
    assert main(full + ["--baseline", baseline_id, "--seed", "0"]) == 0
    out = capsys.readouterr().out
    withbase = [r for r in ResultsStore(res).list(suite="evaluations")
                if (r.metrics.get("corruption") or {}).get("mce") is not None]
    assert len(withbase) == 1 and withbase[0].metrics["corruption"]["mce"] == pytest.approx(1.0)
    assert "mCE" in out
    # bad input: exit code 2 and one clear line
    assert main(["corrupt", "-m", str(weights), "--corruption", "gausian_noise", "--results", str(res)]) == 2
    assert "gaussian_noise" in capsys.readouterr().err
    assert main(["corrupt", "-m", str(weights), "--severity", "6", "--results", str(res)]) == 2
    assert "1 to 5" in capsys.readouterr().err
    assert main(full + ["--baseline", "no-such-run"]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_detect_stores_auroc_rows_fitted_on_the_train_split(tmp_path, capsys):
    res, weights = _trained(tmp_path)
    args = ["detect", "-m", str(weights), "--method", "msp", "--method", "mahalanobis", "--shift", "uniform",
            "--shift", "adversarial/linf@0.1", "--subset", "40", "--steps", "5", "--results", str(res)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "train split" in text
    rows = [r for r in ResultsStore(res).list(suite="evaluations")[0].metrics["robust"] if r["kind"] == "detect"]
    assert {(r["attack"], r["norm"], r["eps"]) for r in rows} == {
        (d, s, e) for d in ("msp", "mahalanobis") for s, e in (("uniform", 0.0), ("adversarial/linf", 0.1))}
    for r in rows:
        assert r["accuracy"] == r["extra"]["auroc"] and 0.0 <= r["accuracy"] <= 1.0
    assert main(["detect", "-m", str(weights), "--shift", "adversarial/linf", "--results", str(res)]) == 2
    assert "needs an eps" in capsys.readouterr().err
    assert main(["detect", "-m", str(weights), "--method", "mahalanobs", "--results", str(res)]) == 2
    assert "mahalanobis" in capsys.readouterr().err
    assert main(["detect", "-m", str(weights), "--shift", "unifrom", "--results", str(res)]) == 2
    assert "uniform" in capsys.readouterr().err
