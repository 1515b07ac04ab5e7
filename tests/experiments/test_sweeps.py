"""Sweeps: a suite's configs as tasks of the pool (and Ray) backend. The driver writes every
row; a failing config is stored as failed and stops no other; a finished config is reused;
each config gives the same numbers as in this process."""

import os

import pytest
import yaml

from robustlab.cli import main
from robustlab.experiments import ResultsStore, make_config, run_experiment
from robustlab.experiments.backends import get_backend
from robustlab.experiments.config import Suite
from robustlab.experiments.runner import SweepError, run_suite, sweep_failures, sweep_resources

BASE = {
    "data": {"name": "digits"},
    "model": {"name": "mlp", "params": {"hidden": [16]}},
    "train": {"epochs": 1, "batch_size": 64},
    "evaluate": {"attacks": [{"name": "fgsm", "norm": "linf", "eps": [0.1], "subset": 10}]},
}
SUITE = Suite.model_validate({
    "suite": "sweep",
    "base": BASE,
    "runs": [
        {"name": "a", "seed": 0},
        # passes validation (names, objective, trainer); fails in the worker when the model is built
        {"name": "bad", "model": {"params": {"hidden": [0]}}},
        {"name": "b", "seed": 1, "train": {"lr": 0.05}},
    ],
})
TIMING = ("seconds", "samples_per_s")


def _no_timing(obj):
    """Metrics without wall-clock entries (the only values that differ between two runs)."""
    if isinstance(obj, dict):
        return {k: _no_timing(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [_no_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def pool():
    """Two spawned worker processes, shared by the tests of this module (spawning costs seconds)."""
    with get_backend("pool", workers=2) as backend:
        yield backend


@pytest.fixture(scope="module")
def local_metrics(tmp_path_factory):
    """The two good configs run one after another in this process."""
    store = ResultsStore(tmp_path_factory.mktemp("local"))
    out = {}
    for cfg in SUITE.expand():
        if cfg.name != "bad":
            out[cfg.name] = run_experiment(cfg, store, suite="sweep", progress=False).metrics
    return out


def _check_sweep(store, records, local_metrics, calls):
    assert [r.name for r in records] == ["a", "bad", "b"]  # the suite's order, whatever finished first
    assert [r.status for r in records] == ["done", "failed", "done"]
    bad = records[1]
    assert bad.error.splitlines()[0] == (
        "ConfigError: mlp hidden must be a list of positive layer widths, e.g. [256, 256] "
        "(or [] for a linear model), got [0]."
    )
    for r in (records[0], records[2]):
        assert _no_timing(r.metrics) == _no_timing(local_metrics[r.name])  # same config -> same numbers
        art = store.root / "artifacts" / r.id
        assert (art / "model.safetensors").is_file() and (art / "records.npz").is_file()
        assert r.duration_s > 0 and r.suite == "sweep"
    assert sorted(calls) == [0, 1, 2]  # every run reported once, as it was stored
    err = sweep_failures(records)
    assert isinstance(err, SweepError) and "1 of 3 runs failed: bad (" in str(err)


def test_pool_sweep_records_the_failure_matches_local_and_reruns_nothing(tmp_path, local_metrics, pool, capsys):
    store = ResultsStore(tmp_path)
    calls = []
    records = run_suite(SUITE, store, backend=pool, progress=False,
                        on_run=lambda i, n, cfg, rec: calls.append(i))
    _check_sweep(store, records, local_metrics, calls)
    first = {r.id: (r.attempts, r.finished_at) for r in records}
    # the command line: the same printing as a local run, then exit 2 naming the failed run
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SUITE.model_dump(mode="json")))
    capsys.readouterr()
    assert main(["-q", "run", str(path), "--results", str(tmp_path), "--backend", "pool", "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "[1/3] a: clean accuracy " + f"{100 * records[0].metrics['clean_accuracy']:.1f}% (stored, 0.0 s)"
    assert any(ln.startswith(f"run {records[1].id[:10]} failed: artifacts in") for ln in lines)
    assert err.splitlines()[-1].startswith("error: 1 of 3 runs failed: bad (")
    assert "ConfigError: mlp hidden" in err and "got [0]. Fix them and rerun" in err
    again = [store.get(r.id) for r in records]
    assert {r.id: (r.attempts, r.finished_at) for r in again if r.status == "done"} == {
        r.id: first[r.id] for r in records if r.status == "done"}  # finished configs computed nothing
    assert again[1].status == "failed" and again[1].attempts == 2  # the failed one was tried again
    assert len(store) == 3


def test_interrupted_sweep_resumes_from_the_checkpoint(tmp_path, pool):
    """A run left 'running' with a checkpoint (the sweep was killed): the rerun resumes it."""
    cfg = next(c for c in SUITE.expand() if c.name == "a")
    cfg3 = make_config(cfg.to_dict(), ["train.epochs=2"])
    ref = run_experiment(cfg3, ResultsStore(tmp_path / "ref"), progress=False)
    store = ResultsStore(tmp_path / "cut")
    one = make_config(cfg.to_dict(), ["train.epochs=2"])
    # the first epoch's checkpoint of the 2-epoch run, as an interrupted worker leaves it
    from robustlab.train import trainer as trainer_mod

    original = trainer_mod.Trainer.save_checkpoint

    def save_then_die(self, epoch):
        original(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    trainer_mod.Trainer.save_checkpoint = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(one, store, suite="sweep", progress=False)
    finally:
        trainer_mod.Trainer.save_checkpoint = original
    assert store.get(one.hash()).status == "failed"
    suite = Suite.model_validate({"suite": "sweep", "base": cfg3.to_dict()})
    (rec,) = run_suite(suite, store, backend=pool, progress=False)
    assert rec.status == "done" and rec.metrics["resumed_from_epoch"] == 1 and rec.attempts == 2
    assert _no_timing({k: v for k, v in rec.metrics.items() if k != "resumed_from_epoch"}) == _no_timing(
        {k: v for k, v in ref.metrics.items() if k != "resumed_from_epoch"})


def test_resources_follow_the_config():
    cfg = make_config(BASE)
    assert sweep_resources(cfg) == {"num_cpus": 1}
    assert sweep_resources(make_config(BASE, ["train.threads=3"])) == {"num_cpus": 3}


# -- Ray ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'robustlab[ray]'")
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)  # ray.init sets variables (auth mode, ...) that would mislead a later cluster
    os.environ["HOME"] = str(home)  # Ray writes to ~; never its sockets under pytest's long tmp_path
    if "RAY_AUTH_MODE" in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        # another module's cluster ran in this process, which keeps its token: point to it
        tokens = sorted(tmp_path_factory.getbasetemp().glob("*/.ray/auth_token"), key=lambda p: p.stat().st_mtime)
        if tokens:
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(tokens[-1])
    temp = f"/tmp/rl-rs-{os.getpid() % 100000}"  # not the folder of another module's cluster in this process
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        token = home / ".ray" / "auth_token"
        if token.is_file() and "RAY_AUTH_TOKEN_PATH" not in os.environ:
            # this process keeps token authentication on after ray.init; a later cluster started
            # from it (another module's, with another HOME) finds the token only through this
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)


def test_ray_sweep_gives_the_same_rows(ray_cluster, tmp_path, local_metrics):
    store = ResultsStore(tmp_path)
    calls = []
    records = run_suite(SUITE, store, backend="ray", progress=False, on_run=lambda i, n, cfg, rec: calls.append(i))
    _check_sweep(store, records, local_metrics, calls)
    assert ray_cluster.is_initialized()  # the connection the sweep did not open stays open
