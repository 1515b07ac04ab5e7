"""Transfer matrices between ERM, PGD-AT, TRADES and a DVERGE ensemble.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/transfer/run.py                # MNIST split
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/transfer/run.py --tier quick   # sklearn digits

Models (``mnist_net``, the small CNN of Wong et al. 2020, trained with the one Trainer;
Adam 5e-3, one-cycle, batch 100; seed 0), cached in ``results/models`` by their settings:

- ``erm``: cross-entropy;
- ``pgd-at``: Madry et al. (2018), L-inf eps (0.3 MNIST / 0.1 digits), 10 steps of eps/4,
  eps ramped over the first 3 epochs on MNIST;
- ``trades``: Zhang et al. (2019), beta 6, the same inner budget;
- ``dverge``: three ``mnist_net`` members (logits averaged), ERM first and then the
  ``dverge`` objective (Yang et al. 2020; its official defaults: distillation eps 0.07,
  step 0.007, 10 steps, a random layer per epoch), only if ``robustlab.train`` has it.

For each attack (``mi-fgsm``; ``mi-fgsm`` with input diversity p = 0.5; ``cwa``), the
examples are crafted once on every source (each model, and the ensemble of the three
single models ``erm+pgd-at+trades`` as one list of surrogates) on the first ``--points``
test points and scored on every target with :func:`robustlab.evaluate.transfer.transfer_matrix`
(success = clean-correct on the target and misclassified after; diagonal: white-box).
Writes ``results/transfer_<tier>.json`` and ``results/transfer_<tier>.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

import robustlab
from robustlab import data, models, train
from robustlab.attacks import ThreatModel
from robustlab.evaluate.metrics import clean_accuracy
from robustlab.evaluate.transfer import transfer_matrix
from robustlab.report.transfer import transfer_text

HERE = Path(__file__).resolve().parent
MNIST_ROOT = HERE.parents[1].parent / "shared" / "data" / "mnist-t10k"
TRAIN = dict(batch_size=100, optimizer="adam", lr=5e-3, schedule="onecycle")
TIERS: dict[str, dict[str, Any]] = {
    # eps warm-up: PGD-AT at 0.3 from scratch collapses to a constant prediction on this
    # split (the adversarial-training benchmark's MNIST recipe ramps eps over 3 epochs)
    "mnist": dict(dataset="mnist", eps=0.3, epochs=8, points=1000, eps_warmup=3.0),
    "quick": dict(dataset="digits", eps=0.1, epochs=10, points=360, eps_warmup=0.0),
}
ATTACKS: list[tuple[str, str, dict[str, Any]]] = [
    ("mi-fgsm", "mi-fgsm", {}),
    ("mi-fgsm+di", "mi-fgsm", {"diversity_prob": 0.5}),
    ("cwa", "cwa", {}),
]


def specs(tier: dict[str, Any]) -> list[dict[str, Any]]:
    eps, ep = tier["eps"], tier["epochs"]
    inner: dict[str, Any] = {"eps": eps, "steps": 10, "rel_step_size": 0.25}
    if tier["eps_warmup"]:
        inner["eps_warmup"] = tier["eps_warmup"]
    out = [
        {"name": "erm", "objective": "erm", "params": {}, "epochs": ep},
        {"name": "pgd-at", "objective": "pgd-at", "params": dict(inner), "epochs": ep},
        {"name": "trades", "objective": "trades", "params": dict(inner), "epochs": ep},
    ]
    if "dverge" in train.available():
        # the official recipe starts from an ERM-trained ensemble (--start-from baseline)
        out.append({"name": "dverge", "objective": "dverge", "params": {}, "epochs": ep // 2,
                    "ensemble": 3, "warm": {"objective": "erm", "epochs": ep // 2}})
    return out


def _fit(net: Any, objective: str, params: dict[str, Any], epochs: int, train_set: Any, seed: int) -> None:
    trainer = train.Trainer(net, train.create(objective, **params), epochs=epochs, seed=seed, threads=1,
                            progress=False, **TRAIN)
    trainer.fit(train_set)


def train_or_load(spec: dict[str, Any], train_set: Any, out: Path, seed: int) -> tuple[Any, dict[str, Any]]:
    key_src = json.dumps({"spec": spec, "train": TRAIN, "seed": seed, "n": len(train_set),
                          "robustlab": robustlab.__version__}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    path = out / "models" / f"{spec['name']}-{key}.safetensors"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return models.load_model(path).eval(), json.loads(meta.read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.derive_seed("init", seed, spec["name"]))
        if spec.get("ensemble"):
            net = models.for_dataset("ensemble", train_set, member="mnist_net", size=spec["ensemble"])
        else:
            net = models.for_dataset("mnist_net", train_set)
    t0 = time.perf_counter()
    warm = spec.get("warm")
    if warm:
        _fit(net, warm["objective"], {}, warm["epochs"], train_set, seed)
    _fit(net, spec["objective"], spec["params"], spec["epochs"], train_set, seed)
    info = {"train_seconds": time.perf_counter() - t0}
    path.parent.mkdir(parents=True, exist_ok=True)
    models.save_model(net, path)
    meta.write_text(json.dumps(info, indent=2))
    print(f"trained {spec['name']} in {info['train_seconds']:.0f} s", flush=True)
    return net.eval(), info


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tier", choices=sorted(TIERS), default="mnist")
    ap.add_argument("--root", default=str(MNIST_ROOT))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--points", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tier = TIERS[args.tier]
    out = Path(args.out)
    kw = {"root": args.root} if tier["dataset"] == "mnist" else {}
    train_set, test = data.load(tier["dataset"], "train", **kw), data.load(tier["dataset"], "test", **kw)
    n = min(args.points or tier["points"], len(test))
    x, y = test.x[:n], test.y[:n]
    load_before = uptime()
    t_all = time.perf_counter()
    nets: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for spec in specs(tier):
        nets[spec["name"]], info[spec["name"]] = train_or_load(spec, train_set, out, args.seed)
        info[spec["name"]]["clean_accuracy"] = clean_accuracy(nets[spec["name"]], x, y)
    singles = [k for k in ("erm", "pgd-at", "trades")]
    sources: dict[str, Any] = dict(nets)
    sources["+".join(singles)] = [nets[k] for k in singles]
    threat = ThreatModel("linf", tier["eps"])
    matrices = {}
    lines = [f"# Transfer matrices, tier {args.tier} ({tier['dataset']}, {n} test points, L-inf eps {tier['eps']})", ""]
    for label, attack, params in ATTACKS:
        t0 = time.perf_counter()
        m = transfer_matrix(sources, nets, x, y, attack, threat, seed=args.seed, **params)
        matrices[label] = dict(m.to_dict(), wall_seconds=time.perf_counter() - t0)
        text = transfer_text(m)
        print(f"\n{label} ({time.perf_counter() - t0:.0f} s)\n{text}", flush=True)
        lines += [f"## {label}", "", "```", text, "```", ""]
    result = {
        "tier": args.tier, "points": n, "eps": tier["eps"], "models": info, "matrices": matrices,
        "seconds": time.perf_counter() - t_all, "uptime_before": load_before, "uptime_after": uptime(),
        "versions": {"robustlab": robustlab.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "platform": platform.platform()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"transfer_{args.tier}.json").write_text(json.dumps(result, indent=2))
    lines += ["Clean accuracy on the points: " + ", ".join(f"{k} {100 * v['clean_accuracy']:.1f}%"
                                                         for k, v in info.items()),
              f"Total {result['seconds']:.0f} s; {load_before} / {result['uptime_after']}"]
    (out / f"transfer_{args.tier}.md").write_text("\n".join(lines) + "\n")
    print(f"\ntotal {result['seconds']:.0f} s; {load_before} -> {result['uptime_after']}")


if __name__ == "__main__":
    main()
