import sqlite3

import pytest

from robustlab.errors import StoreError
from robustlab.experiments import ResultsStore


def test_lifecycle_and_transactions(tmp_path):
    s = ResultsStore(tmp_path)
    s.start("abc123", "run", {"x": 1}, suite="t", versions={"torch": "x"})
    r = s.get("abc")
    assert r is not None and r.status == "running" and r.metrics is None and r.attempts == 1
    s.fail("abc123", "boom")
    assert s.get("abc123").status == "failed"
    s.start("abc123", "run", {"x": 1})
    assert s.get("abc123").attempts == 2 and s.get("abc123").error is None
    s.finish("abc123", {"clean_accuracy": 0.5}, 1.5)
    r = s.get("abc123")
    assert r.status == "done" and r.metrics == {"clean_accuracy": 0.5} and r.duration_s == 1.5
    assert [x.id for x in s.list(suite="t")] == ["abc123"]
    assert len(s) == 1


def test_failed_finish_leaves_row_running_not_done(tmp_path, monkeypatch):
    s = ResultsStore(tmp_path)
    s.start("r1", "run", {})

    class Boom:
        pass

    with pytest.raises(TypeError):
        s.finish("r1", {"bad": Boom()}, 1.0)  # not JSON-serialisable: nothing written
    r = s.get("r1")
    assert r.status == "running" and r.metrics is None


def test_finish_unknown_run_refused(tmp_path):
    with pytest.raises(StoreError):
        ResultsStore(tmp_path).finish("nope", {}, 0.0)


def test_rows_marked_done_always_have_metrics(tmp_path):
    s = ResultsStore(tmp_path)
    conn = sqlite3.connect(tmp_path / "results.db")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO runs (id, name, status, config, created_at) VALUES ('x', 'x', 'halfdone', '{}', 'now')")
    conn.close()
    assert len(s) == 0


def test_corrupt_database_gives_clear_error(tmp_path):
    (tmp_path / "results.db").write_bytes(b"garbage" * 100)
    with pytest.raises(StoreError, match="move it"):
        ResultsStore(tmp_path)
