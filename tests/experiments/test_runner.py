"""End to end on the embedded digits data: store, no-op rerun, exact resume, refusals."""

import math

import numpy as np
import pytest
import torch

from robustlab.errors import ConfigError, UnknownNameError
from robustlab.experiments import ResultsStore, make_config, run_experiment
from robustlab.models import load_model

TINY = [
    "model.params.hidden=[32]",
    "train.epochs=3",
    "train.batch_size=64",
    "evaluate.attacks=[{name: pgd, norm: linf, eps: [0.05, 0.1], params: {steps: 3}, subset: 60}]",
]


def test_run_stores_metrics_artifacts_and_rerun_is_noop(tmp_path):
    store = ResultsStore(tmp_path)
    cfg = make_config({"noise": {"kind": "symmetric", "rate": 0.4}}, TINY)
    rec = run_experiment(cfg, store, progress=False)
    assert rec.status == "done" and rec.id == cfg.hash()
    m = rec.metrics
    assert 0.0 <= m["clean_accuracy"] <= 1.0 and len(m["per_class_accuracy"]) == 10
    assert [r["eps"] for r in m["robust"]] == pytest.approx([0.05, 0.1])
    assert all(r["num_points"] == 60 for r in m["robust"])
    assert m["noise"]["kind"] == "symmetric" and abs(m["noise"]["flip_rate"] - 0.4) < 0.05
    assert len(m["history"]) == 3
    art = tmp_path / "artifacts" / rec.id
    records = np.load(art / "records.npz")
    assert records["label"].shape == (360,)
    assert (records["robust/pgd/linf/0.05"] >= 0).sum() == 60
    model = load_model(art / "model.safetensors")
    assert model.num_classes == 10
    again = run_experiment(cfg, store, progress=False)
    assert again.attempts == 1 and again.finished_at == rec.finished_at
    assert len(store) == 1


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    from robustlab.train import trainer as trainer_mod

    cfg = make_config({}, TINY + ["train.epochs=4"])
    ref = run_experiment(cfg, ResultsStore(tmp_path / "ref"), progress=False)

    original = trainer_mod.Trainer.save_checkpoint

    def save_then_die(self, epoch):
        original(self, epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoint", save_then_die)
    store = ResultsStore(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, store, progress=False)
    row = store.get(cfg.hash())
    assert row.status == "failed" and row.error.startswith("interrupted") and row.metrics is None
    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoint", original)
    rec = run_experiment(cfg, store, progress=False)
    assert rec.status == "done" and rec.metrics["resumed_from_epoch"] == 2 and rec.attempts == 2
    a = load_model(tmp_path / "ref" / "artifacts" / ref.id / "model.safetensors").state_dict()
    b = load_model(tmp_path / "cut" / "artifacts" / rec.id / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rec.metrics["clean_accuracy"] == ref.metrics["clean_accuracy"]
    assert rec.metrics["robust"] == ref.metrics["robust"]


def test_same_seed_same_metrics(tmp_path):
    cfg = make_config({}, TINY)
    a = run_experiment(cfg, ResultsStore(tmp_path / "a"), progress=False)
    b = run_experiment(cfg, ResultsStore(tmp_path / "b"), progress=False)
    assert a.metrics["clean_accuracy"] == b.metrics["clean_accuracy"]
    assert a.metrics["robust"] == b.metrics["robust"]
    assert a.metrics["history"][-1]["train_loss"] == b.metrics["history"][-1]["train_loss"]


@pytest.mark.parametrize(
    "override,error,match",
    [
        ("data.name=digitz", UnknownNameError, "digits"),
        ("model.name=mlpp", UnknownNameError, "mlp"),
        ("train.loss.name=c", UnknownNameError, "ce"),
        ("evaluate.attacks[0].name=pgdd", UnknownNameError, "pgd"),
        ("evaluate.attacks[0].params.stpes=3", ConfigError, "steps"),
        ("train.schedule=cosin", ConfigError, "cosine"),
    ],
)
def test_bad_config_refused_before_anything_is_stored(tmp_path, override, error, match):
    store = ResultsStore(tmp_path)
    with pytest.raises(error, match=match):  # refused when the config is read, or before the run
        run_experiment(make_config({}, TINY + [override]), store, progress=False)
    assert len(store) == 0


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["train.objective=trades", "train.objective_params={beta: -1}"], "beta"),
        (["train.objective=done", "train.objective_params={r: 0}"], "r"),
        (["train.objective=pgd-at", "train.objective_params={eps_warmup: 10}"], "warm"),
        (["train.select=robust", "train.val_attack=pgd"], "val_fraction"),
    ],
)
def test_bad_training_settings_refused_before_anything_is_stored(tmp_path, overrides, match):
    store = ResultsStore(tmp_path)
    cfg = make_config({}, TINY + overrides)
    with pytest.raises(ConfigError, match=match):
        run_experiment(cfg, store, progress=False)
    assert len(store) == 0


def test_adversarial_training_run_with_robust_validation_and_selection(tmp_path):
    cfg = make_config({}, TINY + ["data.val_fraction=0.2", "train.objective=pgd-at",
                                  "train.objective_params={eps: 0.1, steps: 3}", "train.select=robust",
                                  "train.val_attack=pgd", "train.val_subset=50"])
    rec = run_experiment(cfg, ResultsStore(tmp_path), progress=False)
    m = rec.metrics
    n_val = math.ceil(0.2 * 1437)  # fractions round up, like scikit-learn
    assert m["data"]["num_val"] == n_val and m["data"]["num_train"] == 1437 - n_val
    scores = [h["val_robust_accuracy"] for h in m["history"]]
    assert m["training"]["best_epoch"] == 1 + max(range(len(scores)), key=lambda i: (scores[i], -i))
    assert all("train_adv_accuracy" in h for h in m["history"])


def test_runs_report_last_and_best_epoch_test_accuracy(tmp_path):
    rec = run_experiment(make_config({"noise": {"kind": "symmetric", "rate": 0.4}}, TINY),
                         ResultsStore(tmp_path), progress=False)
    m = rec.metrics
    curve = [h["test_accuracy"] for h in m["history"]]
    assert len(curve) == 3 and m["test_accuracy_last"] == curve[-1] and m["test_accuracy_best"] == max(curve)
    assert curve[m["test_accuracy_best_epoch"] - 1] == max(curve)
    # the last epoch's weights are the final model: the same clean accuracy
    assert m["test_accuracy_last"] == pytest.approx(m["clean_accuracy"], abs=1e-6)


def test_evaluations_are_keyed_by_the_tensors_and_say_where_the_weights_came_from(tmp_path):
    """Re-saved weights (other file bytes, same tensors) reuse the stored evaluation; an
    evaluation of a run's weights names the run and its label noise."""
    from robustlab.experiments import evaluate_weights
    from robustlab.models import file_sha256, save_model, weights_sha256

    store = ResultsStore(tmp_path / "res")
    cfg = make_config({"name": "noisy", "noise": {"kind": "symmetric", "rate": 0.4}}, TINY[:3])
    rec = run_experiment(cfg, store, progress=False)
    weights = tmp_path / "res" / "artifacts" / rec.id / "model.safetensors"
    net = load_model(weights)
    again = tmp_path / "again.safetensors"
    save_model(net, again)
    assert file_sha256(again) != file_sha256(weights)  # no run metadata: other bytes
    save_model(net, tmp_path / "twice.safetensors")
    assert file_sha256(again) == file_sha256(tmp_path / "twice.safetensors")  # byte-reproducible

    kw = dict(attack="fgsm", eps=[0.05], subset=40, audit=False)
    first, ev = evaluate_weights(weights, store, **kw)
    p = first.metrics["provenance"]
    assert p["run_id"] == rec.id and p["run_name"] == "noisy" and p["weights_sha256"] == weights_sha256(net)
    assert p["training"]["noise"] == {"kind": "symmetric", "rate": 0.4}
    assert ev is not None and first.metrics["robust"][0]["num_points"] == 40
    second, ev2 = evaluate_weights(again, store, **kw)
    assert second.reused and ev2 is None and second.id == first.id
    third, _ = evaluate_weights(again, store, **{**kw, "subset": 41})
    assert not third.reused and third.id != first.id
