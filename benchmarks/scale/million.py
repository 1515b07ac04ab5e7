"""A million points: a small MNIST model evaluated on 10^6 generated points with the sharded
evaluation path (memory-mapped uint8 shards, the process-pool backend), on 1 and 2 workers.

    python benchmarks/scale/million.py generate --n 1000000      # once: data/x-<N>.npy, y-<N>.npy
    python benchmarks/scale/million.py train                     # once: the model (MLP on the MNIST split)
    python benchmarks/scale/million.py run --n 100000 --workers 2 --attack pgd   # one measurement (JSON line)
    python benchmarks/scale/million.py all                       # the matrix in README.md -> results/million.json

Points: the 2,000-image test part of the MNIST t10k split (``robustlab.data.load("mnist",
"test", root=/work/shared/data/mnist-t10k)``) repeated N / 2,000 times; copy ``r > 0`` of the
split is shifted by a seeded per-image (dx, dy) in [-2, 2]^2 pixels, its contrast scaled by
U(0.7, 1) and seeded Gaussian noise (sigma U(0, 0.08)) added, clipped to [0, 1] and stored as
uint8 (the point source divides by 255 on read). Copy r is drawn from ``default_rng([seed, r])``,
so the first N points of a larger set are the smaller set. 10^6 points are 784 MB of uint8.

Every measurement runs in a fresh process (so peak RSS is its own): the driver's peak RSS is
``getrusage(RUSAGE_SELF)`` and the workers' ``getrusage(RUSAGE_CHILDREN)`` after the pool is
closed (the largest single child). Points/s is measured after the pool's workers have started
and imported torch (a warm pool), over the whole ``evaluate_sharded`` call (merging included).
Every worker runs one torch thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
MNIST_ROOT = os.environ.get("ROBUSTLAB_MNIST", "/work/shared/data/mnist-t10k")
SEED = 0
EPS = 0.1
CHUNK = 10_000
MEASUREMENTS = {
    # attack name -> (registry name, params)
    "fast": ("fast", {}),
    "pgd": ("pgd", {"steps": 5}),
    "fgsm": ("fgsm", {}),
}


def _paths(n: int) -> tuple[Path, Path]:
    return DATA / f"x-{n}.npy", DATA / f"y-{n}.npy"


def generate(n: int) -> None:
    """Write ``n`` points as memory-mapped uint8 ``.npy`` (written once; an existing set is kept)."""
    import torch

    from robustlab import data

    xp, yp = _paths(n)
    if xp.exists() and yp.exists():
        print(f"{xp} exists; kept")
        return
    DATA.mkdir(parents=True, exist_ok=True)
    base = data.load("mnist", "test", root=MNIST_ROOT, seed=SEED)
    bx = base.x.numpy()[:, 0]  # (2000, 28, 28) float in [0, 1]
    by = base.y.numpy().astype(np.int64)
    m = len(bx)
    tmp_x, tmp_y = xp.with_suffix(".tmp.npy"), yp.with_suffix(".tmp.npy")
    x = np.lib.format.open_memmap(tmp_x, mode="w+", dtype=np.uint8, shape=(n, 1, 28, 28))
    y = np.lib.format.open_memmap(tmp_y, mode="w+", dtype=np.int64, shape=(n,))
    padded = np.pad(bx, ((0, 0), (2, 2), (2, 2)))
    t0 = time.perf_counter()
    for r in range((n + m - 1) // m):
        k = min(m, n - r * m)
        if r == 0:
            img = bx[:k]
        else:
            rng = np.random.default_rng([SEED, r])
            dx, dy = rng.integers(-2, 3, size=(2, m))
            rows = (np.arange(28)[None, :] + 2 - dy[:, None])[:, :, None]
            cols = (np.arange(28)[None, :] + 2 - dx[:, None])[:, None, :]
            img = padded[np.arange(m)[:, None, None], rows, cols]
            img = img * rng.uniform(0.7, 1.0, size=(m, 1, 1))
            img = img + rng.normal(size=img.shape) * rng.uniform(0.0, 0.08, size=(m, 1, 1))
            img = img[:k]
        x[r * m: r * m + k, 0] = np.clip(np.rint(np.clip(img, 0, 1) * 255), 0, 255).astype(np.uint8)
        y[r * m: r * m + k] = by[:k]
    x.flush()
    y.flush()
    del x, y
    os.replace(tmp_x, xp)
    os.replace(tmp_y, yp)
    print(f"wrote {n} points to {xp} ({xp.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    del torch


def model_path() -> Path:
    return RESULTS / "model.safetensors"


def train() -> None:
    """A small MLP (hidden [256]) trained for 3 epochs on the MNIST split's training part."""
    import shutil

    from robustlab.experiments import ResultsStore, make_config, run_experiment

    cfg = make_config({
        "seed": SEED,
        "data": {"name": "mnist", "root": MNIST_ROOT},
        "model": {"name": "mlp", "params": {"hidden": [256]}},
        "train": {"epochs": 3, "batch_size": 128},
    })
    store = ResultsStore(RESULTS / "train-store")
    rec = run_experiment(cfg, store, progress=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store.root / "artifacts" / rec.id / "model.safetensors", model_path())
    print(f"model: {model_path()} (clean accuracy on the split's test part {rec.metrics['clean_accuracy']:.4f})")


def _warm(_: int) -> int:
    """A task that makes a pool worker import the evaluation path (and hold it for a moment)."""
    import robustlab.evaluate.sharded  # noqa: F401

    time.sleep(1.0)
    return os.getpid()


def run_one(n: int, workers: int, attack: str) -> dict:
    """One measurement, in this process: a warm pool of ``workers`` processes, then the timed evaluation."""
    import shutil
    import tempfile

    from robustlab.evaluate import Measurement
    from robustlab.evaluate.sharded import ModelSource, PointSource, evaluate_sharded
    from robustlab.experiments.backends import get_backend
    from robustlab.models import load_model, weights_sha256

    xp, yp = _paths(n)
    sha = weights_sha256(load_model(model_path()))
    name, params = MEASUREMENTS[attack]
    m = Measurement(name, "linf", [EPS], dict(params), None, "cheap")
    work = Path(tempfile.mkdtemp(prefix="rl-million-"))
    backend = get_backend("pool", workers=workers, threads_per_worker=1)
    try:
        pids = {pid for _, pid in backend.run(_warm, list(range(workers)))}
        t0 = time.perf_counter()
        marks: list[float] = []
        ev = evaluate_sharded(ModelSource(weights=str(model_path()), sha256=sha),
                              PointSource(x_path=str(xp), y_path=str(yp)), [m], chunk_size=CHUNK, seed=SEED,
                              batch_size=500, backend=backend, workdir=work, num_classes=10, progress=False,
                              on_chunk=lambda c, out: marks.append(time.perf_counter() - t0))
        seconds = time.perf_counter() - t0
    finally:
        backend.close()
        shutil.rmtree(work, ignore_errors=True)
    met = ev.metrics()
    row = met["robust"][0]
    return {
        "n": n, "workers": workers, "attack": attack, "params": params, "eps": EPS, "chunk_size": CHUNK,
        "seconds": round(seconds, 2), "points_per_s": round(n / seconds, 1),
        "first_chunk_s": round(marks[0], 2), "last_chunk_s": round(marks[-1], 2),
        "clean_accuracy": met["clean_accuracy"], "robust_accuracy": row["accuracy"],
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "worker_pids": len(pids),
        "load_before": os.getloadavg()[0],
    }


def _subprocess(n: int, workers: int, attack: str) -> dict:
    load = os.getloadavg()
    out = subprocess.run([sys.executable, __file__, "run", "--n", str(n), "--workers", str(workers),
                          "--attack", attack], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["loadavg_1_5_15_before"] = [round(v, 2) for v in load]
    print(json.dumps(res), flush=True)
    return res


def run_all(plan: list[tuple[int, int, str]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / "million.json"
    done = json.loads(out_path.read_text()) if out_path.exists() else []
    for n, w, a in plan:
        for nn in {n, 1_000_000}:
            if not _paths(nn)[0].exists():
                generate(nn)
        res = _subprocess(n, w, a)
        res["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        done.append(res)
        out_path.write_text(json.dumps(done, indent=1))


def _plan(text: str) -> list[tuple[int, int, str]]:
    """``N:WORKERS:ATTACK,...``"""
    out = []
    for part in text.split(","):
        n, w, a = part.split(":")
        out.append((int(float(n)), int(w), a))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--n", type=int, default=1_000_000)
    sub.add_parser("train")
    r = sub.add_parser("run")
    r.add_argument("--n", type=int, required=True)
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--attack", choices=sorted(MEASUREMENTS), default="pgd")
    a = sub.add_parser("all")
    a.add_argument("--plan", default="1e5:1:pgd,1e5:2:pgd,1e5:1:fast,1e5:2:fast,1e6:2:pgd",
                   help="N:WORKERS:ATTACK,... (each in a fresh process; appended to results/million.json)")
    args = ap.parse_args()
    if args.cmd == "generate":
        generate(args.n)
    elif args.cmd == "train":
        train()
    elif args.cmd == "run":
        print(json.dumps(run_one(args.n, args.workers, args.attack)))
    else:
        if not model_path().exists():
            train()
        run_all(_plan(args.plan))


if __name__ == "__main__":
    main()
