"""attack_report, robust_accuracy and evaluate_model on models with known answers."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from robustlab.attacks import PROTOCOL, ThreatModel, attacks
from robustlab.data.base import Dataset
from robustlab.errors import ConfigError
from robustlab.evaluate import (
    EvaluationSpec,
    attack_report,
    auto_batch_size,
    evaluate_model,
    robust_accuracy,
)
from tests.attacks.helpers import exact_linf_robust, problem

SUBSTITUTE = [("fgsm", {}), ("pgd", {"steps": 10, "loss": "margin", "targets": 3})]


def test_report_numbers_match_the_exact_answer_per_eps_attack_and_class():
    lin, x, y = problem(n=200)
    eps = [0.1, 0.02, 0.05]  # any order
    rep = attack_report(lin, x, y, eps, "ensemble", members=SUBSTITUTE, batch_size=64, audit="cheap")
    assert rep.eps == eps and rep.norm == "linf" and rep.num_points == 200 and rep.num_classes == 4
    clean = lin(x).argmax(1) == y
    assert rep.clean_accuracy == pytest.approx(float(clean.float().mean()))
    for r in rep.results:
        exact = exact_linf_robust(lin, x, y, r.eps)
        assert torch.equal(rep.robust[r.eps], exact)
        assert r.robust_accuracy == pytest.approx(float(exact.float().mean()))
        # per attack: clean, then after FGSM, then after PGD (= final)
        assert list(r.per_attack) == ["clean", "fgsm", "pgd"]
        assert r.per_attack["clean"] >= r.per_attack["fgsm"] >= r.per_attack["pgd"] == pytest.approx(r.robust_accuracy)
        for c in range(4):
            m = y == c
            assert r.per_class[c] == pytest.approx(float(exact[m].float().mean()))
        # passes: the members' own, one re-check per attacked point, the clean pass once
        smaller = [e for e in eps if e < r.eps]
        attacked = rep.robust[max(smaller)] if smaller else clean
        assert r.forwards == sum(r.stage_forwards.values()) + int(attacked.sum()) + (0 if smaller else 200)
        assert r.backwards == sum(r.stage_backwards.values())
    accs = [rep.accuracy[e] for e in sorted(eps)]
    assert accs == sorted(accs, reverse=True)
    d = rep.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-able
    assert d["results"][0]["per_attack"]["pgd"] == rep.results[0].robust_accuracy
    assert d["protocol"] == "robustlab-custom/1" and d["flags"] == []


def test_batch_size_does_not_change_deterministic_results():
    lin, x, y = problem(n=150)
    a = attack_report(lin, x, y, [0.05], "fgsm", batch_size=7, audit=False)
    b = attack_report(lin, x, y, [0.05], "fgsm", batch_size=150, audit=False)
    assert torch.equal(a.robust[0.05], b.robust[0.05])
    assert a.results[0].forwards == b.results[0].forwards


def test_report_reads_fractions_and_threat_models():
    lin, x, y = problem(n=30)
    rep = attack_report(lin, x, y, ["1/50", "1/20"], "fgsm", audit=False)
    assert rep.eps == pytest.approx([0.02, 0.05])
    rep = attack_report(lin, x, y, ThreatModel("l2", 0.1), "apgd-ce", steps=3, audit=False)
    assert rep.norm == "l2" and rep.params["steps"] == 3
    with pytest.raises(ConfigError):
        attack_report(lin, x, y, [ThreatModel("l2", 0.1)], "fgsm", norm="linf")
    with pytest.raises(ConfigError, match="batch_size"):
        attack_report(lin, x, y, 0.1, "fgsm", batch_size=0)


def test_report_flags_a_masked_model():
    class Step(nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(torch.floor(x * 4) / 4)

    lin, x, y = problem(n=60)
    rep = attack_report(Step(lin), x, y, [0.05], "apgd-ce", steps=5)
    assert {"zero-grad", "large-eps-robust"} <= {f.code for f in rep.flags}
    assert all(s.startswith(f.code + ": ") for s, f in zip(rep.flag_strings(), rep.flags, strict=True))


def test_robust_accuracy_default_is_the_standard_protocol():
    # f(x) = [x0 - 0.5, 0.5 - x0]: robust at eps iff |x0 - 0.5| > eps
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        lin.bias.copy_(torch.tensor([-0.5, 0.5]))
    x0 = torch.linspace(0.01, 0.99, 99)
    x = torch.stack([x0, torch.zeros(99)], 1)
    y = (x0 < 0.5).long()  # x0 = 0.5 is a tie, which argmax resolves to class 0
    members = [("apgd-ce", {"steps": 10})] + ([("square", {"n_queries": 50})] if "square" in attacks else [])
    res = robust_accuracy(lin, x, y, [ThreatModel("linf", 0.105), ThreatModel("linf", 0.205)], members=members)
    assert [torch.equal(r.robust, (x0 - 0.5).abs() > e) for r, e in zip(res, (0.105, 0.205), strict=True)] == [True, True]
    assert res[0].per_attack["apgd-ce"] == pytest.approx(res[0].accuracy)
    one = robust_accuracy(lin, x, y, ThreatModel("linf", 0.105), members=members)
    assert one.attack == "standard" and torch.equal(one.robust, res[0].robust)


def test_auto_batch_size_on_cpu():
    lin, x, _ = problem(n=30)
    assert auto_batch_size(lin, x) == 30
    assert auto_batch_size(lin, torch.rand(2000, 12)) == 512


def make_data(n=120):
    lin, x, y = problem(n=n, wrong=0)
    return lin, Dataset(x=x, y=y, num_classes=4, name="toy")


def test_evaluate_model_rows_carry_flags_and_per_attack():
    lin, data = make_data()
    spec = EvaluationSpec("ensemble", "linf", [0.02, 0.05], {"members": SUBSTITUTE}, subset=100)
    metrics, records = evaluate_model(lin, data, [spec], seed=0)
    rows = metrics["robust"]
    assert [r["eps"] for r in rows] == [0.02, 0.05]
    for r in rows:
        assert r["num_points"] == 100 and r["protocol"] == "robustlab-custom/1"
        assert isinstance(r["flags"], list) and all(isinstance(f, str) for f in r["flags"])
        assert list(r["per_attack"]) == ["clean", "fgsm", "pgd"]
        assert r["per_attack"]["pgd"] == pytest.approx(r["accuracy"])
        rec = records[f"robust/ensemble/linf/{r['eps']:g}"]
        assert (rec >= 0).sum() == 100 and rec[rec >= 0].mean() == pytest.approx(r["accuracy"])
        # the stored mask is the exact answer on the evaluated subset
        idx = np.nonzero(rec >= 0)[0]
        exact = exact_linf_robust(lin, data.x[idx], data.y[idx], r["eps"]).numpy().astype(np.int8)
        assert np.array_equal(rec[idx], exact)
    assert json.loads(json.dumps(metrics)) == metrics
    assert metrics["attack_seconds"][0]["attack"] == "ensemble"
    again, _ = evaluate_model(lin, data, [spec], seed=0)
    assert again["robust"] == metrics["robust"]  # no timings in the rows: reruns compare equal


def test_evaluate_model_flags_non_monotone_specs():
    lin, data = make_data(60)
    specs = [
        EvaluationSpec("pgd", "linf", [0.05], {"steps": 10, "loss": "margin", "targets": 3}, audit=False),
        EvaluationSpec("pgd", "linf", [0.1], {"steps": 1, "random_start": False, "step_size": 1e-9}, audit=False),
    ]
    metrics, _ = evaluate_model(lin, data, specs)
    assert metrics["robust"][0]["accuracy"] < metrics["robust"][1]["accuracy"]
    assert all("non-monotone-eps" in r["flag_codes"] for r in metrics["robust"])


def test_protocol_constant_is_versioned():
    assert PROTOCOL == "robustlab-standard/1"
