"""Threads on a shared CPU: `robustlab bench` quiet vs contended, and the thread rule's threshold.

    python benchmarks/threads/run.py                 # both parts (about 10 minutes on 2 cores)
    python benchmarks/threads/run.py --part bench    # quiet vs contended bench only
    python benchmarks/threads/run.py --part calibrate

**bench**: runs ``robustlab bench`` (a fresh results folder each time, so every run is
computed) four ways: quiet and with two CPU-burning processes of this script's own (one per
core, pure Python busy loops, ended afterwards), each with robustlab's thread choice
(``--threads auto``) and with torch's default of one thread per core (``--threads N``, the
behaviour before the thread rule). A run that takes longer than ``--timeout`` seconds is
stopped and reported as ``> timeout``. The ratio contended/quiet is the number that
matters: a fair library slows down by about the share of the cores the neighbours take.

**calibrate**: the measurement behind :data:`robustlab.threads.MACS_PER_EXTRA_THREAD`:
for models of the zoo at several batch sizes, the best-of-N time of one forward+backward
pass (the unit of training and of attacks) with 1 thread and with all cores, on a quiet
machine, against the batch's multiply-accumulates.

Results go to ``benchmarks/threads/results/threads.md`` and ``.json`` with the load
average before and after each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _burners(n: int) -> list[subprocess.Popen[bytes]]:
    code = "while True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def _robustlab() -> list[str]:
    exe = Path(sys.executable).with_name("robustlab")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "robustlab"]


def time_bench(threads: str, timeout: float) -> dict[str, object]:
    """Wall and CPU seconds of one `robustlab bench` into a fresh results folder."""
    out = Path(tempfile.mkdtemp(prefix="rl-threads-"))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ROBUSTLAB_THREADS")}
    cmd = [*_robustlab(), "--threads", threads, "--quiet", "bench", "--results", str(out / "res")]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    r0 = os.times()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        wall = time.perf_counter() - t0
        ok = proc.returncode == 0
        tail = proc.stdout.strip().splitlines()[-3:] + proc.stderr.strip().splitlines()[-3:]
    except subprocess.TimeoutExpired:
        wall, ok, tail = float("inf"), False, [f"stopped after {timeout:g} s"]
    r1 = os.times()
    shutil.rmtree(out, ignore_errors=True)
    cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    return {"threads": threads, "wall_s": wall, "cpu_s": cpu, "ok": ok, "load_before": load0,
            "load_after": os.getloadavg()[0], "tail": tail}


def part_bench(timeout: float, default_threads: int) -> dict[str, object]:
    cores = os.cpu_count() or 1
    results: dict[str, object] = {"cores": cores}
    for label, threads in (("auto", "auto"), ("torch default", str(default_threads))):
        quiet = time_bench(threads, timeout)
        burners = _burners(cores)
        try:
            time.sleep(2)
            busy = time_bench(threads, timeout)
        finally:
            _stop(burners)
        results[label] = {"quiet": quiet, "contended": busy, "ratio": busy["wall_s"] / quiet["wall_s"]}
        print(f"{label:14s} quiet {quiet['wall_s']:.1f} s, contended {busy['wall_s']:.1f} s, "
              f"ratio {busy['wall_s'] / quiet['wall_s']:.2f}", flush=True)
    return results


def part_calibrate(repeats: int) -> list[dict[str, object]]:
    import torch

    from robustlab import models
    from robustlab.threads import batch_macs, physical_cores

    most = physical_cores()
    cases = [
        ("mlp", {"hidden": [256, 256]}, (1, 8, 8), [64, 512]),
        ("mnist_net", {}, (1, 8, 8), [64, 512]),
        ("mnist_net", {}, (1, 28, 28), [64, 256]),
        ("small_cnn", {}, (1, 28, 28), [64, 256]),
        ("preact_resnet18", {}, (3, 32, 32), [8, 32, 128]),
    ]
    out = []
    for name, params, shape, sizes in cases:
        net = models.create(name, num_classes=10, in_channels=shape[0], input_size=shape[1], **params)
        net.eval()
        for bs in sizes:
            x = torch.rand(bs, *shape)
            macs = batch_macs(net, x)

            def step(net: torch.nn.Module = net, x: torch.Tensor = x) -> None:
                xr = x.clone().requires_grad_(True)
                torch.autograd.grad(net(xr).logsumexp(1).sum(), xr)

            times = {}
            for t in (1, most):
                torch.set_num_threads(t)
                step()
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    step()
                    best = min(best, time.perf_counter() - t0)
                times[t] = best
            row = {"model": name, "input": list(shape), "batch": bs, "macs": macs, "t1_ms": 1e3 * times[1],
                   f"t{most}_ms": 1e3 * times[most], "speedup": times[1] / times[most], "load": os.getloadavg()[0]}
            out.append(row)
            print(f"{name:16s} {str(shape):12s} bs {bs:4d}  {macs / 1e9:7.3f} GMAC  1 thread {1e3 * times[1]:8.2f} ms  "
                  f"{most} threads {1e3 * times[most]:8.2f} ms  speedup {times[1] / times[most]:.2f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["bench", "calibrate", "all"], default="all")
    ap.add_argument("--timeout", type=float, default=900.0, help="stop a bench run after this many seconds")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    report: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_start": os.getloadavg()}
    if args.part in ("calibrate", "all"):
        report["calibrate"] = part_calibrate(args.repeats)
    if args.part in ("bench", "all"):
        import torch

        report["bench"] = part_bench(args.timeout, torch.get_num_threads())
    (res_dir / "threads.json").write_text(json.dumps(report, indent=1, default=str))
    lines = ["# Threads on a shared CPU", "", f"{report['date']}, load average at start {report['load_start']}", ""]
    if "calibrate" in report:
        lines += ["| model | input | batch | GMAC/batch | 1 thread ms | all cores ms | speedup |", "|---|---|---|---|---|---|---|"]
        for r in report["calibrate"]:  # type: ignore[union-attr]
            many = next(v for k, v in r.items() if k.startswith("t") and k != "t1_ms" and k.endswith("_ms"))
            lines.append(f"| {r['model']} | {r['input']} | {r['batch']} | {r['macs'] / 1e9:.3f} | {r['t1_ms']:.2f} | "
                         f"{many:.2f} | {r['speedup']:.2f} |")
        lines.append("")
    if "bench" in report:
        b = report["bench"]
        lines += ["| threads | quiet s | contended s | contended / quiet |", "|---|---|---|---|"]
        for label in ("auto", "torch default"):
            r = b[label]  # type: ignore[index]
            lines.append(f"| {label} | {r['quiet']['wall_s']:.1f} | {r['contended']['wall_s']:.1f} | {r['ratio']:.2f} |")
    (res_dir / "threads.md").write_text("\n".join(lines) + "\n")
    print(f"results: {res_dir / 'threads.md'}")


if __name__ == "__main__":
    main()
