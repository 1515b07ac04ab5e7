"""Robust conformal prediction on MNIST: RSCP+ (with and without PTT) against plain split
conformal, clean and under the L2 attack on the conformal objective.

One command (from the repository root, in robustlab's environment)::

    python benchmarks/certify/conformal.py [--threads 2] [--splits 20] [--n-s 256]

Protocol (after the official ``RSCP_exp.py`` of Yan, Romano & Weng 2024, scaled down to
run on two CPU cores in a few minutes):

- data: ``robustlab.data.load("mnist", root=...)`` on the official t10k files in
  ``/work/shared/data/mnist-t10k`` (or ``$ROBUSTLAB_DATA/mnist``): robustlab's seeded
  8,000 / 2,000 split of the 10,000 test images. Skipped with a message if absent;
- model: ``mlp`` (784-256-256-10) trained with Gaussian noise augmentation at
  ``sigma = 2 delta = 0.25`` (the ``gaussian`` objective of ``robustlab.train``);
- conformal: alpha 0.1, delta 0.125, sigma 0.25, n_s 256, beta 0.001, Hoeffding bound;
  500 of the 2,000 test images are the holdout (PTT's reference; joined to every
  calibration set without PTT, as officially); the other 1,500 are split at random
  into 750 calibration / 750 test points ``--splits`` times (seeded);
- attack: :func:`conformal_attack`, 20 normalised L2 steps of ``2 delta / 20`` on the
  true label's score (for RSCP+: smoothed, 16 noise draws per step); split conformal is
  attacked on its own base model, RSCP+ (with or without PTT) on the smoothed score.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from robustlab import data, models, train
from robustlab.certify.conformal import (
    RSCPPlus,
    SplitConformal,
    conformal_attack,
    evaluate_conformal,
)
from robustlab.errors import DataNotFoundError

MNIST_ROOT = Path("/work/shared/data/mnist-t10k")


def load_mnist() -> tuple[data.Dataset, data.Dataset] | None:
    root: Path | None = MNIST_ROOT if MNIST_ROOT.is_dir() else None
    try:
        return data.load("mnist", "train", root=root), data.load("mnist", "test", root=root)
    except DataNotFoundError as exc:
        print(f"skipped: MNIST not found ({exc})")
        return None


def train_model(tr: data.Dataset, sigma: float, epochs: int) -> tuple[torch.nn.Module, str]:
    net = models.create("mlp", num_classes=10, in_channels=1, input_size=(28, 28))
    obj, how = train.create("gaussian", sigma=sigma), f"objective 'gaussian' (sigma={sigma})"
    trainer = train.Trainer(net, obj, epochs=epochs, batch_size=128, optimizer="adam", lr=1e-3,
                            weight_decay=0.0, schedule="cosine", seed=0, progress=False, threads=None)
    trainer.fit(tr)
    return net, how


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--n-s", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--eot", type=int, default=16)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    alpha, delta, beta = 0.1, 0.125, 0.001
    sigma = 2 * delta
    print(f"torch {torch.__version__}, python {platform.python_version()}, threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()}")
    loaded = load_mnist()
    if loaded is None:
        return 0
    tr, te = loaded
    t0 = time.perf_counter()
    model, how = train_model(tr, sigma, args.epochs)
    model.eval()
    with torch.no_grad():
        acc = float((model(te.x).argmax(1) == te.y).float().mean())
        g = torch.Generator().manual_seed(1)
        noisy_acc = float((model(te.x + sigma * torch.randn(te.x.shape, generator=g)).argmax(1) == te.y).float().mean())
    print(f"model: mlp, {how}, {args.epochs} epochs on {len(tr.x)} images in "
          f"{time.perf_counter() - t0:.0f} s; test accuracy {acc:.3f} clean, {noisy_acc:.3f} under noise")

    perm = torch.randperm(len(te.x), generator=torch.Generator().manual_seed(2))
    hold, rest = perm[:500], perm[500:]
    holdout = (te.x[hold], te.y[hold])
    x, y = te.x[rest], te.y[rest]
    n_cal = len(x) // 2

    attacked: dict[str, torch.Tensor] = {}
    rows = []
    for score in ("aps", "hps"):
        methods = [
            ("split conformal", SplitConformal(score, alpha)),
            ("RSCP+", RSCPPlus(score, alpha, delta=delta, sigma=sigma, n_s=args.n_s, beta=beta)),
            ("RSCP+ & PTT", RSCPPlus(score, alpha, delta=delta, sigma=sigma, n_s=args.n_s, beta=beta, ptt=True)),
        ]
        for name, cp in methods:
            t1 = time.perf_counter()
            key = f"{score}-{'plain' if name == 'split conformal' else 'smoothed'}"
            if key not in attacked:
                attacked[key] = conformal_attack(cp, model, x, y, delta=delta, eot_samples=args.eot,
                                                 generator=torch.Generator().manual_seed(3))
            ev = evaluate_conformal(cp, model, x, y, n_cal=n_cal, n_splits=args.splits, seed=0,
                                    x_attacked=attacked[key],
                                    holdout=holdout)
            rows.append((score.upper(), name, ev, time.perf_counter() - t1))
            print(f"  done {score} {name} in {rows[-1][3]:.0f} s", file=sys.stderr)

    print(f"\nMNIST (robustlab t10k split), alpha={alpha}, delta={delta}, sigma={sigma}, "
          f"n_s={args.n_s}, beta={beta}, Hoeffding; {args.splits} splits of {len(x)} points "
          f"({n_cal} calibration + 500 holdout)")
    head = f"{'score':5} {'method':16} {'clean cov':>14} {'clean size':>13} {'attacked cov':>14} {'att. size':>13} {'time':>6}"
    print(head)
    print("-" * len(head))
    for score, name, ev, secs in rows:
        print(f"{score:5} {name:16} {ev.coverage_mean:8.3f}±{ev.coverage_std:.3f} "
              f"{ev.size_mean:7.2f}±{ev.size_std:.2f} {ev.attacked_coverage_mean:8.3f}±"
              f"{ev.attacked_coverage_std:.3f} {ev.attacked_size_mean:7.2f}±{ev.attacked_size_std:.2f} "
              f"{secs:5.0f}s")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
