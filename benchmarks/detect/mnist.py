"""OOD and adversarial-input detection on the MNIST split: Mahalanobis vs MSP vs energy.

One command (from the repository root, in robustlab's environment)::

    OMP_NUM_THREADS=1 python benchmarks/detect/mnist.py            # the default run (README.md)
    OMP_NUM_THREADS=1 python benchmarks/detect/mnist.py --quick    # smoke run, about a minute

Protocol:

- data: ``robustlab.data.load("mnist", root=/work/shared/data/mnist-t10k)``: robustlab's seeded
  stratified 8,000 / 2,000 split of the official t10k images (the training files are not on
  these machines); the detectors are fitted on the 8,000 training images, measured on the
  first ``--points`` test images;
- models: ``mnist_net`` (Wong et al. 2020) trained with ``erm`` (adam, one-cycle, 4 epochs)
  and ``pgd-at`` (L-inf eps 0.3, 10-step PGD, 2-epoch eps warm-up, 8 epochs); weights cached
  in ``results/models/`` keyed by the settings;
- per-layer Mahalanobis AUROC on the noise and corruption shifts (each layer's score alone);
- detectors: ``msp``, ``energy``, ``mahalanobis`` (default layers: both conv blocks and the
  penultimate features; without a fitted combination the penultimate score alone), all
  through ``Detector.run``; and ``maha-ens``: Lee et al.'s feature ensemble, a logistic
  regression over the three layer scores fitted on the first half of the points and their
  PGD examples at the same eps (the official protocol fits it on held-out in/adversarial
  pairs of the same attack), measured on the second half;
- shifts: ``uniform``, ``gaussian`` (std 0.5), ``corruption/<name>`` at severity 5 for five
  corruptions, ``adversarial/linf`` (PGD-20) and ``adaptive/linf`` (AdaptivePGD-20 on the
  classifier + the detector, selective loss, lam 1) at eps 0.1 and 0.3. Adversarial rows
  follow Lee et al.: the clean points classified correctly whose attack succeeded vs their
  adversarial examples; ``undet`` is the share of correctly classified points whose attack
  succeeded AND whose adversarial example passes the detector at its 95%-TPR threshold.

Writes ``results/mnist.json`` (settings, versions, load, every row) and ``results/mnist.md``.
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

import torch

import robustlab
from robustlab import data, detect, models, train
from robustlab.seeding import derive_seed

HERE = Path(__file__).resolve().parent
MNIST_ROOT = Path("/work/shared/data/mnist-t10k")
TRAIN = dict(batch_size=100, optimizer="adam", lr=5e-3, schedule="onecycle", weight_decay=0.0)
CORRUPTIONS = ("gaussian_noise", "impulse_noise", "motion_blur", "fog", "contrast")
DETECTORS = ("msp", "energy", "mahalanobis")
EPS = (0.1, 0.3)


def model_specs(quick: bool) -> list[dict[str, Any]]:
    return [
        {"name": "erm", "objective": "erm", "params": {}, "epochs": 1 if quick else 4},
        {"name": "pgd-at", "objective": "pgd-at",
         "params": {"eps": 0.3, "steps": 10 if not quick else 3, "rel_step_size": 0.25,
                    "eps_warmup": 0 if quick else 2},
         "epochs": 1 if quick else 8},
    ]


def load_load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def train_or_load(spec: dict[str, Any], train_set: data.Dataset, out: Path, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    key_src = json.dumps({"model": "mnist_net", **spec, "train": TRAIN, "seed": seed,
                          "n_train": len(train_set), "robustlab": robustlab.__version__}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    path = out / "models" / f"{spec['name']}-{key}.safetensors"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        print(f"loaded {path.name} (trained in {info['train_seconds']:.0f} s)", flush=True)
        return models.load_model(path).eval(), info
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("init", seed, "mnist_net"))
        net = models.for_dataset("mnist_net", train_set)
    obj = train.create(spec["objective"], **spec["params"])
    trainer = train.Trainer(net, obj, epochs=spec["epochs"], seed=seed, device="cpu", threads=1,
                            progress=False, **TRAIN)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    trainer.fit(train_set)
    info = {"key": key, "settings": json.loads(key_src), "train_seconds": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    models.save_model(net, path)
    meta.write_text(json.dumps(info, indent=2, default=str))
    print(f"trained {spec['name']} in {info['train_seconds']:.0f} s", flush=True)
    return net.eval(), info


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def row(model: str, det: str, shift: str, level: float, m: dict[str, float], seconds: float) -> dict[str, Any]:
    return {"model": model, "detector": det, "shift": shift, "level": level, "seconds": round(seconds, 2),
            **{k: m[k] for k in m}}


def ensemble_rows(name: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  ref: tuple[torch.Tensor, torch.Tensor], seed: int) -> list[dict[str, Any]]:
    """Lee et al.'s feature ensemble: LR over the layer scores fitted on the first half's
    clean/PGD pairs at each eps, measured on the second half (PGD and adaptive)."""
    half = len(x) // 2
    xv, yv, xt, yt = x[:half], y[:half], x[half:], y[half:]
    out = []
    for eps in EPS:
        t0 = time.perf_counter()
        det = detect.Mahalanobis().fit(net, *ref)
        val = detect.shifted_inputs("adversarial/linf", net, xv, yv, eps,
                                    generator=torch.Generator().manual_seed(derive_seed(seed, "val", eps)))
        assert val.success is not None and val.clean_correct is not None
        ok = val.success & val.clean_correct
        if int(ok.sum()) < 10:
            print(f"  maha-ens eps {eps}: only {int(ok.sum())} successful PGD examples to fit on; skipped")
            continue
        det.fit_combination(net, xv[ok], val.x[ok])
        s_in = det.score(net, xt).double().numpy()
        for shift in ("adversarial/linf", "adaptive/linf"):
            t1 = time.perf_counter()
            sh = detect.shifted_inputs(shift, net, xt, yt, eps, detector=det,
                                       generator=torch.Generator().manual_seed(derive_seed(seed, shift, eps)))
            m, _, _ = det.measure(net, sh, s_in)
            m["num_fit_pairs"] = float(ok.sum())
            out.append(row(name, "maha-ens", shift, eps, m, time.perf_counter() - t1 + (t1 - t0)))
            print(fmt_row(out[-1]), flush=True)
    return out


def layer_rows(name: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               ref: tuple[torch.Tensor, torch.Tensor], shifts: list[tuple[str, list[float]]],
               seed: int) -> list[dict[str, Any]]:
    """AUROC of each Mahalanobis layer score alone on the same shifted inputs as ``run``
    (same seeds), for the noise and corruption shifts: what the feature ensemble could use."""
    det = detect.Mahalanobis().fit(net, *ref)
    s_in = det.layer_scores(net, x)
    out = []
    for shift, levels in shifts:
        if shift.startswith(("adversarial", "adaptive")):
            continue
        for lv in levels:
            g = torch.Generator().manual_seed(derive_seed(seed, "detect-shift", shift, lv))
            s_out = det.layer_scores(net, detect.shifted_inputs(shift, net, x, y, lv, generator=g).x)
            aurocs = {layer: detect.auroc(s_in[:, j], s_out[:, j]) for j, layer in enumerate(det.layers_)}
            out.append({"model": name, "shift": shift, "level": lv, "layer_auroc": aurocs})
            print(f"{name:7s} mahalanobis per layer {shift:28s} "
                  + "  ".join(f"{k} {fmt(v)}" for k, v in aurocs.items()), flush=True)
    return out


def fmt(v: Any) -> str:
    return "  -  " if v is None or v != v else f"{100 * v:5.1f}"


def fmt_row(r: dict[str, Any]) -> str:
    extra = ""
    if "attack_success" in r:
        extra = f"  succ {fmt(r['attack_success'])}  undet {fmt(r['undetected_success'])}  n {int(r['num_in'])}"
    return (f"{r['model']:7s} {r['detector']:12s} {r['shift']:28s} {r['level']:<5g} AUROC {fmt(r['auroc'])}  "
            f"TNR@95 {fmt(r['tnr_at_95_tpr'])}{extra}  ({r['seconds']:.1f} s)")


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | shift | level | " + " | ".join(f"{d} AUROC / TNR@95" for d in (*DETECTORS, "maha-ens"))
             + " |", "|---|---|---|" + "---|" * (len(DETECTORS) + 1)]
    keys = list(dict.fromkeys((r["model"], r["shift"], r["level"]) for r in rows))
    for k in keys:
        cells = []
        for d in (*DETECTORS, "maha-ens"):
            r = next((r for r in rows if (r["model"], r["shift"], r["level"]) == k and r["detector"] == d), None)
            if r is None:
                cells.append("")
                continue
            c = f"{fmt(r['auroc']).strip()} / {fmt(r['tnr_at_95_tpr']).strip()}"
            if "undetected_success" in r:
                c += f" (succ {fmt(r['attack_success']).strip()}, undet {fmt(r['undetected_success']).strip()})"
            cells.append(c)
        lines.append(f"| {k[0]} | {k[1]} | {k[2]:g} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1-epoch models, 100 points")
    ap.add_argument("--points", type=int, default=None, help="test points measured (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=str(MNIST_ROOT))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not (Path(args.root) / "t10k-images-idx3-ubyte.gz").exists():
        print(f"SKIPPED: MNIST t10k files not found in {args.root} (pass --root).")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    points = args.points or (100 if args.quick else 1000)
    load_before, t_start = load_load(), time.perf_counter()
    train_set, test_set = data.load("mnist", "train", root=args.root), data.load("mnist", "test", root=args.root)
    x, y = test_set.x[:points], test_set.y[:points]
    ref = (train_set.x, train_set.y)
    shifts: list[tuple[str, list[float]]] = [("uniform", [0.0]), ("gaussian", [0.5])]
    shifts += [(f"corruption/{c}", [5.0]) for c in CORRUPTIONS]
    shifts += [("adversarial/linf", list(EPS)), ("adaptive/linf", list(EPS))]
    rows: list[dict[str, Any]] = []
    per_layer: list[dict[str, Any]] = []
    model_info = {}
    for spec in model_specs(args.quick):
        net, info = train_or_load(spec, train_set, out / ("quick" if args.quick else ""), args.seed)
        acc = accuracy(net, x, y)
        model_info[spec["name"]] = {"clean_accuracy": acc, "train_seconds": info["train_seconds"]}
        print(f"{spec['name']}: clean accuracy {100 * acc:.1f}% on {points} test points", flush=True)
        for det_name in DETECTORS:
            for shift, levels in shifts:
                d = detect.create(det_name).run(net, x, y, shift, levels, reference=ref, seed=args.seed)
                for lv in levels:
                    rows.append(row(spec["name"], det_name, shift, lv, d.metrics[lv], d.seconds / len(levels)))
                    print(fmt_row(rows[-1]), flush=True)
        rows += ensemble_rows(spec["name"], net, x, y, ref, args.seed)
        per_layer += layer_rows(spec["name"], net, x, y, ref, shifts, args.seed)
    seconds = time.perf_counter() - t_start
    result = {
        "settings": {"points": points, "seed": args.seed, "quick": args.quick, "train": TRAIN,
                     "models": model_specs(args.quick), "corruptions": CORRUPTIONS, "eps": EPS,
                     "data": test_set.description},
        "versions": {"robustlab": robustlab.__version__, "torch": torch.__version__,
                     "python": sys.version.split()[0], "platform": platform.platform()},
        "threads": torch.get_num_threads(), "load_before": load_before, "load_after": load_load(),
        "seconds": seconds, "models": model_info, "rows": rows, "mahalanobis_per_layer": per_layer,
    }
    name = "mnist-quick" if args.quick else "mnist"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    md = [f"# Detection on the MNIST split ({points} test points, seed {args.seed})", "",
          f"models: {json.dumps(model_info)}", f"load before {load_before}, after {result['load_after']}; "
          f"{seconds:.0f} s on {torch.get_num_threads()} thread(s)", "", *table(rows), "",
          "Mahalanobis, AUROC of each layer's score alone:", "",
          *(f"- {r['model']} {r['shift']} {r['level']:g}: "
            + ", ".join(f"{k} {fmt(v).strip()}" for k, v in r["layer_auroc"].items()) for r in per_layer)]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
