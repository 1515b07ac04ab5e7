"""Adversarial training benchmark: every objective, one budget, two tiers.

    python benchmarks/adversarial_training/run.py                 # both tiers
    python benchmarks/adversarial_training/run.py --tier quick    # digits, minutes on 2 CPU cores
    python benchmarks/adversarial_training/run.py --tier mnist    # real MNIST t10k split, eps 0.3
    python benchmarks/adversarial_training/run.py --tier mnist --epochs 1 --standard-subset 50   # smoke check

Writes ``results_<tier>.csv`` (one row per method x model x seed) and ``results.md``
(means and standard deviations over seeds, timing relative to ERM, the issue's targets)
into ``--out`` (default: ``benchmarks/adversarial_training/results``). See README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from robustlab import data, evaluate, models, train
from robustlab.attacks import ThreatModel

HERE = Path(__file__).resolve().parent
MNIST_ROOT = HERE.parents[1].parent / "shared" / "data" / "mnist-t10k"  # ../shared/data/mnist-t10k

# -- the methods: registry name -> objective parameters (threat added per tier) -------------
# Multi-step methods use the same inner attack budget (steps, step eps/4) so that the
# comparison is on equal footing; every other parameter is the objective's default
# (taken from each method's official code, see robustlab.train.adversarial).
def methods(steps: int) -> dict[str, tuple[str, dict[str, Any]]]:
    multi = {"steps": steps, "rel_step_size": 0.25}
    return {
        "erm": ("erm", {}),
        "fgsm-rs": ("fgsm-rs", {}),
        "gradalign": ("gradalign", {}),
        "aaer": ("aaer", {}),
        "pgd-at": ("pgd-at", dict(multi)),
        "trades": ("trades", dict(multi)),
        "mart": ("mart", dict(multi)),
        "awp": ("awp", dict(multi, base="pgd-at")),
        "done": ("done", dict(multi)),
        "adv-comp-sum": ("adv-comp-sum", dict(multi)),
    }


TIERS: dict[str, dict[str, Any]] = {
    # digits: 1,437 train / 360 test 8x8 images (fixed stratified split), L-inf eps 0.1
    "quick": dict(
        dataset="digits", root=None, eps=0.1, models=["mlp", "mnist_net"], seeds=3, epochs=10,
        batch_size=64, optimizer="sgd", lr=0.05, schedule="cosine", eps_warmup=0.0, steps=10,
        pgd_restarts=10, standard_subset=100, standard_seeds=1,
    ),
    # real MNIST t10k images: seeded stratified 8,000 / 2,000 split, L-inf eps 0.3
    "mnist": dict(
        dataset="mnist", root=str(MNIST_ROOT), eps=0.3, models=["mnist_net"], seeds=1, epochs=20,
        batch_size=100, optimizer="adam", lr=5e-3, schedule="onecycle", eps_warmup=3.0, steps=10,
        pgd_restarts=3, standard_subset=1000, standard_seeds=1,
    ),
}


def objective_for(method: str, tier: dict[str, Any], epochs: int) -> Any:
    name, params = methods(tier["steps"])[method]
    if name == "erm":
        return train.create("erm")
    params = dict(params, eps=tier["eps"])
    warm = min(tier["eps_warmup"], float(epochs))
    if warm > 0:
        params["eps_warmup"] = warm
    if name == "aaer" and epochs < 5:  # its FGSM step ramps over 5 epochs (official SVHN recipe)
        params["step_warmup"] = float(epochs)
    return train.create(name, **params)


def epoch_seconds(history: list[dict[str, Any]]) -> float:
    """Median training time of an epoch (validation and checks excluded)."""
    secs = [h["seconds"] for h in history]
    return statistics.median(secs) if secs else float("nan")


def run_one(tier_name: str, tier: dict[str, Any], method: str, model_name: str, seed: int, args: argparse.Namespace,
            train_set: Any, test_set: Any) -> dict[str, Any]:
    epochs = args.epochs or tier["epochs"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.derive_seed("init", seed, model_name))
        net = models.for_dataset(model_name, train_set)
    obj = objective_for(method, tier, epochs)
    trainer = train.Trainer(
        net, obj, epochs=epochs, batch_size=tier["batch_size"], optimizer=tier["optimizer"], lr=tier["lr"],
        schedule=tier["schedule"], seed=seed, device=args.device, progress=False,
    )
    t0 = time.perf_counter()
    history = trainer.fit(train_set)
    train_wall = time.perf_counter() - t0
    net = net.cpu().eval()
    threat = ThreatModel("linf", tier["eps"])
    clean = evaluate.clean_accuracy(net, test_set.x, test_set.y)
    t0 = time.perf_counter()
    pgd = evaluate.robust_accuracy(
        net, test_set.x, test_set.y, threat, "pgd", steps=50, restarts=tier["pgd_restarts"],
        seed=train.derive_seed("pgd-eval", seed),
    )
    pgd_s = time.perf_counter() - t0
    fgsm = evaluate.robust_accuracy(net, test_set.x, test_set.y, threat, "fgsm")
    n_std = min(args.standard_subset or tier["standard_subset"], len(test_set))
    order = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(train.derive_seed("subset", 0)))
    sub = order[:n_std].sort().values
    std_acc, std_s = float("nan"), 0.0
    if seed < (args.standard_seeds or tier["standard_seeds"]):
        t0 = time.perf_counter()
        std = evaluate.robust_accuracy(net, test_set.x[sub], test_set.y[sub], threat, args.ensemble,
                                       seed=train.derive_seed("std-eval", seed))
        std_s = time.perf_counter() - t0
        std_acc = std.accuracy
    summary = trainer.summary()
    row = {
        "tier": tier_name,
        "method": method,
        "model": model_name,
        "seed": seed,
        "epochs": epochs,
        "epochs_trained": summary["epochs_trained"],
        "clean_acc": clean,
        "fgsm_acc": fgsm.accuracy,
        "pgd50_acc": pgd.accuracy,
        f"{args.ensemble}_acc": std_acc,
        f"{args.ensemble}_points": n_std,
        f"pgd_on_{args.ensemble}_subset": float(pgd.robust[sub].float().mean()),
        "epoch_s": epoch_seconds(history),
        "train_wall_s": train_wall,
        "pgd_eval_s": pgd_s,
        f"{args.ensemble}_eval_s": std_s,
        "stopped": summary["stop_reason"] or "",
        "co_fired": any(h.get("co_detected") for h in history),
        "aaer_count_last": history[-1].get("train_aaer_count", ""),
        "done_entropy_last": history[-1].get("train_done_entropy", ""),
        "train_adv_acc_last": history[-1].get("train_adv_accuracy", ""),
    }
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def mean_std(vals: list[float]) -> str:
    vals = [v for v in vals if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{100 * vals[0]:.1f}"
    return f"{100 * statistics.mean(vals):.1f} ± {100 * statistics.stdev(vals):.1f}"


def summarise(tier_name: str, tier: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace,
              cost: tuple[float, float] | None = None) -> list[str]:
    ens = args.ensemble
    out = [f"## Tier `{tier_name}`", ""]
    out.append(
        f"Data `{tier['dataset']}`; L-inf eps = {tier['eps']:g}; {rows[0]['epochs'] if rows else '?'} epochs per method, "
        f"batch {tier['batch_size']}, {tier['optimizer']} lr {tier['lr']:g} ({tier['schedule']}); eps warm-up "
        f"{tier['eps_warmup']:g} epochs; multi-step methods: {tier['steps']} steps of eps/4. Evaluation: PGD-50 "
        f"(step 2.5 eps/50, uniform random start) x {tier['pgd_restarts']} restarts on the whole test split; `{ens}` on "
        f"{rows[0][f'{ens}_points'] if rows else '?'} fixed test points (first "
        f"{args.standard_seeds or tier['standard_seeds']} seed(s)). Accuracies in %, mean ± sd over seeds; "
        f"epoch s = median training time of an epoch (validation and checks excluded)."
    )
    out.append("")
    out.append(f"| method | model | clean | PGD-50 | `{ens}` | PGD-50 on the `{ens}` points | epoch s | x ERM epoch | notes |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["method"], r["model"]) for r in rows}, key=lambda k: (k[1], list(methods(1)).index(k[0])))
    erm_time = {m: statistics.mean([r["epoch_s"] for r in rows if r["method"] == "erm" and r["model"] == m] or [float("nan")])
                for m in {r["model"] for r in rows}}
    for method, model in keys:
        rs = [r for r in rows if r["method"] == method and r["model"] == model]
        t = statistics.mean(r["epoch_s"] for r in rs)
        notes = []
        if any(r["co_fired"] for r in rs):
            notes.append(f"CO check fired in {sum(r['co_fired'] for r in rs)}/{len(rs)} runs")
        if any(r["stopped"] for r in rs):
            notes.append("stopped early")
        out.append(
            f"| {method} | {model} | {mean_std([r['clean_acc'] for r in rs])} | {mean_std([r['pgd50_acc'] for r in rs])} "
            f"| {mean_std([r[f'{ens}_acc'] for r in rs])} | {mean_std([r[f'pgd_on_{ens}_subset'] for r in rs])} "
            f"| {t:.3f} | {t / erm_time[model]:.1f} | {'; '.join(notes)} |"
        )
    out.append("")
    if tier_name == "mnist":
        out += targets(rows, tier, ens, erm_time, cost)
    return out


def cost_ratio(tier: dict[str, Any], train_set: Any, args: argparse.Namespace, repeats: int = 3) -> tuple[float, float]:
    """Seconds of an ERM epoch and of a PGD-k AT epoch of the tier's first model, timed
    alternately ``repeats`` times in this process (minimum of each), so that load from
    other processes affects both alike."""
    model_name = (args.models or tier["models"])[0]
    times: dict[str, list[float]] = {"erm": [], "pgd-at": []}
    for _ in range(repeats):
        for method in ("erm", "pgd-at"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                net = models.for_dataset(model_name, train_set)
            obj = train.create("erm") if method == "erm" else train.create(
                "pgd-at", eps=tier["eps"], steps=tier["steps"], rel_step_size=0.25
            )
            h = train.Trainer(net, obj, epochs=1, batch_size=tier["batch_size"], optimizer=tier["optimizer"],
                              lr=tier["lr"], schedule="constant", device=args.device, progress=False).fit(train_set)
            times[method].append(h[0]["seconds"])
    return min(times["erm"]), min(times["pgd-at"])


def targets(rows: list[dict[str, Any]], tier: dict[str, Any], ens: str, erm_time: dict[str, float],
            cost: tuple[float, float] | None = None) -> list[str]:
    """The issue's targets for the MNIST tier, checked on these numbers."""
    lines = ["### Targets (issue 4)", ""]
    for m in ("pgd-at", "trades"):
        accs = [r[f"{ens}_acc"] for r in rows if r["method"] == m and not math.isnan(r[f"{ens}_acc"])]
        if accs:
            a = statistics.mean(accs)
            lines.append(f"- {m}: robust accuracy under `{ens}` {100 * a:.1f}% (target >= 85%): {'met' if a >= 0.85 else 'NOT met'}.")
    fg = [r for r in rows if r["method"] == "fgsm-rs"]
    if fg:
        collapsed = [r for r in fg if r["pgd50_acc"] < 0.10 and r["fgsm_acc"] > 0.50]
        lines.append(
            f"- fgsm-rs: final FGSM accuracy {mean_std([r['fgsm_acc'] for r in fg])}%, PGD-50 accuracy "
            f"{mean_std([r['pgd50_acc'] for r in fg])}% (catastrophically overfit = PGD-50 below 10% while FGSM "
            f"stays above 50%, the signature of Wong et al. 2020): {'NOT met' if collapsed else 'met'}; the CO "
            f"check fired in {sum(r['co_fired'] for r in fg)}/{len(fg)} runs."
        )
    k = tier["steps"]
    if cost is not None:
        erm_s, pgd_s = cost
        ratio = pgd_s / erm_s
        lines.append(
            f"- PGD-{k} AT epoch {pgd_s:.2f} s = {ratio:.2f} x ERM epoch {erm_s:.2f} s (each the fastest of 3 "
            f"alternating timings; target <= 1.1 x (k+1) = {1.1 * (k + 1):.1f}): "
            f"{'met' if ratio <= 1.1 * (k + 1) else 'NOT met'}."
        )
    lines.append("")
    return lines


def gpu_timing(args: argparse.Namespace) -> list[str]:
    """PGD-10 AT epoch of preact_resnet18 on CIFAR-shaped random data, with and without
    autocast and channels_last (CUDA only)."""
    if not torch.cuda.is_available():
        return ["## GPU timing", "", "Skipped: no CUDA device on this machine.", ""]
    g = torch.Generator().manual_seed(0)
    n = args.gpu_images
    ds = data.Dataset(x=torch.rand(n, 3, 32, 32, generator=g), y=torch.randint(0, 10, (n,), generator=g),
                      num_classes=10, name="random-cifar")
    lines = ["## GPU timing", "", f"{torch.cuda.get_device_name()}; {n} random 3x32x32 images, batch 128, "
             "PGD-10 AT (step eps/4, eps 8/255), seconds per epoch (second epoch of two).", "",
             "| objective | autocast | channels_last | s / epoch |", "|---|---|---|---|"]
    for obj_name in ("erm", "pgd-at"):
        for amp in (False, True):
            for cl in (False, True):
                torch.manual_seed(0)
                net = models.create("preact_resnet18", num_classes=10, in_channels=3, input_size=32)
                obj = train.create("erm") if obj_name == "erm" else train.create("pgd-at", eps="8/255", steps=10)
                h = train.Trainer(net, obj, epochs=2, batch_size=128, lr=0.1, device="cuda", amp=amp,
                                  channels_last=cl, progress=False).fit(ds)
                lines.append(f"| {obj_name} | {amp} | {cl} | {h[-1]['seconds']:.2f} |")
    lines.append("")
    return lines


def load_tier_data(tier: dict[str, Any]) -> tuple[Any, Any]:
    kw = {} if tier["root"] is None else {"root": tier["root"]}
    return data.load(tier["dataset"], "train", **kw), data.load(tier["dataset"], "test", **kw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tier", choices=["quick", "mnist", "all"], default="all")
    p.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all)")
    p.add_argument("--models", nargs="*", default=None, help="subset of models (default: the tier's)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the tier's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per method (default: the tier's)")
    p.add_argument("--train-size", type=int, default=None, help="use only this many training points (smoke runs)")
    p.add_argument("--standard-subset", type=int, default=None, help="test points for the ensemble evaluation")
    p.add_argument("--standard-seeds", type=int, default=None, help="evaluate the ensemble for this many seeds")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 on a busy machine)")
    p.add_argument("--ensemble", default="standard", choices=["standard", "fast"], help="ensemble for the final evaluation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpu-timing", action="store_true", help="also time preact_resnet18 PGD-10 AT on CUDA")
    p.add_argument("--gpu-images", type=int, default=10240)
    p.add_argument("--mnist-root", default=str(MNIST_ROOT), help="folder with the MNIST t10k IDX files")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tiers = ["quick", "mnist"] if args.tier == "all" else [args.tier]
    md = ["# Adversarial training benchmark", "",
          f"robustlab benchmark, {time.strftime('%Y-%m-%d %H:%M')}; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; device {args.device}.", ""]
    for name in tiers:
        tier = dict(TIERS[name])
        if name == "mnist":
            tier["root"] = args.mnist_root
        train_set, test_set = load_tier_data(tier)
        if args.train_size:
            idx, _ = data.stratified_split(train_set.y, len(train_set) - args.train_size, seed=0)
            train_set = train_set.subset(idx)
        md.append(f"Tier `{name}` data: train {len(train_set)} ({train_set.description or train_set.name}); test {len(test_set)}.")
        md.append("")
        rows = []
        for model_name in args.models or tier["models"]:
            for method in args.methods or list(methods(1)):
                for seed in range(args.seeds or tier["seeds"]):
                    rows.append(run_one(name, tier, method, model_name, seed, args, train_set, test_set))
        with open(out_dir / f"results_{name}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        cost = cost_ratio(tier, train_set, args) if name == "mnist" and "pgd-at" in (args.methods or ["pgd-at"]) else None
        md += summarise(name, tier, rows, args, cost)
    if args.gpu_timing:
        md += gpu_timing(args)
    (out_dir / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
