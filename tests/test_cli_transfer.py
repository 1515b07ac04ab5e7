"""`robustlab transfer`: a stored source x target matrix whose white-box column equals the
attack run on the target itself, shown in the report; bad input exits 2."""

from __future__ import annotations

from robustlab.cli import main
from robustlab.experiments import ResultsStore


def _train(tmp_path, name: str, seed: int):
    res = tmp_path / "res"
    weights = tmp_path / f"{name}.safetensors"
    assert main(["--quiet", "train", "--epochs", "1", "--results", str(res), "-o", str(weights),
                 "model.params.hidden=[16]", "evaluate.attacks=[]", f"seed={seed}"]) == 0
    return res, weights


def test_transfer_matrix_is_stored_and_reported(tmp_path, capsys):
    res, a = _train(tmp_path, "a", 0)
    _, b = _train(tmp_path, "b", 1)
    args = ["transfer", "--source", f"a={a}", "--source", f"copy={a}", "--target", f"a={a}", "--target", f"b={b}",
            "--eps", "0.1", "--steps", "5", "--subset", "60", "--results", str(res)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "mi-fgsm" in text
    run = [r for r in ResultsStore(res).list(suite="evaluations") if "transfer" in (r.metrics or {})][0]
    m = run.metrics["transfer"]
    assert m["sources"] == ["a", "copy"] and m["targets"] == ["a", "b"] and m["num_points"] == 60
    # crafting on an identical copy of the target is the white-box attack (mi-fgsm never queries the target)
    assert m["success"]["copy"]["a"] == m["success"]["a"]["a"] == m["white_box"]["a"]
    assert 0.0 <= m["success"]["a"]["b"] <= 1.0
    assert main(args) == 0 and "(stored, 0.0 s)" in capsys.readouterr().out
    out = tmp_path / "report.html"
    assert main(["report", "--results", str(res), "-o", str(out)]) == 0
    html = out.read_text()
    assert "Transfer attacks" in html and 'class="transfer"' in html
    assert main(["transfer", "--source", f"a={a}", "--target", f"b={b},{a}", "--results", str(res)]) == 2
    assert "a target is one model" in capsys.readouterr().err
    assert main(["transfer", "--source", f"a={tmp_path / 'missing.safetensors'}", "--target", f"b={b}",
                 "--results", str(res)]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
