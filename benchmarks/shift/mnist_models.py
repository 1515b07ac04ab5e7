"""Corruption robustness and per-class disparity of three MNIST models, through the one
evaluation path (``robustlab.evaluate.evaluate`` with measurements of kind "corruption").

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shift/mnist_models.py [--quick]

Models (``mnist_net``, Wong et al. 2020's small CNN, trained with the one Trainer on the
MNIST split: the 10,000 official test images split 8,000 train / 2,000 test, seed 0):

- ``erm``: plain cross-entropy;
- ``gauss-aug``: the same with corruption augmentation ``{corruptions: [gaussian_noise],
  p: 0.5}`` (Gaussian noise at a random severity on half of each batch);
- ``pgd-at``: PGD adversarial training, L-inf eps 0.1 (Madry et al. 2018), 7 steps.

Measured on every test point: the 15 common corruptions x 5 severities (mean corruption
accuracy, CE/mCE and relative mCE with ``erm`` as the baseline, Hendrycks & Dietterich
2019), the 4 extra corruptions, ECE clean / corrupted / attacked, and per-class accuracy
clean, under PGD-20 L-inf (eps 0.1 and 0.2, on 500 points) and under corruptions, with the
disparity numbers (worst class, max-min gap, standard deviation). Trained models are cached
in ``results/models`` by their settings. Writes ``results/mnist_models.json`` and
``results/mnist_models.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

import robustlab
from robustlab import data, evaluate, models, train
from robustlab.corruptions import COMMON
from robustlab.evaluate import Measurement
from robustlab.evaluate.corruption import corruption_summary
from robustlab.evaluate.metrics import disparity
from robustlab.evaluate.shifts import corruption_measurements

HERE = Path(__file__).resolve().parent
MNIST_ROOT = HERE.parents[1].parent / "shared" / "data" / "mnist-t10k"
TRAIN = dict(batch_size=100, optimizer="adam", lr=5e-3, schedule="onecycle")
EPS = [0.1, 0.2]


def specs(epochs: int) -> list[dict[str, Any]]:
    return [
        {"name": "erm", "objective": "erm", "params": {}, "augment": None, "epochs": epochs},
        {"name": "gauss-aug", "objective": "erm", "params": {},
         "augment": {"corruptions": ["gaussian_noise"], "p": 0.5}, "epochs": epochs},
        {"name": "pgd-at", "objective": "pgd-at", "params": {"eps": 0.1, "steps": 7}, "augment": None,
         "epochs": epochs},
    ]


def train_or_load(spec: dict[str, Any], train_set: data.Dataset, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    key_src = json.dumps({"spec": spec, "train": TRAIN, "seed": args.seed, "n": len(train_set),
                          "robustlab": robustlab.__version__}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    path = Path(args.out) / "models" / f"{spec['name']}-{key}.safetensors"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        print(f"loaded {path.name}", flush=True)
        return models.load_model(path).eval(), json.loads(meta.read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.derive_seed("init", args.seed, "mnist_net"))
        net = models.for_dataset("mnist_net", train_set)
    trainer = train.Trainer(net, train.create(spec["objective"], **spec["params"]), epochs=spec["epochs"],
                            seed=args.seed, threads=args.threads, progress=False, augment=spec["augment"], **TRAIN)
    t0 = time.perf_counter()
    hist = trainer.fit(train_set)
    info = {"train_seconds": time.perf_counter() - t0, "last_epoch": {k: v for k, v in hist[-1].items()
                                                                    if isinstance(v, (int, float))}}
    path.parent.mkdir(parents=True, exist_ok=True)
    models.save_model(net, path)
    meta.write_text(json.dumps(info, indent=2))
    print(f"trained {spec['name']} in {info['train_seconds']:.0f} s", flush=True)
    return net.eval(), info


def measure(net: Any, test: data.Dataset, args: argparse.Namespace) -> Any:
    ms = corruption_measurements("all", subset=args.points) + [
        Measurement("pgd", "linf", EPS, {"steps": 20, "loss": "ce"}, subset=args.attack_points, audit=False)]
    return evaluate.evaluate(net, test.x, test.y, ms, seed=args.seed, threads=args.threads, progress=False)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(MNIST_ROOT))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--quick", action="store_true", help="2 epochs, 300 points (a smoke run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    epochs = 2 if args.quick else 6
    args.points = 300 if args.quick else None
    args.attack_points = 100 if args.quick else 500
    if not (Path(args.root) / "t10k-images-idx3-ubyte").exists() and not any(Path(args.root).glob("t10k*")):
        raise SystemExit(f"MNIST files not found in {args.root}; pass --root.")
    train_set, test = data.load("mnist", "train", root=args.root), data.load("mnist", "test", root=args.root)
    load0 = os.getloadavg()
    results: dict[str, Any] = {}
    evs = {}
    for spec in specs(epochs):
        net, info = train_or_load(spec, train_set, args)
        t0 = time.perf_counter()
        ev = measure(net, test, args)
        evs[spec["name"]] = ev
        results[spec["name"]] = {"train": info, "eval_seconds": time.perf_counter() - t0}
        print(f"{spec['name']}: evaluated in {results[spec['name']]['eval_seconds']:.0f} s", flush=True)
    base = evs["erm"]
    lines = [f"# MNIST split: corruptions and per-class disparity ({len(test)} test points, mnist_net, "
             f"{epochs} epochs; load {load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after)", "",
             "| model | clean | mean corr. acc (15x5) | extra 4x5 | mCE vs erm | rel. mCE | ECE clean | "
             "ECE corr. (mean) | ECE PGD 0.1 | PGD 0.1 | PGD 0.2 |", "|---|" + "---|" * 10]
    for name, ev in evs.items():
        s = corruption_summary(ev.rows, clean_accuracy=ev.clean["clean_accuracy"], baseline_rows=base.rows,
                               baseline_clean_accuracy=base.clean["clean_accuracy"], baseline_name="erm")
        corr = [r for r in ev.rows if r.kind == "corruption"]
        extra = [r.accuracy for r in corr if r.attack not in COMMON]
        att = {r.eps: r for r in ev.rows if r.kind == "attack"}
        ece_corr = sum(r.extra["ece"] for r in corr) / len(corr)
        res = results[name]
        res.update({"summary": s, "clean": ev.clean["clean_accuracy"], "ece_clean": ev.clean["ece"],
                    "ece_corruption_mean": ece_corr, "pgd": {f"{e:g}": att[e].accuracy for e in EPS},
                    "ece_pgd": {f"{e:g}": att[e].extra["ece"] for e in EPS},
                    "per_class": {"clean": ev.clean["per_class_accuracy"],
                                  **{f"pgd {e:g}": att[e].per_class for e in EPS},
                                  "corruptions (mean)": [
                                      sum(r.per_class[c] for r in corr) / len(corr) for c in range(10)]}})
        res["disparity"] = {k: disparity(v) for k, v in res["per_class"].items()}
        lines.append(f"| {name} | {pct(ev.clean['clean_accuracy'])} | {pct(s['mean_accuracy'])} | "
                     f"{pct(sum(extra) / len(extra))} | {pct(s['mce'])} | {pct(s.get('relative_mce'))} | "
                     f"{pct(ev.clean['ece'])} | {pct(ece_corr)} | {pct(att[0.1].extra['ece'])} | "
                     f"{pct(att[0.1].accuracy)} | {pct(att[0.2].accuracy)} |")
    lines += ["", "Per-class disparity (worst class / gap max-min / std, %):", "",
              "| model | setting | worst (class) | gap | std |", "|---|---|---|---|---|"]
    for name in evs:
        for k, d in results[name]["disparity"].items():
            lines.append(f"| {name} | {k} | {pct(d['worst'])} ({d['worst_class']}) | {pct(d['gap'])} | {pct(d['std'])} |")
    lines += ["", "Accuracy per corruption (mean over severities, %):", "",
              "| corruption | " + " | ".join(evs) + " |", "|---|" + "---|" * len(evs)]
    names = [r.attack for r in evs["erm"].rows if r.kind == "corruption" and r.eps == 1.0]
    for c in names:
        lines.append(f"| {c} | " + " | ".join(pct(results[m]["summary"]["per_corruption"][c]) for m in evs) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "robustlab": robustlab.__version__,
            "threads": args.threads, "load_before": load0, "load_after": os.getloadavg(), "epochs": epochs}
    (out / "mnist_models.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    (out / "mnist_models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
