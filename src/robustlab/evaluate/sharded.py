"""Sharded evaluation: the evaluation path over fixed chunks of points, on any backend.

>>> from robustlab.evaluate import Measurement
>>> from robustlab.evaluate.sharded import evaluate_sharded
>>> ev = evaluate_sharded(model, (x, y), [Measurement("pgd", "linf", [0.1], {"steps": 20})],
...                       chunk_size=1024, batch_size=256, backend="pool", workers=4)

The protocol, written once (it defines the *canonical* sharded result):

- **chunks**: the ``N`` points are cut into chunks of ``chunk_size`` consecutive indices
  (``[0, C)``, ``[C, 2C)``, ...). ``chunk_size`` is a setting of the evaluation (stored in
  its config and key), never derived from the number of workers;
- **points**: the driver decides each measurement's global points exactly as
  :func:`~robustlab.evaluate.path.evaluate` does (``subset=N``: the same seeded
  permutation); chunk ``c`` measures ``m`` on the points of ``m`` that lie in ``c``;
- **randomness**: an attack in chunk ``c`` draws from a generator seeded by
  ``derive_seed("attack", derive_seed("chunk", seed, c), attack, norm)``. Certificates
  keep their per-point seeds ``(derive_seed("certify", seed, name), global index)`` and
  corruptions their generators per 256 global indices, so both equal the unsharded
  evaluation (corruptions when ``chunk_size`` is a multiple of 256);
- **batches**: the batch size inside a chunk is pinned (``batch_size="auto"`` means
  ``min(512, chunk_size)``, whatever the device); ``chunk_size`` must be a multiple of it,
  and running out of device memory is an error, never a smaller batch;
- **threads**: every chunk runs with ``threads_per_worker`` torch threads (default 1), in
  this process as in a pool or on Ray (float sums may depend on the thread count);
- **merge**: workers return per-sample arrays (clean prediction and confidence, robust
  masks, the stage that broke each point, confidence and prediction on attacked or
  corrupted inputs, certificates, radii) and counts, never images. The driver
  concatenates them in chunk order and computes every metric and row from the merged
  arrays with the same functions as :func:`~robustlab.evaluate.path.evaluate`. So the
  same evaluation in this process (``backend="local"``), in a process pool and on Ray
  gives bit-identical per-sample records and rows, whatever order the chunks finish in;
- **audit**: an attack's audit runs in the first chunk that holds points of the
  measurement, on its first ``audit_points`` points (its findings go on every row);
  ``non-monotone-eps`` is checked on the merged accuracies;
- **resume**: each finished chunk's arrays go to ``<workdir>/chunks/chunk-<id>.npz``
  (written atomically) and, through ``shard_log``, into the store's ``shards`` table with
  their sha256. A rerun loads the recorded chunks whose file still matches and computes
  only the missing ones;
- **memory**: a worker holds one chunk of inputs (memory-mapped ``.npy`` files are read by
  index); the driver holds per-sample arrays only. ``save_adversarials`` makes workers
  write each chunk's adversarial examples to ``<workdir>/x_adv/chunk-<id>.npz``.

Not sharded: measurements of kind ``"detect"`` (a detector is fitted on reference points
and its AUROC is a ranking over all points; merging it canonically is out of scope) and
attacks or certifiers given as objects rather than registry names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from robustlab._atomic import atomic_path
from robustlab.attacks import Flag
from robustlab.attacks.audit import check_monotone
from robustlab.errors import ConfigError, DataError, RobustlabError
from robustlab.evaluate.metrics import predict_logits, reliability_of
from robustlab.evaluate.path import (
    Measurement,
    _certify_rows,
    _flag_non_monotone,
    _measure,
    attack_rows,
    clean_summary,
    eps_result,
    subset_indices,
)
from robustlab.evaluate.results import AttackReport, Evaluation, ResultRow
from robustlab.evaluate.shifts import corruption_predictions, corruption_row
from robustlab.progress import Progress, format_seconds
from robustlab.seeding import derive_seed
from robustlab.validation import check_int

log = logging.getLogger("robustlab.evaluate")

#: the batch size ``batch_size="auto"`` pins in a sharded evaluation (at most the chunk size)
AUTO_BATCH = 512
#: the protocol version written into every chunk file (a file of another version is redone)
SHARD_PROTOCOL = "robustlab-shards/1"


# -- what workers are told ---------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """How a worker gets the model: saved ``weights`` (with ``factory``, as
    :func:`robustlab.models.load_model` reads them; ``sha256``: the weights' tensors, checked
    in the worker) or a picklable ``module`` (tests, small models). ``device``: where the
    worker puts it (None: cpu)."""

    weights: str | None = None
    factory: str | None = None
    module: nn.Module | None = None
    sha256: str | None = None
    device: str | None = None

    def load(self) -> nn.Module:
        if self.module is not None:
            model = self.module
        elif self.weights is not None:
            model = _load_weights(self.weights, self.factory, self.sha256)
        else:
            raise ConfigError("a ModelSource needs weights= (a file) or module= (a model).")
        return model.to(self.device) if self.device is not None else model


@lru_cache(maxsize=2)
def _load_weights(weights: str, factory: str | None, sha256: str | None) -> nn.Module:
    """One worker process loads each weights file once (chunks reuse it)."""
    from robustlab.models import load_model, weights_sha256

    if factory and os.getcwd() not in sys.path:  # a user's module:function, as the CLI finds it
        sys.path.insert(0, os.getcwd())
    try:
        model = load_model(weights, factory=factory)
    except OSError as exc:
        raise _unreadable(weights, exc) from None
    if sha256 is not None and weights_sha256(model) != sha256:
        raise DataError(
            f"worker {_worker()} read weights {weights} whose tensors differ from the driver's "
            f"(sha256 {sha256[:12]}); give every worker the same file."
        )
    return model


def _worker() -> str:
    return f"{socket.gethostname()} (pid {os.getpid()})"


def _unreadable(path: str, exc: BaseException) -> DataError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return DataError(
        f"worker {_worker()} cannot read {path}: {reason}; every worker must see the data and weights at "
        f"the same path (a shared file system, or a copy on each node)."
    )


@dataclass(frozen=True)
class PointSource:
    """Where a worker reads its chunk's points: memory-mapped ``x_path``/``y_path``
    (``.npy``: float inputs in [0, 1], or uint8 divided by 255; integer labels), a
    registered ``dataset`` (:func:`robustlab.data.load` with ``split``, ``root``,
    ``seed``, loaded once per worker process), or in-memory tensors ``x``/``y`` (this
    process only: other backends get them written to ``.npy`` files in the workdir)."""

    x_path: str | None = None
    y_path: str | None = None
    dataset: str | None = None
    split: str = "test"
    root: str | None = None
    seed: int = 0
    x: torch.Tensor | None = field(default=None, repr=False, compare=False)
    y: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def in_memory(self) -> bool:
        return self.x is not None

    def describe(self) -> str:
        if self.x_path is not None:
            return f"{self.x_path} + {self.y_path}"
        if self.dataset is not None:
            return f"{self.dataset}/{self.split}"
        return "points in memory"

    def labels(self) -> torch.Tensor:
        """Every label (the driver needs ``N`` and the labels, never the inputs)."""
        if self.y is not None:
            return self.y.detach().cpu().long()
        if self.y_path is not None:
            return torch.from_numpy(np.asarray(_mmap(self.y_path)).astype(np.int64))
        return _dataset(self.dataset or "", self.split, self.root, self.seed).y.long()

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The points ``start .. stop - 1`` (a worker's chunk)."""
        if self.x is not None and self.y is not None:
            return self.x[start:stop], self.y[start:stop].long()
        if self.x_path is not None and self.y_path is not None:
            xa = np.asarray(_mmap(self.x_path)[start:stop])
            ya = np.asarray(_mmap(self.y_path)[start:stop]).astype(np.int64)
            x = torch.from_numpy(xa.astype(np.float32) / 255.0 if xa.dtype == np.uint8 else xa.astype(np.float32))
            return x, torch.from_numpy(ya)
        if self.dataset is not None:
            ds = _dataset(self.dataset, self.split, self.root, self.seed)
            return ds.x[start:stop], ds.y[start:stop].long()
        raise ConfigError("a PointSource needs x_path/y_path, dataset= or in-memory x/y.")


def _mmap(path: str) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path} is not a .npy array (an .npz archive?); save x and y with np.save.")
    return arr


@lru_cache(maxsize=2)
def _dataset(name: str, split: str, root: str | None, seed: int) -> Any:
    from robustlab import data

    try:
        return data.load(name, split, root=root, seed=seed)
    except (OSError, DataError) as exc:
        raise DataError(f"worker {_worker()}: {exc}") from None


@dataclass(frozen=True)
class ChunkTask:
    """One chunk's work, picklable: the chunk's id and global range, the model and points to
    read, every measurement (as a dict) with the chunk's points of it (global indices), and
    the settings that decide the numbers."""

    chunk: int
    start: int
    stop: int
    model: ModelSource
    points: PointSource
    measurements: tuple[dict[str, Any], ...]
    indices: tuple[np.ndarray, ...]
    audit: tuple[bool, ...]
    seed: int
    batch_size: int
    num_classes: int
    clean: bool = True
    amp: bool = False
    audit_points: int = 128
    threads: int = 1
    x_adv_dir: str | None = None


def measurement_dict(m: Measurement) -> dict[str, Any]:
    """A measurement as plain data (what a worker rebuilds it from)."""
    if not isinstance(m.attack, str):
        raise ConfigError(
            f"a sharded evaluation sends measurements to workers by name; give the attack or certifier as a "
            f"registry name with params, not the object {m.attack!r}."
        )
    if m.kind == "detect":
        raise ConfigError(
            "detect measurements are not sharded: a detector is fitted on reference points and its AUROC ranks "
            "all points at once; run them without --chunk-size."
        )
    return {"attack": m.attack, "norm": m.norm, "eps": list(m.eps), "params": dict(m.params),
            "subset": m.subset, "audit": m.audit, "kind": m.kind}


def run_chunk(task: ChunkTask) -> dict[str, Any]:
    """A worker's work: read the chunk, run every measurement on its points of it, and
    return per-sample arrays and counts (``{"meta": {...}, "arrays": {...}}``), no images."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if threads != task.threads:
        torch.set_num_threads(task.threads)
    try:
        return _run_chunk(task, t0)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _run_chunk(task: ChunkTask, t0: float) -> dict[str, Any]:
    model = task.model.load()
    x, y = task.points.read(task.start, task.stop)
    if len(x) != task.stop - task.start:
        raise DataError(
            f"worker {_worker()} read {len(x)} points of chunk {task.chunk} from {task.points.describe()}, "
            f"expected {task.stop - task.start}; the data changed since the evaluation started."
        )
    from robustlab.attacks.engine import model_device

    dev = model_device(model) or x.device
    arrays: dict[str, np.ndarray] = {"label": y.numpy()}
    meta: dict[str, Any] = {"chunk": task.chunk, "start": task.start, "stop": task.stop, "measurements": []}
    bs = task.batch_size
    if task.clean:
        conf, pred = predict_logits(model, x, batch_size=bs).softmax(1).max(1)
        arrays["clean/pred"], arrays["clean/confidence"] = pred.cpu().numpy(), conf.cpu().numpy()
    chunk_seed = derive_seed("chunk", task.seed, task.chunk)
    adv_out: dict[str, np.ndarray] = {}
    for mi, (md, gidx) in enumerate(zip(task.measurements, task.indices, strict=True)):
        m = Measurement(**md)
        mm: dict[str, Any] = {"points": len(gidx)}
        meta["measurements"].append(mm)
        if not len(gidx):
            continue
        local = torch.from_numpy(np.asarray(gidx, dtype=np.int64) - task.start)
        xm, ym = x[local], y[local]
        name, atk, threats = m.build()
        pre = f"m{mi}/"
        if m.kind == "corruption":
            for sev in threats:
                pred, conf = corruption_predictions(
                    model, xm, name, sev, torch.from_numpy(np.asarray(gidx, dtype=np.int64)), seed=task.seed,
                    num_classes=task.num_classes, batch_size=bs, params=m.params.get("params"))
                arrays[f"{pre}{sev}/pred"], arrays[f"{pre}{sev}/confidence"] = pred.numpy(), conf.numpy()
            continue
        if m.kind == "certify":
            cert = atk.run(model, xm, ym, threats, num_classes=task.num_classes,
                           indices=torch.from_numpy(np.asarray(gidx, dtype=np.int64)),
                           seed=derive_seed("certify", task.seed, name), batch_size=bs, progress=None)
            for t in threats:
                arrays[f"{pre}{t.eps!r}/certified"] = cert.certified[t.eps].numpy()
            arrays[f"{pre}predict"] = cert.predict.numpy()
            if cert.radius is not None:
                arrays[f"{pre}radius"] = cert.radius.numpy()
            for key, values in cert.records.items():
                arrays[f"{pre}records/{key}"] = np.asarray(values)
            if cert.details is not None and hasattr(cert.details, "seconds"):
                arrays[f"{pre}seconds"] = np.asarray(cert.details.seconds, dtype=np.float64)
            mm.update({"forwards": cert.forwards, "seconds": cert.seconds})
            continue
        seed_m = derive_seed("attack", chunk_seed, name, threats[0].norm)
        gen = torch.Generator(device=dev).manual_seed(seed_m)
        audit = m.audit if task.audit[mi] else False
        rep = _measure(model, xm, ym, name, atk, threats, batch_size=bs, generator=gen, amp=task.amp,
                       audit=audit, audit_points=task.audit_points, audit_seed=seed_m,
                       keep_adversarials=task.x_adv_dir is not None, num_classes=task.num_classes,
                       progress=None, per_sample=True, pin_batch=True)
        assert rep.clean_correct is not None and rep.adv_confidence is not None and rep.adv_pred is not None
        arrays[f"{pre}clean_correct"] = rep.clean_correct.numpy()
        for r in rep.results:
            e = f"{pre}{r.eps!r}/"
            arrays[e + "robust"] = rep.robust[r.eps].numpy()
            arrays[e + "confidence"] = rep.adv_confidence[r.eps].numpy()
            arrays[e + "pred"] = rep.adv_pred[r.eps].numpy()
            if rep.broken_by is not None and r.eps in rep.broken_by:
                arrays[e + "broken_by"] = rep.broken_by[r.eps].numpy()
            if rep.x_adv is not None:
                adv_out[f"m{mi}/{r.eps!r}"] = rep.x_adv[r.eps].numpy()
        mm.update({
            "protocol": rep.protocol, "params": rep.params, "stages": rep.stages, "skipped": rep.skipped,
            "seconds": rep.seconds, "audit_seconds": rep.audit_seconds,
            "flags": [f.to_dict() for f in rep.flags if f.code != "non-monotone-eps"] if audit else [],
            "eps": [{"eps": r.eps, "forwards": r.forwards, "backwards": r.backwards, "seconds": r.seconds,
                     "stage_forwards": r.stage_forwards, "stage_backwards": r.stage_backwards,
                     "stage_seconds": r.stage_seconds} for r in rep.results],
        })
        if rep.x_adv is not None:
            adv_out[f"m{mi}/index"] = np.asarray(gidx, dtype=np.int64)
    if task.x_adv_dir is not None and adv_out:
        path = Path(task.x_adv_dir) / f"chunk-{task.chunk:06d}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **adv_out)  # type: ignore[arg-type]
    meta["seconds"] = time.perf_counter() - t0
    meta["worker"] = _worker()
    return {"meta": meta, "arrays": arrays}


# -- chunk files ------------------------------------------------------------------------------
class ShardLog(Protocol):
    """Where the driver records finished chunks (the store's ``shards`` table)."""

    def finished(self) -> dict[int, tuple[str, str]]:
        """``{chunk id: (path of its npz, sha256)}`` of the chunks recorded as done."""
        ...

    def record(self, chunk: int, path: str, sha256: str) -> None:
        """Record chunk ``chunk`` as done (its file is complete)."""
        ...


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_chunk(path: Path, result: dict[str, Any], fingerprint: str) -> str:
    """Write a chunk's result atomically; return its sha256."""
    meta = {**result["meta"], "fingerprint": fingerprint, "protocol": SHARD_PROTOCOL}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, __meta__=np.array(json.dumps(meta)), **result["arrays"])
    return file_sha256(path)


def read_chunk(path: Path, sha256: str, fingerprint: str, chunk: int) -> dict[str, Any] | None:
    """A recorded chunk's result, or None when its file is missing, changed or belongs to
    other settings (then the chunk is computed again)."""
    try:
        if file_sha256(path) != sha256:
            log.warning("chunk %d: %s changed since it was recorded; computing the chunk again", chunk, path)
            return None
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("chunk %d: cannot read %s (%s); computing the chunk again", chunk, path, exc)
        return None
    if meta.get("fingerprint") != fingerprint or meta.get("chunk") != chunk or meta.get("protocol") != SHARD_PROTOCOL:
        log.warning("chunk %d: %s holds another evaluation; computing the chunk again", chunk, path)
        return None
    return {"meta": meta, "arrays": arrays}


# -- the driver -------------------------------------------------------------------------------
def pinned_batch_size(batch_size: int | str, chunk_size: int) -> int:
    """The batch size of every chunk: an integer that divides ``chunk_size`` (``"auto"``:
    ``min(512, chunk_size)``, which must divide it too)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size (--chunk-size) must be a positive integer, got {chunk_size!r}.")
    if batch_size == "auto":
        bs = min(AUTO_BATCH, chunk_size)
        if chunk_size % bs:
            raise ConfigError(
                f"with chunk_size {chunk_size}, batch_size 'auto' pins {bs} points per batch, which does not divide "
                f"the chunk; pass --batch-size N with N dividing {chunk_size}, or a chunk size that is a multiple "
                f"of {AUTO_BATCH}."
            )
        return bs
    if isinstance(batch_size, str):
        raise ConfigError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}.")
    bs = check_int(batch_size, "batch_size", minimum=1)
    if chunk_size % bs:
        raise ConfigError(
            f"chunk_size {chunk_size} is not a multiple of the batch size {bs}: every chunk must be cut into whole "
            f"batches; choose a chunk size that is a multiple of {bs} (e.g. {bs * max(1, round(chunk_size / bs))})."
        )
    return bs


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode()).hexdigest()


def evaluate_sharded(
    model: nn.Module | ModelSource,
    points: tuple[torch.Tensor, torch.Tensor] | PointSource,
    measurements: Sequence[Measurement] = (),
    *,
    chunk_size: int,
    seed: int = 0,
    batch_size: int | str = "auto",
    backend: str | Any = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    threads_per_worker: int = 1,
    resources: dict[str, Any] | None = None,
    workdir: str | Path | None = None,
    shard_log: ShardLog | None = None,
    num_classes: int | None = None,
    amp: bool = False,
    audit_points: int = 128,
    clean: bool = True,
    save_adversarials: bool = False,
    progress: bool | None = None,
    on_chunk: Callable[[int, dict[str, Any]], None] | None = None,
) -> Evaluation:
    """Measure a model on points chunk by chunk (see the module docstring for the
    protocol) and return the same :class:`~robustlab.evaluate.results.Evaluation` as
    :func:`~robustlab.evaluate.path.evaluate`.

    ``model``: a module, or a :class:`ModelSource` (weights a worker loads); ``points``:
    ``(x, y)`` or a :class:`PointSource`; ``backend``: ``"local"`` (default, this process),
    ``"pool"``, ``"ray"`` or a :class:`~robustlab.experiments.backends.Backend` (with
    ``workers``, ``ray_address``, ``threads_per_worker``, ``resources`` as in
    :func:`~robustlab.experiments.backends.get_backend`). ``workdir``: where chunk files go
    (needed to resume, to run in-memory points on other backends and to save adversarial
    examples); ``shard_log``: records finished chunks and tells a rerun which exist.
    ``on_chunk(chunk id, result)`` is called as each computed chunk is recorded (tests).
    A chunk that fails leaves the finished ones recorded and raises its error after the
    others are done (a rerun computes only what is missing).
    """
    from robustlab.experiments.backends import Backend, get_backend

    t_start = time.perf_counter()
    bs = pinned_batch_size(batch_size, chunk_size)
    threads = check_int(threads_per_worker, "threads_per_worker", minimum=1)
    check_int(audit_points, "audit_points", minimum=1)
    specs = [measurement_dict(m) for m in measurements]
    built = [m.build() for m in measurements]
    src = model if isinstance(model, ModelSource) else ModelSource(module=model)
    pts = points if isinstance(points, PointSource) else PointSource(x=points[0], y=points[1])
    y_all = pts.labels()
    n = len(y_all)
    if n == 0:
        raise ConfigError("there are no points to evaluate; pass at least one point.")
    k = int(num_classes or getattr(src.module, "num_classes", 0) or 0)
    if not k:
        raise ConfigError("pass num_classes= (the model has no num_classes attribute).")
    from robustlab.validation import check_labels

    check_labels(y_all, k, n=n)
    if save_adversarials and workdir is None:
        raise ConfigError("save_adversarials writes per-chunk files; pass workdir=.")
    own_backend = not isinstance(backend, Backend)
    be: Backend = backend if isinstance(backend, Backend) else get_backend(
        backend, workers=workers, ray_address=ray_address, threads_per_worker=threads, resources=resources)
    wd = Path(workdir) if workdir is not None else None
    if pts.in_memory and be.name != "local":
        pts = _to_files(pts, wd, be.name)
    if be.name != "local" and src.module is None and src.weights is not None:
        src = ModelSource(weights=str(Path(src.weights).resolve()), factory=src.factory, sha256=src.sha256,
                          device=src.device)
    num_chunks = -(-n // chunk_size)
    idxs = [subset_indices(n, m.subset, seed).numpy() for m in measurements]
    first = [int(ix[0] // chunk_size) if len(ix) else -1 for ix in idxs]
    fingerprint = _fingerprint({"n": n, "chunk_size": chunk_size, "batch_size": bs, "seed": seed, "k": k,
                                "measurements": specs, "clean": clean, "amp": amp, "audit_points": audit_points,
                                "threads": threads, "model": src.sha256 or src.weights or "module",
                                "points": pts.describe()})

    def task(c: int) -> ChunkTask:
        start, stop = c * chunk_size, min(n, (c + 1) * chunk_size)
        ind = tuple(ix[np.searchsorted(ix, start):np.searchsorted(ix, stop)] for ix in idxs)
        return ChunkTask(chunk=c, start=start, stop=stop, model=src, points=pts, measurements=tuple(specs),
                         indices=ind, audit=tuple(f == c for f in first), seed=seed, batch_size=bs, num_classes=k,
                         clean=clean, amp=amp, audit_points=audit_points, threads=threads,
                         x_adv_dir=str(wd / "x_adv") if save_adversarials and wd is not None else None)

    results: dict[int, dict[str, Any]] = {}
    if shard_log is not None:
        for c, (path, sha) in sorted(shard_log.finished().items()):
            if 0 <= c < num_chunks:
                got = read_chunk(Path(path), sha, fingerprint, c)
                if got is not None:
                    results[c] = got
    missing = [c for c in range(num_chunks) if c not in results]
    if results:
        log.info("sharded evaluation: %d of %d chunks already done; computing %d", len(results), num_chunks,
                 len(missing))
    failures: list[tuple[int, BaseException]] = []
    try:
        with Progress("evaluating", total=len(missing), show=progress, unit="chunk") as bar:
            for j, out in be.run(run_chunk, [task(c) for c in missing]):
                c = missing[j]
                if isinstance(out, BaseException):
                    failures.append((c, out))
                    bar.note(f"chunk {c} failed: {type(out).__name__}: {out}")
                    continue
                if wd is not None:
                    chunk_file = wd / "chunks" / f"chunk-{c:06d}.npz"
                    sha = write_chunk(chunk_file, out, fingerprint)
                    if shard_log is not None:
                        shard_log.record(c, str(chunk_file), sha)
                results[c] = out
                if on_chunk is not None:
                    on_chunk(c, out)
                bar.advance(1)
    finally:
        if own_backend:
            be.close()
    if failures:
        failures.sort(key=lambda f: f[0])
        c, exc = failures[0]
        done = num_chunks - len(failures)
        if isinstance(exc, RobustlabError):
            exc.args = (f"{exc} (chunk {c}; {done} of {num_chunks} chunks finished"
                        f"{' and recorded, a rerun computes only the rest' if shard_log is not None else ''})",)
            raise exc
        raise RuntimeError(f"chunk {c} failed ({done} of {num_chunks} chunks finished): "
                           f"{type(exc).__name__}: {exc}") from exc
    ev = merge_chunks([results[c] for c in range(num_chunks)], measurements, built, idxs, y_all, n=n, k=k,
                      seed=seed, batch_size=bs, amp=amp, clean=clean, device=str(src.device or "cpu"))
    ev.seconds = time.perf_counter() - t_start
    ev.threads = threads
    if progress is not False:
        log.info("sharded evaluation: %d chunks of %d points on %s (%s)", num_chunks, chunk_size, be.describe(),
                 format_seconds(ev.seconds))
    return ev


def _to_files(pts: PointSource, wd: Path | None, backend: str) -> PointSource:
    """In-memory points written once as ``.npy`` files that workers memory-map."""
    if wd is None:
        raise ConfigError(f"backend {backend!r} reads points from files: pass workdir= (in-memory points are "
                          f"written there once), or a PointSource.")
    assert pts.x is not None and pts.y is not None
    out = {}
    for name, t in (("x", pts.x.detach().cpu().float()), ("y", pts.y.detach().cpu().long())):
        path = wd / "points" / f"{name}.npy"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, t.numpy())
        out[name] = str(path.resolve())
    return PointSource(x_path=out["x"], y_path=out["y"])


def _cat(parts: list[dict[str, Any]], key: str) -> np.ndarray:
    arrs = [p["arrays"][key] for p in parts if key in p["arrays"]]
    return np.concatenate(arrs) if arrs else np.zeros(0)


def merge_chunks(
    parts: list[dict[str, Any]], measurements: Sequence[Measurement], built: list[tuple[str, Any, list[Any]]],
    idxs: list[np.ndarray], y_all: torch.Tensor, *, n: int, k: int, seed: int, batch_size: int, amp: bool,
    clean: bool, device: str,
) -> Evaluation:
    """The evaluation from every chunk's arrays (in chunk order): rows, reports, records and
    clean metrics, computed by the same functions as the unsharded path."""
    clean_metrics: dict[str, Any] = {"num_test": n}
    records: dict[str, np.ndarray] = {"index": np.arange(n), "label": y_all.numpy()}
    if clean:
        pred = torch.from_numpy(_cat(parts, "clean/pred"))
        conf = torch.from_numpy(_cat(parts, "clean/confidence"))
        clean_metrics.update(clean_summary(pred, conf, y_all, k))
        records["pred"], records["confidence"] = pred.numpy(), conf.numpy()
    rows: list[ResultRow] = []
    reports: list[AttackReport] = []
    certifications: list[Any] = []
    attack_seconds: list[dict[str, Any]] = []
    for mi, (m, (name, atk, threats), ix) in enumerate(zip(measurements, built, idxs, strict=True)):
        pre = f"m{mi}/"
        mine = [p for p in parts if p["meta"]["measurements"][mi]["points"]]
        metas = [p["meta"]["measurements"][mi] for p in mine]
        idx = torch.from_numpy(np.asarray(ix, dtype=np.int64))
        y = y_all[idx]
        if m.kind == "corruption":
            for sev in threats:
                rows.append(corruption_row(
                    name, sev, torch.from_numpy(_cat(mine, f"{pre}{sev}/pred")),
                    torch.from_numpy(_cat(mine, f"{pre}{sev}/confidence")), y, idx, n=n, num_classes=k,
                    params=m.params.get("params"), subset=m.subset, records=records))
            attack_seconds.append({"attack": name, "norm": "severity", "seconds": 0.0, "audit_seconds": 0.0})
            continue
        if m.kind == "certify":
            cert = _merge_certification(atk, threats, mine, metas, pre, idx, y)
            certifications.append(cert)
            rows.extend(_certify_rows(m, name, atk, threats, cert, y, idx, n, k, records))
            attack_seconds.append({"attack": name, "norm": threats[0].norm, "seconds": cert.seconds,
                                   "audit_seconds": 0.0})
            continue
        rep = _merge_attack(m, name, threats, mine, metas, pre, y, k, seed=seed, batch_size=batch_size, amp=amp,
                            device=device)
        reports.append(rep)
        attack_seconds.append({"attack": name, "norm": rep.norm, "seconds": rep.seconds,
                               "audit_seconds": rep.audit_seconds})
        rows.extend(attack_rows(m, name, rep, idx, n, records))
    _flag_non_monotone(rows)
    return Evaluation(clean=clean_metrics, rows=rows, reports=reports, records=records,
                      certifications=certifications, attack_seconds=attack_seconds)


def _merge_attack(m: Measurement, name: str, threats: list[Any], parts: list[dict[str, Any]],
                  metas: list[dict[str, Any]], pre: str, y: torch.Tensor, k: int, *, seed: int, batch_size: int,
                  amp: bool, device: str) -> AttackReport:
    from robustlab.evaluate.metrics import per_class_accuracy

    head = metas[0]
    stages = list(head["stages"])
    clean_correct = torch.from_numpy(_cat(parts, pre + "clean_correct"))
    results = []
    robust_masks = {}
    for j, t in enumerate(threats):
        e = f"{pre}{t.eps!r}/"
        robust = torch.from_numpy(_cat(parts, e + "robust"))
        broken = torch.from_numpy(_cat(parts, e + "broken_by")) if e + "broken_by" in parts[0]["arrays"] else None
        conf = torch.from_numpy(_cat(parts, e + "confidence"))
        pred = torch.from_numpy(_cat(parts, e + "pred"))
        counts = [mt["eps"][j] for mt in metas]
        sf: dict[str, int] = {}
        sb: dict[str, int] = {}
        ss: dict[str, float] = {}
        for c in counts:
            for s in c["stage_forwards"]:
                sf[s] = sf.get(s, 0) + int(c["stage_forwards"][s])
                sb[s] = sb.get(s, 0) + int(c["stage_backwards"][s])
                ss[s] = ss.get(s, 0.0) + float(c["stage_seconds"][s])
        robust_masks[t.eps] = robust
        results.append(eps_result(
            t.eps, robust, clean_correct, broken, stages, name, y, k,
            forwards=sum(int(c["forwards"]) for c in counts), backwards=sum(int(c["backwards"]) for c in counts),
            seconds=sum(float(c["seconds"]) for c in counts), stage_forwards=sf, stage_backwards=sb,
            stage_seconds=ss, diagram=reliability_of(conf, pred == y),
        ))
    flags = [Flag(f["code"], f["message"], f.get("value")) for mt in metas for f in mt["flags"]]
    for flag in check_monotone([r.eps for r in results], [r.robust_accuracy for r in results]):
        if flag.code not in {f.code for f in flags}:
            flags.append(flag)
    return AttackReport(
        attack=name, protocol=str(head["protocol"]), params=head["params"], norm=threats[0].norm,
        num_points=len(y), num_classes=k,
        clean_accuracy=int(clean_correct.sum()) / len(clean_correct),
        clean_per_class=per_class_accuracy(torch.where(clean_correct, y, -1), y, k),
        results=results, flags=flags, skipped=list(head["skipped"]), device=device, amp=amp,
        batch_size=batch_size, seed=seed, seconds=sum(float(mt["seconds"]) for mt in metas),
        audit_seconds=sum(float(mt["audit_seconds"]) for mt in metas), stages=stages or [name],
        robust=robust_masks, clean_correct=clean_correct,
    )


def _merge_certification(atk: Any, threats: list[Any], parts: list[dict[str, Any]], metas: list[dict[str, Any]],
                         pre: str, idx: torch.Tensor, y: torch.Tensor) -> Any:
    from robustlab.certify.base import Certification, SmoothingCertifier
    from robustlab.certify.smoothing import CertificationResult

    certified = {t.eps: torch.from_numpy(_cat(parts, f"{pre}{t.eps!r}/certified")) for t in threats}
    predict = torch.from_numpy(_cat(parts, pre + "predict"))
    radius = torch.from_numpy(_cat(parts, pre + "radius")) if pre + "radius" in parts[0]["arrays"] else None
    rec_keys = [key[len(pre + "records/"):] for key in parts[0]["arrays"] if key.startswith(pre + "records/")]
    records = {key: _cat(parts, f"{pre}records/{key}") for key in rec_keys}
    cert = Certification(certified=certified, predict=predict, radius=radius,
                         forwards=sum(int(mt["forwards"]) for mt in metas),
                         seconds=sum(float(mt["seconds"]) for mt in metas), records=records)
    if isinstance(atk, SmoothingCertifier):
        assert radius is not None
        label = y.numpy()
        res = CertificationResult(index=idx.numpy(), label=label, predict=predict.numpy(),
                                  radius=radius.numpy().astype(np.float64), correct=predict.numpy() == label,
                                  seconds=_cat(parts, pre + "seconds"), sigma=atk.sigma, n0=atk.n0, n=atk.n,
                                  alpha=atk.alpha)
        cert.details = res
        cert.extra = {float(t.eps): {"lower": res.certified_accuracy_lower(t.eps, gamma=atk.gamma)} for t in threats}
    return cert


__all__ = [
    "ChunkTask",
    "ModelSource",
    "PointSource",
    "ShardLog",
    "evaluate_sharded",
    "measurement_dict",
    "merge_chunks",
    "pinned_batch_size",
    "run_chunk",
]

