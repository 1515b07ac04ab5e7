"""Where independent pieces of work run: in this process, in a local process pool, or on Ray.

>>> from robustlab.experiments.backends import get_backend
>>> with get_backend("pool", workers=4) as backend:
...     for i, out in backend.run(square, [1, 2, 3]):      # yields as tasks finish
...         if isinstance(out, BaseException): ...         # one task's failure stops no other
...         else: results[i] = out

A :class:`Backend` runs a top-level function ``fn`` on each of a list of tasks and yields
``(task index, result)`` pairs *in the order the tasks finish*; a task that raised yields
``(task index, exception)`` instead, and the other tasks go on. Callers that need a fixed
order (the sharded evaluation merges chunks by id; a sweep stores runs by config) put the
results in place by index, so the numbers never depend on which worker finished first.

Backends:

- ``"local"``: one task after another in this process (no extra process, no pickling);
- ``"pool"``: ``workers`` processes started with :mod:`multiprocessing`'s ``spawn`` method
  (no extra dependency; each worker sets torch to ``threads_per_worker`` threads). A worker
  that dies (killed, out of memory) breaks the pool: the unfinished tasks then yield
  :class:`WorkerLostError`;
- ``"ray"``: tasks on a Ray cluster (the optional extra ``pip install "robustlab[ray]"``,
  imported only here). ``ray_address`` (or ``$RAY_ADDRESS``) names a running cluster, e.g.
  ``"10.0.0.5:6379"`` or ``"ray://10.0.0.5:10001"``; without one a local cluster is started
  with ``workers`` CPUs. Each task asks for ``resources`` (``{"num_cpus": 1, "num_gpus":
  0.5, "memory": ..., "resources": {"custom": 1}}``; default ``num_cpus=threads_per_worker``).
  If this process already called ``ray.init``, that connection is used (and left open).

``fn`` and every task must be picklable top-level objects (functions defined at module
level in an importable module, plain data); the pool and Ray pickle them to the workers.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from robustlab.errors import ConfigError, RobustlabError

#: the backends :func:`get_backend` builds
BACKENDS: tuple[str, ...] = ("local", "pool", "ray")
#: the keys a task's ``resources`` may hold (Ray's task options)
RESOURCE_KEYS: tuple[str, ...] = ("num_cpus", "num_gpus", "memory", "resources")
#: what to install for the Ray backend
RAY_HINT = 'pip install "robustlab[ray]"'
#: seconds to wait for a Ray address to answer before giving up
CONNECT_TIMEOUT = 10.0


class BackendError(RobustlabError):
    """A backend that cannot start (a missing extra, an unreachable cluster, bad settings)."""


class WorkerLostError(BackendError):
    """A worker process died (killed, out of memory) before its task finished."""


def _set_threads(threads: int) -> None:
    """One worker's torch threads (called first in every pool worker and Ray task)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _threaded_call(fn: Callable[[Any], Any], task: Any, threads: int) -> Any:
    """Run ``fn(task)`` with torch set to ``threads`` threads (what a Ray task runs)."""
    _set_threads(threads)
    return fn(task)


class Backend:
    """Runs ``fn`` on tasks and yields ``(index, result or exception)`` as they finish.

    Use as a context manager (``with get_backend(...) as b:``) or call :meth:`close`.
    ``name``: ``"local"``, ``"pool"`` or ``"ray"``; ``workers``: how many tasks may run at
    once (1 for local; for Ray, the CPUs it asked for, or None on an existing cluster).
    """

    name: str = "?"

    def __init__(self, *, workers: int | None = 1, threads_per_worker: int = 1) -> None:
        self.workers = workers
        self.threads_per_worker = threads_per_worker

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any], *,
            resources: Sequence[dict[str, Any] | None] | None = None) -> Iterator[tuple[int, Any]]:
        """Yield ``(i, fn(tasks[i]))`` for every task as it finishes; a task that raised
        yields ``(i, exception)``. ``KeyboardInterrupt`` in this process stops everything.
        ``resources``: per task, what it asks Ray for (over the backend's ``resources``; e.g.
        a sweep's GPU runs ``{"num_gpus": 1}``); the local and pool backends ignore it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers (idempotent)."""

    def describe(self) -> str:
        """A few words for logs: ``"pool of 4 processes"``."""
        return self.name

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalBackend(Backend):
    """One task after another in this process, in the given order."""

    name = "local"

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any], *,
            resources: Sequence[dict[str, Any] | None] | None = None) -> Iterator[tuple[int, Any]]:
        for i, task in enumerate(tasks):
            try:
                out = fn(task)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, in place of the result
                yield i, exc
            else:
                yield i, out

    def describe(self) -> str:
        return "this process"


class PoolBackend(Backend):
    """``workers`` spawned processes (:class:`concurrent.futures.ProcessPoolExecutor` on a
    ``spawn`` context); each sets torch to ``threads_per_worker`` threads when it starts."""

    name = "pool"

    def __init__(self, *, workers: int, threads_per_worker: int = 1) -> None:
        super().__init__(workers=workers, threads_per_worker=threads_per_worker)
        self._pool: Any = None

    def _executor(self) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_set_threads, initargs=(self.threads_per_worker,),
            )
        return self._pool

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any], *,
            resources: Sequence[dict[str, Any] | None] | None = None) -> Iterator[tuple[int, Any]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        if not tasks:
            return
        pool = self._executor()
        futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=futures.__getitem__):
                    i = futures[fut]
                    try:
                        yield i, fut.result()
                    except BrokenProcessPool:
                        self._discard()  # the next run() starts a fresh pool
                        yield i, WorkerLostError(
                            f"a worker process of the pool died (killed, or out of memory) before task {i} "
                            f"finished; rerun to redo the unfinished tasks (finished ones are kept)."
                        )
                    except Exception as exc:  # noqa: BLE001 - the task's own failure
                        yield i, exc
        finally:
            for fut in pending:
                fut.cancel()

    def _discard(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe(self) -> str:
        return f"pool of {self.workers} process{'es' * (self.workers != 1)}"


def import_ray() -> Any:
    """``import ray``, or :class:`BackendError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise BackendError(
            f"the Ray backend needs Ray, which is not installed ({exc}); install it with "
            f"{RAY_HINT}, or use --backend pool."
        ) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) that does not accept a TCP connection
    within ``timeout`` seconds, naming the address (``"auto"``/``"local"`` are not probed)."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise BackendError(
            f"the Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001); "
            f"pass --ray-address or set RAY_ADDRESS to the head node's address."
        )
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        raise BackendError(
            f"cannot reach the Ray cluster at {address} within {timeout:g} s ({exc.strerror or exc}); "
            f"start it with `ray start --head` on that machine, check the address (--ray-address or "
            f"RAY_ADDRESS) and that its port is open from here."
        ) from None


class RayBackend(Backend):
    """Tasks on a Ray cluster: an existing one at ``address`` (or ``$RAY_ADDRESS``), the
    connection this process already has, or a local one with ``workers`` CPUs."""

    name = "ray"

    def __init__(self, *, workers: int | None = None, address: str | None = None, threads_per_worker: int = 1,
                 resources: dict[str, Any] | None = None, init_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(workers=workers, threads_per_worker=threads_per_worker)
        self.ray = import_ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.options = {"num_cpus": threads_per_worker, "max_retries": 0, **(resources or {})}
        self._owns = False
        if not self.ray.is_initialized():
            if self.address is not None:
                check_reachable(self.address)
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "ignore_reinit_error": True, **(init_kwargs or {})}
            if self.address is None and workers is not None:
                kwargs.setdefault("num_cpus", workers * threads_per_worker)
            try:
                self.ray.init(address=self.address, **kwargs)
            except ConnectionError as exc:
                raise BackendError(
                    f"cannot connect to the Ray cluster at {self.address}: {exc}; check --ray-address / "
                    f"RAY_ADDRESS and, on a cluster with token authentication, RAY_AUTH_TOKEN."
                ) from None
            self._owns = True
        self._remote = self.ray.remote(_threaded_call)

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any], *,
            resources: Sequence[dict[str, Any] | None] | None = None) -> Iterator[tuple[int, Any]]:
        ray = self.ray
        if not tasks:
            return
        if resources is not None and len(resources) != len(tasks):
            raise ConfigError(f"resources: one entry per task ({len(tasks)}), got {len(resources)}.")
        per_task = [None] * len(tasks) if resources is None else [_check_resources(r) for r in resources]
        fn_ref = ray.put(fn)
        refs = {
            self._remote.options(**{**self.options, **(per_task[i] or {})}).remote(fn_ref, task, self.threads_per_worker): i
            for i, task in enumerate(tasks)
        }
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = refs[ref]
                    try:
                        yield i, ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the task's failure, as its own type
                        yield i, self._unwrap(exc, i)
        finally:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def _unwrap(self, exc: Exception, i: int) -> BaseException:
        exc_mod = self.ray.exceptions
        if isinstance(exc, exc_mod.RayTaskError):
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                return cause
            with contextlib.suppress(Exception):
                return exc.as_instanceof_cause()  # type: ignore[no-any-return]
            return exc
        if isinstance(exc, (exc_mod.WorkerCrashedError, exc_mod.NodeDiedError)) or "died" in str(exc).lower():
            return WorkerLostError(
                f"a Ray worker died before task {i} finished ({type(exc).__name__}); rerun to redo the "
                f"unfinished tasks (finished ones are kept)."
            )
        return exc

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False

    def describe(self) -> str:
        where = self.address or ("a local cluster" if self._owns else "the connected cluster")
        return f"ray at {where}"


def _check_resources(resources: Any) -> dict[str, Any] | None:
    if resources is None:
        return None
    if not isinstance(resources, dict):
        raise ConfigError(f"resources must be a dict like {{'num_cpus': 1, 'num_gpus': 0.5}}, got {resources!r}.")
    bad = sorted(set(resources) - set(RESOURCE_KEYS))
    if bad:
        raise ConfigError(f"unknown resource(s) {', '.join(map(repr, bad))}; a task may ask for "
                          f"{', '.join(RESOURCE_KEYS)}.")
    for key in ("num_cpus", "num_gpus"):
        v = resources.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ConfigError(f"resources[{key!r}] must be a number >= 0, got {v!r}.")
    return dict(resources)


def default_workers(threads_per_worker: int = 1) -> int:
    """Processes a pool gets when ``workers`` is not given: the cores this process may use
    (hyper-threads counted once), divided by ``threads_per_worker``."""
    from robustlab.threads import physical_cores

    return max(1, physical_cores() // max(1, threads_per_worker))


def get_backend(
    name: str = "local",
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    threads_per_worker: int = 1,
    resources: dict[str, Any] | None = None,
) -> Backend:
    """The backend called ``name`` (``"local"``, ``"pool"`` or ``"ray"``); see the module
    docstring. ``workers``: processes of a pool (default: the cores, see
    :func:`default_workers`) or CPUs of a local Ray cluster (ignored by ``"local"`` and by an
    existing cluster, which has its own); ``ray_address``: a Ray cluster (default
    ``$RAY_ADDRESS``; passing one to another backend is refused); ``resources``: what each
    Ray task asks for. Bad settings raise :class:`~robustlab.errors.ConfigError`; a Ray
    backend without Ray or with an unreachable address raises :class:`BackendError`."""
    from robustlab.validation import check_int

    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    name = name.strip().lower()
    threads = check_int(threads_per_worker, "threads_per_worker", minimum=1)
    if workers is not None:
        workers = check_int(workers, "workers", minimum=1)
    res = _check_resources(resources)
    if name != "ray" and ray_address is not None:
        raise ConfigError(f"--ray-address is for --backend ray, not {name!r}; drop it or use --backend ray.")
    if name != "ray" and res is not None:
        raise ConfigError(f"resources are what each Ray task asks for; backend {name!r} takes none.")
    if name == "local":
        return LocalBackend(workers=1, threads_per_worker=threads)
    if name == "pool":
        return PoolBackend(workers=workers or default_workers(threads), threads_per_worker=threads)
    return RayBackend(workers=workers, address=ray_address, threads_per_worker=threads, resources=res)


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "LocalBackend",
    "PoolBackend",
    "RayBackend",
    "WorkerLostError",
    "check_reachable",
    "default_workers",
    "get_backend",
    "import_ray",
]
