"""Certified accuracy curves on the MNIST split, beside the standard L2 attack at the same radii.

One command (from the repository root, in robustlab's environment)::

    python benchmarks/certify/curves.py                # the default run (see README.md)
    python benchmarks/certify/curves.py --quick        # smoke run, a few minutes
    python benchmarks/certify/curves.py --threads 1    # what README.md reports (busy shared machine)

``--threads`` (default 2) is applied with ``torch.set_num_threads`` and passed to the
Trainer and the evaluation path. On a machine whose two cores other processes also use, one
thread ran mnist_net's forward passes about twice as fast as two (see robustlab.threads).

Protocol:

- data: ``robustlab.data.load("mnist", root=/work/shared/data/mnist-t10k)``: robustlab's
  seeded stratified 8,000 / 2,000 split of the official t10k images (as
  ``benchmarks/adversarial_training/run.py``);
- models: ``mnist_net`` (Wong et al. 2020's small CNN, ~0.6 M multiply-accumulates per
  image) trained on the 8,000 images with the ``gaussian`` objective (Cohen et al. 2019)
  and the ``smoothadv`` objective (Salman et al. 2019) at sigma = 0.25 and 0.5; adam,
  one-cycle schedule, batch 100; weights cached in ``results/models/`` keyed by the
  training settings (a rerun with the same settings loads them);
- measurement: ONE call of :func:`robustlab.evaluate.evaluate` per model with two
  measurements on ``--points`` of the 2,000 points (the call's seeded subset; the standard
  attack on its first ``--attack-points``, the subsets are nested):
  ``smoothing`` (CERTIFY of Cohen et al.: ``n0``, ``n``, ``alpha``; radii up to the
  ceiling ``sigma * Phi^-1(alpha^(1/n))``) and the ``standard`` L2 ensemble on the
  **base model** at every radius > 0 (an upper bound on the *base model's* robust
  accuracy, not on the smoothed classifier's);
- optionally (``--soft-attack``): the standard L2 ensemble on the soft smoothed classifier
  ``SoftSmoothed(model, sigma, noise=standard_noise(x[:1], 32, gen))`` (32 fixed noise
  draws shared by every point), an empirical upper bound for the smoothed classifier.

Writes ``results/curves.md`` and ``results/curves.json`` (versions, settings, load before
and after, per-model rows, timings) into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import robustlab
from robustlab import data, evaluate, models, train
from robustlab.certify import stats
from robustlab.certify.soft import SoftSmoothed, standard_noise
from robustlab.evaluate import Measurement

HERE = Path(__file__).resolve().parent
MNIST_ROOT = HERE.parents[1].parent / "shared" / "data" / "mnist-t10k"  # ../shared/data/mnist-t10k
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
SIGMAS = (0.25, 0.5)

SETTINGS: dict[str, dict[str, Any]] = {
    "default": dict(points=500, attack_points=50, n0=100, n=10_000, alpha=0.001, epochs=20, smoothadv_epochs=8,
                    smoothadv_steps=4, smoothadv_m=1, soft_noise=32),
    "quick": dict(points=20, attack_points=10, n0=100, n=10_000, alpha=0.001, epochs=3, smoothadv_epochs=2,
                  smoothadv_steps=2, smoothadv_m=1, soft_noise=8),
}


def model_specs(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The four (objective, sigma) rows. SmoothAdv (PGD variant): eps = 2 * sigma, ``m``
    noise draws, ``steps`` PGD steps of 2 eps / steps, eps warm-up over the first half of the
    epochs (the official ``--warmup``, a per-epoch staircase). A scaled-down version of the
    MNIST recipe of Jeong & Shin's code (jh-jeong/smoothing-consistency, EXPERIMENTS.MD:
    ``train_salman.py mnist lenet --epochs 90 --attack PGD --epsilon 255 --num-steps 10
    --warmup 10 --num-noise-vec 4``, i.e. eps 255/256 ~ 1.0 at every sigma) that fits two CPU
    cores: see README.md for the deviations."""
    out = []
    for sigma in SIGMAS:
        out.append(dict(objective="gaussian", sigma=sigma, params={"sigma": sigma}, epochs=s["epochs"]))
    for sigma in SIGMAS:
        e = s["smoothadv_epochs"]
        out.append(dict(
            objective="smoothadv", sigma=sigma, epochs=e,
            params={"sigma": sigma, "eps": 2 * sigma, "steps": s["smoothadv_steps"], "m": s["smoothadv_m"],
                    "eps_warmup": max(1.0, e / 2), "clean_metrics": False},
        ))
    return out


TRAIN = dict(batch_size=100, optimizer="adam", lr=5e-3, schedule="onecycle")


def load_split(root: str) -> tuple[data.Dataset, data.Dataset]:
    return data.load("mnist", "train", root=root), data.load("mnist", "test", root=root)


def train_or_load(spec: dict[str, Any], train_set: data.Dataset, args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    key_src = json.dumps({"model": "mnist_net", "objective": spec["objective"], "params": spec["params"],
                          "epochs": spec["epochs"], "train": TRAIN, "seed": args.seed, "n_train": len(train_set),
                          "robustlab": robustlab.__version__}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    path = Path(args.out) / "models" / f"{spec['objective']}-s{spec['sigma']:g}-{key}.safetensors"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and not args.retrain:
        info = json.loads(meta_path.read_text())
        info["cached"] = True
        print(f"loaded {path.name} (trained in {info['train_seconds']:.0f} s)", flush=True)
        return models.load_model(path).eval(), info
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.derive_seed("init", args.seed, "mnist_net"))
        net = models.for_dataset("mnist_net", train_set)
    obj = train.create(spec["objective"], **spec["params"])
    trainer = train.Trainer(net, obj, epochs=spec["epochs"], seed=args.seed, device="cpu", threads=args.threads,
                            progress=False, **TRAIN)
    t0 = time.perf_counter()
    history = trainer.fit(train_set)
    secs = time.perf_counter() - t0
    last = history[-1]
    info = {
        "key": key, "settings": json.loads(key_src), "train_seconds": secs,
        "epoch_seconds": [h["seconds"] for h in history],
        "last_epoch": {k: v for k, v in last.items() if isinstance(v, (int, float, str))},
        "summary": trainer.summary(), "cached": False,
    }
    models.save_model(net, path)
    meta_path.write_text(json.dumps(info, indent=2, default=str))
    print(f"trained {spec['objective']} sigma={spec['sigma']:g}: {spec['epochs']} epochs in {secs:.0f} s; "
          f"last epoch {info['last_epoch']}", flush=True)
    return net.eval(), info


def measure(net: torch.nn.Module, spec: dict[str, Any], test_set: data.Dataset, s: dict[str, Any],
            args: argparse.Namespace) -> dict[str, Any]:
    sigma = spec["sigma"]
    ceiling = stats.max_radius(s["n"], s["alpha"], sigma)
    cert_radii = [r for r in RADII if r <= ceiling]
    attack_radii = [r for r in RADII if r > 0]
    ms = [
        Measurement("smoothing", "l2", cert_radii, {"sigma": sigma, "n0": s["n0"], "n": s["n"], "alpha": s["alpha"]},
                    subset=s["points"], audit=False, kind="certify"),
        Measurement("standard", "l2", attack_radii, {}, subset=s["attack_points"], audit=False),
    ]
    t0 = time.perf_counter()
    ev = evaluate.evaluate(net, test_set.x, test_set.y, ms, seed=args.seed, batch_size=args.batch_size,
                           threads=args.threads, progress=False)
    wall = time.perf_counter() - t0
    idx = evaluate.subset_indices(len(test_set), s["points"], args.seed)
    base_pred = torch.as_tensor(ev.records["pred"])[idx]
    cert_rows = [r for r in ev.rows if r.kind == "certify"]
    std_rows = [r for r in ev.rows if r.kind == "attack"]
    # the evaluation path's subsets are nested (first k of one seeded permutation): the
    # attacked points are the first attack_points of the certified ones
    att_idx = evaluate.subset_indices(len(test_set), s["attack_points"], args.seed)
    assert bool(np.isin(att_idx.numpy(), idx.numpy()).all()), "attacked points are not among the certified ones"
    on_att = torch.from_numpy(np.isin(idx.numpy(), att_idx.numpy()))
    secs = {a["attack"]: a["seconds"] for a in ev.attack_seconds}
    out: dict[str, Any] = {
        "objective": spec["objective"], "sigma": sigma, "params": spec["params"],
        "points": len(idx), "point_set": ev.rows[0].point_set, "ceiling": ceiling,
        "base_clean_all": ev.clean["clean_accuracy"],
        "base_clean": float((base_pred == test_set.y[idx]).float().mean()),
        "smoothed_clean": cert_rows[0].per_attack["clean"],  # CERTIFY's prediction, abstain = wrong
        "certified": {f"{r.eps:g}": r.accuracy for r in cert_rows},
        "certified_lower": {f"{r.eps:g}": r.extra.get("lower") for r in cert_rows},
        "standard_base": {f"{r.eps:g}": r.accuracy for r in std_rows},
        "standard_stages": {f"{r.eps:g}": r.per_attack for r in std_rows},
        "attack_points": len(att_idx), "attack_point_set": std_rows[0].point_set,
        "certified_on_attack_points": {f"{r:g}": float(ev.certifications[0].certified[r][on_att].float().mean())
                                       for r in cert_radii},
        "flags": sorted({f for r in ev.rows for f in r.flags}),
        "abstain": float((ev.certifications[0].predict == -1).float().mean()),
        "certify_seconds": secs.get("smoothing"), "standard_seconds": secs.get("standard"),
        "evaluate_wall_seconds": wall, "threads": ev.threads,
    }
    radius = ev.certifications[0].radius
    out["median_radius_certified_correct"] = float(
        radius[ev.certifications[0].certified[0.0]].median()) if bool(ev.certifications[0].certified[0.0].any()) else None
    if args.soft_attack:
        gen = torch.Generator().manual_seed(train.derive_seed("soft-noise", args.seed))
        soft = SoftSmoothed(net, sigma, noise=standard_noise(test_set.x[:1], s["soft_noise"], gen)).eval()
        t1 = time.perf_counter()
        ev2 = evaluate.evaluate(soft, test_set.x, test_set.y,
                                [Measurement("standard", "l2", attack_radii, {}, subset=s["attack_points"], audit=False)],
                                seed=args.seed, batch_size=args.batch_size, threads=args.threads, progress=False,
                                num_classes=10)
        out["standard_soft"] = {f"{r.eps:g}": r.accuracy for r in ev2.rows}
        out["soft_clean"] = ev2.rows[0].per_attack["clean"]
        out["soft_seconds"] = time.perf_counter() - t1
    return out


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def table(rows: list[dict[str, Any]], s: dict[str, Any], soft: bool) -> list[str]:
    head = "| model | row | " + " | ".join(f"r={r:g}" for r in RADII) + " | base clean | smoothed clean |"
    lines = [head, "|" + "---|" * (len(RADII) + 4)]
    for m in rows:
        name = f"{m['objective']} σ={m['sigma']:g}"
        kinds = [("certified", f"certified ({m['points']} pts)"), ("certified_lower", "certified, lower bound"),
                 ("certified_on_attack_points", f"certified, on the {m['attack_points']} attacked pts"),
                 ("standard_base", f"`standard` L2 on base model ({m['attack_points']} pts)")]
        if soft:
            kinds.append(("standard_soft", f"`standard` L2 on soft smoothed ({s['soft_noise']} fixed draws)"))
        for j, (key, label) in enumerate(kinds):
            vals = [pct(m.get(key, {}).get(f"{r:g}")) for r in RADII]
            if key.startswith("standard"):
                vals[0] = "—"
            extra = f" | {pct(m['base_clean'])} | {pct(m['smoothed_clean'])} |" if j == 0 else " | | |"
            lines.append(f"| {name if j == 0 else ''} | {label} | " + " | ".join(vals) + extra)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 40 points, n=2,000, a few epochs")
    p.add_argument("--points", type=int, default=None, help="test points certified and attacked (of 2,000)")
    p.add_argument("--attack-points", type=int, default=None,
                   help="the first this many of the certified points also get the standard attack")
    p.add_argument("--n", type=int, default=None, help="CERTIFY's estimation samples (the paper: 100,000)")
    p.add_argument("--n0", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="gaussian epochs")
    p.add_argument("--smoothadv-epochs", type=int, default=None)
    p.add_argument("--soft-attack", action="store_true", help="also attack the soft smoothed classifier")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--batch-size", type=int, default=2000, help="noisy copies per forward pass / attack batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="ignore cached models")
    p.add_argument("--mnist-root", default=str(MNIST_ROOT))
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    s = dict(SETTINGS["quick" if args.quick else "default"])
    for k in ("points", "attack_points", "n", "n0", "epochs", "smoothadv_epochs"):
        if getattr(args, k) is not None:
            s[k] = getattr(args, k)
    out_dir = Path(args.out)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    train_set, test_set = load_split(args.mnist_root)
    rows, trained = [], []
    for spec in model_specs(s):
        net, info = train_or_load(spec, train_set, args)
        trained.append({"objective": spec["objective"], "sigma": spec["sigma"], **info})
        m = measure(net, spec, test_set, s, args)
        m["train_seconds"] = info["train_seconds"]
        m["train_cached"] = info["cached"]
        print(json.dumps({k: m[k] for k in ("objective", "sigma", "base_clean", "smoothed_clean", "certified",
                                            "standard_base", "certify_seconds", "standard_seconds")}), flush=True)
        rows.append(m)
    total = time.perf_counter() - t_start
    load_after = os.getloadavg()
    ceilings = {f"{sg:g}": stats.max_radius(s["n"], s["alpha"], sg) for sg in SIGMAS}
    md = [
        "# Certified accuracy curves (MNIST t10k split)", "",
        f"robustlab {robustlab.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}; {platform.processor() or platform.machine()}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; torch threads {args.threads}; "
        f"load average (1/5/15 min) before {tuple(round(v, 2) for v in load_before)}, after "
        f"{tuple(round(v, 2) for v in load_after)}; total {total / 60:.1f} min.", "",
        f"Command: `python benchmarks/certify/curves.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip()
        + "", "",
        f"Data: {train_set.description}", "",
        f"Settings: {s['points']} of {len(test_set)} test points certified, the first {s['attack_points']} of them "
        f"attacked (nested seeded subsets of the evaluation path, seed {args.seed}); CERTIFY n0={s['n0']}, n={s['n']:,}, alpha={s['alpha']:g}; radius ceilings "
        + ", ".join(f"σ={k}: {v:.3f}" for k, v in ceilings.items())
        + f"; lower bound: accuracy_lower_bound at gamma=0.001. Training: mnist_net, batch {TRAIN['batch_size']}, "
        f"{TRAIN['optimizer']} lr {TRAIN['lr']:g} ({TRAIN['schedule']}); gaussian {s['epochs']} epochs; smoothadv "
        f"{s['smoothadv_epochs']} epochs, eps = 2σ, {s['smoothadv_steps']} PGD steps, m={s['smoothadv_m']}, "
        f"eps warm-up over {max(1.0, s['smoothadv_epochs'] / 2):g} epochs.", "",
        "Accuracies in %. `—`: beyond the radius ceiling (certified) or not applicable.", "",
    ]
    md += table(rows, s, args.soft_attack)
    md += ["", "| model | train s | certify s | standard s | abstain % | median radius (certified correct) | flags |",
           "|---|---|---|---|---|---|---|"]
    for m in rows:
        med = m["median_radius_certified_correct"]
        md.append(f"| {m['objective']} σ={m['sigma']:g} | {m['train_seconds']:.0f}{' (cached)' if m['train_cached'] else ''} "
                  f"| {m['certify_seconds']:.0f} | {m['standard_seconds']:.0f} | {100 * m['abstain']:.1f} "
                  f"| {'—' if med is None else f'{med:.3f}'} | {'; '.join(m['flags']) or '—'} |")
    md.append("")
    (out_dir / "curves.md").write_text("\n".join(md) + "\n")
    record = {
        "versions": {"robustlab": robustlab.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "threads": args.threads, "load_before": load_before, "load_after": load_after, "total_seconds": total,
        "settings": s, "train": TRAIN, "argv": argv if argv is not None else sys.argv[1:],
        "radii": list(RADII), "ceilings": ceilings, "models": trained, "rows": rows,
    }
    (out_dir / "curves.json").write_text(json.dumps(record, indent=2, default=str))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
