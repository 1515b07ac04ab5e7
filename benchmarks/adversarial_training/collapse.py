"""Does the Trainer say so when adversarial training collapses? (``training-at-chance``)

    python benchmarks/adversarial_training/collapse.py              # the full check, MNIST split
    python benchmarks/adversarial_training/collapse.py --control    # also the same run with an eps warm-up
    python benchmarks/adversarial_training/collapse.py --train-size 2000 --epochs 2   # a smaller run

PGD-AT at L-inf eps 0.3 on the MNIST split (``robustlab.data.load("mnist", root=...)``: a
seeded stratified 8,000 / 2,000 split of the official t10k images, the training files not
being available here), ``mnist_net``, 5 epochs, batch 100, Adam with a one-cycle schedule
peaking at 5e-3 (the ``mnist`` tier of ``run.py``), 10 PGD steps of eps/4 from a uniform
random start, and **no eps warm-up**. Such a run collapses to a constant classifier (a
plain reference PGD-AT loop does the same); the check is that every epoch past the
warm-up carries the ``training-at-chance`` flag and that ``summary()["flags"]`` has it.
With ``--control`` the same run with a 3-epoch eps warm-up (the tier's setting) is
trained too: it must not be flagged after the warm-up.

Prints one JSON line per run and writes ``results/collapse.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from robustlab import data, models, train
from robustlab.train.monitors import chance_check

HERE = Path(__file__).resolve().parent
MNIST_ROOT = HERE.parents[1].parent / "shared" / "data" / "mnist-t10k"  # ../shared/data/mnist-t10k


def run(train_set: Any, *, epochs: int, eps_warmup: float, seed: int = 0) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.derive_seed("init", seed, "mnist_net"))
        net = models.for_dataset("mnist_net", train_set)
    params: dict[str, Any] = {"eps": 0.3, "steps": 10, "rel_step_size": 0.25}
    if eps_warmup > 0:
        params["eps_warmup"] = eps_warmup
    trainer = train.Trainer(
        net, train.create("pgd-at", **params), epochs=epochs, batch_size=100, optimizer="adam", lr=5e-3,
        schedule="onecycle", seed=seed, progress=False,
    )
    t0 = time.perf_counter()
    history = trainer.fit(train_set)
    seconds = time.perf_counter() - t0
    final = chance_check(net, train_set.x[:2000], train_set.y[:2000])
    return {
        "eps_warmup": eps_warmup,
        "epochs": epochs,
        "train_size": len(train_set),
        "seconds": round(seconds, 1),
        "threads": trainer.summary()["threads"],
        "per_epoch": [
            {
                "epoch": h["epoch"],
                "train_loss": round(h["train_loss"], 4),
                "train_accuracy": round(h.get("train_accuracy", float("nan")), 4),
                "train_adv_accuracy": round(h.get("train_adv_accuracy", float("nan")), 4),
                "flagged": any(f.startswith("training-at-chance") for f in h.get("flags", [])),
            }
            for h in history
        ],
        "summary_flags": trainer.summary()["flags"],
        "final_check_on_2000_train_points": {
            "accuracy": final.accuracy, "majority_share": final.majority_share,
            "top_prediction": final.top_prediction, "top_share": final.top_share,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(MNIST_ROOT))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train-size", type=int, default=None, help="first N points of the training split")
    ap.add_argument("--control", action="store_true", help="also train with a 3-epoch eps warm-up")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    train_set = data.load("mnist", root=args.root)
    if args.train_size:
        train_set = train_set.subset(torch.arange(min(args.train_size, len(train_set))))
    rows = [run(train_set, epochs=args.epochs, eps_warmup=0.0)]
    print(json.dumps(rows[-1]), flush=True)
    if args.control:
        rows.append(run(train_set, epochs=args.epochs, eps_warmup=min(3.0, float(args.epochs))))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "collapse.json").write_text(json.dumps(rows, indent=1))
    collapsed = rows[0]
    ok = all(e["flagged"] for e in collapsed["per_epoch"]) and any(
        f.startswith("training-at-chance") for f in collapsed["summary_flags"]
    )
    print(f"no warm-up: flagged in every epoch and in the summary: {ok}")
    if args.control:
        warm = rows[1]
        late = [e for e in warm["per_epoch"] if e["epoch"] > 3]
        print(f"3-epoch eps warm-up: flagged after the warm-up: {any(e['flagged'] for e in late)}")


if __name__ == "__main__":
    main()
