"""The results store: one SQLite row per run, keyed by the hash of its resolved config,
with artifacts (checkpoints, model weights, per-sample records) in a folder beside it.

Layout of a results directory::

    results.db                  # SQLite, WAL mode
    artifacts/<run id>/         # train/last.pt, model.safetensors, records.npz

Every state change is one transaction: a run is marked ``done`` in the same statement
that writes its metrics, so a crash never leaves a half-written row marked done.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robustlab.errors import StoreError

SCHEMA_VERSION = 1
DEFAULT_DIR = "robustlab-results"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    suite TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    config TEXT NOT NULL,
    metrics TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    duration_s REAL,
    versions TEXT,
    git_sha TEXT
);
CREATE INDEX IF NOT EXISTS runs_suite ON runs (suite);
"""


def default_results_dir() -> Path:
    """``$ROBUSTLAB_RESULTS`` or ``./robustlab-results``."""
    return Path(os.environ.get("ROBUSTLAB_RESULTS", DEFAULT_DIR))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunRecord:
    """One row of the store, decoded."""

    id: str
    name: str
    suite: str | None
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    versions: dict[str, Any] | None
    git_sha: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ResultsStore:
    """SQLite results store in ``root`` (created if missing)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_results_dir()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "artifacts").mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the results folder {self.root}: {exc}") from exc
        self.db_path = self.root / "results.db"
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.db_path} was written by a newer robustlab (schema {row[0]}); upgrade robustlab."
                )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the results store {self.db_path}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"the results store {self.db_path} failed: {exc}. If the file is corrupt, move it "
                f"away; artifacts in {self.root / 'artifacts'} are kept."
            ) from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- paths -------------------------------------------------------------------------------
    def artifact_dir(self, run_id: str) -> Path:
        d = self.root / "artifacts" / run_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- writes ------------------------------------------------------------------------------
    def start(
        self,
        run_id: str,
        name: str,
        config: dict[str, Any],
        *,
        suite: str | None = None,
        versions: dict[str, Any] | None = None,
        git_sha: str | None = None,
    ) -> None:
        """Mark ``run_id`` running (insert, or re-open a failed/interrupted run)."""
        now = _now()
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO runs (id, name, suite, status, config, attempts, created_at, started_at,"
                    " versions, git_sha) VALUES (?, ?, ?, 'running', ?, 1, ?, ?, ?, ?)",
                    (run_id, name, suite, json.dumps(config, sort_keys=True), now, now,
                     json.dumps(versions or {}), git_sha),
                )
            else:
                conn.execute(
                    "UPDATE runs SET status='running', name=?, suite=COALESCE(?, suite), metrics=NULL,"
                    " error=NULL, attempts=attempts+1, started_at=?, finished_at=NULL, versions=?,"
                    " git_sha=? WHERE id=?",
                    (name, suite, now, json.dumps(versions or {}), git_sha, run_id),
                )

    def finish(self, run_id: str, metrics: dict[str, Any], duration_s: float) -> None:
        """Write metrics and mark done, in one transaction."""
        text = json.dumps(metrics, sort_keys=True, allow_nan=True)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE runs SET status='done', metrics=?, error=NULL, finished_at=?, duration_s=?"
                " WHERE id=?",
                (text, _now(), float(duration_s), run_id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"run {run_id} is not in the store; call start() first.")

    def fail(self, run_id: str, error: str) -> None:
        """Mark a run failed (its checkpoint stays, so a rerun resumes)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET status='failed', error=?, finished_at=? WHERE id=?",
                (error[:4000], _now(), run_id),
            )

    def delete(self, run_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM runs WHERE id=?", (run_id,))

    # -- reads -------------------------------------------------------------------------------
    @staticmethod
    def _decode(row: sqlite3.Row | tuple[Any, ...], cols: list[str]) -> RunRecord:
        d = dict(zip(cols, row))
        for k in ("config", "metrics", "versions"):
            d[k] = json.loads(d[k]) if d[k] else None
        return RunRecord(**d)

    def get(self, run_id: str) -> RunRecord | None:
        """The run with this id (or unique id prefix), or None."""
        with self._connect() as conn:
            cur = conn.execute("SELECT * FROM runs WHERE id LIKE ? ORDER BY created_at", (run_id + "%",))
            rows = cur.fetchall()
            cols = [c[0] for c in cur.description]
        if len(rows) > 1:
            raise StoreError(f"run id prefix {run_id!r} is ambiguous ({len(rows)} runs); give more characters.")
        return self._decode(rows[0], cols) if rows else None

    def list(self, *, suite: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Runs in creation order, optionally filtered by suite and status."""
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if suite is not None:
            q += " AND suite=?"
            args.append(suite)
        if status is not None:
            q += " AND status=?"
            args.append(status)
        q += " ORDER BY created_at, rowid"
        with self._connect() as conn:
            cur = conn.execute(q, args)
            rows = cur.fetchall()
            cols = [c[0] for c in cur.description]
        return [self._decode(r, cols) for r in rows]

    def __len__(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def elapsed_since(t0: float) -> float:
    return time.perf_counter() - t0
