"""Data-parallel training under ``torchrun``: who this process is, and the few collectives
the :class:`~robustlab.train.Trainer` needs.

A run launched as ``torchrun --nproc_per_node=W ...`` starts ``W`` processes ("ranks")
whose environment holds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``. :func:`world` reads them (or the initialised process group);
:func:`setup` initialises the process group from them once per process (``env://``;
``gloo`` on CPU, ``nccl`` on CUDA, with the device set to ``cuda:LOCAL_RANK``);
:func:`session` does the same for a block and destroys the group again if it created it. Outside ``torchrun`` (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every function
here is a no-op for a single process, so code written for W ranks runs unchanged in one.

>>> from robustlab.train import distributed
>>> with distributed.session("cpu") as w:   # under torchrun: gloo, W ranks
...     if w.is_main:
...         print("rank 0 of", w.size)

How the Trainer splits work (see :class:`~robustlab.train.Trainer`): every rank draws the
same seeded permutation of the training set, takes the same global batch and keeps its
contiguous part of it (:func:`shard`); gradients are summed over ranks
(:func:`all_reduce_gradients`), so the step equals the single-process step on the global
batch up to float summation order. Only rank 0 writes files; everything rank 0 decides is
sent to the others as JSON (:func:`broadcast_json`; nothing is pickled).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robustlab.errors import ConfigError
from robustlab.seeding import derive_seed


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run: ``rank`` of ``size`` processes, and
    ``local_rank`` (its index on this machine, which picks its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process takes part."""
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"the environment variable {name}={raw!r} is not an integer; launch data-parallel runs "
            f"with torchrun (which sets RANK, WORLD_SIZE and LOCAL_RANK) or unset it."
        ) from None


def world() -> World:
    """Who this process is: from the initialised process group if there is one, else from
    torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (a single process: rank 0 of 1)."""
    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        return World(rank, size, _env_int("LOCAL_RANK", rank))
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(
            f"RANK={rank} and WORLD_SIZE={size} do not fit together (need 0 <= RANK < WORLD_SIZE); "
            f"launch data-parallel runs with torchrun, or unset RANK and WORLD_SIZE."
        )
    return World(rank, size, _env_int("LOCAL_RANK", rank))


def is_main() -> bool:
    """Whether this process is rank 0 (always true outside torchrun)."""
    return world().is_main


def backend_for(device: torch.device) -> str:
    """The collective backend for ``device``: ``nccl`` for CUDA, ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(device: torch.device, w: World | None = None) -> torch.device:
    """The device a rank trains on: ``cuda`` (any index) becomes ``cuda:LOCAL_RANK`` under
    torchrun, so each rank has its own GPU; other devices are kept."""
    w = world() if w is None else w
    if w.distributed and device.type == "cuda":
        return torch.device("cuda", w.local_rank)
    return device


def setup(device: str | torch.device = "cpu") -> World:
    """Join the data-parallel run torchrun started (``env://``), once per process: ``gloo``
    on CPU, ``nccl`` on CUDA with the current device set to ``cuda:LOCAL_RANK``. A single
    process, or a process group that is already initialised, is left as it is. The group
    stays up for later calls (several ``fit`` calls, a suite of runs) and is destroyed when
    the process exits (or by :func:`session`): a process group torn down and created again
    under torchrun can reuse the previous group's rendezvous keys and fail to connect."""
    global _EXIT_HOOK
    w = world()
    if not w.distributed or dist.is_initialized():
        return w
    device = torch.device(device)
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; install a build with it, or run one process.")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={w.size} but {' and '.join(missing)} unset: launch data-parallel runs with "
            f"torchrun (e.g. torchrun --nproc_per_node={w.size} ...), which sets them."
        )
    backend = backend_for(device)
    if backend == "nccl":
        if not dist.is_nccl_available():
            raise ConfigError("training on CUDA with several ranks needs NCCL, which this PyTorch build lacks.")
        if w.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={w.local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                f"start at most one rank per GPU (torchrun --nproc_per_node=<number of GPUs>)."
            )
        torch.cuda.set_device(w.local_rank)
    elif not dist.is_gloo_available():
        raise ConfigError("data-parallel training on CPU needs the gloo backend, which this PyTorch build lacks.")
    dist.init_process_group(backend, init_method="env://", rank=w.rank, world_size=w.size)
    if not _EXIT_HOOK:
        atexit.register(teardown)
        _EXIT_HOOK = True
    return world()


_EXIT_HOOK = False


def teardown() -> None:
    """Destroy the process group if there is one (at exit; or by :func:`session`)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str | torch.device = "cpu") -> Iterator[World]:
    """:func:`setup` for a block: the process group torchrun's environment describes,
    destroyed on exit when this block created it (the :class:`~robustlab.train.Trainer`
    calls :func:`setup` itself; wrap a whole script in this to close the group early)."""
    created = world().distributed and not (dist.is_available() and dist.is_initialized())
    w = setup(device)
    try:
        yield w
    finally:
        if created:
            teardown()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(t: torch.Tensor) -> torch.device:
    """Where a collective can run: gloo reduces CPU tensors, nccl CUDA ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (no-op for a single process)."""
    if _active():
        dist.barrier()


def _all_reduce(t: torch.Tensor, op: Any) -> torch.Tensor:
    dev = _comm_device(t)
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf, op=op)
    if buf is not t:
        t.copy_(buf)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks, in place (every rank gets the same bits); returns ``t``."""
    if not _active():
        return t
    return _all_reduce(t, dist.ReduceOp.SUM)


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` on every rank with rank ``src``'s ``t``, in place; returns ``t``."""
    if not _active():
        return t
    dev = _comm_device(t)
    buf = t if t.device == dev else t.to(dev)
    dist.broadcast(buf, src=src)
    if buf is not t:
        t.copy_(buf)
    return t


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (anything :func:`json.dumps` takes) on every rank. Sent as
    UTF-8 JSON bytes, so no rank ever unpickles what another sent."""
    if not _active():
        return obj
    payload = json.dumps(obj).encode() if dist.get_rank() == src else b""
    size = torch.tensor([len(payload)], dtype=torch.int64)
    broadcast_(size, src)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8)
    if dist.get_rank() == src:
        buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    broadcast_(buf, src)
    return json.loads(bytes(buf.tolist()).decode()) if dist.get_rank() != src else obj


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a batch of ``n`` rows that rank ``rank`` of ``size`` takes:
    contiguous parts in rank order, the first ``n % size`` ranks one row longer
    (:func:`torch.tensor_split`'s rule), e.g. 5 rows on 2 ranks: ``[0, 3)`` and ``[3, 5)``."""
    q, r = divmod(int(n), int(size))
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def rank_seed(name: str, seed: int, epoch: int, w: World) -> int:
    """The seed of the generator ``name`` in ``epoch``: the single-process seed
    ``derive_seed(name, seed, epoch)`` for one process, ``derive_seed(name, seed, epoch,
    "rank", rank)`` for each rank of a data-parallel run (so ranks draw different random
    starts, noise and dropout masks for their different samples)."""
    if not w.distributed:
        return derive_seed(name, seed, epoch)
    return derive_seed(name, seed, epoch, "rank", w.rank)


def all_reduce_gradients(params: Sequence[nn.Parameter], extra: torch.Tensor | None = None) -> torch.Tensor | None:
    """Sum the gradients of ``params`` over ranks in one flat all-reduce (what DDP does
    in buckets during the backward pass). A parameter without a gradient on every rank
    keeps ``grad=None`` (as in one process: the optimiser skips it); one with a gradient
    on some ranks only gets the sum of those. ``extra`` (a small tensor, e.g. each rank's
    share of the loss) is summed in the same call and returned."""
    if not _active():
        return extra
    if any(p.grad is not None and p.grad.is_sparse for p in params):
        raise ConfigError("data-parallel training needs dense gradients; use nn.Embedding(sparse=False).")
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    device = params[0].device if params else torch.device("cpu")
    parts = [
        (p.grad.reshape(-1).to(dtype) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=device))
        for p in params
    ]
    flags = torch.tensor([float(p.grad is not None) for p in params], dtype=dtype, device=device)
    tail = extra.detach().reshape(-1).to(device=device, dtype=dtype) if extra is not None else flags[:0]
    flat = torch.cat([*parts, flags, tail])
    all_reduce_sum(flat)
    offset = 0
    sizes = [p.numel() for p in params]
    got = flat[sum(sizes) : sum(sizes) + len(params)]
    for p, n, has in zip(params, sizes, got.tolist()):
        if has > 0:
            g = flat[offset : offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n
    if extra is None:
        return None
    out = flat[sum(sizes) + len(params) :]
    return out.reshape(extra.shape).to(extra.dtype)


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor with rank ``src``'s, in place (weights, buffers, EMA)."""
    if not _active():
        return
    with torch.no_grad():
        for t in tensors:
            broadcast_(t, src)


def module_tensors(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    """Every parameter and buffer of ``modules`` (the tensors of their state dicts)."""
    return [t for m in modules for t in m.state_dict(keep_vars=True).values() if isinstance(t, torch.Tensor)]


def average_buffers(modules: Iterable[nn.Module]) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over ranks and
    give every rank rank 0's integer buffers (``num_batches_tracked``)."""
    if not _active():
        return
    size = dist.get_world_size()
    with torch.no_grad():
        for m in modules:
            for b in m.buffers():
                if torch.is_floating_point(b):
                    all_reduce_sum(b).div_(size)
                else:
                    broadcast_(b)


def check_same(value: int, what: str) -> None:
    """Raise the same :class:`~robustlab.errors.ConfigError` on every rank unless every
    rank holds the same ``value`` (e.g. the epoch each one resumed from)."""
    if not _active():
        return
    t = _all_reduce(torch.tensor([value, -value], dtype=torch.int64), dist.ReduceOp.MAX)
    low, high = -int(t[1]), int(t[0])
    if low != high:
        raise ConfigError(
            f"the ranks disagree on {what} (from {low} to {high}): every rank must read the same "
            f"files; on several machines put checkpoint_dir on a file system all of them share."
        )


def state_of(mapping: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of a state dict, in its order (for :func:`broadcast_tensors`)."""
    return [v for v in mapping.values() if isinstance(v, torch.Tensor)]


__all__ = [
    "World",
    "all_reduce_gradients",
    "all_reduce_sum",
    "average_buffers",
    "backend_for",
    "barrier",
    "broadcast_",
    "broadcast_json",
    "broadcast_tensors",
    "check_same",
    "device_for",
    "is_main",
    "module_tensors",
    "rank_seed",
    "session",
    "setup",
    "shard",
    "state_of",
    "teardown",
]
