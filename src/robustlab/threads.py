"""How many CPU threads torch uses for robustlab's work.

torch runs each operator on ``torch.get_num_threads()`` intra-op threads (by default one
per physical core). For the small models robustlab trains and attacks on a CPU, most
operators are too short to gain from a second thread, and when other processes share the
cores the threads wait for each other at every operator: a suite that takes 90 s on a
quiet 2-core machine took 25x longer with two busy neighbours, while one thread per
process slows down only by the share of the cores the neighbours take.

So robustlab decides from the size of the work, by a rule whose threshold was measured
(``benchmarks/threads``): it counts the multiply-accumulates of one forward pass of a batch
(:func:`batch_macs`, from the Linear and Conv layers) and uses one thread below
:data:`MACS_PER_EXTRA_THREAD`, all cores above it. The rule is deterministic (the same
model and batch size always get the same count), which matters because floating-point
sums depend on the thread count: a measured-at-run-time choice would change a run's
numbers with the machine's load, and a resumed run would no longer match.

Precedence of the setting, first match wins:

1. an explicit ``threads=`` (the CLI's ``--threads``, a config's ``threads:``);
2. the environment variable ``ROBUSTLAB_THREADS`` (an integer, or ``auto``);
3. a thread count the user chose for torch (``torch.set_num_threads`` called with a
   value other than torch's default, or ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set):
   robustlab leaves it alone;
4. the rule.

:func:`thread_budget` applies the choice for the duration of a piece of work and restores
torch's setting afterwards. On CUDA nothing is changed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from robustlab.errors import ConfigError

ENV = "ROBUSTLAB_THREADS"
_BASELINE = torch.get_num_threads()  # what torch had when robustlab first looked
_cache: dict[Any, int] = {}


def physical_cores() -> int:
    """Cores this process may run on, counting hyper-threads once where Linux says so."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # pragma: no cover (not Linux)
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as fh:
                cores.add(fh.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(len(cores), 1)


def parse_threads(value: Any, name: str = "threads") -> int | None:
    """``None``/``"auto"`` -> None (measure); a positive integer -> that many threads."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a positive integer or 'auto', got {value!r}.") from None
    from robustlab.validation import check_int

    return check_int(value, name, minimum=1)


def user_choice() -> int | None:
    """The thread count the user fixed (``ROBUSTLAB_THREADS``, ``torch.set_num_threads``
    or ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``), or None when robustlab may choose."""
    env = os.environ.get(ENV)
    if env is not None:
        parsed = parse_threads(env, f"${ENV}")
        if parsed is not None:
            return parsed
        return None  # ROBUSTLAB_THREADS=auto: measure even if OMP_NUM_THREADS is set
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return torch.get_num_threads()
    current = torch.get_num_threads()
    if current != _BASELINE or _BASELINE != physical_cores():
        return current  # changed since robustlab loaded, or set before: the user's choice
    return None


_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)


def batch_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on the batch ``x``: the
    Linear and Conv layers' work, counted with forward hooks on one sample, times the
    batch size (other layers are cheap beside them). Mode and RNG are left as they were."""
    if len(x) == 0:
        return 0
    total = 0

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        w = getattr(mod, "weight", None)
        if w is None or not isinstance(out, torch.Tensor):
            return
        if isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features
        elif isinstance(mod, nn.Bilinear):
            total += out.numel() * mod.in1_features * mod.in2_features
        else:  # conv: every output element sums in_channels/groups x kernel inputs
            total += out.numel() * (w.shape[1] * int(torch.tensor(w.shape[2:]).prod()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    was = model.training
    try:
        dev = next(model.parameters()).device
    except StopIteration:
        dev = x.device
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(x[:1].to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total * len(x)


#: one more thread per this many multiply-accumulates in a batch's forward pass. Measured
#: in benchmarks/threads (2 cores, quiet): a forward+backward pass with 2 threads was
#: 0.92-1.45x as fast as with 1 for batches of 0.003-0.043 GMAC (the bench suite's MLP
#: and CNN on 8x8 digits) and 1.6-2.0x for 0.156-17.8 GMAC (a CNN on 28x28 MNIST, a
#: ResNet-18 on 32x32): below this a second thread does not pay for itself even on a quiet
#: machine, and on a shared one it costs many times over.
MACS_PER_EXTRA_THREAD = 150_000_000


def choose_threads(model: nn.Module, x: torch.Tensor, *, max_threads: int | None = None) -> int:
    """The rule: 1 thread for batches of ``model`` on ``x`` (shape and size as in the
    work) whose forward pass is under :data:`MACS_PER_EXTRA_THREAD` multiply-accumulates,
    else one more per that amount, up to the physical cores. On CUDA: torch's setting."""
    most = max_threads or physical_cores()
    try:
        dev = next(model.parameters()).device
    except StopIteration:
        dev = torch.device("cpu")
    if dev.type != "cpu":
        return torch.get_num_threads()
    key = (id(model), type(model).__qualname__, sum(p.numel() for p in model.parameters()), tuple(x.shape), most)
    if key not in _cache:
        _cache[key] = max(1, min(most, 1 + batch_macs(model, x) // MACS_PER_EXTRA_THREAD))
    return _cache[key]


@contextlib.contextmanager
def thread_budget(
    model: nn.Module | None = None,
    x: torch.Tensor | None = None,
    *,
    threads: int | str | None = None,
) -> Iterator[int]:
    """Run the enclosed work with robustlab's thread choice (see the module docstring);
    torch's previous setting is restored afterwards. Yields the thread count used."""
    before = torch.get_num_threads()
    wanted = parse_threads(threads)
    if wanted is None:
        wanted = user_choice()
    if wanted is None:
        if model is not None and x is not None and len(x):
            wanted = choose_threads(model, x)
        else:
            wanted = before
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


__all__ = ["ENV", "MACS_PER_EXTRA_THREAD", "batch_macs", "choose_threads", "parse_threads", "physical_cores", "thread_budget", "user_choice"]
