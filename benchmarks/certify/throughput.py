"""Certification throughput: robustlab's CERTIFY against the limit and the reference's loop.

    python benchmarks/certify/throughput.py              # about 5 minutes on 2 cores
    python benchmarks/certify/throughput.py --quick      # n = 10,000, fewer images

For each model (the digits MLP, 0.08 M multiply-accumulates per sample, and ``mnist_net``
on 28x28 inputs, 0.61 M) and the same batch size and thread count on every side:

- **limit**: ``ceil((n0 + n) / batch)`` forward passes of the model on one fixed batch (no
  noise, no counting): the time CERTIFY cannot beat on this machine;
- **robustlab**: :func:`robustlab.certify.certify_dataset` (per-image seeded noise blocks,
  the copies of several images sharing forward batches, counts on the device);
- **reference**: a direct transcription of the reference implementation's loop
  (``locuslab/smoothing``, ``core.py``: one image at a time, ``x.repeat`` per batch,
  ``randn_like`` noise from the global RNG, predictions copied to the host and counted
  with ``np.bincount``, the Clopper--Pearson bound from SciPy), written here.

Each side runs ``--repeats`` times, interleaved, and the best time counts (the machine is
shared). Reported: seconds per image and robustlab / limit as a fraction of the limit's speed
(target >= 90%). Results go to ``benchmarks/certify/results/throughput.md`` and ``.json``
with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats as sps
from torch import nn

from robustlab import data, models
from robustlab.certify import certify_dataset

HERE = Path(__file__).resolve().parent
MNIST_ROOT = HERE.parents[1].parent / "shared" / "data" / "mnist-t10k"


def limit_seconds(model: nn.Module, x: torch.Tensor, total: int, batch: int) -> float:
    """Seconds for ``ceil(total / batch)`` forward passes on one fixed batch of ``x[0]``."""
    xb = x[:1].repeat(batch, *([1] * (x.dim() - 1)))
    with torch.no_grad():
        model(xb)  # warm-up
        t0 = time.perf_counter()
        for _ in range(math.ceil(total / batch)):
            model(xb).argmax(1)
    return time.perf_counter() - t0


def reference_certify(model: nn.Module, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float,
                      batch: int, k: int) -> tuple[int, float]:
    """The reference's CERTIFY for one image (our transcription of its algorithm)."""

    def sample(num: int) -> np.ndarray:
        counts = np.zeros(k, dtype=int)
        with torch.no_grad():
            remaining = num
            while remaining > 0:
                this = min(batch, remaining)
                remaining -= this
                b = x.repeat((this, *([1] * x.dim())))
                noise = torch.randn_like(b) * sigma
                pred = model(b + noise).argmax(1)
                counts += np.bincount(pred.cpu().numpy(), minlength=k)
        return counts

    c_a = int(sample(n0).argmax())
    n_a = int(sample(n)[c_a])
    p_a = sps.beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0
    if p_a < 0.5:
        return -1, 0.0
    return c_a, float(sigma * sps.norm.ppf(p_a))


def bench_model(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                images: int) -> dict[str, Any]:
    model.eval()
    total = args.n0 + args.n
    xs, ys = x[:images], y[:images]
    t_limit = t_ours = t_ref = math.inf
    for _ in range(args.repeats):  # interleaved, best of the repeats (the machine is shared)
        t_limit = min(t_limit, limit_seconds(model, xs, total, args.batch_size))
        t0 = time.perf_counter()
        res = certify_dataset(model, xs, ys, args.sigma, num_classes=10, n0=args.n0, n=args.n, alpha=args.alpha,
                              batch_size=args.batch_size, seed=0, progress=False)
        t_ours = min(t_ours, (time.perf_counter() - t0) / images)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        ref = [reference_certify(model, xs[i], args.sigma, args.n0, args.n, args.alpha, args.batch_size, 10)
               for i in range(images)]
        t_ref = min(t_ref, (time.perf_counter() - t0) / images)
    agree = float(np.mean([abs(r[1] - float(res.radius[i])) for i, r in enumerate(ref)]))
    return {
        "model": name,
        "images": images,
        "limit_s_per_image": t_limit,
        "robustlab_s_per_image": t_ours,
        "reference_s_per_image": t_ref,
        "robustlab_fraction_of_limit": t_limit / t_ours,
        "reference_fraction_of_limit": t_limit / t_ref,
        "robustlab_speedup_vs_reference": t_ref / t_ours,
        "mean_abs_radius_difference": agree,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats = 10_000, 1
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    digits = data.load("digits", "test")
    mlp = models.create("mlp", num_classes=10, in_channels=1, input_size=8, hidden=[256, 256])
    rows.append(bench_model("mlp (digits 8x8)", mlp, digits.x, digits.y, args, 8 if args.quick else 24))
    if MNIST_ROOT.exists():
        mnist = data.load("mnist", "test", root=str(MNIST_ROOT))
        x, y = mnist.x, mnist.y
    else:  # same shape, for timing only
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    cnn = models.create("mnist_net", num_classes=10, in_channels=1, input_size=28)
    rows.append(bench_model("mnist_net (28x28)", cnn, x, y, args, 2 if args.quick else 6))
    load_after = os.getloadavg()
    out = {
        "settings": {k: v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_after,
        "rows": rows,
    }
    lines = [
        f"# Certification throughput (n0={args.n0}, n={args.n}, batch {args.batch_size}, "
        f"{args.threads} thread(s), torch {torch.__version__})",
        "",
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs); best of "
        f"{args.repeats} interleaved repeats; the limit is forward passes only (no noise drawn)",
        "",
        "| model | images | limit s/img | robustlab s/img | reference s/img | robustlab / limit | "
        "reference / limit | robustlab vs reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['images']} | {r['limit_s_per_image']:.3f} | {r['robustlab_s_per_image']:.3f} | "
            f"{r['reference_s_per_image']:.3f} | {100 * r['robustlab_fraction_of_limit']:.0f}% | "
            f"{100 * r['reference_fraction_of_limit']:.0f}% | {r['robustlab_speedup_vs_reference']:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "throughput.md").write_text(text)
    (res_dir / "throughput.json").write_text(json.dumps(out, indent=2))
    print(text)


if __name__ == "__main__":
    main()
