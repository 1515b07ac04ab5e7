"""Attack benchmark: robustlab against torchattacks, foolbox, ART and the reference AutoAttack.

One command (from the repository root, in robustlab's environment)::

    python benchmarks/attacks/run.py [--quick] [--threads 1] [--peers-python PATH]

writes ``benchmarks/attacks/results/attacks.md`` (tables) and ``attacks.json`` (every
number, with versions, settings and the machine's load). The peer libraries run in
their own virtual environment, created on first use in ``benchmarks/attacks/.venv-peers``
(torch pinned to the CPU wheel robustlab uses; the peers installed with ``--no-deps``, so
pip never resolves torch itself); ``--peers-python`` uses an existing one instead.
Both sides evaluate the same weights (the trained models are cached as robustlab
checkpoints; the peers' side rebuilds the architecture from robustlab's model zoo and
reads a plain ``state_dict``) on the same ``.npy`` inputs, written to a temporary folder.

What is compared (Linf, eps 0.3 on MNIST; see README.md for the protocol):

1. models: ``mnist_net`` trained with ERM, and with PGD adversarial training (the
   ``pgd-at`` objective of ``robustlab.train`` when registered, else a small PGD-AT loop
   here that calls ``Attack.generate``), both on the 8,000-image training part of the
   MNIST test-set split (``robustlab.data.load("mnist")``); trained once, cached in
   ``results/models/`` with their training time;
2. ``pgd`` (40 steps of 0.01, uniform random start, cross-entropy) against torchattacks
   ``PGD``, foolbox ``LinfPGD`` and ART ``ProjectedGradientDescent`` with the same
   settings, and the *limit*: a bare loop of 40 forward+backward passes of the same
   model on the same batch; wall time is the median of ``--repeats`` runs;
3. ``standard`` against pyautoattack's ``AutoAttack(version="standard")``: robust
   accuracy (also after each stage), samples passed forward and backward, wall time;
   ``fast`` against both;
4. throughput on a CIFAR-shaped ``preact_resnet18`` (random weights, random inputs,
   eps 8/255, 10 steps of 2/255): the PGD implementations and the limit, plus
   robustlab's ``Attack.generate`` (every point, every step: the training path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results"
PEERS_VENV = HERE / ".venv-peers"
MNIST_ROOT = "/work/shared/data/mnist-t10k"
# the versions the published numbers were made with
PEER_PACKAGES = [
    "torchattacks==3.5.1",
    "pyautoattack==0.2.0",
    "foolbox==3.3.4",
    "adversarial-robustness-toolbox==1.20.1",
]
PEER_LIGHT_DEPS = [
    "eagerpy", "GitPython", "requests", "tqdm", "scipy", "scikit-learn", "six", "packaging",
    "numpy", "typing-extensions",
]

from robustlab import attacks, data, models  # noqa: E402
from robustlab.attacks import ThreatModel  # noqa: E402


# -- the peers' environment --------------------------------------------------------------
def peer_python(given: str | None) -> str:
    """The peers' interpreter: ``given``, or ``.venv-peers`` (created when missing)."""
    if given:
        return given
    py = PEERS_VENV / "bin" / "python"
    probe = "import torchattacks, foolbox, art, pyautoattack"
    if py.exists() and subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0:
        return str(py)
    print(f"creating the peers' environment in {PEERS_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(PEERS_VENV / "bin" / "pip"), "install", "-q"]
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the local CPU wheel
    subprocess.run(pip + [torch_pin], check=True)
    subprocess.run(pip + ["--no-deps"] + PEER_PACKAGES, check=True)
    subprocess.run(pip + PEER_LIGHT_DEPS, check=True)
    subprocess.run([str(py), "-c", probe], check=True)
    return str(py)


# -- models ----------------------------------------------------------------------------------
def mnist_net() -> nn.Module:
    return models.create("mnist_net", num_classes=10, in_channels=1, input_size=(28, 28))


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _pgd_at_loop(model: nn.Module, train_set: Any, epochs: int, eps: float, warmup: int, seed: int) -> str:
    """PGD-AT (Madry et al. 2018) when ``pgd-at`` is not registered: Adam, batches of 128,
    10 PGD steps of eps/4 from a uniform start, eps ramped linearly over ``warmup`` epochs."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all, y_all = train_set.x, train_set.y
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=g)
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            ramp = min(1.0, (epoch + i / len(order)) / warmup) if warmup else 1.0
            e = max(eps * ramp, 1e-3)
            atk = attacks.create("pgd", steps=10, rel_step_size=0.25)
            x_adv = atk.generate(model, x_all[idx], y_all[idx], ThreatModel("linf", e), generator=g)
            model.train()
            loss = F.cross_entropy(model(x_adv), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return "PGD-AT loop in benchmarks/attacks/run.py (pgd-at not registered)"


def trained_models(train_set: Any, test_set: Any, quick: bool) -> dict[str, dict[str, Any]]:
    """ERM and PGD-AT mnist_net, trained once and cached in ``results/models``."""
    folder = RESULTS / "models"
    folder.mkdir(parents=True, exist_ok=True)
    tag = "-quick" if quick else ""
    epochs = {"erm": 2 if quick else 5, "pgd-at": 3 if quick else 12}
    out: dict[str, dict[str, Any]] = {}
    for kind in ("erm", "pgd-at"):
        path = folder / f"mnist_net-{kind}{tag}.safetensors"
        meta_path = path.with_suffix(".json")
        if path.exists() and meta_path.exists():
            model = models.load_model(path).eval()
            meta = json.loads(meta_path.read_text())
        else:
            # only to train a missing model: the ensembles need none of it
            from robustlab import train

            torch.manual_seed(0)  # initial weights only (robustlab never reads the global RNG)
            model = mnist_net()
            t0 = time.perf_counter()
            if kind == "erm":
                trainer = train.Trainer(model, train.create("erm"), epochs=epochs[kind], batch_size=128,
                                        optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="cosine",
                                        seed=0, progress=False)
                trainer.fit(train_set)
                method = "robustlab.train ERM objective (Trainer)"
            elif "pgd-at" in train.available():
                warm = max(1, epochs[kind] // 3)
                objective = train.create("pgd-at", eps=0.3, steps=10, rel_step_size=0.25, eps_warmup=warm)
                trainer = train.Trainer(model, objective, epochs=epochs[kind], batch_size=128,
                                        optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="cosine",
                                        seed=0, progress=False)
                trainer.fit(train_set)
                method = (f"robustlab.train 'pgd-at' objective (eps 0.3, 10 steps of eps/4, eps warm-up "
                          f"over {warm} epochs)")
            else:
                method = _pgd_at_loop(model, train_set, epochs[kind], 0.3, max(1, epochs[kind] // 3), 0)
            seconds = time.perf_counter() - t0
            model.eval()
            meta = {"method": method, "epochs": epochs[kind], "optimizer": "adam lr 1e-3, cosine, batch 128",
                    "train_seconds": seconds, "train_points": len(train_set.x),
                    "threads": torch.get_num_threads()}
            models.save_model(model, path)
            meta_path.write_text(json.dumps(meta, indent=1))
        meta["clean_accuracy_test"] = _accuracy(model, test_set.x, test_set.y)
        meta["path"] = str(path.relative_to(REPO))
        out[kind] = {"model": model, "path": path, "meta": meta}
    return out


# -- robustlab's side ------------------------------------------------------------------------------
def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def limit_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, repeats: int) -> float:
    """Median time of a bare loop of ``k`` forward+backward passes (input gradient only)."""
    frozen(model)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(k):
            xr = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xr), y)
            torch.autograd.grad(loss, xr)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int,
             step_size: float, repeats: int, *, generate: bool = False) -> dict[str, Any]:
    atk = attacks.create("pgd", steps=steps, step_size=step_size, random_start=True, loss="ce")
    times, robust = [], float("nan")
    fw = bw = 0
    for _ in range(repeats):
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        if generate:
            x_adv = atk.generate(model, x, y, threat, generator=g)
            times.append(time.perf_counter() - t0)
            robust = _accuracy(model, x_adv, y)
        else:
            res = atk(model, x, y, threat, generator=g)
            times.append(time.perf_counter() - t0)
            robust, fw, bw = res.robust_accuracy, res.forwards, res.backwards
    return {"times": times, "seconds": statistics.median(times), "robust_accuracy": robust,
            "forwards": fw, "backwards": bw}


def ours_ensemble(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = attacks.create(name)(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t0
    broken_by = res.info["broken_by"]
    stages = {}
    for j, label in enumerate(res.info["stages"]):
        still = res.clean_correct & ((broken_by < 0) | (broken_by > j))
        stages[label] = float(still.float().mean())
    labels = res.info["stages"]
    return {"robust_accuracy": res.robust_accuracy, "stage_robust_accuracy": stages,
            "forwards": res.forwards, "backwards": res.backwards, "seconds": seconds,
            "stage_seconds": dict(zip(labels, res.info["stage_seconds"], strict=True)),
            "stage_forwards": dict(zip(labels, res.info["stage_forwards"], strict=True)),
            "stage_backwards": dict(zip(labels, res.info["stage_backwards"], strict=True)),
            "protocol": res.info["protocol"], "notes": res.info["notes"], "skipped": res.info["skipped"]}


def interleaved_ensembles(
    python: str, job: dict[str, Any], workdir: Path, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
    threat: ThreatModel, repeats: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Time the ensembles round-robin: each repeat runs the reference's ``standard`` once
    (one subprocess), then robustlab's ``standard`` and ``fast``, so that a change in the
    machine's load hits both sides alike. Every run is seeded alike, so robust accuracy
    and counts are those of any run; ``seconds`` and each stage's seconds are medians
    over the repeats (``times``/``stage_times``: every run). Also returns the peers' versions."""
    runs: dict[str, list[dict[str, Any]]] = {}
    versions: dict[str, str] = {}
    for _ in range(repeats):
        out = run_peers(python, job, workdir)
        versions = out["versions"]
        runs.setdefault("pyautoattack standard", []).append(out["standard"])
        for name in ("standard", "fast"):
            runs.setdefault(f"robustlab {name}", []).append(ours_ensemble(name, model, x, y, threat))
    recs: dict[str, dict[str, Any]] = {}
    for name in ("robustlab standard", "pyautoattack standard", "robustlab fast"):
        rs = runs[name]
        rec = dict(rs[0])
        rec["times"] = [r["seconds"] for r in rs]
        rec["seconds"] = statistics.median(rec["times"])
        rec["stage_times"] = {k: [r.get("stage_seconds", {}).get(k, float("nan")) for r in rs]
                              for k in rs[0].get("stage_seconds", {})}
        rec["stage_seconds"] = {k: statistics.median(v) for k, v in rec["stage_times"].items()}
        rec["robust_accuracy_runs"] = [r["robust_accuracy"] for r in rs]
        recs[name] = rec
    return recs, versions


def share_model(model: nn.Module, folder: Path, name: str) -> dict[str, Any]:
    """Write ``model`` for the peers' side: its zoo config and a plain ``state_dict``
    (the peers' environment rebuilds it with ``robustlab.models.create``)."""
    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return {"config": model.robustlab_config, "state_dict": str(path)}


def run_peers(python: str, job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    job_path, out_path = workdir / "job.json", workdir / "peers-out.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    subprocess.run([python, str(HERE / "peers.py"), str(job_path), str(out_path)], check=True, env=env)
    return json.loads(out_path.read_text())


def interleaved_pgd(
    python: str, job: dict[str, Any], workdir: Path, ours: dict[str, Any], limit: Any, repeats: int
) -> tuple[dict[str, dict[str, Any]], float, dict[str, str]]:
    """Time the PGD implementations round-robin: each repeat runs every peer once (one
    subprocess), every robustlab variant once and the limit once, so that a change in the
    machine's load hits every implementation alike. Returns the records (times, median
    seconds, robust accuracy of the first run), the median limit and the peers' versions."""
    recs: dict[str, dict[str, Any]] = {}
    limits: list[float] = []
    versions: dict[str, str] = {}
    for _ in range(repeats):
        out = run_peers(python, {**job, "pgd": {**job["pgd"], "repeats": 1}}, workdir)
        versions = out["versions"]
        runs = {name: fn() for name, fn in ours.items()}
        runs.update(out["pgd"])
        for name, rec in runs.items():
            recs.setdefault(name, {**rec, "times": []})["times"] += list(rec["times"])
        limits.append(limit())
    for rec in recs.values():
        rec["seconds"] = statistics.median(rec["times"])
    return recs, statistics.median(limits), versions


# -- the benchmark ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small subsets, one repeat (minutes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides (default 1)")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3; quick: 1)")
    ap.add_argument("--peers-python", default=None, help="an existing peers' interpreter")
    ap.add_argument("--only", choices=("all", "ensembles"), default="all",
                    help="'ensembles': only the standard/fast vs reference comparison (no PGD, no throughput)")
    args = ap.parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    n_pgd = 200 if quick else 1000
    n_std = {"erm": 100 if quick else 1000, "pgd-at": 100 if quick else 500}
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    py = peer_python(args.peers_python)
    started = time.perf_counter()
    load_before = os.getloadavg()

    train_set = data.load("mnist", split="train", root=MNIST_ROOT)
    test_set = data.load("mnist", split="test", root=MNIST_ROOT)
    zoo = trained_models(train_set, test_set, quick)
    threat = ThreatModel("linf", 0.3)
    steps, step_size = 40, 0.01
    report: dict[str, Any] = {
        "settings": {"quick": quick, "threads": args.threads, "repeats": repeats, "eps": 0.3, "only": args.only,
                     "pgd": {"steps": steps, "step_size": step_size, "random_start": True, "loss": "ce",
                             "n": n_pgd},
                     "standard_n": n_std, "data": test_set.description},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_before": load_before},
        "versions": {"robustlab": __import__("robustlab").__version__, "torch": torch.__version__},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind, entry in zoo.items():
            model = frozen(entry["model"])
            x, y = test_set.x[: max(n_pgd, n_std[kind])], test_set.y[: max(n_pgd, n_std[kind])]
            np.save(work / "x.npy", x.numpy())
            np.save(work / "y.npy", y.numpy())
            job = {"threads": args.threads, "model": share_model(model, work, kind), "x": str(work / "x.npy"),
                   "y": str(work / "y.npy"), "num_classes": 10,
                   "standard": {"eps": 0.3, "n": n_std[kind], "seed": 0}}
            xp, yp = x[:n_pgd], y[:n_pgd]
            xs, ys = x[: n_std[kind]], y[: n_std[kind]]
            rec: dict[str, Any] = {"meta": entry["meta"], "clean_accuracy_pgd_subset": _accuracy(model, xp, yp),
                                   "clean_accuracy_standard_subset": _accuracy(model, xs, ys)}
            print(f"[{kind}] ensembles round-robin (reference, standard, fast) x {repeats} ...", flush=True)
            rec["standard"], versions = interleaved_ensembles(py, job, work, model, xs, ys, threat, repeats)
            report["versions"].update(versions)
            if args.only == "all":
                print(f"[{kind}] PGD timings round-robin ...", flush=True)
                del job["standard"]
                job["pgd"] = {"eps": 0.3, "steps": steps, "step_size": step_size, "n": n_pgd, "seed": 0}
                rec["pgd"], rec["pgd_limit_seconds"], _ = interleaved_pgd(
                    py, job, work,
                    {"robustlab pgd": lambda m=model, a=xp, b=yp: ours_pgd(m, a, b, threat, steps, step_size, 1)},
                    lambda m=model, a=xp, b=yp: limit_seconds(m, a, b, steps, 1), repeats,
                )
            report["models"][kind] = rec
            (RESULTS / "attacks.json").write_text(json.dumps(report, indent=1, default=str))

        if args.only == "all":
            report["throughput"] = throughput(py, work, args.threads, quick, repeats)
    report["machine"]["load_after"] = os.getloadavg()
    report["total_seconds"] = time.perf_counter() - started
    (RESULTS / "attacks.json").write_text(json.dumps(report, indent=1, default=str))
    (RESULTS / "attacks.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def throughput(py: str, work: Path, threads: int, quick: bool, repeats: int) -> dict[str, Any]:
    """PGD implementations and the limit on a CIFAR-shaped ``preact_resnet18``."""
    print("[cifar-shaped] throughput ...", flush=True)
    torch.manual_seed(0)  # random weights (initialisation only)
    net = frozen(models.create("preact_resnet18", num_classes=10, in_channels=3, input_size=(32, 32)))
    n_c = 16 if quick else 32
    xc = torch.rand(n_c, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        yc = net(xc).argmax(1)  # every point correct when clean
    np.save(work / "x.npy", xc.numpy())
    np.save(work / "y.npy", yc.numpy())
    tc, k_c, a_c = ThreatModel("linf", 8 / 255), 10, 2 / 255
    job = {"threads": threads, "model": share_model(net, work, "preact"), "x": str(work / "x.npy"),
           "y": str(work / "y.npy"),
           "num_classes": 10, "pgd": {"eps": 8 / 255, "steps": k_c, "step_size": a_c, "n": n_c, "seed": 0}}
    recs, limit, _ = interleaved_pgd(
        py, job, work,
        {"robustlab pgd": lambda: ours_pgd(net, xc, yc, tc, k_c, a_c, 1),
         "robustlab pgd (generate)": lambda: ours_pgd(net, xc, yc, tc, k_c, a_c, 1, generate=True)},
        lambda: limit_seconds(net, xc, yc, k_c, 1), repeats,
    )
    return {
        "model": "preact_resnet18 (random weights), inputs U[0,1]^(3x32x32), labels = clean predictions",
        "n": n_c, "eps": 8 / 255, "steps": k_c, "step_size": a_c, "pgd": recs, "limit_seconds": limit,
    }


# -- the tables -------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        "# Attack benchmark (robustlab vs torchattacks, foolbox, ART, pyautoattack)",
        "",
        f"Linf eps {s['eps']}; {s['threads']} torch thread(s) on both sides; timings are the median of "
        f"{s['repeats']} round-robin run(s) (PGD: every implementation and the limit once per round; "
        f"ensembles: the reference, standard and fast once per round); machine load average "
        f"{r['machine']['load_before'][0]:.1f} before, {r['machine'].get('load_after', [float('nan')])[0]:.1f} after "
        f"({r['machine']['cpus']} CPUs, shared). Data: {s['data'].split('.')[0]}.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}.",
        "",
    ]
    for kind, m in r["models"].items():
        meta = m["meta"]
        lines += [
            f"## mnist_net, {kind} (clean test accuracy {_pct(meta['clean_accuracy_test'])}; trained "
            f"{meta['epochs']} epochs in {meta['train_seconds']:.0f} s: {meta['method']})",
            "",
        ]
        if "pgd" in m:
            lines += _pgd_lines(s, m)
        lines += _ensemble_lines(s, kind, m)
    if "throughput" in r:
        t = r["throughput"]
        lines += [
            f"## Throughput: {t['model']}",
            "",
            f"{t['n']} points in one batch, eps 8/255, {t['steps']} steps of 2/255; limit = {t['steps']} bare "
            f"forward+backward passes: {t['limit_seconds']:.2f} s.",
            "",
            "| attack | robust accuracy | seconds | x limit |",
            "|---|---|---|---|",
        ]
        for name, v in t["pgd"].items():
            lines.append(f"| {name} | {_pct(v['robust_accuracy'])} | {v['seconds']:.2f} | "
                         f"{v['seconds'] / t['limit_seconds']:.2f} |")
        lines.append("")
    lines.append(f"Total benchmark time: {r.get('total_seconds', float('nan')) / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def _pgd_lines(s: dict[str, Any], m: dict[str, Any]) -> list[str]:
    lines = [
        f"PGD: {s['pgd']['steps']} steps of {s['pgd']['step_size']}, uniform random start, CE, "
        f"{s['pgd']['n']} test points in one batch (clean accuracy {_pct(m['clean_accuracy_pgd_subset'])}); "
        f"limit = {s['pgd']['steps']} bare forward+backward passes: {m['pgd_limit_seconds']:.2f} s.",
        "",
        "| attack | robust accuracy | seconds | x limit |",
        "|---|---|---|---|",
    ]
    for name, v in m["pgd"].items():
        lines.append(f"| {name} | {_pct(v['robust_accuracy'])} | {v['seconds']:.2f} | "
                     f"{v['seconds'] / m['pgd_limit_seconds']:.2f} |")
    ours = m["pgd"]["robustlab pgd"]["seconds"]
    fastest = min(v["seconds"] for k, v in m["pgd"].items() if not k.startswith("robustlab"))
    return lines + [
        "",
        f"Targets: pgd at least as fast as the fastest peer ({ours:.2f} s vs {fastest:.2f} s): "
        f"{_verdict(ours <= fastest)}; within 5% of the limit ({ours / m['pgd_limit_seconds']:.3f} x): "
        f"{_verdict(ours <= 1.05 * m['pgd_limit_seconds'])}.",
        "",
    ]


def _ensemble_lines(s: dict[str, Any], kind: str, m: dict[str, Any]) -> list[str]:
    reps = s["repeats"]
    lines = [
        f"Ensembles on {s['standard_n'][kind]} test points (clean accuracy "
        f"{_pct(m['clean_accuracy_standard_subset'])}); passes are samples through the model; seconds are the "
        f"median of {reps} round-robin run(s) (reference, standard, fast once per round).",
        "",
        "| evaluation | robust accuracy | after each stage | forward | backward | seconds | every run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in m["standard"].items():
        stages = ", ".join(f"{k} {_pct(a)}" for k, a in v["stage_robust_accuracy"].items())
        runs = ", ".join(f"{t:.1f}" for t in v.get("times", [v["seconds"]]))
        lines.append(f"| {name} | {_pct(v['robust_accuracy'])} | {stages} | {v['forwards']:,} | "
                     f"{v['backwards']:,} | {v['seconds']:.1f} | {runs} |")
    labels = list(m["standard"]["robustlab standard"].get("stage_seconds", {}))
    if labels:
        lines += [
            "",
            "Seconds per stage (median over the runs; the reference's from its log's cumulative times, "
            "0.1 s resolution, its first stage including its clean pass and checks):",
            "",
            "| evaluation | " + " | ".join(labels) + " | total |",
            "|---|" + "---|" * (len(labels) + 1),
        ]
        for name, v in m["standard"].items():
            st = v.get("stage_seconds", {})
            cells = [f"{st[k]:.1f}" if k in st else "-" for k in labels]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {v['seconds']:.1f} |")
    st, ref, fa = (m["standard"][k] for k in ("robustlab standard", "pyautoattack standard", "robustlab fast"))
    ratio = st["seconds"] / ref["seconds"]
    return lines + [
        "",
        f"Targets: standard robust accuracy <= reference + 0.3 points "
        f"({_pct(st['robust_accuracy'])} vs {_pct(ref['robust_accuracy'])}): "
        f"{_verdict(st['robust_accuracy'] <= ref['robust_accuracy'] + 0.003 + 1e-12)}; "
        f"at most half the reference's wall time ({st['seconds']:.1f} s vs {ref['seconds']:.1f} s, "
        f"{ratio:.2f} x): {_verdict(ratio <= 0.5)}; fast within 0.5 points of standard "
        f"({_pct(fa['robust_accuracy'])}): {_verdict(fa['robust_accuracy'] <= st['robust_accuracy'] + 0.005 + 1e-12)}; "
        f"fast at most a third of standard's gradient evaluations ({fa['backwards']:,} vs "
        f"{st['backwards']:,}, {fa['backwards'] / max(st['backwards'], 1):.2f}): "
        + ("n/a (every point fell to APGD-CE, the first member of both)"
           if not sum(list(st["stage_backwards"].values())[1:]) else _verdict(3 * fa["backwards"] <= st["backwards"]))
        + ".",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
