"""Accuracy-robustness trade-offs on the MNIST split: mixed classifiers (adaptive smoothing),
RiFT, GREAT Score against the standard ensemble, and robust weight signatures.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tradeoff/run.py [--quick]

Every model is ``mnist_net`` (Wong et al. 2020) trained with the one Trainer (Adam 5e-3,
one-cycle, batches of 100) on the first 7,000 of robustlab's 8,000 MNIST training points
(the other 1,000 are the validation split RiFT selects on); numbers are on the 2,000 test
points. Threat model: L-inf eps 0.1. ``--quick`` uses the 8x8 digits data and fewer
epochs/points (a smoke run). Trained models are cached in ``results/models``; writes
``results/tradeoff.{md,json}``.
"""

from __future__ import annotations

import argparse
import copy
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
from robustlab.attacks import ThreatModel
from robustlab.evaluate import Measurement
from robustlab.evaluate.great import (
    calibrate_temperature,
    great_score,
    local_scores,
    rank_correlation,
)
from robustlab.evaluate.shifts import corruption_measurements
from robustlab.models.mixed import mix
from robustlab.models.signatures import apply_signature, extract_signature
from robustlab.train.mixing import MixingObjective
from robustlab.train.rift import rift

HERE = Path(__file__).resolve().parent
MNIST_ROOT = HERE.parents[1].parent / "shared" / "data" / "mnist-t10k"
TRAIN = dict(batch_size=100, optimizer="adam", lr=5e-3, schedule="onecycle")
EPS = 0.1
CORRUPTIONS = ["gaussian_noise", "impulse_noise", "glass_blur", "fog", "contrast"]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.timing: dict[str, float] = {}

    def key(self, spec: dict[str, Any], n: int) -> str:
        src = json.dumps({"spec": spec, "train": TRAIN, "n": n, "quick": self.args.quick,
                          "robustlab": robustlab.__version__}, sort_keys=True)
        return hashlib.sha256(src.encode()).hexdigest()[:12]

    def train(self, name: str, spec: dict[str, Any], train_set: data.Dataset,
              start: torch.nn.Module | None = None) -> torch.nn.Module:
        """Train (or load the cached) model ``name``: ``spec`` = objective, params, epochs,
        seed, augment; ``start``: fine-tune a copy of these weights instead of a fresh init."""
        full = dict(spec, start=None if start is None else models.weights_sha256(start))
        path = self.out / "models" / f"{name}-{self.key(full, len(train_set))}.safetensors"
        if path.exists():
            return models.load_model(path).eval()
        t0 = time.perf_counter()
        if start is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(spec.get("init", 0))
                net = models.for_dataset("mnist_net", train_set)
        else:
            net = copy.deepcopy(start).train()
        obj = train.create(spec["objective"], **spec.get("params", {}))
        train.Trainer(net, obj, epochs=spec["epochs"], seed=spec.get("seed", 0), threads=1, progress=False,
                      augment=spec.get("augment"), **TRAIN).fit(train_set)
        path.parent.mkdir(parents=True, exist_ok=True)
        models.save_model(net, path)
        self.timing[f"train {name}"] = time.perf_counter() - t0
        print(f"trained {name} in {self.timing[f'train {name}']:.0f} s", flush=True)
        return net.eval()


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def pgd(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 20) -> float:
    return float(evaluate.robust_accuracy(net, x, y, ThreatModel("linf", EPS), "pgd", steps=steps,
                                          rel_step_size=0.1, threads=1).accuracy)


def standard(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "linf", eps: float = EPS) -> float:
    return float(evaluate.robust_accuracy(net, x, y, ThreatModel(norm, eps), "standard", threads=1).accuracy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(MNIST_ROOT))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--quick", action="store_true", help="digits, fewer epochs and points (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    q = args.quick
    if q:
        full, test = data.load("digits", "train"), data.load("digits", "test")
    else:
        full, test = data.load("mnist", "train", root=args.root), data.load("mnist", "test", root=args.root)
    n_fit = len(full) - (len(full) // 8)
    train_set, val_set = full.subset(range(n_fit)), full.subset(range(n_fit, len(full)))
    ep = 2 if q else 4
    n_pgd, n_std = (200, 30) if q else (500, 40)
    xt, yt = test.x, test.y
    xp, yp = xt[:n_pgd], yt[:n_pgd]
    xs, ys = xt[:n_std], yt[:n_std]
    bench = Bench(args)
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    res: dict[str, Any] = {}
    lines: list[str] = []

    # ---- base models ---------------------------------------------------------------------
    steps = 3 if q else 5
    specs = {
        "erm": {"objective": "erm", "epochs": ep},
        "erm-b": {"objective": "erm", "epochs": ep, "init": 1, "seed": 1},
        "gauss-0.3": {"objective": "gaussian", "params": {"sigma": 0.3}, "epochs": ep},
        "gauss-0.6": {"objective": "gaussian", "params": {"sigma": 0.6}, "epochs": ep},
        "pgd-at": {"objective": "pgd-at", "params": {"eps": EPS, "steps": steps}, "epochs": ep},
        "trades": {"objective": "trades", "params": {"eps": EPS, "steps": steps, "beta": 6.0}, "epochs": ep},
    }
    nets = {name: bench.train(name, s, train_set) for name, s in specs.items()}

    # ---- 1. mixed classifier: the trade-off curve over alpha --------------------------------
    t0 = time.perf_counter()
    curve = []
    for a in [round(0.1 * i, 1) for i in range(11)]:
        m = mix(nets["erm"], nets["pgd-at"], alpha=a)
        row = {"alpha": a, "clean": evaluate.clean_accuracy(m, xt, yt), "pgd20": pgd(m, xp, yp)}
        if a == 0.5:
            row["standard"] = standard(m, xs, ys)
        curve.append(row)
        print(f"mixed alpha={a}: {row}", flush=True)
    adaptive = mix(nets["erm"], nets["pgd-at"], alpha=None)
    torch.manual_seed(0)
    mix_path = bench.out / "models" / f"mixer-{bench.key({'m': 'mixer', 'ep': ep}, n_fit)}.safetensors"
    if mix_path.exists():
        adaptive = models.load_model(mix_path).eval()
    else:
        sub = train_set.subset(range(min(len(train_set), 3000)))
        train.Trainer(adaptive, MixingObjective(eps=EPS, steps=steps), epochs=2, batch_size=100, optimizer="adamw",
                      lr=1e-3, weight_decay=1e-5, schedule="cosine", threads=1, progress=False).fit(sub)
        models.save_model(adaptive, mix_path)
        print(f"trained the mixing network in {time.perf_counter() - t0:.0f} s", flush=True)
    adaptive.eval()
    ad = {"clean": evaluate.clean_accuracy(adaptive, xt, yt), "pgd20": pgd(adaptive, xp, yp),
          "standard": standard(adaptive, xs, ys),
          "mean_alpha_clean": float(adaptive.mixing_weight(xt[:500]).detach().mean())}
    bench.timing["mixed"] = time.perf_counter() - t0
    print(f"adaptive: {ad}", flush=True)
    res["mixed"] = {"curve": curve, "adaptive": ad}
    lines += ["## 1. Mixed classifier (erm + pgd-at), L-inf eps 0.1", "",
              f"clean on {len(xt)} test points, PGD-20 (step eps/10) on {len(xp)}, the standard ensemble on {len(xs)}",
              "", "| alpha | clean | PGD-20 | standard |", "|---|---|---|---|"]
    for r in curve:
        lines.append(f"| {r['alpha']:.1f} | {pct(r['clean'])} | {pct(r['pgd20'])} | {pct(r.get('standard'))} |")
    lines.append(f"| adaptive (mean alpha on clean {ad['mean_alpha_clean']:.2f}) | {pct(ad['clean'])} | "
                 f"{pct(ad['pgd20'])} | {pct(ad['standard'])} |")

    # ---- 2. RiFT on the PGD-AT model --------------------------------------------------------
    t0 = time.perf_counter()
    r = rift(nets["pgd-at"], train_set, val_set=val_set, eps=EPS, epochs=ep + 2 if not q else 2, lr=0.01,
             mrc_points=512, select_points=None if q else 1000, threads=1)
    at, ft = nets["pgd-at"], r.model
    rr = {"module": r.module, "alpha": r.alpha, "mrc": r.mrc, "curve_val": r.curve,
          "at": {"clean": evaluate.clean_accuracy(at, xt, yt), "pgd20": pgd(at, xp, yp), "standard": standard(at, xs, ys)},
          "rift": {"clean": evaluate.clean_accuracy(ft, xt, yt), "pgd20": pgd(ft, xp, yp), "standard": standard(ft, xs, ys)}}
    bench.timing["rift"] = time.perf_counter() - t0
    print(f"rift: {rr}", flush=True)
    res["rift"] = rr
    lines += ["", "## 2. RiFT on pgd-at", "",
              "MRC per module: " + ", ".join(f"{k} {v:.3f}" for k, v in r.mrc.items())
              + f"; fine-tuned `{r.module}`, chosen alpha {r.alpha:.1f} (on the validation split)", "",
              "| alpha (validation) | clean | PGD-10 |", "|---|---|---|"]
    lines += [f"| {c['alpha']:.1f} | {pct(c['clean_accuracy'])} | {pct(c['robust_accuracy'])} |" for c in r.curve]
    lines += ["", "| test | clean | PGD-20 | standard |", "|---|---|---|---|",
              f"| pgd-at | {pct(rr['at']['clean'])} | {pct(rr['at']['pgd20'])} | {pct(rr['at']['standard'])} |",
              f"| RiFT (alpha {r.alpha:.1f}) | {pct(rr['rift']['clean'])} | {pct(rr['rift']['pgd20'])} | "
              f"{pct(rr['rift']['standard'])} |"]

    # ---- 3. GREAT Score vs the standard ensemble -------------------------------------------
    t0 = time.perf_counter()
    pool = dict(nets)
    pool["rift"] = ft
    names = list(pool)
    g = {n: great_score(pool[n], xt, yt) for n in names}
    logits = [evaluate.predict_logits(pool[n], xt) for n in names]
    ref_linf = [pgd(pool[n], xp, yp) for n in names]
    ref_l2 = [standard(pool[n], xs, ys, norm="l2", eps=1.0) for n in names]
    cal = calibrate_temperature(logits, yt, ref_l2)
    cal_scores = {n: float(local_scores(z, yt, temperature=cal.temperature).mean()) for n, z in zip(names, logits, strict=True)}
    rho = {"linf": rank_correlation([g[n].score for n in names], ref_linf),
           "l2": rank_correlation([g[n].score for n in names], ref_l2),
           "l2_calibrated": cal.correlation,
           "linf_calibrated": rank_correlation([cal_scores[n] for n in names], ref_linf)}
    bench.timing["great"] = time.perf_counter() - t0
    print(f"great: {rho}", flush=True)
    res["great"] = {"models": {n: {"great": g[n].score, "great_calibrated": cal_scores[n], "clean": g[n].accuracy,
                                   "pgd20_linf_0.1": ref_linf[i], "standard_l2_1.0": ref_l2[i]}
                               for i, n in enumerate(names)},
                    "temperature": cal.temperature, "spearman": rho}
    lines += ["", f"## 3. GREAT Score ({len(xt)} test points, forward only) vs the standard ensemble (L2, {len(xs)} points)", "",
              f"| model | clean | GREAT (T=1) | GREAT (T={cal.temperature:.3g}) | PGD-20 L-inf 0.1 | standard L2 1.0 |",
              "|---|---|---|---|---|---|"]
    for i, n in enumerate(names):
        lines.append(f"| {n} | {pct(g[n].accuracy)} | {g[n].score:.4f} | {cal_scores[n]:.4f} | {pct(ref_linf[i])} | "
                     f"{pct(ref_l2[i])} |")
    lines += ["", f"Spearman rank correlation: GREAT (T=1) vs standard L2 {rho['l2']:.3f}, vs PGD-20 L-inf {rho['linf']:.3f}; "
              f"calibrated GREAT vs L2 {rho['l2_calibrated']:.3f} (temperature fitted to this very ranking), "
              f"vs L-inf {rho['linf_calibrated']:.3f}."]

    # ---- 4. Robust weight signatures ---------------------------------------------------------
    t0 = time.perf_counter()
    half = max(1, ep // 2)
    pre = bench.train("pretrained", {"objective": "erm", "epochs": half, "init": 2}, train_set)
    base = bench.train("ft-clean-a", {"objective": "erm", "epochs": half, "seed": 3}, train_set, start=pre)
    other = bench.train("ft-clean-b", {"objective": "erm", "epochs": half, "seed": 4}, train_set, start=pre)
    robust = {"gauss": bench.train("ft-gauss", {"objective": "erm", "epochs": half, "seed": 3,
                                                "augment": {"corruptions": ["gaussian_noise", "impulse_noise"], "p": 0.5}},
                                   train_set, start=pre),
              "pgd": bench.train("ft-pgd", {"objective": "pgd-at", "params": {"eps": EPS, "steps": steps},
                                            "epochs": half, "seed": 3}, train_set, start=pre)}
    sev = [3, 5]

    def shifts(net: torch.nn.Module) -> dict[str, float]:
        ms = corruption_measurements(CORRUPTIONS, sev) + [
            Measurement("pgd", "linf", [EPS], {"steps": 20, "rel_step_size": 0.1}, subset=n_pgd, audit=False)]
        ev = evaluate.evaluate(net, xt, yt, ms, threads=1, progress=False)
        out = {"clean": ev.clean["clean_accuracy"]}
        for row in ev.rows:
            out["pgd20" if row.kind == "attack" else f"{row.attack}@{int(row.eps)}"] = row.accuracy
        return out

    sig_rows: list[tuple[str, dict[str, float]]] = [("clean model b (alpha 0)", shifts(other))]
    for kind, rnet in robust.items():
        sig = extract_signature(rnet, base)
        for a in (0.5, 1.0):
            sig_rows.append((f"b + {a:g} x RWS({kind}) [{', '.join(sig.modules)}]", shifts(apply_signature(other, sig, a))))
        sig_rows.append((f"robust donor ft-{kind} itself", shifts(rnet)))
    bench.timing["signatures"] = time.perf_counter() - t0
    res["signatures"] = dict(sig_rows)
    cols = ["clean", "pgd20"] + [f"{c}@{s}" for c in CORRUPTIONS for s in sev]
    lines += ["", "## 4. Robust weight signatures patched into another ERM model", "",
              "all from one `pretrained` ERM model: `ft-clean-a`, `ft-clean-b` (clean fine-tunes, other seeds), "
              "`ft-gauss` (fine-tuned with Gaussian/impulse noise augmentation), `ft-pgd` (PGD-AT fine-tune); "
              "RWS = donor - ft-clean-a on the default shallow layers, added to ft-clean-b", "",
              "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in sig_rows:
        lines.append(f"| {name} | " + " | ".join(pct(row.get(c)) for c in cols) + " |")

    total = time.perf_counter() - t_all
    meta = {"python": platform.python_version(), "torch": torch.__version__, "robustlab": robustlab.__version__,
            "threads": 1, "load_before": load0, "load_after": os.getloadavg(), "seconds": total,
            "timing": bench.timing, "quick": q, "train_points": len(train_set), "test_points": len(xt)}
    head = [f"# Trade-offs on the {'digits' if q else 'MNIST'} split ({total:.0f} s, 1 thread, load average "
            f"{load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after)", ""]
    bench.out.mkdir(parents=True, exist_ok=True)
    (bench.out / "tradeoff.json").write_text(json.dumps({"meta": meta, "results": res}, indent=2, default=str))
    (bench.out / "tradeoff.md").write_text("\n".join(head + lines) + "\n")
    print("\n".join(head + lines))


if __name__ == "__main__":
    main()
