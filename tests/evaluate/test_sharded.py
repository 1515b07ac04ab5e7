"""Sharded evaluation: fixed chunks, each seeded by (seed, chunk id), merged in chunk
order. The same evaluation in this process, in a spawned pool and on Ray gives bit-identical
per-sample records and rows whatever order the chunks finish in; certificates and
corruptions equal the unsharded evaluation; an interrupted evaluation redoes only the
missing chunks; bad settings are refused before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustlab import models
from robustlab.errors import ConfigError, DataError
from robustlab.evaluate import Measurement, evaluate, robust_accuracy, subset_indices
from robustlab.evaluate.sharded import (
    ChunkTask,
    ModelSource,
    PointSource,
    evaluate_sharded,
    pinned_batch_size,
    run_chunk,
)
from robustlab.experiments.backends import Backend, WorkerLostError, get_backend
from robustlab.seeding import derive_seed

SMOOTH = {"sigma": 0.25, "n0": 8, "n": 64, "alpha": 0.05}
MEASUREMENTS = [
    Measurement("pgd", "linf", [0.1, 0.2], {"steps": 3}, subset=150, audit="cheap"),
    Measurement("fast", "linf", [0.15], {}, subset=32, audit=False),  # an ensemble: per-stage accuracies
    Measurement("smoothing", "l2", [0.0, 0.1], SMOOTH, subset=100, audit=False, kind="certify"),
]


def _problem(n: int = 200, side: int = 8, k: int = 4):
    torch.manual_seed(0)
    net = models.create("mlp", num_classes=k, in_channels=1, input_size=(side, side), hidden=(8,)).eval()
    x = torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:20] = (y[:20] + 1) % k
    return net, x, y


class Reversed(Backend):
    """Delivers the chunks last-first, whatever backend computes them."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(workers=inner.workers)
        self.inner, self.name = inner, inner.name
        self.computed: list[int] = []

    def run(self, fn, tasks):
        out = dict(self.inner.run(fn, tasks[::-1]))
        for j in sorted(out):
            self.computed.append(tasks[len(tasks) - 1 - j].chunk)
        for j in sorted(out):  # task len-1 first ... task 0 last
            yield len(tasks) - 1 - j, out[j]

    def close(self) -> None:
        self.inner.close()


class FailOn(Backend):
    """This process, but chunk ``bad`` raises (an interrupted worker)."""

    name = "local"

    def __init__(self, bad: int | None = None) -> None:
        super().__init__()
        self.bad, self.computed = bad, []

    def run(self, fn, tasks):
        for i, t in enumerate(tasks):
            self.computed.append(t.chunk)
            yield i, (RuntimeError("worker interrupted") if t.chunk == self.bad else fn(t))


class MemoryLog:
    def __init__(self) -> None:
        self.done: dict[int, tuple[str, str]] = {}

    def finished(self):
        return dict(self.done)

    def record(self, chunk, path, sha256):
        self.done[chunk] = (path, sha256)


def _same(a, b) -> None:
    assert [r.to_dict() for r in a.rows] == [r.to_dict() for r in b.rows]
    assert a.clean == b.clean
    assert sorted(a.records) == sorted(b.records)
    for key in a.records:
        assert np.array_equal(a.records[key], b.records[key], equal_nan=True), key


# -- settings ----------------------------------------------------------------------------------
def test_chunk_size_must_be_whole_batches():
    assert pinned_batch_size(64, 128) == 64
    assert pinned_batch_size("auto", 256) == 256 and pinned_batch_size("auto", 1024) == 512
    for chunk in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="chunk_size"):
            pinned_batch_size(64, chunk)
    with pytest.raises(ConfigError, match="not a multiple of the batch size 64"):
        pinned_batch_size(64, 100)
    with pytest.raises(ConfigError, match="'auto' pins 512"):
        pinned_batch_size("auto", 700)


def test_what_is_not_sharded_is_refused_before_any_work(tmp_path):
    net, x, y = _problem(40)
    det = Measurement("msp", "uniform", [0.0], kind="detect")
    with pytest.raises(ConfigError, match="detect measurements are not sharded"):
        evaluate_sharded(net, (x, y), [det], chunk_size=20, batch_size=10)
    from robustlab.attacks import create

    with pytest.raises(ConfigError, match="registry name"):
        evaluate_sharded(net, (x, y), [Measurement(create("fgsm"), "linf", [0.1])], chunk_size=20, batch_size=10)
    with pytest.raises(ConfigError, match="workdir"):
        evaluate_sharded(net, (x, y), [], chunk_size=20, batch_size=10, backend="pool", workers=1)


def test_a_worker_that_cannot_read_the_data_names_the_path_and_itself(tmp_path):
    missing = str(tmp_path / "nowhere" / "x.npy")
    net, _, _ = _problem(10)
    task = ChunkTask(chunk=0, start=0, stop=10, model=ModelSource(module=net),
                     points=PointSource(x_path=missing, y_path=missing), measurements=(), indices=(), audit=(),
                     seed=0, batch_size=10, num_classes=4)
    with pytest.raises(DataError, match=rf"worker .*\(pid {os.getpid()}\) cannot read {missing}"):
        run_chunk(task)


# -- the canonical result --------------------------------------------------------------------------
def test_each_chunk_is_the_attack_seeded_by_its_chunk_id():
    net, x, y = _problem(150)
    m = Measurement("pgd", "linf", [0.2], {"steps": 3}, audit=False)
    ev = evaluate_sharded(net, (x, y), [m], chunk_size=64, batch_size=32, seed=5, progress=False)
    rec = ev.records["robust/pgd/linf/0.2"]
    for c, (a, b) in enumerate([(0, 64), (64, 128), (128, 150)]):
        gen = torch.Generator().manual_seed(derive_seed("attack", derive_seed("chunk", 5, c), "pgd", "linf"))
        res = robust_accuracy(net, x[a:b], y[a:b], m.build()[2][0], "pgd", steps=3, generator=gen, batch_size=32)
        assert np.array_equal(rec[a:b] == 1, res.robust.numpy())
    assert ev.rows[0].accuracy == (rec == 1).mean()
    # a row's per-stage accuracies come from the merged per-sample arrays
    assert ev.rows[0].per_attack["pgd"] == ev.rows[0].accuracy


def test_certificates_and_corruptions_equal_the_unsharded_evaluation():
    net, x, y = _problem(300)
    ms = [MEASUREMENTS[2], Measurement("gaussian_noise", "severity", [2, 5], subset=250, kind="corruption")]
    whole = evaluate(net, x, y, ms, seed=3, batch_size=64, progress=False)
    sharded = evaluate(net, x, y, ms, seed=3, batch_size=64, progress=False, chunk_size=256)
    _same(whole, sharded)
    assert [r.extra["lower"] for r in sharded.rows[:2]] == [r.extra["lower"] for r in whole.rows[:2]]


def test_the_order_chunks_finish_in_changes_nothing():
    net, x, y = _problem(200)
    canonical = evaluate_sharded(net, (x, y), MEASUREMENTS, chunk_size=64, batch_size=32, seed=1, progress=False)
    backwards = Reversed(get_backend("local"))
    again = evaluate_sharded(net, (x, y), MEASUREMENTS, chunk_size=64, batch_size=32, seed=1, progress=False,
                             backend=backwards)
    assert backwards.computed == [3, 2, 1, 0]
    _same(canonical, again)
    # the attack's audit ran once, on the first chunk's points
    assert canonical.reports[0].num_points == 150


def test_pool_gives_the_bit_identical_result_with_chunks_in_reverse_order(tmp_path):
    net, x, y = _problem(200)
    canonical = evaluate_sharded(net, (x, y), MEASUREMENTS, chunk_size=64, batch_size=32, seed=1, progress=False)
    with get_backend("pool", workers=2) as pool:
        backwards = Reversed(pool)
        pooled = evaluate_sharded(net, (x, y), MEASUREMENTS, chunk_size=64, batch_size=32, seed=1,
                                  progress=False, backend=backwards, workdir=tmp_path)
    assert backwards.computed == [3, 2, 1, 0]
    _same(canonical, pooled)
    assert (tmp_path / "points" / "x.npy").exists()  # workers memory-mapped their chunks


# -- resume ------------------------------------------------------------------------------------
def test_an_interrupted_evaluation_redoes_only_the_missing_chunks(tmp_path):
    net, x, y = _problem(200)
    ms = MEASUREMENTS[:2]
    whole = evaluate_sharded(net, (x, y), ms, chunk_size=64, batch_size=32, seed=2, progress=False)
    log = MemoryLog()
    broken = FailOn(bad=2)
    with pytest.raises(RuntimeError, match="chunk 2 failed .*3 of 4 chunks finished"):
        evaluate_sharded(net, (x, y), ms, chunk_size=64, batch_size=32, seed=2, progress=False, backend=broken,
                         workdir=tmp_path, shard_log=log)
    assert sorted(log.done) == [0, 1, 3]
    rerun = FailOn()
    ev = evaluate_sharded(net, (x, y), ms, chunk_size=64, batch_size=32, seed=2, progress=False, backend=rerun,
                          workdir=tmp_path, shard_log=log)
    assert rerun.computed == [2]
    _same(whole, ev)
    # a recorded chunk whose file changed is computed again
    path = Path(log.done[1][0])
    path.write_bytes(path.read_bytes()[:-10])
    third = FailOn()
    _same(whole, evaluate_sharded(net, (x, y), ms, chunk_size=64, batch_size=32, seed=2, progress=False,
                                  backend=third, workdir=tmp_path, shard_log=log))
    assert third.computed == [1]


class KillsWorkers(nn.Module):
    """The model, except that a pool worker evaluating point 130 dies (a killed worker)."""

    def __init__(self, inner: nn.Module, driver: int) -> None:
        super().__init__()
        self.inner, self.driver, self.num_classes = inner, driver, inner.num_classes

    def forward(self, x):
        marker = (x.reshape(len(x), -1)[:, 0] == 0.123).any()
        if os.getpid() != self.driver and bool(marker):
            os._exit(9)
        return self.inner(x)


def test_a_killed_worker_fails_its_chunk_and_a_rerun_finishes_only_that(tmp_path):
    net, x, y = _problem(200)
    x[130, 0, 0, 0] = 0.123
    ms = [MEASUREMENTS[0]]
    model = KillsWorkers(net, os.getpid())
    whole = evaluate_sharded(model, (x, y), ms, chunk_size=64, batch_size=32, seed=4, progress=False)
    log = MemoryLog()
    with pytest.raises(WorkerLostError, match="died"):
        evaluate_sharded(model, (x, y), ms, chunk_size=64, batch_size=32, seed=4, progress=False,
                         backend="pool", workers=1, workdir=tmp_path, shard_log=log)
    assert 2 not in log.done  # the chunk holding point 130 never finished
    rerun = FailOn()
    ev = evaluate_sharded(model, (x, y), ms, chunk_size=64, batch_size=32, seed=4, progress=False, backend=rerun,
                          workdir=tmp_path, shard_log=log)
    assert 2 in rerun.computed and set(rerun.computed).isdisjoint(set(log.done) - set(rerun.computed))
    _same(whole, ev)


# -- through the store and the CLI -----------------------------------------------------------------
def _weights(tmp_path):
    from robustlab.cli import main

    res, weights = tmp_path / "res", tmp_path / "net.safetensors"
    assert main(["--quiet", "train", "--epochs", "1", "--results", str(res), "-o", str(weights),
                 "model.params.hidden=[16]", "evaluate.attacks=[]"]) == 0
    return res, weights


def test_cli_chunk_size_is_in_the_key_and_the_backend_is_not(tmp_path, capsys):
    from robustlab.cli import main
    from robustlab.experiments import ResultsStore

    res, weights = _weights(tmp_path)
    base = ["attack", "-m", str(weights), "--attack", "fgsm", "--eps", "0.1", "--audit", "none",
            "--batch-size", "64", "--results", str(res)]
    assert main(base + ["--chunk-size", "128"]) == 0
    store = ResultsStore(res)
    [run] = store.list(suite="evaluations")
    assert run.config["evaluate"]["chunk_size"] == 128
    assert sorted(store.shards(run.id)) == [0, 1, 2]  # 360 digits test points
    assert main(base + ["--chunk-size", "128", "--backend", "pool", "--workers", "2"]) == 0  # same key: reused
    assert "(stored, 0.0 s)" in capsys.readouterr().out
    assert main(base + ["--chunk-size", "128", "--backend", "pool", "--workers", "2", "--force"]) == 0
    [again] = store.list(suite="evaluations")
    assert again.metrics["robust"] == run.metrics["robust"] and again.attempts == 2
    assert main(base) == 0  # unsharded: another key
    assert len(store.list(suite="evaluations")) == 2
    for args, words in [(["--chunk-size", "0"], "--chunk-size must be a positive"),
                        (["--chunk-size", "100"], "not a multiple of the batch size 64"),
                        (["--backend", "pool"], "pass --chunk-size too"),
                        (["--chunk-size", "128", "--backend", "ray", "--ray-address", "127.0.0.1:9"],
                         "127.0.0.1:9"),
                        (["--chunk-size", "128", "--backend", "spark"], "unknown backend 'spark'")]:
        if "ray" in args and not _has_ray():
            continue
        capsys.readouterr()
        assert main(base + args + ["--subset", "50"]) == 2, args
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert len(store.list(suite="evaluations")) == 2  # refused before a row was stored


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def test_killing_the_driver_then_rerunning_finishes_the_missing_chunks(tmp_path):
    from robustlab.cli import main
    from robustlab.experiments import ResultsStore

    res, weights = _weights(tmp_path)
    args = ["attack", "-m", str(weights), "--attack", "pgd", "--eps", "0.1", "--audit", "none",
            "--batch-size", "8", "--chunk-size", "40", "--results", str(res)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robustlab", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    store = ResultsStore(res)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            runs = store.list(suite="evaluations")
            if runs and 2 <= len(store.shards(runs[0].id)) < 9:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the evaluation finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    [run] = store.list(suite="evaluations")
    assert run.status == "running" and run.metrics is None  # never half-merged
    kept = store.shards(run.id)
    assert 2 <= len(kept) < 9
    stamps = {c: os.stat(p).st_mtime_ns for c, (p, _) in kept.items()}
    assert main(args) == 0
    [done] = store.list(suite="evaluations")
    assert done.status == "done" and sorted(store.shards(done.id)) == list(range(9))
    assert all(os.stat(p).st_mtime_ns == stamps[c] for c, (p, _) in kept.items())  # not recomputed
    assert main(args + ["--force"]) == 0  # a fresh computation gives the same rows
    assert store.list(suite="evaluations")[0].metrics["robust"] == done.metrics["robust"]


# -- Ray ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'robustlab[ray]'")
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)  # Ray writes to ~; never its sockets under pytest's long tmp_path
    temp = f"/tmp/rl-ray-{os.getpid() % 100000}"
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if old is not None:
            os.environ["HOME"] = old


def test_ray_gives_the_bit_identical_result_with_chunks_in_reverse_order(ray_cluster, tmp_path):
    net, x, y = _problem(200)
    canonical = evaluate_sharded(net, (x, y), MEASUREMENTS, chunk_size=64, batch_size=32, seed=1, progress=False)
    with get_backend("ray") as b:
        assert b.describe() == "ray at the connected cluster"
        backwards = Reversed(b)
        ev = evaluate_sharded(net, (x, y), MEASUREMENTS, chunk_size=64, batch_size=32, seed=1, progress=False,
                              backend=backwards, workdir=tmp_path)
    assert backwards.computed == [3, 2, 1, 0]
    _same(canonical, ev)
    assert ray_cluster.is_initialized()  # the backend leaves a connection it did not open


def _fails_on_three(v: int) -> int:
    if v == 3:
        raise ConfigError("three is refused")
    return v + 1


def test_ray_task_failures_keep_their_type_and_stop_no_other(ray_cluster):
    with get_backend("ray") as b:
        out = dict(b.run(_fails_on_three, [1, 3, 5]))
    assert out[0] == 2 and out[2] == 6
    assert isinstance(out[1], ConfigError) and "three is refused" in str(out[1])


def test_subsets_mean_the_same_points_sharded_or_not():
    net, x, y = _problem(200)
    m = Measurement("fgsm", "linf", [0.15], subset=70, audit=False)
    ev = evaluate_sharded(net, (x, y), [m], chunk_size=64, batch_size=32, seed=9, progress=False)
    whole = evaluate(net, x, y, [m], seed=9, batch_size=32, progress=False)
    rec = ev.records["robust/fgsm/linf/0.15"]
    assert np.array_equal(np.flatnonzero(rec >= 0), subset_indices(200, 70, 9).numpy())
    assert ev.rows[0].point_set == whole.rows[0].point_set and ev.rows[0].num_points == 70
