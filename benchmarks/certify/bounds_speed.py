# ruff: noqa: B007, B023  (the timed closures run inside the iteration that defines them)
"""Bound computation time relative to one forward pass (issue 11's cost targets).

CPU, 1 thread; best of N interleaved repetitions per (model, batch); prints the load.
``python benchmarks/certify/bounds_speed.py [--reps 5]``.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from robustlab import models
from robustlab.certify import bounds as B


def best_times(fns: dict, reps: int) -> dict:
    best = {k: float("inf") for k in fns}
    for k, f in fns.items():  # warm-up
        f()
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--inner", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    nets = {
        "mlp": models.create("mlp", num_classes=10, in_channels=1, input_size=(28, 28)),
        "mnist_net": models.create("mnist_net", num_classes=10, in_channels=1, input_size=(28, 28)),
    }
    bounded = hasattr(B, "BoundedModel")
    print(f"{'model':10s} {'B':>3s} {'fwd ms':>7s} " + " ".join(f"{k:>14s}" for k in ("ibp", "cibp-lo", "cibp-both")))
    for name, net in nets.items():
        net.eval()
        for batch in (64, 1):
            x = torch.rand(batch, 1, 28, 28)
            y = torch.randint(0, 10, (batch,))
            C = B.margin_spec(y, 10)
            m = B.BoundedModel(net) if bounded else net
            inner = args.inner

            def rep(f):
                def g():
                    for _ in range(inner):
                        f()
                return g

            def fwd():
                with torch.no_grad():
                    net(x)

            def ibp():
                with torch.no_grad():
                    B.compute_bounds(m, x, 0.1, "linf", "ibp", C)

            def cibp_lo():
                with torch.no_grad():
                    B.compute_bounds(m, x, 0.1, "linf", "crown-ibp", C, bound_upper=False, intersect_ibp=False)

            def cibp_both():
                with torch.no_grad():
                    B.compute_bounds(m, x, 0.1, "linf", "crown-ibp", C)

            t = best_times({"fwd": rep(fwd), "ibp": rep(ibp), "lo": rep(cibp_lo), "both": rep(cibp_both)}, args.reps)
            f = t["fwd"]
            print(f"{name:10s} {batch:3d} {1e3 * f / inner:7.3f} "
                  + " ".join(f"{1e3 * t[k] / inner:7.2f}ms {t[k] / f:4.1f}x" for k in ("ibp", "lo", "both")))
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
