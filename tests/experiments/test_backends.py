"""Backends: local, spawned process pool and Ray run a function on tasks and yield
``(index, result or exception)`` as tasks finish; one task's failure stops no other."""

from __future__ import annotations

import os
import time

import pytest

from robustlab.errors import ConfigError
from robustlab.experiments.backends import (
    BackendError,
    WorkerLostError,
    check_reachable,
    get_backend,
    import_ray,
)


def square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("three is refused")
    return x * x


def sleep_then_pid(t: float) -> tuple[float, int]:
    time.sleep(t)
    return t, os.getpid()


def worker_threads(_: object) -> tuple[int, str | None]:
    import torch

    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def die_on_one(x: int) -> int:
    if x == 1:
        os._exit(9)  # a killed worker: no exception, the process is gone
    time.sleep(0.2)
    return x


def test_local_runs_in_order_and_keeps_going_after_a_failure():
    with get_backend("local") as b:
        out = list(b.run(square_or_fail, [1, 2, 3, 4]))
    assert [i for i, _ in out] == [0, 1, 2, 3]
    assert [r for _, r in out if not isinstance(r, BaseException)] == [1, 4, 16]
    err = out[2][1]
    assert isinstance(err, ValueError) and "three" in str(err)


def test_pool_yields_as_tasks_finish_on_distinct_spawned_processes():
    with get_backend("pool", workers=2) as b:
        assert b.workers == 2 and "pool of 2" in b.describe()
        out = list(b.run(sleep_then_pid, [0.6, 0.05]))
        again = dict(b.run(square_or_fail, [5, 3, 6]))
    # the short task finishes first although it was submitted second
    assert [i for i, _ in out] == [1, 0]
    assert {r[1] for _, r in out} != {os.getpid()}  # not this process
    assert again[0] == 25 and again[2] == 36 and isinstance(again[1], ValueError)


def test_pool_workers_use_the_threads_they_were_given():
    with get_backend("pool", workers=1, threads_per_worker=1) as b:
        [(_, (threads, omp))] = list(b.run(worker_threads, [None]))
    assert threads == 1 and omp == "1"


def test_a_killed_pool_worker_is_reported_and_the_pool_restarts():
    with get_backend("pool", workers=2) as b:
        out = dict(b.run(die_on_one, [0, 1]))
        assert isinstance(out[1], WorkerLostError)
        assert "died" in str(out[1]) and "rerun" in str(out[1])
        assert dict(b.run(square_or_fail, [2])) == {0: 4}  # a fresh pool


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown backend 'dask'"):
        get_backend("dask")
    with pytest.raises(ConfigError, match="workers"):
        get_backend("pool", workers=0)
    with pytest.raises(ConfigError, match="--ray-address is for --backend ray"):
        get_backend("pool", ray_address="1.2.3.4:6379")
    with pytest.raises(ConfigError, match="unknown resource"):
        get_backend("ray", resources={"gpus": 1})


def test_unreachable_ray_address_names_it():
    # port 9 on localhost: nothing listens (connection refused at once)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:9 .*ray start --head"):
        check_reachable("127.0.0.1:9", timeout=2)
    with pytest.raises(BackendError, match="not host:port"):
        check_reachable("nonsense")


def test_ray_missing_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(BackendError, match=r'pip install "robustlab\[ray\]"'):
        import_ray()
    with pytest.raises(BackendError, match=r'pip install "robustlab\[ray\]"'):
        get_backend("ray")
