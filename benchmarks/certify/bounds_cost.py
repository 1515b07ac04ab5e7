"""Bound propagation: cost relative to a forward pass, and a cross-check with auto_LiRPA.

One command (from the repository root, in robustlab's environment)::

    python benchmarks/certify/bounds_cost.py [--threads 1 2] [--repeats 5]
        [--lirpa-python PATH | --lirpa-src PATH] [--quick]

writes ``benchmarks/certify/results/bounds_cost.md`` (tables) and ``bounds_cost.json`` (every
number, with versions, settings and the machine's load average).

1. **Cost.** ``robustlab.certify.bounds.compute_bounds`` with the margin specification
   (``margin_spec``: K − 1 rows ``e_y − e_j``, y = the model's own prediction) for IBP,
   CROWN-IBP (lower and upper bound, and lower only as ``verify`` uses it), CROWN and
   α-CROWN (20 Adam steps), each divided by the time of one forward pass of the same model
   on the same batch, everything under ``torch.no_grad()``. Models: ``mlp`` (256-256) on
   8x8 digits and on 28x28 MNIST, ``mnist_net`` (28x28), ``cnn_small`` (the "small" model
   of Gowal et al. 2018 / Zhang et al. 2020: conv16 4x4/2, conv32 4x4/1, fc100, fc10;
   a plain ``nn.Sequential`` behind robustlab's ``Normalize``) and ``small_cnn`` (TRADES;
   it has MaxPool2d, which robustlab bounds with IBP only, so the CROWN methods are
   recorded as refused). Weights: PyTorch's default random initialisation, seed 0
   (``small_cnn``'s zero last layer re-drawn with nn.Linear's default initialisation);
   inputs: the first test images of robustlab's digits and MNIST splits; L-inf eps 0.1
   (0.05 on digits). Batch sizes 1 and 64, each ``--threads`` value (torch threads),
   timings interleaved (every method once per round) and the best of ``--repeats``
   rounds; one timing is the mean over enough calls to last >= 20 ms.
2. **auto_LiRPA** in its own virtual environment ``benchmarks/certify/.venv-lirpa``
   (never a dependency of robustlab): torch pinned to the CPU wheel robustlab uses,
   auto_LiRPA installed with ``--no-deps`` (from ``--lirpa-src``, a source tree or wheel,
   else PyPI, whose 0.3 does not import on torch 2.13) plus its light run-time dependencies.
   Where its CROWN fails with the default ``bound_opts`` it is rerun with
   ``conv_mode="matrix"`` (marked). The models are exported as a plain
   ``nn.Sequential`` (normalisation as a module holding buffers) and rebuilt there from
   a layer list and a ``state_dict``; both libraries bound the same weights on the same
   inputs (batch sizes 1 and 7) with the same input set: the L-inf ball clipped to
   ``[0, 1]`` (auto_LiRPA gets ``PerturbationLpNorm(x_L=..., x_U=...)``). Compared: IBP,
   CROWN (``method="CROWN"``, default ``bound_opts``) and CROWN-IBP lower/upper margin
   bounds, and their time. Both sides' bounds are checked against PGD (100 steps, both
   directions, every margin row) and 1,000 sampled points of the ball.
3. **Issue 11's claim**: a model that keeps its normalisation constants as plain tensor
   attributes, bounded by auto_LiRPA's CROWN on a batch of 7 images, against PGD and
   against the same model with buffers.

This file is also the worker that runs inside the auto_LiRPA environment
(``--lirpa-worker JOB OUT``); in that mode it imports neither robustlab nor numpy at the top.
"""

# ruff: noqa: B023 - every closure below is called in the loop iteration that defines it
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results"
LIRPA_VENV = HERE / ".venv-lirpa"
MNIST_ROOT = "/work/shared/data/mnist-t10k"
# auto_LiRPA's run-time imports (setup.py also lists test/lint tools and torchvision, unused here)
LIRPA_LIGHT_DEPS = ["numpy", "packaging", "appdirs", "pyyaml", "tqdm", "graphviz"]
MEAN, STD = 0.1307, 0.3081  # MNIST statistics, so the normalisation is not the identity
CLAIM_EPS = (0.1, 0.01, 0.002)  # issue 11's case: small eps makes the bounds tight enough to be beaten


# -- shared by both environments --------------------------------------------------------
class BufferNormalize(nn.Module):
    """``(x - mean) / std`` with the constants as buffers (both libraries' preferred form)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PlainNormalize(nn.Module):
    """The same with the constants as plain tensor attributes (issue 11's case)."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_sequential(arch: list[dict[str, Any]], plain: bool = False) -> nn.Sequential:
    """The exported model from its layer list (``plain``: normalisation constants as plain
    attributes instead of buffers; they are then not in the ``state_dict``)."""
    layers: list[nn.Module] = []
    for a in arch:
        op = a["op"]
        if op == "normalize":
            layers.append((PlainNormalize if plain else BufferNormalize)(a["mean"], a["std"]))
        elif op == "conv2d":
            layers.append(nn.Conv2d(a["in"], a["out"], a["k"], stride=a["stride"], padding=a["padding"]))
        elif op == "linear":
            layers.append(nn.Linear(a["in"], a["out"]))
        elif op == "relu":
            layers.append(nn.ReLU())
        elif op == "flatten":
            layers.append(nn.Flatten())
        elif op == "maxpool2d":
            layers.append(nn.MaxPool2d(a["k"], a["stride"]))
        else:
            raise ValueError(f"unknown layer {op!r}")
    return nn.Sequential(*layers).eval()


def timed(fns: dict[str, Callable[[], Any]], repeats: int, min_seconds: float = 0.02,
          heavy: float = 2.0) -> dict[str, float]:
    """Seconds per call of each function: best of ``repeats`` interleaved rounds, one
    timing being the mean over ``n`` calls (``n`` calibrated so it lasts ``min_seconds``).
    A function whose first (warm-up) call took over ``heavy`` seconds is not called again:
    that single call is its time (a later call is at most as slow by the warm-up's nature)."""
    inner: dict[str, int] = {}
    best: dict[str, float] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()  # warm-up and calibration
        dt = max(time.perf_counter() - t0, 1e-6)
        inner[name] = max(1, min(1000, math.ceil(min_seconds / dt)))
        best[name] = dt if dt > heavy else math.inf
    single = {name for name, v in best.items() if v < math.inf}
    for _ in range(repeats):
        for name, fn in fns.items():
            if name in single:
                continue
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / inner[name])
    return best


def attack_extremes(model: nn.Module, x: torch.Tensor, C: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    steps: int = 100, samples: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest ``C @ z(x')`` found per image and row over the box
    ``[lo, hi]`` (float64 model): PGD with sign steps (``steps``, step = width/20 decaying,
    from the centre and from a random corner) on every row in both directions, and
    ``samples`` uniform points and box corners. A sound lower (upper) bound is <= (>=) it."""
    g = torch.Generator().manual_seed(seed)
    m = model.double()
    x, C, lo, hi = x.double(), C.double(), lo.double(), hi.double()
    B, S, _ = C.shape
    with torch.no_grad():
        best_min = torch.einsum("bsk,bk->bs", C, m(x))
        best_max = best_min.clone()
        for _ in range(max(1, samples // 100)):
            u = torch.rand((100, *x.shape), generator=g, dtype=x.dtype)
            corner = torch.rand((100, *x.shape), generator=g, dtype=x.dtype) < 0.5
            for pts in (lo + u * (hi - lo), torch.where(corner, hi, lo)):
                z = m(pts.reshape(-1, *x.shape[1:])).reshape(100, B, -1)
                v = torch.einsum("bsk,nbk->nbs", C, z)
                best_min = torch.minimum(best_min, v.min(0).values)
                best_max = torch.maximum(best_max, v.max(0).values)
    width = hi - lo
    for sign in (1.0, -1.0):  # +1: minimise C z (tests the lower bound)
        for start in ("centre", "corner"):
            xs = x.unsqueeze(1).expand(B, S, *x.shape[1:]).clone()
            if start == "corner":
                r = torch.rand(xs.shape, generator=g, dtype=x.dtype) < 0.5
                xs = torch.where(r, hi.unsqueeze(1), lo.unsqueeze(1)).expand_as(xs).clone()
            for t in range(steps):
                xs.requires_grad_(True)
                z = m(xs.reshape(B * S, *x.shape[1:])).reshape(B, S, -1)
                v = (C * z).sum(-1)
                (grad,) = torch.autograd.grad(v.sum(), xs)
                with torch.no_grad():
                    vd = v.detach()
                    best_min = torch.minimum(best_min, vd)
                    best_max = torch.maximum(best_max, vd)
                    step = (width / 20).unsqueeze(1) * (1 - t / steps)
                    xs = xs.detach() - sign * step * grad.sign()
                    xs = torch.maximum(torch.minimum(xs, hi.unsqueeze(1)), lo.unsqueeze(1))
            with torch.no_grad():
                v = (C * m(xs.reshape(B * S, *x.shape[1:])).reshape(B, S, -1)).sum(-1)
                best_min, best_max = torch.minimum(best_min, v), torch.maximum(best_max, v)
    m.float()
    return best_min, best_max


# -- the auto_LiRPA worker (runs in .venv-lirpa) ------------------------------------------------
def lirpa_worker(job_path: str, out_path: str) -> None:
    import auto_LiRPA
    import numpy as np
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    tensors = torch.load(job["tensors"], weights_only=True)
    out: dict[str, Any] = {"auto_LiRPA": auto_LiRPA.__version__, "torch": torch.__version__,
                           "numpy": np.__version__, "threads": torch.get_num_threads(), "cases": {}}

    def bounded(seq: nn.Module, dummy: torch.Tensor) -> tuple[Any, float]:
        t0 = time.perf_counter()
        bm = BoundedModule(seq, dummy, device="cpu")
        return bm, time.perf_counter() - t0

    for case in job["cases"]:
        name = case["name"]
        res: dict[str, Any] = {}
        try:
            seq = build_sequential(case["arch"], plain=case.get("plain", False))
            seq.load_state_dict(tensors[f"{case['model']}/state"], strict=not case.get("plain", False))
            x = tensors[f"{case['inputs']}/x"][: case["batch"]]
            C = tensors[f"{case['inputs']}/C"][: case["batch"]]
            eps = case["eps"]
            lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
            dummy = torch.zeros(case.get("dummy_batch", 1), *x.shape[1:])
            bm, build_s = bounded(seq, dummy)
            res["build_seconds"] = build_s
            with torch.no_grad():
                res["forward_max_abs_diff"] = float((bm(x) - seq(x)).abs().max())
            ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=lo, x_U=hi)
            bx = BoundedTensor(x, ptb)
            fns = {}
            matrix: list[Any] = []  # built only when a default run fails
            for method in case["methods"]:
                def run(method: str = method, mod: Any = bm) -> tuple[torch.Tensor, torch.Tensor]:
                    with torch.no_grad():
                        return mod.compute_bounds(x=(bx,), C=C, method=method)
                try:
                    lb, ub = run()
                    res[method] = {"lower": lb.tolist(), "upper": ub.tolist()}
                    fns[method] = run
                except Exception as e:  # noqa: BLE001 - reported, not hidden
                    default_error = f"{type(e).__name__}: {e}"[:500]
                    # the documented alternative to the default "patches" mode for convolutions
                    try:
                        if not matrix:
                            matrix.append(BoundedModule(seq, dummy, device="cpu", bound_opts={"conv_mode": "matrix"}))
                        lb, ub = run(method, matrix[0])
                        res[method] = {"lower": lb.tolist(), "upper": ub.tolist(), "default_error": default_error,
                                       "bound_opts": "conv_mode=matrix"}
                        fns[method] = lambda method=method: run(method, matrix[0])
                    except Exception as e2:  # noqa: BLE001
                        res[method] = {"error": default_error, "matrix_error": f"{type(e2).__name__}: {e2}"[:500]}
            if case.get("time"):
                for method, sec in timed(fns, job["repeats"]).items():
                    res[method]["seconds"] = sec
            if case.get("alone"):  # each image bounded on its own: does an image's bound depend on its batch?
                for method in case["methods"]:
                    if "lower" not in res[method]:
                        continue
                    mod = matrix[0] if res[method].get("bound_opts") else bm
                    rows = []
                    for i in range(len(x)):
                        bxi = BoundedTensor(x[i:i + 1], PerturbationLpNorm(norm=float("inf"), eps=eps,
                                                                           x_L=lo[i:i + 1], x_U=hi[i:i + 1]))
                        with torch.no_grad():
                            li, ui = mod.compute_bounds(x=(bxi,), C=C[i:i + 1], method=method)
                        rows.append(torch.cat([li, ui], 1))
                    res[method]["alone"] = torch.cat(rows).tolist()
            if case.get("attack"):  # on the buffer model (the same function as the plain one)
                target = build_sequential(case["arch"]) if case.get("plain") else seq
                target.load_state_dict(tensors[f"{case['model']}/state"])
                amin, amax = attack_extremes(target, x, C, lo, hi, steps=job["pgd_steps"], samples=job["samples"])
                res["attack_min"], res["attack_max"] = amin.tolist(), amax.tolist()
        except Exception as e:  # noqa: BLE001
            res["error"] = f"{type(e).__name__}: {e}"[:800]
        out["cases"][name] = res
        print(f"  auto_LiRPA: {name} done", flush=True)
    Path(out_path).write_text(json.dumps(out))


# -- robustlab's side ---------------------------------------------------------------------------
def make_models() -> dict[str, dict[str, Any]]:
    from robustlab import models
    from robustlab.models.layers import Normalize

    out: dict[str, dict[str, Any]] = {}
    kw = {"num_classes": 10, "in_channels": 1, "mean": [MEAN], "std": [STD]}
    torch.manual_seed(0)  # PyTorch's default initialisation draws from the global RNG
    out["mlp (digits 8x8)"] = {"model": models.create("mlp", input_size=(8, 8), **kw), "data": "digits"}
    out["mlp (28x28)"] = {"model": models.create("mlp", input_size=(28, 28), **kw), "data": "mnist"}
    out["mnist_net (28x28)"] = {"model": models.create("mnist_net", input_size=(28, 28), **kw), "data": "mnist"}
    out["cnn_small (28x28)"] = {"model": nn.Sequential(
        Normalize([MEAN], [STD], channels=1),
        nn.Conv2d(1, 16, 4, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 10 * 10, 100), nn.ReLU(), nn.Linear(100, 10)), "data": "mnist"}
    scnn = models.create("small_cnn", input_size=(28, 28), **kw)
    fc3 = scnn.classifier.get_submodule("fc3")
    fc3.reset_parameters()  # TRADES initialises it to zero: all logits would be 0
    out["small_cnn (28x28)"] = {"model": scnn, "data": "mnist"}
    for v in out.values():
        v["model"].eval()
        for p in v["model"].parameters():
            p.requires_grad_(False)
        v["params"] = sum(p.numel() for p in v["model"].parameters())
    return out


def export(model: nn.Module) -> tuple[list[dict[str, Any]], nn.Sequential]:
    """The model as a layer list + plain ``nn.Sequential`` (forward order from torch.fx)."""
    from torch import fx

    from robustlab.models.layers import Normalize

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)

    gm = fx.GraphModule(model, Tracer().trace(model))
    arch: list[dict[str, Any]] = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            if node.op == "call_function" or node.op == "call_method":
                raise ValueError(f"export handles module calls only, got {node.target}")
            continue
        m = model.get_submodule(node.target)
        if isinstance(m, Normalize):
            arch.append({"op": "normalize", "mean": m.mean.tolist(), "std": m.std.tolist()})
        elif isinstance(m, nn.Conv2d):
            arch.append({"op": "conv2d", "in": m.in_channels, "out": m.out_channels, "k": m.kernel_size[0],
                         "stride": m.stride[0], "padding": m.padding[0]})
        elif isinstance(m, nn.Linear):
            arch.append({"op": "linear", "in": m.in_features, "out": m.out_features})
        elif isinstance(m, nn.ReLU):
            arch.append({"op": "relu"})
        elif isinstance(m, nn.Flatten):
            arch.append({"op": "flatten"})
        elif isinstance(m, nn.MaxPool2d):
            arch.append({"op": "maxpool2d", "k": m.kernel_size, "stride": m.stride})
        elif isinstance(m, nn.Dropout):
            continue
        else:
            raise ValueError(f"export: unexpected layer {type(m).__name__}")
    seq = build_sequential(arch)
    params = [m for node in gm.graph.nodes if node.op == "call_module"
              for m in [model.get_submodule(node.target)] if isinstance(m, (nn.Conv2d, nn.Linear))]
    targets = [m for m in seq if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for src, dst in zip(params, targets, strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    for p in seq.parameters():
        p.requires_grad_(False)
    return arch, seq


def load_inputs() -> dict[str, torch.Tensor]:
    from robustlab import data

    return {"digits": data.load("digits", "test").x[:64].contiguous(),
            "mnist": data.load("mnist", "test", root=MNIST_ROOT).x[:64].contiguous()}


def unstable_counts(model: nn.Module, x: torch.Tensor, eps: float) -> dict[str, float]:
    """Mean number of ReLU inputs per image whose interval straddles 0, under IBP and under
    CROWN's intermediate bounds (what the CROWN methods' cost depends on)."""
    from robustlab.certify.bounds.graph import MaxPoolOp, ReluOp, build_graph
    from robustlab.certify.bounds.propagation import InputSet, crown_intermediate, ibp_bounds

    with torch.no_grad():
        graph = build_graph(model, x)
        inp = InputSet("linf", x, eps, (x - eps).clamp(min=0), (x + eps).clamp(max=1))
        ibp = ibp_bounds(graph, inp)
        has_pool = any(isinstance(op, MaxPoolOp) for op in graph.ops)  # CROWN refused: IBP count only
        crown = None if has_pool else crown_intermediate(graph, inp, ibp, intersect=True)
    relus = [op for op in graph.ops if isinstance(op, ReluOp)]
    total = sum(math.prod(op.shape) for op in relus)

    def count(bounds: list[tuple[torch.Tensor, torch.Tensor]] | None) -> float:
        if bounds is None:
            return float("nan")
        n = 0
        for op in relus:
            lo, hi = bounds[op.inputs[0]]
            n += int(((lo < 0) & (hi > 0)).sum())
        return n / len(x)

    return {"relu_neurons": total, "unstable_ibp": count(ibp), "unstable_crown": count(crown)}


def cost_part(zoo: dict[str, dict[str, Any]], inputs: dict[str, torch.Tensor], threads: list[int],
              batches: list[int], repeats: int, eps_of: dict[str, float]) -> list[dict[str, Any]]:
    from robustlab.attacks.engine import eval_mode
    from robustlab.certify.bounds import _bounds, compute_bounds, margin_spec
    from robustlab.certify.bounds.graph import build_graph
    from robustlab.certify.bounds.propagation import InputSet

    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for name, entry in zoo.items():
            model = entry["model"]
            for b in batches:
                x = inputs[entry["data"]][:b]
                eps = eps_of[entry["data"]]
                with torch.no_grad():
                    y = model(x).argmax(1)
                C = margin_spec(y, 10)
                load0 = os.getloadavg()

                def forward() -> Any:
                    with torch.no_grad():
                        return model(x)

                def trace() -> Any:
                    with torch.no_grad(), eval_mode(model):
                        return build_graph(model, x)

                def bounds(method: str, **kw: Any) -> Callable[[], Any]:
                    def f() -> Any:
                        with torch.no_grad():
                            return compute_bounds(model, x, eps, "linf", method, C, **kw)
                    return f

                with torch.no_grad(), eval_mode(model):
                    graph = build_graph(model, x)
                inp = InputSet("linf", x, eps, (x - eps).clamp(min=0), (x + eps).clamp(max=1))

                def prebuilt(method: str) -> Callable[[], Any]:  # propagation only: no checks, no trace
                    def f() -> Any:
                        with torch.no_grad():
                            return _bounds(graph, inp, C, method, 20, 0.1, True, True)
                    return f

                candidates = {"forward": forward, "trace": trace, "ibp": bounds("ibp"),
                              "ibp (prebuilt graph)": prebuilt("ibp"),
                              "crown-ibp (prebuilt graph)": prebuilt("crown-ibp"),
                              "crown-ibp": bounds("crown-ibp"),
                              "crown-ibp (lower only)": bounds("crown-ibp", bound_upper=False),
                              "crown": bounds("crown"), "alpha-crown": bounds("alpha-crown")}
                fns, refused = {}, {}
                for k, f in candidates.items():
                    try:
                        f()
                        fns[k] = f
                    except Exception as e:  # noqa: BLE001 - e.g. UnsupportedLayerError, reported
                        refused[k] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                sec = timed(fns, repeats)
                load1 = os.getloadavg()
                row = {"model": name, "batch": b, "threads": t, "eps": eps, "seconds": sec,
                       "x_forward": {k: v / sec["forward"] for k, v in sec.items()},
                       "refused": refused, "loadavg_before": load0, "loadavg_after": load1,
                       "params": entry["params"]}
                if t == threads[0]:
                    row.update(unstable_counts(model, x, eps))
                rows.append(row)
                print(f"cost: {name} batch {b} threads {t}: "
                      + ", ".join(f"{k} {v:.2f}x" for k, v in row["x_forward"].items()), flush=True)
    return rows


# -- the auto_LiRPA environment ---------------------------------------------------------------
def lirpa_python(given: str | None, src: str | None, log: dict[str, Any]) -> str | None:
    """The interpreter of the auto_LiRPA environment, created when missing; None (with the
    reason in ``log``) when auto_LiRPA cannot be installed or imported there."""
    if given:
        return given
    py = LIRPA_VENV / "bin" / "python"
    probe = "import auto_LiRPA; from auto_LiRPA import BoundedModule; print(auto_LiRPA.__version__)"
    if py.exists():
        r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if r.returncode == 0:
            log["existing_venv"] = True
            return str(py)
    print(f"creating the auto_LiRPA environment in {LIRPA_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LIRPA_VENV)], check=True)
    pip = [str(LIRPA_VENV / "bin" / "pip"), "install", "-q"]
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the local CPU wheel; never let pip pick torch
    steps = [pip + [torch_pin], pip + ["--no-deps", src or "auto_LiRPA"], pip + LIRPA_LIGHT_DEPS]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        log.setdefault("install", []).append({"cmd": " ".join(cmd[1:]), "rc": r.returncode})
        if r.returncode != 0:
            log["error"] = r.stderr[-1500:]
            return None
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    if r.returncode != 0:
        log["error"] = "auto_LiRPA does not import: " + r.stderr.strip().splitlines()[-1][:500]
        return None
    return str(py)


def cross_check(zoo: dict[str, dict[str, Any]], inputs: dict[str, torch.Tensor], python: str, threads: int,
                repeats: int, eps_of: dict[str, float], pgd_steps: int, samples: int) -> dict[str, Any]:
    from robustlab.certify.bounds import compute_bounds, margin_spec

    torch.set_num_threads(threads)
    tensors: dict[str, torch.Tensor] = {}
    cases: list[dict[str, Any]] = []
    ours: dict[str, Any] = {}
    exported: dict[str, Any] = {}
    for name, entry in zoo.items():
        model = entry["model"]
        arch, seq = export(model)
        x7 = inputs[entry["data"]][:7]
        with torch.no_grad():
            diff = float((seq(x7) - model(x7)).abs().max())
            y = model(x7).argmax(1)
        C = margin_spec(y, 10)
        key = name.split()[0] + "-" + name.split()[1].strip("()")
        tensors[f"{key}/state"] = seq.state_dict()
        tensors[f"{key}/x"], tensors[f"{key}/C"] = x7, C
        eps = eps_of[entry["data"]]
        has_pool = any(a["op"] == "maxpool2d" for a in arch)
        methods = ["IBP"] if has_pool else ["IBP", "CROWN", "CROWN-IBP"]
        exported[name] = {"arch": arch, "export_forward_max_abs_diff": diff}
        for b in (1, 7):
            case = f"{name} / batch {b}"
            cases.append({"name": case, "model": key, "inputs": key, "arch": arch, "batch": b, "eps": eps,
                          "methods": methods, "time": True, "attack": True})
            x, Cb = x7[:b], C[:b]
            res: dict[str, Any] = {}
            fns = {}
            ours_methods = {"IBP": ("ibp", {}), "CROWN": ("crown", {}), "CROWN-IBP": ("crown-ibp", {}),
                            "CROWN (no IBP intersection)": ("crown", {"intersect_ibp": False}),
                            "CROWN-IBP (no IBP intersection)": ("crown-ibp", {"intersect_ibp": False})}
            for label, (method, kw) in ours_methods.items():
                if has_pool and method != "ibp":
                    continue
                def f(method: str = method, kw: dict[str, Any] = kw) -> tuple[torch.Tensor, torch.Tensor]:
                    with torch.no_grad():
                        return compute_bounds(seq, x, eps, "linf", method, Cb, **kw)
                lb, ub = f()
                with torch.no_grad():
                    lz, uz = compute_bounds(model, x, eps, "linf", method, Cb, **kw)
                res[label] = {"lower": lb.tolist(), "upper": ub.tolist(),
                              "zoo_vs_export_max_abs_diff": float(max((lz - lb).abs().max(), (uz - ub).abs().max()))}
                fns[label] = f
            for label, sec in timed(fns, repeats).items():
                res[label]["seconds"] = sec
            ours[case] = res
        if name.startswith(("mlp (28", "mnist_net")):  # issue 11: plain-attribute constants, batch > 1
            for e in CLAIM_EPS:
                for variant, plain, dummy in (("plain attributes", True, 1), ("plain attributes", True, 7),
                                              ("buffers", False, 1)):
                    cases.append({"name": f"{name} / {variant} / eps {e} / batch 7 / traced on batch {dummy}",
                                  "claim": True, "model": key, "inputs": key, "arch": arch, "batch": 7, "eps": e,
                                  "plain": plain, "dummy_batch": dummy, "methods": ["IBP", "CROWN", "CROWN-IBP"],
                                  "time": False, "attack": True, "alone": True})
    workdir = Path(tempfile.mkdtemp(prefix="bounds_cost-"))
    torch.save(tensors, workdir / "tensors.pt")
    job = {"cases": cases, "threads": threads, "repeats": repeats, "tensors": str(workdir / "tensors.pt"),
           "pgd_steps": pgd_steps, "samples": samples}
    (workdir / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    subprocess.run([python, str(Path(__file__).resolve()), "--lirpa-worker", str(workdir / "job.json"),
                    str(workdir / "out.json")], check=True, env=env)
    theirs = json.loads((workdir / "out.json").read_text())
    return {"ours": ours, "theirs": theirs, "exported": exported, "worker_seconds": time.perf_counter() - t0,
            "threads": threads}


def compare(cc: dict[str, Any], tol: float = 1e-4) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per case and method: differences, which side is tighter, and soundness against the
    attack extremes (found in float64 on the exported model)."""
    rows, claim = [], []
    theirs = cc["theirs"]["cases"]
    for case, ours in cc["ours"].items():
        th = theirs.get(case, {})
        amin = torch.tensor(th["attack_min"]) if "attack_min" in th else None
        amax = torch.tensor(th["attack_max"]) if "attack_max" in th else None
        for label, o in ours.items():
            method = label.split(" (")[0]
            t = th.get(method, {"error": th.get("error", "not run")})
            ol, ou = torch.tensor(o["lower"]), torch.tensor(o["upper"])
            row: dict[str, Any] = {"case": case, "ours": label,
                                   "theirs": method + (f" [{t['bound_opts']}]" if "bound_opts" in t else ""),
                                   "theirs_default_error": t.get("default_error"),
                                   "ours_seconds": o.get("seconds"), "theirs_seconds": t.get("seconds"),
                                   "zoo_vs_export": o["zoo_vs_export_max_abs_diff"]}
            if amin is not None:
                row["ours_lower_violation"] = float((ol - amin).clamp(min=0).max())
                row["ours_upper_violation"] = float((amax - ou).clamp(min=0).max())
            if "error" in t:
                row["theirs_error"] = t["error"]
            else:
                tl, tu = torch.tensor(t["lower"]), torch.tensor(t["upper"])
                dl, du = ol - tl, tu - ou  # > 0: ours tighter
                row.update({
                    "max_abs_diff_lower": float(dl.abs().max()), "max_abs_diff_upper": float(du.abs().max()),
                    "mean_gain_lower": float(dl.mean()), "mean_gain_upper": float(du.mean()),
                    "ours_tighter": int((dl > tol).sum() + (du > tol).sum()),
                    "theirs_tighter": int((dl < -tol).sum() + (du < -tol).sum()),
                    "bounds": int(dl.numel() + du.numel()),
                    "mean_width_ours": float((ou - ol).mean()), "mean_width_theirs": float((tu - tl).mean()),
                })
                if amin is not None:
                    row["theirs_lower_violation"] = float((tl - amin).clamp(min=0).max())
                    row["theirs_upper_violation"] = float((amax - tu).clamp(min=0).max())
            rows.append(row)
    # issue 11's claim: plain attributes vs buffers, batch 7, each against its own attack
    for case, th in theirs.items():
        if "attack_min" not in th or " / eps " not in case:
            continue
        amin, amax = torch.tensor(th["attack_min"]), torch.tensor(th["attack_max"])
        for method in ("IBP", "CROWN", "CROWN-IBP"):
            t = th.get(method, {"error": th.get("error", "not run")})
            r: dict[str, Any] = {"case": case, "method": method + (f" [{t['bound_opts']}]" if "bound_opts" in t else ""),
                                 "forward_max_abs_diff": th.get("forward_max_abs_diff")}
            if "error" in t:
                r["error"] = t["error"]
            else:
                tl, tu = torch.tensor(t["lower"]), torch.tensor(t["upper"])
                r.update({"lower_violation": float((tl - amin).clamp(min=0).max()),
                          "upper_violation": float((amax - tu).clamp(min=0).max()),
                          "violating_bounds": int(((tl - amin) > tol).sum() + ((amax - tu) > tol).sum()),
                          "bounds": int(tl.numel() * 2), "min_gap_lower": float((amin - tl).min()),
                          "min_gap_upper": float((tu - amax).min())})
                if "alone" in t:
                    alone = torch.tensor(t["alone"])
                    r["batch_vs_alone_max_abs_diff"] = float((torch.cat([tl, tu], 1) - alone).abs().max())
                    s_ = tl.shape[1]
                    r["alone_violation"] = float(max((alone[:, :s_] - amin).clamp(min=0).max(),
                                                      (amax - alone[:, s_:]).clamp(min=0).max()))
            claim.append(r)
    return rows, claim


# -- report ------------------------------------------------------------------------------------------
def fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return format(v, spec)


def write_report(out: dict[str, Any]) -> str:
    lines = [f"# Bound propagation cost (and auto_LiRPA) — {out['date']}", ""]
    lines += [f"Command: `{out['command']}`. Machine: {out['machine']}; load average "
              f"{out['loadavg_start'][0]:.2f} at the start, {out['loadavg_end'][0]:.2f} at the end "
              f"(1-minute). Versions: robustlab {out['versions']['robustlab']}, torch {out['versions']['torch']}"
              + (f", auto_LiRPA {out['lirpa']['version']} on torch {out['lirpa']['torch']}" if out['lirpa'].get('version') else "")
              + ".", ""]
    lines += ["Weights: PyTorch default random initialisation (seed 0), not trained; inputs: the first "
              "test images (digits / MNIST split). Margin specification of K − 1 = 9 rows "
              "(y = the model's prediction); L-inf eps " + ", ".join(f"{k} {v}" for k, v in out["eps"].items())
              + "; everything under `torch.no_grad()`. Time = best of "
              f"{out['repeats']} interleaved rounds, each the mean of enough calls to last >= 20 ms. "
              "`x fwd` = seconds / seconds of one forward pass of the same model on the same batch. "
              "`trace` is the torch.fx trace + bound-graph build that every `compute_bounds` call "
              "includes. Targets: IBP <= 2x, CROWN-IBP <= (K+1)x = 11x.", ""]
    if "cost_from" in out:
        cf = out["cost_from"]
        lines += [f"The cost table is from the earlier run of {cf['date']} (`{cf['command']}`, load "
                  f"{cf['loadavg_start'][0]:.2f} → {cf['loadavg_end'][0]:.2f}); this run ({out['date']}) redid "
                  "the auto_LiRPA part only.", ""]
    lines += ["## Cost relative to one forward pass", "",
              "| model | batch | threads | forward ms | trace | IBP | IBP, prebuilt graph | CROWN-IBP | CROWN-IBP, prebuilt graph | CROWN-IBP lower only | CROWN | α-CROWN (20 steps) | unstable ReLUs / img (IBP → CROWN) of | load 1-min |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["cost"]:
        xf = r["x_forward"]

        def cell(k: str) -> str:
            if k in r["refused"]:
                return "refused"
            return f"{xf[k]:.1f}x"
        unstable = (f"{fmt(r.get('unstable_ibp'), '.0f')} → {fmt(r.get('unstable_crown'), '.0f')} of {r['relu_neurons']}"
                    if "relu_neurons" in r else "(as above)")
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['seconds']['forward'] * 1e3:.3f} | "
                     f"{cell('trace')} | {cell('ibp')} | {cell('ibp (prebuilt graph)')} | {cell('crown-ibp')} | "
                     f"{cell('crown-ibp (prebuilt graph)')} | {cell('crown-ibp (lower only)')} | "
                     f"{cell('crown')} | {cell('alpha-crown')} | {unstable} | "
                     f"{r['loadavg_before'][0]:.2f} → {r['loadavg_after'][0]:.2f} |")
    refused = {m for r in out["cost"] for m in r["refused"].items()}
    if refused:
        lines += ["", "Refused: " + "; ".join(sorted({f"{k}: {v}" for k, v in refused})[:2]) + "."]
    ms = [(r, r["x_forward"]) for r in out["cost"]]
    ibp_ok = [xf["ibp"] <= 2 for r, xf in ms if "ibp" in xf]
    cib_ok = [xf["crown-ibp"] <= 11 for r, xf in ms if "crown-ibp" in xf]
    lines += ["", f"IBP <= 2x in {sum(ibp_ok)} of {len(ibp_ok)} rows; CROWN-IBP (both bounds) <= 11x in "
              f"{sum(cib_ok)} of {len(cib_ok)} rows.", ""]
    lx = out["lirpa"]
    lines += ["## auto_LiRPA cross-check", ""]
    if "error" in lx or "compare" not in lx:
        lines += [f"Not run: {lx.get('error', 'skipped')}", ""]
        return "\n".join(lines)
    lines += [f"auto_LiRPA {lx['version']} ({lx.get('source', '')}) on torch {lx['torch']}, numpy {lx['numpy']}, "
              f"{lx['threads']} thread(s), installed with `--no-deps` in `.venv-lirpa`. Same weights (exported "
              "`nn.Sequential`, normalisation as a module with buffers), same inputs, same input set "
              "(auto_LiRPA gets `PerturbationLpNorm(x_L=clip(x-eps), x_U=clip(x+eps))`), default `bound_opts`. "
              "`diff` = max |ours − theirs| over the lower / upper bounds; `tighter` = how many of the bounds "
              "(lower and upper, per image and row) each side has tighter by > 1e-4; `viol.` = worst amount "
              f"by which a bound is beaten by PGD-{out['pgd_steps']} (both directions, every row, centre and random-corner "
              f"starts) or {out['samples']} sampled points, float64 (0 = sound on everything found). "
              "Times: best of the rounds; auto_LiRPA's `BoundedModule` is built once outside the timing "
              "(robustlab re-traces in every call).", ""]
    lines += ["| model / batch | ours | theirs | diff lower | diff upper | mean width ours / theirs | tighter ours / theirs (of) | viol. ours / theirs | ms ours / theirs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in lx["compare"]:
        if "theirs_error" in r:
            lines.append(f"| {r['case']} | {r['ours']} | {r['theirs']}: {r['theirs_error'][:80]} | | | | | "
                         f"{fmt(r.get('ours_lower_violation'))} | {fmt(r['ours_seconds'] * 1e3, '.2f')} / - |")
            continue
        lines.append(
            f"| {r['case']} | {r['ours']} | {r['theirs']} | {r['max_abs_diff_lower']:.2e} | {r['max_abs_diff_upper']:.2e} | "
            f"{r['mean_width_ours']:.4g} / {r['mean_width_theirs']:.4g} | {r['ours_tighter']} / {r['theirs_tighter']} ({r['bounds']}) | "
            f"{max(r['ours_lower_violation'], r['ours_upper_violation']):.1e} / "
            f"{max(r['theirs_lower_violation'], r['theirs_upper_violation']):.1e} | "
            f"{r['ours_seconds'] * 1e3:.2f} / {r['theirs_seconds'] * 1e3:.2f} |")
    errs = sorted({f"{r['theirs'].split(' [')[0]} with default bound_opts on {r['case'].split(' / ')[0]}: "
                   f"{r['theirs_default_error'][:160]}" for r in lx["compare"] if r.get("theirs_default_error")})
    if errs:
        lines += ["", "auto_LiRPA failed with its default `bound_opts` (rows marked `[conv_mode=matrix]` were "
                  "rerun with `bound_opts={'conv_mode': 'matrix'}`): " + "; ".join(errs) + "."]
    lines += ["", "zoo model vs exported Sequential (robustlab on both): max |Δbound| = "
              f"{max(r['zoo_vs_export'] for r in lx['compare']):.1e}; auto_LiRPA BoundedModule build times: "
              + ", ".join(f"{k}: {v:.2f} s" for k, v in lx["build_seconds"].items()) + ".", ""]
    lines += ["### Issue 11: normalisation constants as plain tensor attributes, batch of 7", "",
              "auto_LiRPA on the same weights with the normalisation constants as plain tensor attributes "
              "(`PlainNormalize`) or as buffers, `BoundedModule` traced on a dummy batch of 1 or 7, bounds of "
              "a batch of 7 images (default `bound_opts`; `[conv_mode=matrix]` where the default failed). "
              f"`violation` = worst amount by which the batch's bounds are beaten by PGD-{out['pgd_steps']} / "
              f"{out['samples']} samples (float64, on the buffer model: the same function); `min gap` = "
              "smallest distance between a bound and the attack's value (how tight the test is); "
              "`batch vs alone` = max |Δ| between an image's bounds in the batch and bounded alone; "
              "`alone viol.` = the same violation for the bounds of each image alone.", "",
              "| case | method | violation | violating bounds (of) | min gap lower / upper | batch vs alone | alone viol. |",
              "|---|---|---|---|---|---|---|"]
    for r in lx["claim"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['method']} | error: {r['error'][:120]} | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['method']} | {max(r['lower_violation'], r['upper_violation']):.3g} | "
                     f"{r['violating_bounds']} ({r['bounds']}) | {r['min_gap_lower']:.3g} / {r['min_gap_upper']:.3g} | "
                     f"{fmt(r.get('batch_vs_alone_max_abs_diff'))} | {fmt(r.get('alone_violation'))} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--lirpa-python", help="an existing interpreter with auto_LiRPA")
    ap.add_argument("--lirpa-src", help="auto_LiRPA source tree or wheel to install (default: PyPI's auto_LiRPA, whose newest "
                         "release, 0.3, does not import on torch 2.13: give a source tree of its repository)")
    ap.add_argument("--skip-lirpa", action="store_true")
    ap.add_argument("--parts", nargs="+", choices=["cost", "lirpa"], default=["cost", "lirpa"],
                    help="run only some parts; a part not run keeps its rows from the previous results JSON "
                         "(with that run's date and load)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 1 thread, PGD-20, 200 samples")
    ap.add_argument("--lirpa-worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lirpa_worker:
        lirpa_worker(*args.lirpa_worker)
        return
    import robustlab

    if args.quick:
        args.repeats, args.threads = 2, args.threads[:1]
    pgd_steps, samples = (20, 200) if args.quick else (100, 1000)
    t_start = time.perf_counter()
    out: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/certify/bounds_cost.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {platform.python_version()}",
        "versions": {"robustlab": robustlab.__version__, "torch": torch.__version__},
        "loadavg_start": os.getloadavg(), "repeats": args.repeats, "threads": args.threads,
        "pgd_steps": pgd_steps, "samples": samples,
        "eps": {"digits": 0.05, "mnist": 0.1},
        "weights": "PyTorch default random initialisation, torch.manual_seed(0); not trained",
    }
    zoo = make_models()
    inputs = load_inputs()
    out["models"] = {k: {"params": v["params"], "data": v["data"]} for k, v in zoo.items()}
    if "cost" in args.parts:
        out["cost"] = cost_part(zoo, inputs, args.threads, args.batches, args.repeats, out["eps"])
    else:
        prev = json.loads((RESULTS / "bounds_cost.json").read_text())
        out["cost"] = prev["cost"]
        out["cost_from"] = {k: prev[k] for k in ("date", "command", "loadavg_start", "loadavg_end", "repeats", "threads")}
        out["cost_from"].update(prev.get("cost_from", {}))
    if "lirpa" not in args.parts:
        args.skip_lirpa = True
    lx: dict[str, Any] = {}
    if not args.skip_lirpa:
        python = lirpa_python(args.lirpa_python, args.lirpa_src, lx)
        if python:
            cc = cross_check(zoo, inputs, python, args.threads[0], args.repeats, out["eps"], pgd_steps, samples)
            th = cc["theirs"]
            lx.update({"version": th["auto_LiRPA"], "torch": th["torch"], "numpy": th["numpy"],
                       "threads": th["threads"], "source": args.lirpa_src or "PyPI",
                       "build_seconds": {k: v["build_seconds"] for k, v in th["cases"].items() if "build_seconds" in v
                                         and "plain" not in k},
                       "worker_seconds": cc["worker_seconds"], "exported": cc["exported"], "raw": cc})
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "bounds_cost.json").write_text(json.dumps({**out, "lirpa": lx}, indent=1))  # raw, first
            lx["compare"], lx["claim"] = compare(cc)
    else:
        lx["error"] = "--skip-lirpa"
    out["lirpa"] = lx
    out["loadavg_end"] = os.getloadavg()
    out["seconds"] = time.perf_counter() - t_start
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bounds_cost.json").write_text(json.dumps(out, indent=1))
    report = write_report(out)
    (RESULTS / "bounds_cost.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
