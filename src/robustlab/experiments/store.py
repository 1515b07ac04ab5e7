"""The results store: one SQLite row per run, keyed by the hash of its resolved config,
with artifacts (checkpoints, model weights, per-sample records) in a folder beside it.

Layout of a results directory::

    results.db                  # SQLite, WAL mode
    artifacts/<run id>/         # train/last.pt, model.safetensors, records.npz,
                                # chunks/chunk-<id>.npz of a sharded evaluation

The ``shards`` table records the finished chunks of a sharded evaluation (run id, chunk
id, status ``done``, the path and sha256 of the chunk's ``.npz``), written by the driver
as each chunk finishes, so an interrupted evaluation redoes only the missing chunks; the
run's row is still written once, when every chunk is merged.

Every state change is one transaction: a run is marked ``done`` in the same statement
that writes its metrics, so a crash never leaves a half-written row marked done. A
``done`` run is never reopened except by an explicit ``force``; one process runs a given
config at a time (see :func:`run_lock`). A store whose files are read-only can still be
listed and reported; a row whose stored JSON is unreadable is listed with status
``corrupt`` (the others are unaffected) and is recomputed by the next run of its config.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robustlab.errors import StoreBusyError, StoreError

SCHEMA_VERSION = 1
#: what ``status`` can be: the three stored states, and ``corrupt`` for a row whose
#: stored JSON cannot be read
STATUSES = ("running", "done", "failed", "corrupt")
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
CREATE TABLE IF NOT EXISTS shards (
    run_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done')),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (run_id, chunk)
);
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
    #: set on the record a run call returns when it reused a finished run (not stored)
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("reused", None)
        return d


def _writable(path: Path) -> bool:
    """Whether ``path`` (a file, or the folder it would be created in) may be written."""
    target = path if path.exists() else path.parent
    return os.access(target, os.W_OK)


class ResultsStore:
    """SQLite results store in ``root`` (created if missing).

    ``timeout``: seconds to wait for another process's write lock before
    :class:`~robustlab.errors.StoreBusyError`. A store whose database or folder cannot be
    written opens read-only (``read_only``): listing and reports work, writes raise.
    """

    def __init__(self, root: str | Path | None = None, *, timeout: float = 30.0) -> None:
        self.root = Path(root) if root is not None else default_results_dir()
        self.db_path = self.root / "results.db"
        self.timeout = float(timeout)
        self.read_only = self.db_path.exists() and not (_writable(self.db_path) and _writable(self.root))
        if self.read_only:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "artifacts").mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the results folder {self.root}: {exc.strerror or exc}.") from exc
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.db_path} was written by a newer robustlab (schema {row[0]}); upgrade robustlab."
                )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            if self.read_only:
                uri = f"file:{self.db_path.resolve()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
            else:
                conn = sqlite3.connect(self.db_path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the results store {self.db_path}: {exc}") from exc
        try:
            if not self.read_only:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if "locked" in text or "busy" in text:
                raise StoreBusyError(
                    f"another process holds the results store {self.db_path} (still locked after "
                    f"{self.timeout:g} s); wait for it to finish, or use another --results folder."
                ) from exc
            if "readonly" in text or "read-only" in text:
                raise StoreError(
                    f"the results store {self.db_path} is read-only; it can be listed and reported, "
                    f"but runs need a writable --results folder."
                ) from exc
            raise self._failed(exc) from exc
        except sqlite3.DatabaseError as exc:
            raise self._failed(exc) from exc
        finally:
            conn.close()

    def _failed(self, exc: Exception) -> StoreError:
        return StoreError(
            f"the results store {self.db_path} failed: {exc}. If the file is corrupt, move it "
            f"away; artifacts in {self.root / 'artifacts'} are kept."
        )

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(
                f"the results store {self.db_path} is read-only; it can be listed and reported, "
                f"but runs need a writable --results folder (--results DIR)."
            )

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
        self._check_writable()
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
        force: bool = False,
    ) -> bool:
        """Mark ``run_id`` running (insert, or re-open a failed/interrupted run). A ``done``
        run is re-opened only with ``force``; otherwise nothing changes and False is
        returned (the caller reuses it). Returns True when the run was marked running."""
        self._check_writable()
        now = _now()
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is not None and row[0] == "done" and not force:
                return False
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
        return True

    def finish(self, run_id: str, metrics: dict[str, Any], duration_s: float) -> None:
        """Write metrics and mark done, in one transaction. Keys keep their order (an
        ensemble's stages stay in the order they ran)."""
        self._check_writable()
        text = json.dumps(metrics, allow_nan=True)
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
        self._check_writable()
        with self._tx() as conn:
            conn.execute(
                "UPDATE runs SET status='failed', error=?, finished_at=? WHERE id=?",
                (error[:4000], _now(), run_id),
            )

    def delete(self, run_id: str) -> None:
        self._check_writable()
        with self._tx() as conn:
            conn.execute("DELETE FROM runs WHERE id=?", (run_id,))
            conn.execute("DELETE FROM shards WHERE run_id=?", (run_id,))

    # -- shards of a sharded evaluation -----------------------------------------------------
    def record_shard(self, run_id: str, chunk: int, path: str, sha256: str) -> None:
        """Record chunk ``chunk`` of ``run_id`` as done (its file at ``path`` is complete and
        has this sha256); recording it again replaces the entry."""
        self._check_writable()
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO shards (run_id, chunk, status, path, sha256, finished_at)"
                " VALUES (?, ?, 'done', ?, ?, ?)",
                (run_id, int(chunk), str(path), sha256, _now()),
            )

    def shards(self, run_id: str) -> dict[int, tuple[str, str]]:
        """``{chunk: (path, sha256)}`` of the finished chunks recorded for ``run_id``."""
        if not self.db_path.exists():
            return {}
        with self._connect() as conn:
            has = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='shards'").fetchone()
            if has is None:  # a store written before sharded evaluations (opened read-only)
                return {}
            rows = conn.execute("SELECT chunk, path, sha256 FROM shards WHERE run_id=? AND status='done'"
                                " ORDER BY chunk", (run_id,)).fetchall()
        return {int(c): (str(p), str(h)) for c, p, h in rows}

    def clear_shards(self, run_id: str) -> None:
        """Forget the recorded chunks of ``run_id`` (a forced rerun computes them all)."""
        self._check_writable()
        with self._tx() as conn:
            conn.execute("DELETE FROM shards WHERE run_id=?", (run_id,))

    def shard_log(self, run_id: str) -> ShardLog:
        """The finished chunks of ``run_id`` as a sharded evaluation reads and records them."""
        return ShardLog(self, run_id)

    # -- reads -------------------------------------------------------------------------------
    @staticmethod
    def _decode(row: sqlite3.Row | tuple[Any, ...], cols: list[str]) -> RunRecord:
        """A row as a record; a cell whose JSON cannot be read leaves the record listed with
        status ``corrupt`` and the reason in ``error`` (the other runs are unaffected)."""
        d = dict(zip(cols, row))
        bad = []
        for k in ("config", "metrics", "versions"):
            try:
                d[k] = json.loads(d[k]) if d[k] else None
            except (TypeError, ValueError) as exc:
                d[k] = {} if k == "config" else None
                bad.append(f"{k} ({exc})")
        if bad:
            d["status"] = "corrupt"
            d["error"] = (
                f"the stored {' and '.join(bad)} of run {d['id'][:10]} ({d['name']}) is not valid JSON; "
                f"rerun its config to recompute it (the run is redone), or delete it."
            )
        return RunRecord(**d)

    def get(self, run_id: str) -> RunRecord | None:
        """The run with this id (or unique id prefix), or None."""
        if not self.db_path.exists():
            return None
        with self._connect() as conn:
            cur = conn.execute("SELECT * FROM runs WHERE id LIKE ? ORDER BY created_at", (run_id + "%",))
            rows = cur.fetchall()
            cols = [c[0] for c in cur.description]
        if len(rows) > 1:
            raise StoreError(f"run id prefix {run_id!r} is ambiguous ({len(rows)} runs); give more characters.")
        return self._decode(rows[0], cols) if rows else None

    def list(self, *, suite: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Runs in creation order, optionally filtered by suite and status."""
        if status is not None and status not in STATUSES:
            from robustlab.validation import check_choice

            check_choice(status, "status", STATUSES)
        if not self.db_path.exists():
            return []
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if suite is not None:
            q += " AND suite=?"
            args.append(suite)
        if status is not None and status != "corrupt":
            q += " AND status=?"
            args.append(status)
        q += " ORDER BY created_at, rowid"
        with self._connect() as conn:
            cur = conn.execute(q, args)
            rows = cur.fetchall()
            cols = [c[0] for c in cur.description]
        records = [self._decode(r, cols) for r in rows]
        if status == "corrupt":
            records = [r for r in records if r.status == "corrupt"]
        elif status is not None:
            records = [r for r in records if r.status == status]
        return records

    def __len__(self) -> int:
        if not self.db_path.exists():
            return 0
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


@dataclass
class ShardLog:
    """The ``shards`` rows of one run (see :func:`robustlab.evaluate.sharded.evaluate_sharded`)."""

    store: ResultsStore
    run_id: str

    def finished(self) -> dict[int, tuple[str, str]]:
        return self.store.shards(self.run_id)

    def record(self, chunk: int, path: str, sha256: str) -> None:
        self.store.record_shard(self.run_id, chunk, path, sha256)


def elapsed_since(t0: float) -> float:
    return time.perf_counter() - t0


@contextlib.contextmanager
def run_lock(
    folder: Path, *, wait: bool = True, on_wait: Callable[[], None] | None = None, poll: float = 0.5
) -> Iterator[None]:
    """Hold an exclusive lock on the run whose artifacts live in ``folder`` (an ``fcntl``
    lock on ``folder/.lock``, released by the operating system when the process ends, even
    on ``kill -9``). A second process asking for the same run waits (``on_wait`` is called
    once) or, with ``wait=False``, gets :class:`~robustlab.errors.StoreBusyError`."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "a+")  # noqa: SIM115 (held for the duration)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if not wait:
                    raise StoreBusyError(
                        f"another process is running this config right now ({folder.name[:10]}); "
                        f"wait for it, then rerun to reuse its result."
                    ) from None
                if not told and on_wait is not None:
                    on_wait()
                    told = True
                time.sleep(poll)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
