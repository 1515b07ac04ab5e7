"""Ensembles and transfer defences: DVERGE and PubDef vs PGD-AT under held-out transfer attacks.

    python benchmarks/ensembles/run.py            # the MNIST split (../shared/data/mnist-t10k)
    python benchmarks/ensembles/run.py --quick    # sklearn digits (8x8), a minute or two

Trains, all with one thread and robustlab's one Trainer:

* **sources known to the defender**: an ERM ``mnist_net`` (seed 1) and a TRADES
  ``mnist_net`` (seed 1), saved as safetensors;
* **held-out sources** (never seen in training): ERM ``mnist_net`` (seed 2), ERM ``mlp``
  (seed 2, 256-256, another architecture), ERM ``mlp`` with one hidden layer of 64 (seed 3);
* **targets**: an ERM ``mnist_net`` (seed 0, the undefended baseline), PGD-AT (seed 0),
  PubDef (seed 0, fine-tuned from the ERM baseline as the official ``--resume``, clean +
  transfer examples from the two known sources, ``sampling="random"``, weights 1:1) and a
  DVERGE ensemble of three ``mnist_net`` (each member first trained with ERM, the official
  ``--start-from baseline``, then DVERGE, ``combine="probs"`` as the official Ensemble).

Evaluates on the first ``--points`` test images: clean accuracy, accuracy under transfer
PGD from every source (known and held-out; 40 steps of eps/10 with a random start, the final
iterate, made once per source and shared by all targets), and white-box PGD-20 accuracy
through ``robustlab.evaluate.robust_accuracy``. Writes ``results/results_<tier>.json`` and
the DVERGE ensemble's weights to ``results/models/dverge.safetensors`` (the full tier;
``dverge_quick.safetensors`` for ``--quick``), loadable with ``robustlab.models.load_model``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from robustlab import data, models, train
from robustlab.attacks import ThreatModel
from robustlab.attacks import create as create_attack
from robustlab.errors import DataError
from robustlab.evaluate import clean_accuracy, robust_accuracy

HERE = Path(__file__).resolve().parent
MNIST_ROOT = HERE.parents[1].parent / "shared" / "data" / "mnist-t10k"

TIERS: dict[str, dict[str, Any]] = {
    "mnist": {"dataset": "mnist", "eps": 0.2, "epochs": 3, "adv_epochs": 2, "dverge_epochs": 2,
              "dverge_train": 2000, "batch": 100, "lr": 5e-3, "points": 1000, "dverge_eps": 0.07,
              "third": "mlp", "third_params": {"hidden": [64]}},
    "quick": {"dataset": "digits", "eps": 0.1, "epochs": 15, "adv_epochs": 15, "dverge_epochs": 8,
              "dverge_train": None, "batch": 64, "lr": 5e-3, "points": 360, "dverge_eps": 0.07,
              "third": "mlp", "third_params": {"hidden": [64]}},
}


def build(name: str, ds: Any, seed: int, **params: Any) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.derive_seed("init", seed, name))
        return models.for_dataset(name, ds, **params)


def fit(net: torch.nn.Module, objective: Any, ds: Any, tier: dict[str, Any], epochs: int, seed: int,
        log: dict[str, Any], key: str) -> torch.nn.Module:
    t0 = time.perf_counter()
    trainer = train.Trainer(net, objective, epochs=epochs, batch_size=tier["batch"], optimizer="adam",
                            lr=tier["lr"], schedule="onecycle", weight_decay=0.0, seed=seed, progress=False,
                            threads=1)
    history = trainer.fit(ds)
    last = {k: round(v, 4) for k, v in history[-1].items() if isinstance(v, float) and k.startswith("train_")}
    log[key] = {"seconds": round(time.perf_counter() - t0, 1), "epochs": epochs, "last_epoch": last,
                "flags": trainer.summary()["flags"]}
    print(f"  trained {key}: {log[key]['seconds']} s, {last}", flush=True)
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="digits instead of the MNIST split")
    ap.add_argument("--root", default=str(MNIST_ROOT))
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    name = "quick" if args.quick else "mnist"
    tier = TIERS[name]
    kw = {"root": args.root} if tier["dataset"] == "mnist" else {}
    try:
        train_set, test_set = data.load(tier["dataset"], "train", **kw), data.load(tier["dataset"], "test", **kw)
    except DataError as e:
        print(f"SKIPPED: the MNIST split is not available ({e}); run with --quick for the digits tier.")
        return
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    eps = tier["eps"]
    threat = ThreatModel("linf", eps)
    t_start = time.perf_counter()
    log: dict[str, Any] = {}
    erm = train.create("erm")

    print(f"[{name}] {len(train_set)} train / {len(test_set)} test, eps {eps}", flush=True)
    # -- sources ------------------------------------------------------------------------
    known = {
        "erm-mnist_net-s1": fit(build("mnist_net", train_set, 1), erm, train_set, tier, tier["epochs"], 1, log, "erm-mnist_net-s1"),
        "trades-mnist_net-s1": fit(build("mnist_net", train_set, 1), train.create("trades", eps=eps, eps_warmup=1.0),
                                   train_set, tier, tier["adv_epochs"], 1, log, "trades-mnist_net-s1"),
    }
    third = f"erm-{tier['third']}-s3"
    held_out = {
        "erm-mnist_net-s2": fit(build("mnist_net", train_set, 2), erm, train_set, tier, tier["epochs"], 2, log, "erm-mnist_net-s2"),
        "erm-mlp-s2": fit(build("mlp", train_set, 2), erm, train_set, tier, tier["epochs"], 2, log, "erm-mlp-s2"),
        third: fit(build(tier["third"], train_set, 3, **tier["third_params"]), erm, train_set, tier, tier["epochs"], 3,
                   log, third),
    }
    paths = []
    for key, net in known.items():
        paths.append(str(models.save_model(net, out / "models" / f"{key}_{name}.safetensors")))

    # -- targets ------------------------------------------------------------------------
    targets: dict[str, torch.nn.Module] = {}
    targets["erm"] = fit(build("mnist_net", train_set, 0), erm, train_set, tier, tier["epochs"], 0, log, "erm")
    targets["pgd-at"] = fit(build("mnist_net", train_set, 0), train.create("pgd-at", eps=eps, eps_warmup=1.0),
                            train_set, tier, tier["adv_epochs"], 0, log, "pgd-at")
    pubdef = build("mnist_net", train_set, 0)
    pubdef.load_state_dict(targets["erm"].state_dict())  # official: --resume from the undefended model
    targets["pubdef"] = fit(pubdef, train.create("pubdef", sources=paths, eps=eps), train_set, tier,
                            tier["epochs"], 0, log, "pubdef")
    members = [fit(build("mnist_net", train_set, 10 + k), erm, train_set, tier, 1, 10 + k, log, f"dverge-base-{k}")
               for k in range(3)]
    ens = models.Ensemble(members, combine="probs")
    dv_train = train_set if tier["dverge_train"] is None else train_set.subset(torch.arange(tier["dverge_train"]))
    targets["dverge"] = fit(ens, train.create("dverge", eps=tier["dverge_eps"], step_size=tier["dverge_eps"] / 10),
                            dv_train, tier, tier["dverge_epochs"], 0, log, "dverge")
    suffix = "" if name == "mnist" else "_quick"
    dverge_path = models.save_model(ens, out / "models" / f"dverge{suffix}.safetensors",
                                    metadata={"robustlab_training": json.dumps({"objective": "dverge", "tier": name,
                                                                                "eps": tier["dverge_eps"]})})

    # -- evaluation -----------------------------------------------------------------------
    x, y = test_set.x[: tier["points"]], test_set.y[: tier["points"]]
    pgd = create_attack("pgd", steps=40, rel_step_size=0.1, random_start=True, loss="ce")
    transfer: dict[str, torch.Tensor] = {}
    source_clean: dict[str, float] = {}
    for key, src in {**known, **held_out}.items():
        transfer[key] = pgd.generate(src, x, y, threat, generator=torch.Generator().manual_seed(0), bn_mode="eval")
        source_clean[key] = round(clean_accuracy(src, x, y), 4)
    rows: dict[str, Any] = {}
    for key, net in targets.items():
        net.eval()
        with torch.no_grad():
            acc_t = {s: round(float((net(xs).argmax(1) == y).float().mean()), 4) for s, xs in transfer.items()}
        wb = robust_accuracy(net, x[:500], y[:500], threat, "pgd", steps=20, rel_step_size=0.25)
        rows[key] = {
            "clean": round(clean_accuracy(net, x, y), 4),
            "transfer_known": {s: acc_t[s] for s in known},
            "transfer_held_out": {s: acc_t[s] for s in held_out},
            "worst_held_out": min(acc_t[s] for s in held_out),
            "whitebox_pgd20_500": round(wb.accuracy, 4),
        }
        print(f"  {key}: {json.dumps(rows[key])}", flush=True)
    # DVERGE's own claim: low transferability between its members (member i's PGD on member j)
    member_transfer = []
    for src in ens.members:
        xs = pgd.generate(src, x, y, threat, generator=torch.Generator().manual_seed(1), bn_mode="eval")
        with torch.no_grad():
            member_transfer.append([round(float((m(xs).argmax(1) == y).float().mean()), 4) for m in ens.members])
    base_transfer = []
    base = [build("mnist_net", train_set, 10 + k) for k in range(3)]
    for k, b in enumerate(base):  # the same number of epochs as a DVERGE member (1 ERM + DVERGE)
        fit(b, erm, train_set, tier, 1 + tier["dverge_epochs"], 10 + k, log, f"baseline-member-{k}")
    for src in base:
        xs = pgd.generate(src, x, y, threat, generator=torch.Generator().manual_seed(1), bn_mode="eval")
        with torch.no_grad():
            base_transfer.append([round(float((m(xs).argmax(1) == y).float().mean()), 4) for m in base])
    result = {
        "tier": name, "dataset": tier["dataset"], "train_size": len(train_set), "points": len(x), "eps": eps,
        "settings": tier, "source_clean": source_clean, "targets": rows,
        "dverge_member_transfer_accuracy": member_transfer, "erm_members_transfer_accuracy": base_transfer,
        "dverge_weights": str(dverge_path.relative_to(HERE)), "training": log,
        "seconds": round(time.perf_counter() - t_start, 1), "threads": torch.get_num_threads(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    path = out / f"results_{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path} ({result['seconds']} s; {result['uptime']})")


if __name__ == "__main__":
    main()
