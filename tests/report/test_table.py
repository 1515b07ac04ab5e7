"""The flat results table: exact columns, values taken from the right places."""

import math

import pytest

from robustlab.errors import InvalidInputError
from robustlab.report import format_value, results_table, robust_column
from robustlab.report.table import eps_text, normalize_rows
from tests.report.fakes import (
    EPS,
    FLAG_TEXT,
    FLIPS,
    RATES,
    STANDARD_STAGES,
    TRAIN_FLAG,
    evaluation_row,
    robust_row,
    row,
    suite_rows,
)

EXPECTED_COLUMNS = [
    "id", "name", "status", "dataset", "model", "objective", "loss", "noise kind", "noise rate",
    "flip_rate", "clean_accuracy", "ece",
    "pgd linf eps=0.05 (n=360)", "pgd linf eps=0.1 (n=360)", "pgd linf eps=0.2 (n=360)",
    "standard linf eps=8/255 (n=100)",
    "best_epoch", "test_accuracy_best", "test_accuracy_last",
    "train_seconds", "seconds",
]


def test_columns_are_exact_and_identical_for_every_row():
    table = results_table(suite_rows())
    assert len(table) == 8
    for r in table:
        assert list(r) == EXPECTED_COLUMNS


def test_values_come_from_the_stored_rows():
    rows = suite_rows()
    table = results_table(rows)
    for src, flat in zip(rows, table, strict=True):
        assert flat["id"] == src["id"][:10] and flat["name"] == src["name"] and flat["status"] == src["status"]
        assert (flat["dataset"], flat["model"], flat["objective"], flat["loss"]) == (
            "digits", src["config"]["model"]["name"], "erm", "ce")
        noise = src["config"]["noise"]
        assert flat["noise kind"] == (noise["kind"] if noise else None)
        assert flat["noise rate"] == (noise["rate"] if noise else 0.0)
        assert flat["seconds"] == src["duration_s"]
        m = src["metrics"]
        if m is None:
            continue
        assert flat["clean_accuracy"] == m["clean_accuracy"] and flat["ece"] == m["ece"]
        assert flat["train_seconds"] == m["train_seconds"]
        for ev in m["robust"]:
            assert flat[robust_column(ev["attack"], ev["norm"], ev["eps"], ev["num_points"])] == ev["accuracy"]
    # the pgd eps=0.1 cell of the mnist_net run at 40% noise is the stored accuracy
    src = rows[5]
    stored = next(ev["accuracy"] for ev in src["metrics"]["robust"] if ev["eps"] == 0.1)
    assert table[5]["pgd linf eps=0.1 (n=360)"] == stored == round(src["metrics"]["clean_accuracy"] * 0.8, 4)


def test_flip_rate_is_the_actual_rate_from_metrics_not_the_nominal_one():
    table = results_table(suite_rows())
    for i, rate in enumerate(RATES):
        expected = 0.0 if rate == 0 else FLIPS[rate]  # no noise model => no label flipped
        assert table[i]["flip_rate"] == expected
        assert table[i]["noise rate"] == rate
    assert table[1]["flip_rate"] != table[1]["noise rate"]


def test_failed_run_has_its_status_and_no_metrics():
    table = results_table(suite_rows())
    failed = table[6]
    assert failed["status"] == "failed" and failed["name"] == "failed run"
    metric_cols = [c for c in EXPECTED_COLUMNS if c not in (
        "id", "name", "status", "dataset", "model", "objective", "loss", "noise kind", "noise rate")]
    assert all(failed[c] is None for c in metric_cols)


def test_optional_columns_only_when_stored_and_robust_rows_without_audit_keys():
    rows = [row(0, "mlp", 0.0, legacy=True), row(1, "mlp", 0.2, legacy=True)]
    table = results_table(rows)
    assert list(table[0]) == [c for c in EXPECTED_COLUMNS if c not in (
        "standard linf eps=8/255 (n=100)", "best_epoch", "test_accuracy_best", "test_accuracy_last")]
    runs = normalize_rows(rows)
    assert all(ev.flags is None and ev.per_attack is None for r in runs for ev in r.robust)
    # the newer keys are absent in old stores: unknown, not guessed
    assert all(ev.point_set is None and ev.num_total is None and ev.stages is None for r in runs for ev in r.robust)
    assert all(r.training_flags == [] for r in runs)
    assert results_table([]) == []


def test_flags_and_per_attack_are_decoded():
    runs = normalize_rows(suite_rows())
    ev = runs[-1].robust[0]
    assert ev.flags == [FLAG_TEXT]
    assert runs[-1].training_flags == [TRAIN_FLAG]
    assert list(ev.per_attack) == STANDARD_STAGES and ev.per_attack["square"] == 0.41
    assert ev.clean_on_points == 0.9 and "clean" not in ev.per_attack
    assert ev.column == "standard linf eps=8/255 (n=100)" and math.isclose(ev.eps, 8 / 255)
    assert (ev.num_points, ev.num_total, ev.subset, ev.point_set) == (100, 360, 100, "5e7a1c2b9d00")


def test_stages_come_in_the_order_they_ran_not_the_stored_key_order():
    # the store used to write metrics with sorted keys: per_attack came back alphabetical
    stages = ["square", "apgd-t", "apgd-ce"]
    stored = {"apgd-ce": 0.3, "apgd-t": 0.4, "clean": 0.9, "square": 0.5}
    r = row(0, "mlp", 0.0, robust=[robust_row("custom", 0.1, 0.3, clean=0.9, stages=stages, per_attack=stored)])
    ev = normalize_rows([r])[0].robust[0]
    assert list(ev.per_attack) == stages and ev.stage_order_known
    legacy = robust_row("custom", 0.1, 0.3, clean=0.9, legacy=True)
    legacy["per_attack"] = dict(stored)
    ev = normalize_rows([row(0, "mlp", 0.0, robust=[legacy])])[0].robust[0]
    assert list(ev.per_attack) == ["apgd-ce", "apgd-t", "square"] and not ev.stage_order_known


def test_evaluations_take_noise_and_method_from_the_weights_provenance():
    noisy = row(1, "mlp", 0.4, name="ce/sym-0.4")
    rows = [evaluation_row(0, weights_of=noisy), evaluation_row(1, weights_of=None),
            evaluation_row(2, weights_of=None, provenance=False)]
    known, unknown, old = normalize_rows(rows)
    assert known.weights == "weights of run ce/sym-0.4 (symmetric 40% label noise)"
    assert (known.noise_kind, known.noise_rate, known.objective, known.loss) == ("symmetric", 0.4, "erm", "ce")
    assert not known.is_clean and known.is_evaluation
    assert unknown.weights == "weights of unknown origin"
    assert old.weights.endswith("(provenance not recorded)")
    for r in (unknown, old):  # nothing known about their training: never "clean"
        assert not r.is_clean and r.noise_rate is None and r.flip_rate is None and r.objective is None
    flat = results_table(rows)
    assert flat[0]["weights"] == known.weights and flat[0]["noise rate"] == 0.4 and flat[1]["noise kind"] is None
    clean_weights = evaluation_row(3, weights_of=row(0, "mlp", 0.0, name="ce/clean"))
    assert normalize_rows([clean_weights])[0].weights == "weights of run ce/clean (clean labels)"


def test_eps_text_and_column_names():
    assert eps_text(8 / 255) == "8/255" and eps_text(2 / 255) == "2/255"
    assert eps_text(0.2) == "0.2" and eps_text(0.1) == "0.1" and eps_text(0.5) == "0.5"  # 0.2 = 51/255 stays
    assert eps_text(0.0313725) == "0.0313725"  # a rounded value is not a fraction
    assert eps_text(1.5) == "1.5"
    assert robust_column("pgd", "linf", 0.1) == "pgd linf eps=0.1"
    assert robust_column("standard", "linf", 0.1, 100) == "standard linf eps=0.1 (n=100)"
    assert [robust_column("pgd", "linf", e, 360) for e in EPS] == EXPECTED_COLUMNS[12:15]


def test_repeated_evaluation_in_one_run_keeps_both_values():
    robust = [
        {"attack": "pgd", "norm": "linf", "eps": 0.1, "accuracy": 0.6, "num_points": 10},
        {"attack": "pgd", "norm": "l2", "eps": 0.5, "accuracy": 0.7, "num_points": 10},
        {"attack": "pgd", "norm": "linf", "eps": 0.1, "accuracy": 0.5, "num_points": 10},
        {"attack": "pgd", "norm": "linf", "eps": 0.05, "accuracy": 0.8, "num_points": 10},
        {"attack": "pgd", "norm": "linf", "eps": 0.1, "accuracy": 0.55, "num_points": 50},
        {"attack": "pgd", "norm": "linf", "eps": 0.2, "accuracy": 0.1},  # n not stored
    ]
    flat = results_table([row(0, "mlp", 0.0, robust=robust)])[0]
    robust_cols = [c for c in flat if "eps=" in c]
    # grouped by (attack, norm) in order of appearance, eps ascending inside a group, then n
    assert robust_cols == ["pgd linf eps=0.05 (n=10)", "pgd linf eps=0.1 (n=50)", "pgd linf eps=0.1 (n=10)",
                           "pgd linf eps=0.1 (n=10) #2", "pgd linf eps=0.2", "pgd l2 eps=0.5 (n=10)"]
    assert (flat["pgd linf eps=0.1 (n=10)"], flat["pgd linf eps=0.1 (n=10) #2"], flat["pgd l2 eps=0.5 (n=10)"],
            flat["pgd linf eps=0.1 (n=50)"]) == (0.6, 0.5, 0.7, 0.55)


def test_run_records_are_accepted_and_bad_rows_refused():
    from robustlab.experiments.store import RunRecord

    src = row(0, "mlp", 0.2)
    rec = RunRecord(**src)
    assert results_table([rec]) == results_table([src])
    with pytest.raises(InvalidInputError, match="to_dict"):
        results_table(["not a row"])
    with pytest.raises(InvalidInputError, match="list of run dicts"):
        results_table(src)


def test_format_value_matches_the_cli_conventions():
    assert format_value("clean_accuracy", 0.9123) == "91.2"
    assert format_value("pgd linf eps=0.1", 0.5) == "50.0"
    assert format_value("flip_rate", 0.357) == "35.7"
    assert format_value("ece", 0.01234) == "0.012"
    assert format_value("noise rate", 0.4) == "0.4"
    assert format_value("seconds", 12.345) == "12.3"
    assert format_value("best_epoch", 7) == "7"
    assert format_value("clean_accuracy", None) == "\u2014"
