"""GPU throughput: PGD and APGD-CE per second and one adversarial-training epoch, fp32 vs
bf16 autocast (robustlab's ``amp=True``: forward passes in bf16, success re-checked in
fp32) and channels-last, beside torchattacks' PGD on the same GPU, same model, same inputs.

    python benchmarks/gpu/run.py                 # on a machine with CUDA (absolute times)
    python benchmarks/gpu/run.py --smoke         # tiny sizes on any device: checks the code path only

Absolute times are reported only from a GPU: without CUDA the script refuses to time
(``--smoke`` runs the same code on tiny sizes and prints no table of speeds).

- model: ``preact_resnet18`` (CIFAR-10 shape, random weights: throughput does not depend on
  training) or ``--model``;
- inputs: ``--points`` random CIFAR-shaped images, labels = the clean predictions;
- PGD: L-inf 8/255, 10 steps of 2/255, random start; APGD-CE: 10 iterations;
- AT epoch: ``pgd-at`` (10 steps) over ``--train-points`` random images, batch 128, SGD;
- each timing is the median of ``--repeats`` runs after one warm-up, with
  ``torch.cuda.synchronize`` around it; peak memory from ``torch.cuda.max_memory_allocated``.
- torchattacks is timed only if it imports in this environment (``pip install
  torchattacks==3.5.1 --no-deps``); its PGD runs every step on every point, ours stops at
  success, so both are also given as forward+backward passes per second.

Writes ``results/gpu.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import robustlab
from robustlab import attacks, models, train
from robustlab.attacks import ThreatModel
from robustlab.data.base import Dataset

HERE = Path(__file__).resolve().parent


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Any, dev: torch.device, repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up (cuDNN autotuning, allocator)
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def attack_rows(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device,
                args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    threat = ThreatModel("linf", 8 / 255)
    for name, params in (("pgd", {"steps": 10, "step_size": 2 / 255}), ("apgd-ce", {"steps": 10})):
        atk = attacks.create(name, **params)
        for amp in (False, True):
            for cl in (False, True):
                m = net.to(memory_format=torch.channels_last) if cl else net.to(memory_format=torch.contiguous_format)
                xx = x.contiguous(memory_format=torch.channels_last) if cl else x.contiguous()

                def run(atk: Any = atk, m: Any = m, xx: torch.Tensor = xx, amp: bool = amp) -> Any:
                    gen = torch.Generator(device=dev).manual_seed(0)
                    return atk(m, xx, y, [threat], generator=gen, amp=amp)[0]

                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                secs, res = timed(run, dev, args.repeats)
                rows.append({
                    "attack": name, "amp": "bf16" if amp else "fp32", "channels_last": cl,
                    "seconds": secs, "points_per_s": len(x) / secs,
                    "passes_per_s": (res.forwards + res.backwards) / secs,
                    "robust_accuracy": float(res.robust.float().mean()),
                    "peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
                })
    try:
        import torchattacks  # type: ignore[import-not-found]
    except ImportError:
        rows.append({"attack": "torchattacks PGD", "skipped": "torchattacks is not installed here"})
        return rows
    ta = torchattacks.PGD(net.eval(), eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    secs, adv = timed(lambda: ta(x, y), dev, args.repeats)
    with torch.no_grad():
        acc = float((net(adv).argmax(1) == y).float().mean())
    rows.append({"attack": "torchattacks PGD", "amp": "fp32", "channels_last": False, "seconds": secs,
                 "points_per_s": len(x) / secs, "passes_per_s": 20 * len(x) / secs, "robust_accuracy": acc})
    return rows


def at_epoch_rows(dev: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.train_points, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.train_points,), generator=g)
    ds = Dataset(x=x, y=y, num_classes=10, name="random-cifar")
    rows = []
    for amp in (False, "bf16"):
        for cl in (False, True):
            torch.manual_seed(0)
            net = models.create(args.model, num_classes=10, in_channels=3, input_size=(32, 32))
            trainer = train.Trainer(net, train.create("pgd-at", eps="8/255", steps=10), epochs=1, batch_size=128,
                                    lr=0.1, device=str(dev), amp=amp, channels_last=cl, progress=False,
                                    threads=args.threads)
            _sync(dev)
            t0 = time.perf_counter()
            hist = trainer.fit(ds)
            _sync(dev)
            rows.append({"amp": amp or "fp32", "channels_last": cl, "epoch_seconds": time.perf_counter() - t0,
                         "samples_per_s": hist[-1]["samples_per_s"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="preact_resnet18")
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--train-points", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any device; no speeds reported")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # random labels: the AT epoch is timed, not learned (its at-chance flag is expected)
    logging.getLogger("robustlab").setLevel(logging.ERROR)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA device: absolute GPU times come only from a GPU (use --smoke to check the code).")
    dev = torch.device("cuda" if cuda else "cpu")
    if args.smoke:
        args.points, args.train_points, args.repeats = 8, 64, 1
    torch.manual_seed(0)
    net = models.create(args.model, num_classes=10, in_channels=3, input_size=(32, 32)).to(dev).eval()
    x = torch.rand(args.points, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        y = net(x).argmax(1)
    out = {
        "meta": {"torch": torch.__version__, "robustlab": robustlab.__version__, "python": platform.python_version(),
                 "device": torch.cuda.get_device_name(dev) if cuda else "cpu (smoke)", "smoke": args.smoke,
                 "model": args.model, "points": args.points},
        "attacks": attack_rows(net, x, y, dev, args),
        "at_epoch": at_epoch_rows(dev, args),
    }
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / ("gpu-smoke.json" if args.smoke else "gpu.json")).write_text(json.dumps(out, indent=2))
    if args.smoke:
        print(f"smoke run on {dev}: {len(out['attacks'])} attack rows, {len(out['at_epoch'])} AT rows (no speeds reported)")
        return
    print(f"{out['meta']['device']}, {args.model}, {args.points} points")
    for r in out["attacks"]:
        if "skipped" in r:
            print(f"{r['attack']:18s} skipped: {r['skipped']}")
            continue
        print(f"{r['attack']:18s} {r['amp']:5s} cl={r['channels_last']!s:5s} {r['points_per_s']:10.0f} pt/s "
              f"{r['passes_per_s']:10.0f} passes/s  robust {100 * r['robust_accuracy']:.1f}%")
    for r in out["at_epoch"]:
        print(f"PGD-AT epoch {r['amp']:5s} cl={r['channels_last']!s:5s} {r['epoch_seconds']:.1f} s "
              f"({r['samples_per_s']:.0f} samples/s)")


if __name__ == "__main__":
    main()
