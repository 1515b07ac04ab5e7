"""The store under faults: a corrupt cell, a lock held by another process, a read-only
store, a second process starting a config that is running or done."""

import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from robustlab.errors import StoreBusyError, StoreError
from robustlab.experiments import ResultsStore
from robustlab.experiments.runner import execute_run
from robustlab.experiments.store import run_lock


def _store_with_runs(tmp_path, names=("a", "b", "c")):
    store = ResultsStore(tmp_path)
    for n in names:
        store.start(n * 8, n, {"name": n})
        store.finish(n * 8, {"clean_accuracy": 0.5, "per_attack": {"clean": 1, "z": 0.5, "a": 0.2}}, 1.0)
    return store


def test_a_corrupt_metrics_cell_names_its_run_and_spares_the_others(tmp_path):
    store = _store_with_runs(tmp_path)
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("UPDATE runs SET metrics='{\"clean_accuracy\": 0.5, ' WHERE id='bbbbbbbb'")
    runs = store.list()
    assert [r.status for r in runs] == ["done", "corrupt", "done"]
    bad = runs[1]
    assert bad.metrics is None and "bbbbbbbb" in bad.error and "not valid JSON" in bad.error
    assert runs[0].metrics["per_attack"] == {"clean": 1, "z": 0.5, "a": 0.2}
    assert [r.id for r in store.list(status="corrupt")] == ["bbbbbbbb"]
    # the next run of that config recomputes it
    rec = execute_run(store, "bbbbbbbb", "b", {"name": "b"}, lambda art: {"clean_accuracy": 0.75})
    assert rec.status == "done" and rec.metrics == {"clean_accuracy": 0.75} and not rec.reused


def test_metrics_keep_their_key_order(tmp_path):
    store = _store_with_runs(tmp_path, names=("a",))
    assert list(store.get("aaaaaaaa").metrics["per_attack"]) == ["clean", "z", "a"]


def test_a_held_write_lock_is_reported_as_another_process(tmp_path):
    store = _store_with_runs(tmp_path, names=("a",))
    holder = sqlite3.connect(store.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        quick = ResultsStore(tmp_path, timeout=0.2)
        with pytest.raises(StoreBusyError, match="another process holds the results store"):
            quick.start("dddddddd", "d", {})
        assert [r.id for r in quick.list()] == ["aaaaaaaa"]  # reading still works
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_read_only_store_can_be_listed_but_not_written(tmp_path, monkeypatch):
    _store_with_runs(tmp_path)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if mode == os.W_OK else real(p, mode, *a, **k))
    ro = ResultsStore(tmp_path)
    assert ro.read_only and [r.name for r in ro.list()] == ["a", "b", "c"]
    with pytest.raises(StoreError, match="read-only"):
        ro.start("eeeeeeee", "e", {})
    with pytest.raises(StoreError, match="read-only"):
        execute_run(ro, "eeeeeeee", "e", {}, lambda art: {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_store_on_read_only_files_can_be_listed(tmp_path):  # pragma: no cover (not root)
    _store_with_runs(tmp_path)
    for p in tmp_path.rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    tmp_path.chmod(0o555)
    try:
        assert len(ResultsStore(tmp_path).list()) == 3
    finally:
        tmp_path.chmod(0o755)


def test_a_done_run_is_never_reopened_without_force(tmp_path):
    store = _store_with_runs(tmp_path, names=("a",))
    assert store.start("aaaaaaaa", "a", {}) is False
    rec = store.get("aaaaaaaa")
    assert rec.status == "done" and rec.metrics is not None and rec.attempts == 1
    assert store.start("aaaaaaaa", "a", {}, force=True) is True and store.get("aaaaaaaa").status == "running"


def test_a_second_process_waits_for_the_running_config_and_reuses_it(tmp_path):
    store = ResultsStore(tmp_path)
    art = tmp_path / "artifacts" / "ffffffff"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from robustlab.experiments import ResultsStore
        from robustlab.experiments.store import run_lock
        store = ResultsStore({str(tmp_path)!r})
        with run_lock(Path({str(art)!r})):
            store.start("ffffffff", "f", {{}})
            Path({str(tmp_path / "started")!r}).touch()
            time.sleep(1.5)
            store.finish("ffffffff", {{"clean_accuracy": 0.25}}, 1.5)
    """)
    first = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not (tmp_path / "started").exists():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.05)
        assert store.get("ffffffff").status == "running"
        with pytest.raises(StoreBusyError, match="another process is running this config"):
            with run_lock(art, wait=False):
                pass

        def must_not_run(art):
            raise AssertionError("the second process ran a config the first one was running")

        rec = execute_run(store, "ffffffff", "f", {}, must_not_run)
        assert rec.reused and rec.status == "done" and rec.metrics == {"clean_accuracy": 0.25}
        assert rec.attempts == 1
    finally:
        first.wait(timeout=60)
    assert first.returncode == 0
