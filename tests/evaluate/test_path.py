"""The one evaluation path: every caller gets the same numbers on the same points, rows
say how many and which points they measured, stages keep their order, bad input is
refused before any work."""

import json

import pytest
import torch

from robustlab.errors import ConfigError, InvalidInputError
from robustlab.evaluate import (
    Measurement,
    attack_report,
    clean_accuracy,
    evaluate,
    point_set_id,
    predict_logits,
    robust_accuracy,
    subset_indices,
)
from robustlab.seeding import derive_seed
from tests.attacks.helpers import exact_linf_robust, problem

PGD = {"steps": 10, "loss": "margin"}


def test_subset_is_the_first_n_of_a_seeded_permutation_in_order():
    idx = subset_indices(50, 7, seed=3)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(derive_seed("subset", 3)))
    assert torch.equal(idx, order[:7].sort().values)
    assert torch.equal(subset_indices(50, None, 3), torch.arange(50))
    assert torch.equal(subset_indices(50, 80, 3), torch.arange(50))
    assert not torch.equal(subset_indices(50, 7, 4), idx)  # another seed, other points


def test_every_caller_gets_the_same_numbers_on_the_same_points():
    lin, x, y = problem(n=120)
    m = Measurement("pgd", "linf", [0.05, 0.1], PGD, subset=40, audit=False)
    ev = evaluate(lin, x, y, [m], seed=5)
    idx = subset_indices(120, 40, 5)
    rep = attack_report(lin, x[idx], y[idx], [0.05, 0.1], "pgd", seed=5, audit=False, **PGD)
    res = robust_accuracy(lin, x[idx], y[idx], [t for t in m.build()[2]], "pgd", seed=5, **PGD)
    assert [r.accuracy for r in ev.rows] == [r.robust_accuracy for r in rep.results] == [r.accuracy for r in res]
    for row, r in zip(ev.rows, res):
        measured = torch.from_numpy(ev.records[f"robust/pgd/linf/{row.eps:g}"])
        assert torch.equal(measured[idx] == 1, r.robust)
        assert bool((measured[torch.ones(120, dtype=torch.bool).index_fill_(0, idx, False)] == -1).all())
        # a linear model: PGD with the margin loss finds every non-robust point
        assert torch.equal(r.robust, exact_linf_robust(lin, x[idx], y[idx], row.eps))


def test_rows_say_how_many_and_which_points():
    lin, x, y = problem(n=90)
    ev = evaluate(lin, x, y, [Measurement("fgsm", "linf", [0.1], audit=False),
                              Measurement("pgd", "linf", [0.1], PGD, subset=30, audit=False),
                              Measurement("fgsm", "linf", [0.05], subset=30, audit=False)], seed=0)
    full, sub, sub2 = ev.rows
    assert (full.num_points, full.num_total, full.subset) == (90, 90, None)
    assert (sub.num_points, sub.num_total, sub.subset) == (30, 90, 30)
    assert sub.point_set == sub2.point_set == point_set_id(subset_indices(90, 30, 0), 90)
    assert full.point_set != sub.point_set and full.point_set == point_set_id(range(90), 90)


def test_ensemble_stages_keep_their_run_order_through_the_store(tmp_path):
    from robustlab.experiments import ResultsStore

    lin, x, y = problem(n=60)
    members = [("pgd", {"steps": 5}), ("fgsm", {}), ("apgd-ce", {"steps": 3})]
    ev = evaluate(lin, x, y, [Measurement("ensemble", "linf", [0.1], {"members": members}, audit=False)])
    row = ev.rows[0].to_dict()
    assert row["stages"] == ["pgd", "fgsm", "apgd-ce"]
    assert list(row["per_attack"]) == ["clean", "pgd", "fgsm", "apgd-ce"]
    accs = list(row["per_attack"].values())
    assert accs == sorted(accs, reverse=True) and accs[-1] == row["accuracy"]
    store = ResultsStore(tmp_path)
    store.start("r1", "r1", {})
    store.finish("r1", {"robust": [row]}, 1.0)
    back = store.get("r1").metrics["robust"][0]
    assert list(back["per_attack"]) == ["clean", "pgd", "fgsm", "apgd-ce"]
    assert json.loads(json.dumps(back)) == row


def test_empty_inputs_are_refused_with_what_to_do():
    lin, x, y = problem(n=10)
    empty_x, empty_y = x[:0], y[:0]
    for call in (
        lambda: clean_accuracy(lin, empty_x, empty_y),
        lambda: predict_logits(lin, empty_x),
        lambda: attack_report(lin, empty_x, empty_y, 0.1, "fgsm"),
        lambda: robust_accuracy(lin, empty_x, empty_y, Measurement().build()[2][0], "fgsm"),
        lambda: evaluate(lin, empty_x, empty_y, [Measurement("fgsm", eps=[0.1])]),
    ):
        with pytest.raises(InvalidInputError, match="no points"):
            call()


@pytest.mark.parametrize("subset", [0, -5, 2.5, True])
def test_bad_subsets_are_refused(subset):
    lin, x, y = problem(n=10)
    with pytest.raises(ConfigError, match="subset"):
        evaluate(lin, x, y, [Measurement("fgsm", eps=[0.1], subset=subset)])


@pytest.mark.parametrize("device", ["tpu", "cuda:99", "", "gpu0"])
def test_devices_this_machine_lacks_are_refused(device):
    if device == "cuda:99" and torch.cuda.device_count() > 99:  # pragma: no cover
        pytest.skip("a machine with 100 GPUs")
    lin, x, y = problem(n=10)
    with pytest.raises(ConfigError, match="device|cuda"):
        evaluate(lin, x, y, [Measurement("fgsm", eps=[0.1])], device=device)


def test_cuda_on_a_cpu_build_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    lin, x, y = problem(n=10)
    with pytest.raises(ConfigError, match="no CUDA|finds no CUDA"):
        evaluate(lin, x, y, [Measurement("fgsm", eps=[0.1])], device="cuda")
