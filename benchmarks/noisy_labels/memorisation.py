"""The memorisation tier of the noisy-label benchmark: a model that *can* fit the wrong labels.

    python benchmarks/noisy_labels/memorisation.py             # 1 seed: 8 runs, ~10-15 min on one thread
    python benchmarks/noisy_labels/memorisation.py --seeds 3   # seeds 0, 1, 2

The main benchmark (``run.py``) trains a 270k-parameter MLP for ~1,200 steps with weight
decay 1e-2; CE never memorises there, so there is nothing for robust losses to fix. This tier
trains a wide MLP (784-1024-1024-10, 1.9M parameters) on the MNIST t10k split (8,000 train /
2,000 test) with ELR's official CIFAR-10 optimiser (SGD lr 0.02, momentum 0.9, weight decay
1e-3, cosine, batch 128; ``shengliu66/ELR`` ``config_cifar10.json``) for 60 epochs, long
enough that CE's training accuracy on the *noisy* labels passes the share of correct labels
and its test accuracy peaks and then falls (checked and printed per run).

Every run is a robustlab experiment config stored in ``--out``/results.db (keyed by the
config hash; a finished config is not run again). Each epoch's history record gets, from a
Trainer callback:

- ``train_accuracy_flipped``: eval-mode accuracy *w.r.t. the noisy label* on the training
  points whose label was flipped (memorisation: 0 = none of the wrong labels fitted, 1 = all);
- ``train_accuracy_flipped_true``: on the same points, accuracy w.r.t. their original label;
- ``train_accuracy_unflipped``: eval-mode accuracy on the points whose label is correct;
- ``test_accuracy`` (the Trainer's watched test set).

Writes ``memorisation.md`` (tables), ``memorisation.png`` (test accuracy and flipped-label
train accuracy over epochs, per noise rate and method) and ``report-memorisation.html``
(robustlab.report, whose training-curve panels show the keys above) into ``--out``
(default ``benchmarks/noisy_labels/results/memorisation``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "memorisation"
SUITE = "noisy-labels-memorisation"
MNIST_ROOT = "/work/shared/data/mnist-t10k"

#: the shared config: ELR's official CIFAR-10 optimiser on a wide MLP (module docstring).
BASE: dict[str, Any] = {
    "data": {"name": "mnist", "root": MNIST_ROOT},
    "model": {"name": "mlp", "params": {"hidden": [1024, 1024]}},
    "train": {
        "objective": "erm",
        "loss": {"name": "ce"},
        "epochs": 60,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.02,
        "momentum": 0.9,
        "weight_decay": 1e-3,
        "grad_clip": 5.0,  # the APL configs' grad_bound, so that the bounded losses do not collapse
        "schedule": "cosine",
    },
}

#: the methods of the ELR paper's Table 1 ordering, with their CIFAR-10 settings.
METHODS: dict[str, dict[str, Any]] = {
    "ce": {},
    "gce": {"train": {"loss": {"name": "gce", "preset": "cifar10"}}},  # q 0.7
    "sce": {"train": {"loss": {"name": "sce", "preset": "cifar10"}}},  # alpha 0.1, beta 1
    "elr": {"train": {"objective": "elr", "objective_preset": "cifar10"}},  # beta 0.7, lam 3
}
RATES = (0.4, 0.8)


def plan(seeds: list[int]) -> list[tuple[float, str, int, dict[str, Any]]]:
    from robustlab.experiments.config import deep_merge

    out = []
    for seed in seeds:
        for rate in RATES:
            for m, frag in METHODS.items():
                tree = deep_merge(copy.deepcopy(BASE), copy.deepcopy(frag))
                tree.update(
                    name=f"memorisation/{m}/sym-{int(rate * 100)}%/s{seed}", seed=seed,
                    noise={"kind": "symmetric", "rate": rate, "exact": True},
                )
                out.append((rate, m, seed, tree))
    return out


def flipped_callback(train_set: Any, clean_y: Any) -> Any:
    """A Trainer callback adding the flipped/unflipped training accuracies to each record."""
    import torch

    from robustlab.evaluate import clean_accuracy

    flipped = train_set.y != clean_y
    xf, yf, yt = train_set.x[flipped], train_set.y[flipped], clean_y[flipped]
    xu, yu = train_set.x[~flipped], train_set.y[~flipped]

    def cb(trainer: Any, record: dict[str, Any]) -> None:
        with torch.no_grad():
            record["train_accuracy_flipped"] = clean_accuracy(trainer.model, xf, yf)
            record["train_accuracy_flipped_true"] = clean_accuracy(trainer.model, xf, yt)
            record["train_accuracy_unflipped"] = clean_accuracy(trainer.model, xu, yu)

    return cb


def run_one(tree: dict[str, Any], store: Any) -> Any:
    import torch

    from robustlab import data, models
    from robustlab import train as train_mod
    from robustlab.experiments import make_config
    from robustlab.experiments.runner import (
        build_objective,
        execute_run,
        prepare_data,
        test_curve_summary,
    )

    cfg = make_config(tree)

    def work(art: Path) -> dict[str, Any]:
        train_set, _, test_set, noise_info = prepare_data(cfg)
        clean = data.load(cfg.data.name, "train", root=cfg.data.root, seed=cfg.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_mod.derive_seed("init", cfg.seed))
            model = models.for_dataset(cfg.model.name, train_set, **cfg.model.params)
        trainer = train_mod.Trainer(
            model, build_objective(cfg), seed=cfg.seed, checkpoint_dir=art / "train", progress=False,
            callbacks=[flipped_callback(train_set, clean.y)], **cfg.train.trainer_kwargs(),
        )
        t0 = time.perf_counter()
        history = trainer.fit(train_set, test=test_set)
        (art / "train" / "last.pt").unlink(missing_ok=True)
        return {
            "train_seconds": time.perf_counter() - t0,
            "history": history,
            "noise": noise_info,
            "training": trainer.summary(),
            **test_curve_summary(history),
        }

    return execute_run(store, cfg.hash(), cfg.label(), cfg.to_dict(), work, suite=SUITE)


def memorised(history: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    """Did the run memorise? Noisy-label train accuracy past the clean share (1 - rate) and a
    test accuracy that falls after its peak."""
    acc = [h["train_accuracy_unflipped"] * (1 - rate) + h["train_accuracy_flipped"] * rate for h in history]
    test = [h["test_accuracy"] for h in history]
    peak = max(range(len(test)), key=lambda i: (test[i], -i))
    return {
        "noisy_train_acc_last": acc[-1],
        "passes_clean_share": acc[-1] > 1 - rate,
        "peak_epoch": peak + 1,
        "drop": test[peak] - test[-1],
    }


def tables(rows: list[tuple[float, str, int, Any]], seeds: list[int]) -> str:
    def cell(vals: list[float]) -> str:
        if not vals:
            return "—"
        m = 100 * statistics.fmean(vals)
        return f"{m:.1f}" + (f" ± {100 * statistics.stdev(vals):.1f}" if len(vals) > 1 else "")

    lines = [
        f"Seeds {seeds}; mean ± std (%) where more than one seed. `flipped→noisy`: train accuracy on the "
        f"flipped points w.r.t. their noisy label at the last epoch (memorisation); `peak`: epoch of the best "
        f"test accuracy.",
        "",
        "| noise | method | best test | last test | best − last | peak epoch | flipped→noisy (last) | noisy-label train acc (last) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rate in RATES:
        for m in METHODS:
            recs = [r for (rt, mm, _, r) in rows if rt == rate and mm == m]
            if not recs:
                continue
            best = [r.metrics["test_accuracy_best"] for r in recs]
            last = [r.metrics["test_accuracy_last"] for r in recs]
            gap = [b - a for b, a in zip(best, last)]
            peaks = [memorised(r.metrics["history"], rate)["peak_epoch"] for r in recs]
            flip = [r.metrics["history"][-1]["train_accuracy_flipped"] for r in recs]
            noisy = [memorised(r.metrics["history"], rate)["noisy_train_acc_last"] for r in recs]
            lines.append(
                f"| sym-{int(rate * 100)}% | {m} | {cell(best)} | {cell(last)} | {cell(gap)} | "
                f"{'/'.join(map(str, peaks))} | {cell(flip)} | {cell(noisy)} |"
            )
    lines.append("")
    for rate in RATES:
        for which in ("last", "best"):
            means = {}
            for m in METHODS:
                vals = [r.metrics[f"test_accuracy_{which}"] for (rt, mm, _, r) in rows if rt == rate and mm == m]
                if vals:
                    means[m] = statistics.fmean(vals)
            if len(means) == len(METHODS):
                order = " < ".join(f"{m} {100 * v:.1f}" for m, v in sorted(means.items(), key=lambda kv: kv[1]))
                lines.append(f"- Ordering at sym-{int(rate * 100)}% ({which} epoch, ascending): {order} "
                             f"(ELR paper: ce < gce ≈ sce < elr).")
    return "\n".join(lines) + "\n"


def plot(rows: list[tuple[float, str, int, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(RATES), figsize=(5.2 * len(RATES), 7.0), squeeze=False, sharex=True)
    colours = dict(zip(METHODS, ("tab:red", "tab:blue", "tab:green", "tab:purple")))
    for j, rate in enumerate(RATES):
        for m in METHODS:
            recs = [r for (rt, mm, _, r) in rows if rt == rate and mm == m]
            for i, r in enumerate(recs):
                h = r.metrics["history"]
                ep = [e["epoch"] for e in h]
                kw = {"color": colours[m], "linewidth": 1.3, "alpha": 1.0 if i == 0 else 0.45,
                      "label": m if i == 0 else None}
                axes[0][j].plot(ep, [100 * e["test_accuracy"] for e in h], **kw)
                axes[1][j].plot(ep, [100 * e["train_accuracy_flipped"] for e in h], **kw)
        axes[0][j].set_title(f"symmetric {int(rate * 100)}%: test accuracy (%)")
        axes[1][j].set_title(f"symmetric {int(rate * 100)}%: train acc. on flipped labels (%)")
        axes[1][j].set_xlabel("epoch")
        for a in (axes[0][j], axes[1][j]):
            a.grid(alpha=0.3)
        axes[0][j].legend(fontsize="small")
    fig.suptitle("MNIST t10k split, MLP 1024-1024, 60 epochs (ELR's CIFAR-10 optimiser)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1); default 1")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default: %(default)s)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import robustlab.train.noisy  # noqa: F401  (registers elr)
    from robustlab.experiments import ResultsStore
    from robustlab.report import write_report

    seeds = list(range(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(args.out)
    planned = plan(seeds)
    rows = []
    t0 = time.perf_counter()
    for k, (rate, m, seed, tree) in enumerate(planned, 1):
        rec = run_one(tree, store)
        mem = memorised(rec.metrics["history"], rate)
        rows.append((rate, m, seed, rec))
        print(
            f"[{k}/{len(planned)} {time.perf_counter() - t0:5.0f}s] sym-{int(rate * 100)}% {m} s{seed}: best "
            f"{100 * rec.metrics['test_accuracy_best']:.1f} (epoch {mem['peak_epoch']}) last "
            f"{100 * rec.metrics['test_accuracy_last']:.1f}; flipped->noisy "
            f"{100 * rec.metrics['history'][-1]['train_accuracy_flipped']:.1f}%; noisy-label train acc "
            f"{100 * mem['noisy_train_acc_last']:.1f}% ({'past' if mem['passes_clean_share'] else 'below'} the "
            f"clean share {100 * (1 - rate):.0f}%)", flush=True,
        )
    text = tables(rows, seeds)
    (args.out / "memorisation.md").write_text(text)
    plot(rows, args.out / "memorisation.png")
    write_report([r.to_dict() for (_, _, _, r) in rows], args.out / "report-memorisation.html",
                 title="robustlab noisy-label benchmark: memorisation tier")
    print(text)
    print(f"wrote {args.out / 'memorisation.md'}, memorisation.png, report-memorisation.html "
          f"({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
