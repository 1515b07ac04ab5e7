"""The noisy-label benchmark: robust losses and noisy-label methods under label noise.

    python benchmarks/noisy_labels/run.py                   # everything (suite.yaml)
    python benchmarks/noisy_labels/run.py --quick           # one seed, two settings: minutes
    python benchmarks/noisy_labels/run.py --datasets digits # one dataset
    python benchmarks/noisy_labels/run.py --export-suite noisy.yaml   # the plain robustlab suite

Every run is an experiment config of one suite (``suite.yaml`` expanded), trained with
robustlab's Trainer and stored in a results store (``--out``/results.db, keyed by the
config hash: a finished config is not run again, so an interrupted benchmark continues
where it stopped). Besides what ``robustlab.experiments.run_experiment`` stores, each run
records the test accuracy after every epoch (``history[i]["test_accuracy"]``) and
``test_accuracy_last``, ``test_accuracy_best`` (the maximum over epochs, i.e. chosen on the
test set: optimistic, the way much of the literature reports "best") and
``test_accuracy_best_epoch``, as every robustlab run does.
Label-issue detection (cross-fitted probabilities + confident learning) runs on the noisy
training sets of one seed.

Writes into ``--out`` (default ``benchmarks/noisy_labels/results/``): ``results.db`` and
``artifacts/`` (the store), ``results.md`` (the tables), ``label_issues.json``,
``report.html`` (robustlab.report.write_report, with the accuracy-vs-noise-rate plot) and
one ``report-<dataset>.html`` per dataset. See README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import copy
import hashlib
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SPEC = HERE / "suite.yaml"
DEFAULT_OUT = HERE / "results"
# the rows of the literature's ordering the README compares with (ELR paper, Table 1)
ORDERING_METHODS = ("ce", "gce", "sce", "elr")


# -- the suite ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Planned:
    """One experiment of the benchmark and where it sits in the tables."""

    dataset: str
    setting: str  # a setting name, or the reference name for CE on clean labels
    method: str
    seed: int
    tree: dict[str, Any]


def load_spec(path: Path, mnist_root: str | None = None) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text())
    if mnist_root is not None:
        spec["datasets"]["mnist"]["data"]["root"] = str(Path(mnist_root).expanduser().resolve())
    return spec


def plan(spec: dict[str, Any], *, quick: bool, datasets: list[str] | None) -> list[Planned]:
    """Every experiment of the (quick) benchmark on ``datasets``, in table order."""
    from robustlab.experiments.config import deep_merge

    chosen = list(spec["datasets"]) if datasets is None else datasets
    unknown = [d for d in chosen if d not in spec["datasets"]]
    if unknown:
        raise SystemExit(f"unknown dataset(s) {unknown}; the suite has {list(spec['datasets'])}.")
    seeds = spec["quick"]["seeds"] if quick else spec["seeds"]
    wanted = set(spec["quick"]["settings"]) if quick else None
    settings = [s for s in spec["settings"] if wanted is None or s["name"] in wanted]
    ref = spec["reference"]
    out: list[Planned] = []
    for d in chosen:
        base = deep_merge(spec["base"], spec["datasets"][d])
        for seed in seeds:
            tree = deep_merge(base, ref.get("tree") or {})
            tree.update(name=f"{d}/{ref['name']}/s{seed}", seed=seed, noise=None)
            out.append(Planned(d, ref["name"], "ce", seed, tree))
        for s in settings:
            for m, mtree in spec["methods"].items():
                over = (s.get("methods") or {}).get(m) or {}
                tree = deep_merge(deep_merge(base, mtree or {}), over)
                for seed in seeds:
                    t = copy.deepcopy(tree)
                    t.update(name=f"{d}/{m}/{s['name']}/s{seed}", seed=seed, noise=copy.deepcopy(s["noise"]))
                    out.append(Planned(d, s["name"], m, seed, t))
    return out


def as_suite(spec: dict[str, Any], planned: list[Planned]) -> Any:
    """The planned experiments as a robustlab Suite (validates every config)."""
    from robustlab.experiments import Suite

    return Suite(suite=spec["suite"], description=spec["description"].strip(), runs=[p.tree for p in planned],
                 report={"title": "robustlab noisy-label benchmark"})


# -- one run -----------------------------------------------------------------------------------
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    import robustlab.train.noisy  # noqa: F401  (registers elr, ps-kd, co-teaching)


def run_one(tree: dict[str, Any], store_root: str, suite: str) -> dict[str, Any]:
    """Run one config with ``robustlab.experiments.run_experiment`` (which records the test
    accuracy after every epoch and stores ``test_accuracy_last`` / ``test_accuracy_best``).
    Returns a summary."""
    from robustlab.experiments import ResultsStore, make_config, run_experiment

    _init_worker()
    cfg = make_config(tree)
    store = ResultsStore(store_root)
    existing = store.get(cfg.hash())
    skipped = existing is not None and existing.status == "done"
    record = run_experiment(cfg, store, suite=suite, progress=False)
    # the checkpoint only serves to resume an interrupted run; the weights stay in model.safetensors
    (store.root / "artifacts" / record.id / "train" / "last.pt").unlink(missing_ok=True)
    return _summary(record.metrics or {}, cfg.label(), skipped=skipped)


def _summary(metrics: dict[str, Any], label: str, *, skipped: bool) -> dict[str, Any]:
    return {
        "label": label,
        "skipped": skipped,
        "last": metrics.get("test_accuracy_last"),
        "best": metrics.get("test_accuracy_best"),
        "seconds": metrics.get("train_seconds"),
    }


# -- label issues ------------------------------------------------------------------------------
def issues_key(tree: dict[str, Any], folds: int) -> str:
    text = json.dumps({"config": tree, "folds": folds}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_issues_one(tree: dict[str, Any], folds: int) -> dict[str, Any]:
    """Label issues of the noisy training set of ``tree`` (a CE config), found by cross-fitting
    the config's model with its optimiser and epochs, then confident learning."""
    from robustlab import labels
    from robustlab.experiments import make_config
    from robustlab.experiments.runner import prepare_data

    _init_worker()
    cfg = make_config(tree)
    train_set, _, _, noise_info = prepare_data(cfg)
    t = cfg.train
    t0 = time.perf_counter()
    issues = labels.find_issues(
        train_set, model=cfg.model.name, model_params=cfg.model.params, folds=folds, seed=cfg.seed,
        epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
        nesterov=t.nesterov, weight_decay=t.weight_decay, schedule=t.schedule, grad_clip=t.grad_clip,
    )
    flipped = int(noise_info["num_flipped"]) if noise_info else 0
    return {
        "num_samples": len(train_set),
        "num_flipped": flipped,
        "flip_rate": noise_info["flip_rate"] if noise_info else 0.0,
        "num_flagged": len(issues),
        "precision": issues.precision,
        "recall": issues.recall,
        "folds": folds,
        "seed": cfg.seed,
        "seconds": time.perf_counter() - t0,
    }


# -- tables ------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float | None]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: list[float], bold: bool = False) -> str:
    if not values:
        return "—"
    m, s = _mean_std(values)
    text = f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")
    return f"**{text}**" if bold else text


def collect(planned: list[Planned], store: Any) -> dict[tuple[str, str, str], dict[str, list[float]]]:
    """(dataset, setting, method) -> {"last": [...], "best": [...], "seeds": [...]} from done runs."""
    from robustlab.experiments import make_config

    out: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for p in planned:
        rec = store.get(make_config(p.tree).hash())
        if rec is None or rec.status != "done" or not rec.metrics:
            continue
        cell = out.setdefault((p.dataset, p.setting, p.method), {"last": [], "best": [], "seeds": []})
        cell["last"].append(float(rec.metrics["test_accuracy_last"]))
        cell["best"].append(float(rec.metrics["test_accuracy_best"]))
        cell["seeds"].append(p.seed)
    return out


def markdown(spec: dict[str, Any], planned: list[Planned], cells: dict[Any, Any], issues: dict[str, Any]) -> str:
    ref = spec["reference"]["name"]
    datasets = list(dict.fromkeys(p.dataset for p in planned))
    settings = [s["name"] for s in spec["settings"] if any(p.setting == s["name"] for p in planned)]
    methods = list(spec["methods"])
    lines: list[str] = []
    for d in datasets:
        desc = spec["datasets"][d]
        tr = desc.get("train", {})
        for which, title in (
            ("last", "test accuracy after the last epoch"),
            ("best", "best test accuracy over epochs (selected on the test set: optimistic)"),
        ):
            seeds = sorted({s for (dd, _, _), c in cells.items() if dd == d for s in c["seeds"]})
            lines += [
                f"#### {d}: {title}",
                "",
                f"Mean ± std over seeds {seeds} (%); {tr.get('epochs')} epochs, batch {tr.get('batch_size')}. "
                f"Bold: the highest mean of each column.",
                "",
                "| method | " + " | ".join(settings) + " |",
                "|---|" + "---:|" * len(settings),
            ]
            col_best = {
                s: max((statistics.fmean(c[which]) for (dd, ss, _), c in cells.items() if dd == d and ss == s),
                       default=None)
                for s in settings
            }
            for m in methods:
                row = []
                for s in settings:
                    vals = cells.get((d, s, m), {}).get(which, [])
                    row.append(_cell(vals, bold=bool(vals) and math.isclose(statistics.fmean(vals), col_best[s] or -1)))
                lines.append(f"| {m} | " + " | ".join(row) + " |")
            clean = cells.get((d, ref, "ce"), {}).get(which, [])
            lines += ["", f"CE on clean labels ({which}): {_cell(clean)}", ""]
        lines += _target_lines(d, settings, cells, ref)
    if issues:
        lines += [
            "#### Label-issue detection (cross-fitted CE probabilities + confident learning)",
            "",
            "| dataset | setting | flipped labels | flagged | precision | recall |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for d in datasets:
            for s in settings:
                r = issues.get(f"{d}/{s}")
                if r is None:
                    continue
                lines.append(
                    f"| {d} | {s} | {r['num_flipped']} / {r['num_samples']} | {r['num_flagged']} | "
                    f"{100 * r['precision']:.1f} | {100 * r['recall']:.1f} |"
                )
        lines.append("")
    return "\n".join(lines)


def _target_lines(d: str, settings: list[str], cells: dict[Any, Any], ref: str) -> list[str]:
    """The issue's two checks, computed from the measured means (nothing hard-coded)."""
    out = []
    clean = cells.get((d, ref, "ce"), {}).get("last", [])
    at40 = {m: statistics.fmean(c["last"]) for (dd, s, m), c in cells.items() if dd == d and s == "sym-40%"}
    if clean and at40:
        best_m = max(at40, key=at40.get)
        gap = 100 * (statistics.fmean(clean) - at40[best_m])
        verdict = "within" if gap <= 3.0 else "NOT within"
        out.append(
            f"- Target at sym-40% (last epoch): best method {best_m} {100 * at40[best_m]:.1f} vs CE on clean "
            f"labels {100 * statistics.fmean(clean):.1f}: gap {gap:.1f} points, {verdict} 3 points."
        )
    for s in settings:
        if not s.startswith("sym-") or s in ("sym-20%",):
            continue
        means = {m: statistics.fmean(cells[(d, s, m)]["last"]) for m in ORDERING_METHODS if (d, s, m) in cells}
        if len(means) == len(ORDERING_METHODS):
            order = " < ".join(f"{m} {100 * v:.1f}" for m, v in sorted(means.items(), key=lambda kv: kv[1]))
            out.append(f"- Ordering at {s} (last epoch, ascending): {order} (literature: ce < gce <= sce < elr).")
    return out + [""] if out else out


def report_rows(store: Any, planned: list[Planned]) -> list[dict[str, Any]]:
    """The stored rows of the planned runs, for write_report. The report's noise plot and
    table tell runs apart by loss *name*, so the copies handed to it carry the method name
    (e.g. ``comp-sum(tau=0.5)``) as the loss name; the store itself is not changed."""
    from robustlab.experiments import make_config

    rows = []
    for p in planned:
        rec = store.get(make_config(p.tree).hash())
        if rec is None:
            continue
        row = copy.deepcopy(rec.to_dict())
        loss = row["config"]["train"]["loss"]
        if p.method.startswith(loss["name"] + "("):
            loss["name"] = p.method
        rows.append(row)
    return rows


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, fewer settings (a smoke check)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default: %(default)s)")
    ap.add_argument("--datasets", default=None, help="comma-separated subset of the suite's datasets")
    ap.add_argument("--workers", type=int, default=2, help="parallel processes, one thread each (default 2)")
    ap.add_argument("--mnist-root", default=None, help="folder with the MNIST IDX files (overrides suite.yaml)")
    ap.add_argument("--spec", type=Path, default=SPEC, help="the benchmark spec (default: suite.yaml)")
    ap.add_argument("--export-suite", type=Path, default=None,
                    help="write the expanded plain robustlab suite to this YAML file and exit")
    ap.add_argument("--no-issues", action="store_true", help="skip label-issue detection")
    args = ap.parse_args(argv)

    spec = load_spec(args.spec, args.mnist_root)
    datasets = None if args.datasets is None else [d.strip() for d in args.datasets.split(",") if d.strip()]
    planned = plan(spec, quick=args.quick, datasets=datasets)
    suite = as_suite(spec, planned)
    configs = suite.expand()  # validates every config (unknown names, bad values) before running
    if args.export_suite is not None:
        args.export_suite.write_text(yaml.safe_dump(suite.model_dump(), sort_keys=False))
        print(f"wrote {len(configs)} runs to {args.export_suite}")
        return 0

    import robustlab.train.noisy  # noqa: F401  (registers elr, ps-kd, co-teaching)
    from robustlab import data
    from robustlab.experiments import ResultsStore
    from robustlab.experiments.runner import validate_config
    from robustlab.report import write_report

    for cfg in configs:
        validate_config(cfg)
    for d in dict.fromkeys(p.dataset for p in planned):  # data present? (clear error before any run)
        dd = spec["datasets"][d]["data"]
        data.load(dd["name"], "train", root=dd.get("root"))

    args.out.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(args.out)
    issues_path = args.out / "label_issues.json"
    issues: dict[str, Any] = json.loads(issues_path.read_text()) if issues_path.exists() else {}
    li = spec["label_issues"]
    issue_jobs = []
    if not args.no_issues:
        for p in planned:
            if p.method == "ce" and p.seed == li["seed"] and p.tree.get("noise"):
                key = f"{p.dataset}/{p.setting}"
                if issues.get(key, {}).get("key") != issues_key(p.tree, li["folds"]):
                    issue_jobs.append((key, p.tree))

    # Job order: dataset by dataset, seed by seed (an interrupted benchmark leaves whole
    # seeds behind), the expensive runs of a seed first (co-teaching trains two networks);
    # each dataset's label-issue jobs after its first seed.
    jobs: list[tuple[Any, ...]] = []
    seeds_of = list(dict.fromkeys(p.seed for p in planned))
    for d in dict.fromkeys(p.dataset for p in planned):
        for i, seed in enumerate(seeds_of):
            batch = [p for p in planned if p.dataset == d and p.seed == seed]
            batch.sort(key=lambda p: p.tree["train"]["objective"] != "co-teaching")
            jobs += [("run", p) for p in batch]
            if i == 0:
                jobs += [("issues", key, tree) for key, tree in issue_jobs if key.startswith(d + "/")]
    total = len(jobs)
    print(f"noisy-label benchmark: {len(planned)} runs + {len(issue_jobs)} label-issue jobs, "
          f"{args.workers} worker(s), results in {args.out}", flush=True)
    t0 = time.perf_counter()
    done = 0
    failures: list[str] = []

    def report_progress(text: str) -> None:
        nonlocal done
        done += 1
        print(f"[{done}/{total} {time.perf_counter() - t0:6.0f}s] {text}", flush=True)

    def submit(job: tuple[Any, ...], call: Any) -> Any:
        if job[0] == "run":
            return call(run_one, job[1].tree, str(args.out), spec["suite"])
        return call(find_issues_one, job[2], li["folds"])

    def finished(job: tuple[Any, ...], res: dict[str, Any]) -> None:
        if job[0] == "run":
            tag = "stored earlier" if res["skipped"] else f"{res['seconds']:.1f}s"
            report_progress(f"{res['label']}: last {100 * res['last']:.1f} best {100 * res['best']:.1f} ({tag})")
        else:
            key, tree = job[1], job[2]
            issues[key] = {**res, "key": issues_key(tree, li["folds"])}
            issues_path.write_text(json.dumps(issues, indent=2, sort_keys=True))
            report_progress(f"label issues {key}: precision {100 * res['precision']:.1f} recall "
                            f"{100 * res['recall']:.1f} ({res['seconds']:.1f}s)")

    if args.workers <= 1:
        _init_worker()
        for job in jobs:
            finished(job, submit(job, lambda fn, *a: fn(*a)))
    else:
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx, initializer=_init_worker) as pool:
            futs = {submit(job, pool.submit): job for job in jobs}
            for fut in cf.as_completed(futs):
                job = futs[fut]
                try:
                    res = fut.result()
                except Exception as exc:  # keep going; the store marks the run failed
                    name = job[1].tree["name"] if job[0] == "run" else f"label issues {job[1]}"
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    report_progress(f"FAILED {failures[-1]}")
                    continue
                finished(job, res)
    wall = time.perf_counter() - t0

    # tables and report over every run of the full suite found in the store (so a quick run
    # and a later full run, or one dataset at a time, add up)
    everything = plan(spec, quick=False, datasets=None)
    cells = collect(everything, store)
    present = [p for p in everything if (p.dataset, p.setting, p.method) in cells]
    text = markdown(spec, present, cells, issues)
    header = (
        f"# Noisy-label benchmark results\n\nrobustlab noisy-label suite ({SPEC.name}); "
        f"this invocation: {'quick' if args.quick else 'full'}, datasets {datasets or list(spec['datasets'])}, "
        f"{len(planned)} runs, {args.workers} worker(s), {wall:.0f} s wall.\n\n"
    )
    (args.out / "results.md").write_text(header + text)
    notes = [
        spec["description"].strip(),
        "MNIST: the official t10k images only, split seeded and stratified into 8,000 train / 2,000 "
        "test (split seed = run seed). digits: scikit-learn digits, fixed 1,437 / 360 split.",
        "Label noise on the training labels only, exact counts; symmetric noise flips to one of the "
        "other 9 classes. Columns test_accuracy_best = max over epochs of the test accuracy (chosen "
        "on the test set, optimistic); test_accuracy_last = after the last epoch (= clean_accuracy).",
        "In this report the loss column and the noise plot show comp-sum with its tau.",
    ]
    rows = report_rows(store, present)
    if rows:
        title = "robustlab noisy-label benchmark"
        path = write_report(rows, args.out / "report.html", title=title, notes=notes)
        print(f"report: {path}")
        # one report per dataset too: its noise plot has a line per method and noise kind
        for d in dict.fromkeys(p.dataset for p in present):
            mine = [r for r in rows if r["config"]["data"]["name"] == spec["datasets"][d]["data"]["name"]]
            print(f"report: {write_report(mine, args.out / f'report-{d}.html', title=f'{title}: {d}', notes=notes)}")
    print(text)
    print(f"tables: {args.out / 'results.md'}; wall time {wall:.0f} s")
    if failures:
        print("failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
