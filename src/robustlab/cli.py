"""The ``robustlab`` command. Thin: parses, calls the API, prints.

Importing this module must not import torch (``robustlab --help`` stays fast); every
command imports what it needs when it runs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from robustlab.errors import RobustlabError

app = typer.Typer(
    name="robustlab",
    help=(
        "Train and evaluate the robustness of PyTorch classifiers: label noise, adversarial "
        "attacks, transfer attacks and defenses, certified robustness (randomized smoothing, bound propagation), "
        "corruptions, OOD/adversarial detectors; sharded on a process pool or Ray. Results go to a SQLite store "
        "(default ./robustlab-results, "
        "or $ROBUSTLAB_RESULTS) and an offline HTML report. Start with `robustlab bench`, "
        "or `robustlab init my.yaml` and `robustlab run my.yaml`."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

#: the narrowest layout is used when output is not a terminal (a log file)
LOG_WIDTH = 80


@app.callback()
def _global(
    threads: Optional[str] = typer.Option(
        None, "--threads", help="CPU threads for torch: a number, or 'auto' (default: robustlab's rule, one thread "
        "for small per-batch work; also $ROBUSTLAB_THREADS).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines, only results and errors."),
) -> None:
    """Options for every command."""
    if threads is not None:
        from robustlab.errors import ConfigError

        text = threads.strip().lower()
        if text != "auto" and not (text.isdigit() and int(text) > 0):
            raise ConfigError(f"--threads must be a positive integer or 'auto', got {threads!r}.")
        os.environ["ROBUSTLAB_THREADS"] = text
    _setup_logging(quiet)


def _setup_logging(quiet: bool) -> None:
    """Progress lines (per epoch, per attack stage, per run) to stderr: plain on a
    terminal, with a time stamp in a log file."""
    logger = logging.getLogger("robustlab")
    for h in list(logger.handlers):
        if getattr(h, "_robustlab_cli", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._robustlab_cli = True  # type: ignore[attr-defined]
    tty = sys.stderr.isatty()
    handler.setFormatter(logging.Formatter("%(message)s" if tty else "%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    # under torchrun only rank 0 reports progress; the other ranks say only what went wrong
    logger.setLevel(logging.WARNING if quiet or not _rank0() else logging.INFO)
    logger.propagate = False
    if not _rank0():
        logging.getLogger("robustlab.progress").setLevel(logging.WARNING)


def _rank0() -> bool:
    """Whether this process is rank 0 of a torchrun launch (always outside one). Read from
    torchrun's ``RANK`` directly, so the CLI's import path never imports torch; a value that
    is not an integer counts as rank 0 (the run itself then refuses it with a clear error)."""
    raw = os.environ.get("RANK", "").strip()
    try:
        return int(raw) == 0 if raw else True
    except ValueError:
        return True

ResultsOpt = typer.Option(None, "--results", "-r", help="Results folder (default: $ROBUSTLAB_RESULTS or ./robustlab-results).")
# options shared by the commands that evaluate saved weights (evaluate, attack, certify)
WeightsOpt = typer.Option(..., "--model", "-m", help="Weights: robustlab's .safetensors, or a state_dict .pt with --factory.")
RootOpt = typer.Option(None, help="Dataset folder.")
EvalDeviceOpt = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: cuda when available).")
FactoryOpt = typer.Option(None, help="module:function building your model for these weights.")
# sharded evaluation (evaluate, attack, certify, corrupt): chunk size is part of the stored key, the backend is not
ChunkOpt = typer.Option(None, "--chunk-size", help="Evaluate in fixed chunks of N points, each seeded by (seed, chunk id); a multiple of the batch size. Part of the stored settings; an interrupted run redoes only missing chunks.")
BackendOpt = typer.Option("local", "--backend", help="Where chunks run (with --chunk-size): local (this process), pool (spawned processes), ray (pip install \"robustlab\\[ray]\"). Same numbers on each.")
WorkersOpt = typer.Option(None, "--workers", help="Processes of --backend pool (default: the cores), or CPUs of a local Ray cluster.")
RayAddressOpt = typer.Option(None, "--ray-address", help="A running Ray cluster for --backend ray, e.g. 10.0.0.5:6379 (default: $RAY_ADDRESS, else a local cluster).")
# a suite's configs as tasks (bench, run): one run per task, the rows written by this process
SweepBackendOpt = typer.Option("local", "--backend", help="Where a suite's runs go: local (one after another here), pool (spawned processes), ray (pip install \"robustlab\\[ray]\"; the results folder on a shared file system). One run per task; a failed run stops no other.")
SweepWorkersOpt = typer.Option(None, "--workers", help="Runs at once with --backend pool (default: the cores), or CPUs of a local Ray cluster.")


def _store(results: Optional[Path]) -> Any:
    from robustlab.experiments import ResultsStore

    return ResultsStore(results)


def _width() -> int:
    """The width tables are laid out for: the terminal's, or 80 columns in a log."""
    if sys.stdout.isatty():
        import shutil

        return max(shutil.get_terminal_size((LOG_WIDTH, 24)).columns, 40)
    return LOG_WIDTH


def _print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    from robustlab.report import text_table

    if not rows:
        _out("(no runs)")
        return
    if title:
        _out(title)
    _out(text_table(rows, width=_width()))


def _out(text: str) -> None:
    """Plain text to stdout (no markup, no wrapping by rich); nothing on a torchrun rank > 0,
    so a data-parallel run prints its results once."""
    if not _rank0():
        return
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def _write_report(store: Any, rows: list[dict[str, Any]], out: Optional[Path], title: str, notes: list[str]) -> Path:
    from robustlab.report import write_csv, write_json, write_report

    path = out if out is not None else store.root / "report.html"
    write_report(rows, path, title=title, notes=notes)
    write_csv(rows, path.with_suffix(".csv"))
    write_json(rows, path.with_suffix(".json"), title=title)
    return path


def _notes_for(rows: list[dict[str, Any]]) -> list[str]:
    notes = []
    seen = set()
    for r in rows:
        d = ((r.get("metrics") or {}).get("data") or {}).get("train")
        if d and d not in seen:
            seen.add(d)
            notes.append(f"Data: {d}")
    notes.append(
        "Robust accuracy counts a test point as robust if it is classified correctly and the "
        "attack does not change its prediction; clean-misclassified points count as non-robust."
    )
    notes.append("Label noise, when present, is applied to the training labels only; test labels are clean.")
    return notes


# -- commands -------------------------------------------------------------------------------
def _run_line(i: int, total: int, rec: Any) -> str:
    """One line per finished run: its name, clean accuracy and time, or that it was reused."""
    acc = (rec.metrics or {}).get("clean_accuracy")
    accs = "—" if acc is None else f"{100 * acc:.1f}%"
    when = "stored, 0.0 s" if getattr(rec, "reused", False) else f"{rec.duration_s or 0:.1f} s"
    flags = ((rec.metrics or {}).get("training") or {}).get("flags") or []
    warn = f"  [{len(flags)} training flag(s)]" if flags else ""
    return f"[{i + 1}/{total}] {rec.name}: clean accuracy {accs} ({when}){warn}"


@app.command()
def bench(
    suite: str = typer.Option("bench", "--suite", "-s", help="Packaged suite name or a YAML file."),
    results: Optional[Path] = ResultsOpt,
    overrides: list[str] = typer.Argument(None, help="key=value overrides applied to every run, e.g. train.epochs=5"),
    force: bool = typer.Option(False, "--force", help="Re-run finished configs."),
    report: Optional[Path] = typer.Option(None, "--report", help="Report path (default: <results>/report.html)."),
    backend: str = SweepBackendOpt,
    workers: Optional[int] = SweepWorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
) -> None:
    """Run the default benchmark suite on the embedded digits data and write the report."""
    import time

    from robustlab.experiments import load_suite, packaged_config

    path = Path(suite) if suite.endswith((".yaml", ".yml")) else packaged_config(suite)
    s = load_suite(path)
    store = _store(results)
    n = len(s.expand(overrides or []))
    _out(f"robustlab bench: suite {s.suite!r}, {n} runs, results in {store.root}")
    t0 = time.perf_counter()
    records = _run_suite(s, store, overrides or [], force, backend, workers, ray_address)
    rows = [r.to_dict() for r in records]
    _print_table(rows, title=f"suite {s.suite}")
    _print_training_flags(records)
    out = _write_report(store, rows, report, s.report.get("title", f"robustlab {s.suite}"), [s.description.strip(), *_notes_for(rows)])
    reused = sum(bool(getattr(r, "reused", False)) for r in records)
    _out(f"wall time {time.perf_counter() - t0:.1f} s ({n - reused} runs computed, {reused} reused from the store)")
    _out(f"report: {out.resolve()}")
    _raise_failures(records)


def _run_suite(s: Any, store: Any, overrides: list[str], force: bool, backend: str = "local",
               workers: Optional[int] = None, ray_address: Optional[str] = None) -> list[Any]:
    from robustlab.experiments import run_suite

    if workers is not None and workers < 1:
        from robustlab.errors import ConfigError

        raise ConfigError(f"--workers must be a positive integer, got {workers}.")

    def on_run(i: int, total: int, cfg: Any, rec: Any) -> None:
        _out(_run_line(i, total, rec))

    return list(run_suite(s, store, overrides=overrides, force=force, on_run=on_run, backend=backend,
                          workers=workers, ray_address=ray_address))


def _raise_failures(records: list[Any]) -> None:
    """After a sweep's output: exit 2 naming the runs that failed (a local suite raises at the first)."""
    from robustlab.experiments.runner import sweep_failures

    err = sweep_failures(records)
    if err is not None:
        raise err


def _print_training_flags(records: list[Any]) -> None:
    for r in records:
        for f in ((r.metrics or {}).get("training") or {}).get("flags") or []:
            _out(f"flag ({r.name}) {f}")


EXAMPLE = "example"


@app.command()
def init(
    path: Path = typer.Argument(Path("robustlab.yaml"), help="Where to write the example config."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented example experiment config to start from (then: robustlab run PATH)."""
    from robustlab._atomic import atomic_path
    from robustlab.errors import ConfigError
    from robustlab.experiments import packaged_config

    if path.exists() and not force:
        raise ConfigError(f"{path} exists; choose another path or pass --force to overwrite it.")
    text = packaged_config(EXAMPLE).read_text()
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    _out(f"wrote {path}; run it with: robustlab run {path}   (overrides: robustlab run {path} train.epochs=5)")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment or suite YAML file (robustlab init writes an example)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. noise.rate=0.4 train.epochs=10"),
    results: Optional[Path] = ResultsOpt,
    force: bool = typer.Option(False, "--force", help="Re-run even if this config already finished."),
    backend: str = SweepBackendOpt,
    workers: Optional[int] = SweepWorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
) -> None:
    """Run one experiment (or a suite) from a YAML config; finished configs are reused."""
    from robustlab.experiments import load_suite

    s = load_suite(config)
    store = _store(results)
    records = _run_suite(s, store, overrides or [], force, backend, workers, ray_address)
    _print_table([r.to_dict() for r in records])
    _print_training_flags(records)
    for r in records:
        _out(f"run {r.id[:10]} {r.status}: artifacts in {store.root / 'artifacts' / r.id}")
    _raise_failures(records)


@app.command()
def train(
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets)."),
    model: str = typer.Option("mlp", help="Model name (robustlab ls models)."),
    loss: str = typer.Option("ce", help="Loss name (robustlab ls losses)."),
    objective: str = typer.Option("erm", help="Objective name (robustlab ls objectives)."),
    noise: Optional[str] = typer.Option(None, help="Label noise as KIND:RATE, e.g. symmetric:0.4."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: the Trainer's)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the Trainer's)."),
    batch_size: Optional[int] = typer.Option(None, help="Minibatch size (default: the Trainer's)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: cpu)."),
    seed: int = typer.Option(0),
    root: Optional[str] = RootOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also copy the trained weights here (.safetensors)."),
    results: Optional[Path] = ResultsOpt,
    overrides: list[str] = typer.Argument(None, help="Further key=value overrides, e.g. train.objective=trades."),
) -> None:
    """Train one model (stored as a run) and optionally copy its weights to --out."""
    import shutil

    from robustlab.experiments import make_config, run_experiment

    train_tree: dict[str, Any] = {"objective": objective, "loss": {"name": loss}}
    for key, value in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size), ("device", device)):
        if value is not None:
            train_tree[key] = value
    tree: dict[str, Any] = {"seed": seed, "data": {"name": data, "root": root}, "model": {"name": model}, "train": train_tree}
    if noise:
        kind, rate = _parse_noise(noise)
        tree["noise"] = {"kind": kind, "rate": rate}
    cfg = make_config(tree, overrides or [])
    from robustlab.experiments.config import with_override_names

    cfg = with_override_names(cfg, tree, overrides or [])
    store = _store(results)
    rec = run_experiment(cfg, store)
    weights = store.root / "artifacts" / rec.id / "model.safetensors"
    if out is not None:
        from robustlab._atomic import atomic_path

        with atomic_path(out) as tmp:
            shutil.copyfile(weights, tmp)
        weights = out
    _out(_run_line(0, 1, rec))
    _print_table([rec.to_dict()])
    _print_training_summary(rec)
    _out(f"weights: {weights}")


def _print_training_summary(rec: Any) -> None:
    """Best epoch, validation (robust) accuracy, early stopping, training flags."""
    m = rec.metrics or {}
    t = m.get("training") or {}
    hist = m.get("history") or []
    last = hist[-1] if hist else {}
    parts = [f"trained {t.get('epochs_trained', len(hist))} epochs"]
    if last.get("val_accuracy") is not None:
        parts.append(f"validation accuracy {100 * last['val_accuracy']:.1f}%")
    if last.get("val_robust_accuracy") is not None:
        parts.append(f"validation robust accuracy {100 * last['val_robust_accuracy']:.1f}%")
    if t.get("best_epoch") is not None:
        parts.append(f"best epoch {t['best_epoch']} by {t.get('best_metric')} = {100 * (t.get('best_score') or 0):.1f}% "
                     f"(its weights kept)")
    _out("; ".join(parts))
    if t.get("selected") is not None or t.get("stopped_early"):
        _out(f"early stopping: {t.get('stop_reason') or 'not triggered'}")
    for f in t.get("flags") or []:
        _out(f"flag {f}")


def _eps_list(values: list[str]) -> list[float]:
    from robustlab.attacks import parse_eps

    return [parse_eps(v) for v in values]


def _factory(factory: Optional[str]) -> Optional[str]:
    """A user's ``module:function``: modules in the current folder are importable, as with
    ``python -m``."""
    if factory and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return factory


def _batch_size_option(batch_size: str) -> int | str:
    """``--batch-size``: a positive integer or 'auto'."""
    from robustlab.errors import ConfigError

    if batch_size == "auto":
        return "auto"
    if not (batch_size.isdigit() and int(batch_size) > 0):
        raise ConfigError(f"--batch-size must be a positive integer or 'auto', got {batch_size!r}.")
    return int(batch_size)


def _sharding(chunk_size: Optional[int], backend: str, workers: Optional[int], ray_address: Optional[str]) -> dict[str, Any]:
    """The sharding options of an evaluating command, checked."""
    from robustlab.errors import ConfigError

    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"--chunk-size must be a positive number of points, got {chunk_size}.")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers}.")
    return {"chunk_size": chunk_size, "backend": backend, "workers": workers, "ray_address": ray_address}


def _check_subset(subset: Optional[int]) -> Optional[int]:
    from robustlab.validation import check_subset

    return check_subset(subset, "--subset")


@app.command()
def evaluate(
    model: Path = WeightsOpt,
    data: str = typer.Option("digits", help="Dataset name."),
    split: str = typer.Option("test"),
    root: Optional[str] = RootOpt,
    attack: str = typer.Option("pgd", help="Attack name (robustlab ls attacks)."),
    norm: str = typer.Option("linf"),
    eps: list[str] = typer.Option(["0.1"], help="Budget(s); repeat the option; fractions like 8/255 work."),
    steps: Optional[int] = typer.Option(None, help="Attack iterations (iterative attacks; default: 20 for pgd)."),
    subset: Optional[int] = typer.Option(None, help="Attack N points of a fixed seeded permutation (default: all)."),
    device: Optional[str] = EvalDeviceOpt,
    factory: Optional[str] = FactoryOpt,
    results: Optional[Path] = ResultsOpt,
    force: bool = typer.Option(False, "--force", help="Re-run an evaluation that is already stored."),
    seed: int = typer.Option(0),
    batch_size: str = typer.Option("auto", help="Points per batch, or 'auto'."),
    chunk_size: Optional[int] = ChunkOpt,
    backend: str = BackendOpt,
    workers: Optional[int] = WorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
) -> None:
    """Evaluate saved weights: clean accuracy, calibration and robust accuracy (stored as a run in suite 'evaluations'; `robustlab attack` prints more detail)."""
    import inspect

    from robustlab.attacks import attacks
    from robustlab.evaluate import Measurement
    from robustlab.experiments import evaluate_weights

    params: dict[str, Any] = {}
    takes_steps = "steps" in inspect.signature(attacks.get(attack)).parameters
    if steps is not None:
        if not takes_steps:
            from robustlab.errors import ConfigError

            raise ConfigError(f"attack {attack!r} has no steps; drop --steps.")
        params["steps"] = steps
    elif takes_steps and attacks.canonical(attack) == "pgd":
        params["steps"] = 20
    m = Measurement(attack, norm, _eps_list(eps), params, _check_subset(subset), "cheap")
    rec, _ = evaluate_weights(model, _store(results), data=data, split=split, root=root, measurements=[m],
                              device=device, factory=_factory(factory), seed=seed, force=force,
                              batch_size=_batch_size_option(batch_size), **_sharding(chunk_size, backend, workers, ray_address))
    met = rec.metrics
    _out(f"{data} {split} ({met['num_test']} points): clean accuracy {100 * met['clean_accuracy']:.2f}%, "
         f"ECE {met['ece']:.4f}; run {rec.id[:10]}{' (stored, 0.0 s)' if rec.reused else ''}")
    _out(_provenance_line(met.get("provenance")))
    for r in met["robust"]:
        _out(f"  {r['attack']} {r['norm']} eps={r['eps']:.4g}: robust accuracy {100 * r['accuracy']:.2f}% "
             f"on {r['num_points']} of {r['num_total']} points")
    _print_flags([f for r in met["robust"] for f in r.get("flags", [])])


def _pct0(v: float | None) -> str:
    return "\u2014" if v is None else f"{100 * v:.0f}%"


def _stored_evaluation_header(rec: Any, data: str, split: str, clean: str = "clean accuracy",
                              note: str = "") -> list[dict[str, Any]]:
    """Print the first two lines every stored evaluation of weights starts with (points,
    clean accuracy, run id, where the weights came from); returns the stored rows."""
    met = rec.metrics
    rows: list[dict[str, Any]] = met["robust"]
    npts = rows[0]["num_points"] if rows else met["num_test"]
    _out(f"{data} {split}: {npts} of {met['num_test']} points, {clean} {100 * met['clean_accuracy']:.2f}%; "
         f"{note}run {rec.id[:10]}{' (stored, 0.0 s)' if rec.reused else ''}")
    _out(_provenance_line(met.get("provenance")))
    return rows


def _provenance_line(p: dict[str, Any] | None) -> str:
    if not p:
        return "weights: unknown origin"
    if p.get("run_id"):
        t = p.get("training") or {}
        noise = t.get("noise")
        labels = "clean labels" if not noise else f"{noise['kind']} label noise {noise['rate']:g}"
        return (f"weights: run {p.get('run_name')} ({p['run_id'][:10]}): {t.get('objective')}/{t.get('loss')} "
                f"on {t.get('dataset')} with {labels}; sha256 {p['weights_sha256'][:12]}")
    return f"weights: unknown origin (not written by a robustlab run); sha256 {p['weights_sha256'][:12]}"


def _print_flags(flags: list[str]) -> None:
    for f in dict.fromkeys(flags):
        _out(f"flag {f}")
    if not flags:
        _out("no audit flags")


_AUDIT_MODES: dict[str, bool | str] = {"full": True, "cheap": "cheap", "none": False}


@app.command()
def attack(
    model: Path = WeightsOpt,
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets)."),
    split: str = typer.Option("test"),
    root: Optional[str] = RootOpt,
    norm: str = typer.Option("linf", help="Threat model: linf, l2 or l1."),
    eps: list[str] = typer.Option(["8/255"], help="Budget(s); repeat the option; fractions like 8/255 work."),
    attack_name: str = typer.Option("standard", "--attack", help="Attack or protocol (robustlab ls attacks): standard, fast, apgd-ce, pgd, ..."),
    subset: Optional[int] = typer.Option(None, help="Attack N points of a fixed seeded permutation (default: all)."),
    batch_size: str = typer.Option("auto", help="Points per batch, or 'auto' (memory-aware on CUDA)."),
    amp: bool = typer.Option(False, help="CUDA autocast for the attack; successes are re-checked in fp32."),
    audit: str = typer.Option("full", help="Audit checks: full, cheap (no extra attacks) or none."),
    device: Optional[str] = EvalDeviceOpt,
    factory: Optional[str] = FactoryOpt,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full report (JSON) here."),
    results: Optional[Path] = ResultsOpt,
    force: bool = typer.Option(False, "--force", help="Re-run an evaluation that is already stored."),
    seed: int = typer.Option(0),
    chunk_size: Optional[int] = ChunkOpt,
    backend: str = BackendOpt,
    workers: Optional[int] = WorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
) -> None:
    """Robust accuracy under an attack (default: the standard ensemble) per eps, ensemble member and class, with the audit's flags (stored as a run in suite 'evaluations')."""
    import json

    from robustlab._atomic import atomic_path
    from robustlab.errors import ConfigError
    from robustlab.experiments import evaluate_weights

    if audit not in _AUDIT_MODES:
        raise ConfigError(f"--audit must be one of {', '.join(_AUDIT_MODES)}, got {audit!r}.")
    bs = _batch_size_option(batch_size)
    store = _store(results)
    rec, _ = evaluate_weights(
        model, store, data=data, split=split, root=root, attack=attack_name, norm=norm, eps=_eps_list(eps),
        subset=_check_subset(subset), batch_size=bs, amp=amp,
        audit=_AUDIT_MODES[audit], device=device, factory=_factory(factory), seed=seed, force=force,
        **_sharding(chunk_size, backend, workers, ray_address),
    )
    rep = rec.metrics["attack_report"]
    rows = rec.metrics["robust"]
    n_total = rows[0]["num_total"] if rows else rep["num_points"]
    _out(f"{data} {split}: {rep['num_points']} of {n_total} points, clean accuracy {100 * rep['clean_accuracy']:.2f}% "
         f"({rep['protocol']} on {rep['device']}); run {rec.id[:10]}{' (stored, 0.0 s)' if rec.reused else ''}")
    _out(_provenance_line(rec.metrics.get("provenance")))
    for r in rep["results"]:
        stages = ", ".join(f"after {k} {100 * v:.2f}%" for k, v in r["per_attack"].items() if k != "clean")
        _out(f"  {rep['norm']} eps={r['eps']:.4g}: robust accuracy {100 * r['robust_accuracy']:.2f}% "
             f"({stages}; {r['forwards']} forward / {r['backwards']} backward passes, {r['seconds']:.1f} s)")
        per_class = "  ".join(f"{c}: {'—' if v is None else f'{100 * v:.0f}%'}" for c, v in enumerate(r["per_class"]))
        _out(f"    per class: {per_class}")
    _print_flags(rep["flags"])
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(rep, indent=2))
        _out(f"report: {json_out}")


DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


@app.command()
def certify(
    model: Path = WeightsOpt,
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets)."),
    split: str = typer.Option("test"),
    root: Optional[str] = RootOpt,
    method: list[str] = typer.Option(["smoothing"], help="Certificate(s): smoothing (randomized smoothing, L2, with high probability), or bound propagation: ibp, crown-ibp, crown, alpha-crown (deterministic); repeat the option (robustlab ls certifiers)."),
    sigma: list[float] = typer.Option([0.25], help="smoothing: noise level(s); repeat the option."),
    n: int = typer.Option(100_000, "--n", help="smoothing: noise samples per point that estimate p_A."),
    n0: int = typer.Option(100, "--n0", help="smoothing: noise samples per point that select the class."),
    alpha: float = typer.Option(0.001, help="smoothing: failure probability of each certificate."),
    radius: list[float] = typer.Option([], help="smoothing: L2 radii to report certified accuracy at; repeat the option (default: 0, 0.25, 0.5, 0.75, 1 up to what n can certify)."),
    eps: list[str] = typer.Option([], help="bound propagation: budget(s); repeat the option; fractions like 8/255 work (default: 0.1)."),
    norm: str = typer.Option("linf", help="bound propagation: linf, l2 or l1."),
    compare: bool = typer.Option(True, help="Also run the standard attack on the base model at the same radii (the empirical upper bound)."),
    subset: Optional[int] = typer.Option(None, help="Certify N points of a fixed seeded permutation (default: all)."),
    batch_size: str = typer.Option("auto", help="Noisy copies (smoothing) or points (bounds) per pass, or 'auto'."),
    device: Optional[str] = EvalDeviceOpt,
    factory: Optional[str] = FactoryOpt,
    results: Optional[Path] = ResultsOpt,
    force: bool = typer.Option(False, "--force", help="Re-run a certification that is already stored."),
    seed: int = typer.Option(0),
    chunk_size: Optional[int] = ChunkOpt,
    backend: str = BackendOpt,
    workers: Optional[int] = WorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
) -> None:
    """Certified accuracy per radius beside the standard attack's robust accuracy at the same radii: randomized smoothing (Cohen et al. 2019; per sigma, L2) or bound propagation (IBP, CROWN-IBP, CROWN, alpha-CROWN; per eps). Stored as a run in suite 'evaluations' (smoothing: per-point TSV beside it)."""
    from robustlab.certify import certifiers, stats
    from robustlab.evaluate import Measurement
    from robustlab.experiments import evaluate_weights
    from robustlab.report.text import certificate_text

    bs = _batch_size_option(batch_size)
    sub = _check_subset(subset)
    names = list(dict.fromkeys(certifiers.canonical(m) for m in method))
    smoothing = "smoothing" in names
    bound_methods = [m for m in names if m != "smoothing"]
    ms = []
    if smoothing:
        alpha = stats.check_alpha(alpha)
        stats.check_budget(n, alpha, name="--n")
        if radius:
            radii = sorted(set(radius))
        else:
            ceiling = max(stats.max_radius(n, alpha, stats.check_sigma(s)) for s in sigma)
            radii = [r for r in DEFAULT_RADII if r <= ceiling]
        for s in dict.fromkeys(sigma):
            ceiling = stats.max_radius(n, alpha, stats.check_sigma(s))
            mine = radii if radius else [r for r in radii if r <= ceiling]
            ms.append(Measurement("smoothing", "l2", mine, {"sigma": s, "n0": n0, "n": n, "alpha": alpha}, sub,
                                  False, kind="certify"))
        attacked = [r for r in radii if r > 0]
        if compare and attacked:
            ms.append(Measurement("standard", "l2", attacked, {}, sub, "cheap"))
    if bound_methods:
        budgets = _eps_list(eps or ["0.1"])
        for m in bound_methods:
            ms.append(Measurement(m, norm, budgets, {}, sub, False, kind="certify"))
        if compare:
            ms.append(Measurement("standard", norm, budgets, {}, sub, "cheap"))
    rec, _ = evaluate_weights(model, _store(results), data=data, split=split, root=root, measurements=ms,
                              batch_size=bs, device=device, factory=_factory(factory), seed=seed, force=force,
                              **_sharding(chunk_size, backend, workers, ray_address))
    rows = _stored_evaluation_header(rec, data, split, "clean accuracy (base model)")
    _out(certificate_text([rec.to_dict()], width=_width()))
    _print_flags([f for r in rows for f in r.get("flags", [])])


@app.command()
def corrupt(
    model: Path = WeightsOpt,
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets)."),
    split: str = typer.Option("test"),
    root: Optional[str] = RootOpt,
    corruption: list[str] = typer.Option(["common"], help="Corruption(s): common (the 15 of Hendrycks & Dietterich 2019), extra (the 4 held-out ones), all, or names; repeat the option (robustlab ls corruptions)."),
    severity: list[int] = typer.Option([1, 2, 3, 4, 5], help="Severities 1..5; repeat the option."),
    baseline: Optional[str] = typer.Option(None, help="Name or id of a stored run with the same corruptions: its errors normalise the corruption error (CE), mCE and relative mCE."),
    subset: Optional[int] = typer.Option(None, help="Corrupt N points of a fixed seeded permutation (default: all)."),
    batch_size: str = typer.Option("auto", help="Points per forward pass, or 'auto'."),
    device: Optional[str] = EvalDeviceOpt,
    factory: Optional[str] = FactoryOpt,
    results: Optional[Path] = ResultsOpt,
    force: bool = typer.Option(False, "--force", help="Re-run an evaluation that is already stored."),
    seed: int = typer.Option(0),
    chunk_size: Optional[int] = ChunkOpt,
    backend: str = BackendOpt,
    workers: Optional[int] = WorkersOpt,
    ray_address: Optional[str] = RayAddressOpt,
) -> None:
    """Accuracy under common corruptions x severities (seeded, tensor-native), mean corruption accuracy and, against a named baseline run, CE/mCE and relative mCE. Stored as a run in suite 'evaluations'."""
    from robustlab.evaluate.shifts import corruption_measurements
    from robustlab.experiments import evaluate_weights
    from robustlab.report.text import corruption_text

    bs = _batch_size_option(batch_size)
    ms = corruption_measurements(corruption, severity, subset=_check_subset(subset))
    rec, _ = evaluate_weights(model, _store(results), data=data, split=split, root=root, measurements=ms,
                              batch_size=bs, device=device, factory=_factory(factory), seed=seed, force=force,
                              corruption_baseline=baseline, **_sharding(chunk_size, backend, workers, ray_address))
    _stored_evaluation_header(rec, data, split)
    _out(corruption_text([rec.to_dict()], width=_width()))


#: the level a shift takes when ``--shift`` names none (adversarial shifts need an eps)
_DEFAULT_LEVELS = {"uniform": ["0"], "gaussian": ["0.25"], "corruption": ["5"]}


def _shift_levels(spec: str) -> tuple[str, list[float]]:
    """``"adversarial/linf@0.1,0.3"`` -> ``("adversarial/linf", [0.1, 0.3])`` (default levels
    for noise and corruption shifts)."""
    from robustlab.detect.shifts import parse_shift
    from robustlab.errors import ConfigError

    shift, _, levels = spec.partition("@")
    kind, _ = parse_shift(shift)
    values = [v for v in levels.split(",") if v.strip()] if levels else _DEFAULT_LEVELS.get(kind, [])
    if not values:
        raise ConfigError(f"shift {shift!r} needs an eps: write it as --shift '{shift}@0.1' (several: @0.1,0.3).")
    return shift.strip(), _eps_list(values)


@app.command()
def detect(
    model: Path = WeightsOpt,
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets); detectors are fitted on its train split."),
    split: str = typer.Option("test"),
    root: Optional[str] = RootOpt,
    method: list[str] = typer.Option(["msp", "energy", "mahalanobis"], help="Detector(s): msp, energy, mahalanobis; repeat the option (robustlab ls detectors)."),
    shift: list[str] = typer.Option(["uniform", "corruption/gaussian_noise"], help="What the out-distribution is, with optional levels after '@': uniform, gaussian[@std], corruption/<name>[@severity], adversarial/<norm>@eps[,eps], adaptive/<norm>@eps (PGD on the classifier and the detector together); repeat the option."),
    subset: Optional[int] = typer.Option(None, help="Measure on N points of a fixed seeded permutation (default: all)."),
    steps: int = typer.Option(20, help="adversarial/adaptive shifts: PGD steps."),
    batch_size: str = typer.Option("auto", help="Points per forward pass, or 'auto'."),
    device: Optional[str] = EvalDeviceOpt,
    factory: Optional[str] = FactoryOpt,
    results: Optional[Path] = ResultsOpt,
    force: bool = typer.Option(False, "--force", help="Re-run an evaluation that is already stored."),
    seed: int = typer.Option(0),
) -> None:
    """How well detectors (max softmax probability, energy, Mahalanobis) tell the test points from shifted ones: AUROC, AUPR, TNR at 95% TPR; for adversarial shifts also the attacks that succeed undetected, non-adaptive and adaptive. Stored as a run in suite 'evaluations'."""
    from robustlab.detect import detectors
    from robustlab.evaluate import Measurement
    from robustlab.experiments import evaluate_weights
    from robustlab.report.text import detection_text
    from robustlab.validation import check_int

    bs = _batch_size_option(batch_size)
    sub = _check_subset(subset)
    check_int(steps, "--steps", minimum=1)
    names = list(dict.fromkeys(detectors.canonical(m) for m in method))
    ms = []
    for spec in dict.fromkeys(shift):
        sh, levels = _shift_levels(spec)
        extra = {"shift_params": {"steps": steps}} if sh.split("/")[0] in ("adversarial", "adaptive") else {}
        ms += [Measurement(m, sh, levels, dict(extra), sub, False, kind="detect") for m in names]
    rec, _ = evaluate_weights(model, _store(results), data=data, split=split, root=root, measurements=ms,
                              batch_size=bs, device=device, factory=_factory(factory), seed=seed, force=force)
    _stored_evaluation_header(rec, data, split, note="detectors fitted on the train split; ")
    _out(detection_text([rec.to_dict()], width=_width()))


def _named_weights(values: list[str], option: str) -> dict[str, list[str]]:
    """``["erm=a.safetensors", "ens=b.safetensors,c.safetensors", "d.safetensors"]`` ->
    ``{"erm": ["a..."], "ens": ["b...", "c..."], "d": ["d..."]}`` (a name defaults to the file's stem)."""
    from robustlab.errors import ConfigError

    out: dict[str, list[str]] = {}
    for v in values:
        name, sep, paths = v.partition("=")
        if not sep:
            name, paths = Path(v).stem, v
        files = [p for p in paths.split(",") if p]
        if not name or not files:
            raise ConfigError(f"{option} takes NAME=WEIGHTS (or NAME=W1,W2 for an ensemble of surrogates), got {v!r}.")
        if name in out:
            raise ConfigError(f"{option} names {name!r} twice; give each model its own name.")
        out[name] = files
    return out


@app.command()
def transfer(
    source: list[str] = typer.Option(..., help="A source model the attack is crafted on: NAME=WEIGHTS, or NAME=W1,W2 for an ensemble of surrogates; repeat the option."),
    target: list[str] = typer.Option(..., help="A target model the examples are scored on: NAME=WEIGHTS; repeat the option."),
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets)."),
    split: str = typer.Option("test"),
    root: Optional[str] = RootOpt,
    attack: str = typer.Option("mi-fgsm", help="A transfer attack: mi-fgsm (Dong et al. 2018) or cwa (Chen et al., the common weakness attack); any attack of robustlab ls attacks for a single source."),
    norm: str = typer.Option("linf"),
    eps: str = typer.Option("0.1", help="Budget; fractions like 16/255 work."),
    steps: Optional[int] = typer.Option(None, help="Attack iterations (default: the attack's own, 10)."),
    diversity_prob: Optional[float] = typer.Option(None, help="mi-fgsm/cwa: input diversity (Xie et al. 2019) probability, e.g. 0.5."),
    subset: Optional[int] = typer.Option(None, help="Attack N points of a fixed seeded permutation (default: all)."),
    factory: Optional[str] = FactoryOpt,
    results: Optional[Path] = ResultsOpt,
    force: bool = typer.Option(False, "--force", help="Re-run a transfer evaluation that is already stored."),
    seed: int = typer.Option(0),
) -> None:
    """The source x target transfer-success matrix: examples crafted on each source (or ensemble of surrogates) scored on every target, beside each target's white-box success; flags a transfer attack stronger than the white-box one. Stored as a run in suite 'evaluations'; the report shows the matrix."""
    from robustlab.experiments.transfer import transfer_weights
    from robustlab.report.transfer import transfer_text
    from robustlab.validation import check_int

    params: dict[str, Any] = {}
    if steps is not None:
        params["steps"] = check_int(steps, "--steps", minimum=1)
    if diversity_prob is not None:
        params["diversity_prob"] = diversity_prob
    srcs = {k: (v[0] if len(v) == 1 else v) for k, v in _named_weights(source, "--source").items()}
    tgts_many = _named_weights(target, "--target")
    bad = [k for k, v in tgts_many.items() if len(v) > 1]
    if bad:
        from robustlab.errors import ConfigError

        raise ConfigError(f"a target is one model; --target {bad[0]}= lists {len(tgts_many[bad[0]])} files.")
    tgts = {k: v[0] for k, v in tgts_many.items()}
    rec, _ = transfer_weights(srcs, tgts, _store(results), data=data, split=split, root=root, attack=attack,
                              norm=norm, eps=eps, subset=_check_subset(subset), attack_params=params,
                              factory=_factory(factory), seed=seed, force=force)
    _out(f"{data} {split}; run {rec.id[:10]}{' (stored, 0.0 s)' if rec.reused else ''}")
    _out(transfer_text((rec.metrics or {})["transfer"]))


_FAMILIES = ("datasets", "models", "losses", "attacks", "certifiers", "corruptions", "detectors", "objectives",
             "noise", "schedules")


@app.command("ls")
def ls_(family: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(_FAMILIES)}."), pattern: str = typer.Option("*", help="Shell-style filter, e.g. '*resnet*'.")) -> None:
    """List what is registered (datasets, models, losses, attacks, objectives, ...)."""
    from robustlab.errors import UnknownNameError
    from robustlab.registry import close_matches

    fams = _FAMILIES if family is None else (family,)
    for fam in fams:
        if fam not in _FAMILIES:
            near = close_matches(fam, _FAMILIES)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            raise UnknownNameError(f"unknown family {fam!r}.{hint} Available: {', '.join(_FAMILIES)}.")
        names = _family_names(fam, pattern)
        _out(f"{fam}: {', '.join(names)}")


def _family_names(fam: str, pattern: str) -> list[str]:
    import fnmatch

    if fam == "datasets":
        from robustlab.data import available
    elif fam == "models":
        from robustlab.models import available
    elif fam == "losses":
        from robustlab.losses import available
    elif fam == "attacks":
        from robustlab.attacks import available
    elif fam == "certifiers":
        from robustlab.certify import available
    elif fam == "corruptions":
        from robustlab.corruptions import available
    elif fam == "detectors":
        from robustlab.detect import available
    elif fam == "objectives":
        from robustlab.train import available
    elif fam == "noise":
        from robustlab.data.noise import available
    else:
        from robustlab.train.schedules import SCHEDULES

        return [s for s in SCHEDULES if fnmatch.fnmatch(s, pattern)]
    return available(pattern)


@app.command()
def runs(
    results: Optional[Path] = ResultsOpt,
    suite: Optional[str] = typer.Option(None, help="Only runs of this suite."),
    status: Optional[str] = typer.Option(None, help="running | done | failed | corrupt"),
) -> None:
    """List stored runs with their main metrics (also from a read-only store)."""
    store = _store(results)
    recs = store.list(suite=suite, status=status)
    _print_table([r.to_dict() for r in recs], title=str(store.db_path))
    for r in recs:
        if r.status != "done":
            first = (r.error or "").splitlines()[0] if r.error else ""
            _out(f"  {r.id[:10]} {r.status}: {r.name} {first}")


@app.command()
def report(
    results: Optional[Path] = ResultsOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML path (default: <results>/report.html); .csv and .json are written beside it."),
    suite: Optional[str] = typer.Option(None, help="Only runs of this suite."),
    title: str = typer.Option("robustlab report"),
) -> None:
    """Write the offline HTML report (plus CSV and JSON) from the results store."""
    store = _store(results)
    rows = [r.to_dict() for r in store.list(suite=suite)]
    path = _write_report(store, rows, out, title, _notes_for(rows))
    _out(f"report: {path.resolve()}")


labels_app = typer.Typer(help="Label-issue detection: which training labels are probably wrong.",
                         no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("find-issues")
def labels_find_issues(
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets)."),
    split: str = typer.Option("train"),
    root: Optional[str] = RootOpt,
    noise: Optional[str] = typer.Option(None, help="Inject label noise first, as KIND:RATE (e.g. symmetric:0.4); precision/recall are then reported."),
    model: str = typer.Option("mlp", help="Model trained in each fold (robustlab ls models)."),
    folds: int = typer.Option(5, help="Cross-fitting folds."),
    epochs: int = typer.Option(20),
    lr: float = typer.Option(0.05),
    batch_size: int = typer.Option(64),
    seed: int = typer.Option(0, help="Seeds the noise, the folds and the training."),
    top: int = typer.Option(20, help="Print this many of the most suspect samples."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write all flagged indices and scores as JSON."),
) -> None:
    """Flag suspect labels: K-fold cross-fitted probabilities + confident learning (needs robustlab[noise])."""
    import json

    from robustlab import data as data_mod
    from robustlab._atomic import atomic_path
    from robustlab.labels import find_issues

    ds = data_mod.load(data, split, root=root, seed=seed)
    noise_info: dict[str, Any] | None = None
    if noise:
        kind, rate = _parse_noise(noise)
        res = data_mod.noise.corrupt_labels(ds.y, kind, rate, ds.num_classes, seed=seed)
        ds = ds.with_labels(res.noisy_labels)
        noise_info = res.to_dict()
    issues = find_issues(ds, model=model, folds=folds, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size)
    _out(f"{ds.name} {split}: {len(issues)} of {len(ds)} labels flagged ({folds}-fold cross-fitting with {model}, cleanlab)")
    if noise_info is not None:
        _out(f"injected {noise_info['kind']} noise: {noise_info['num_flipped']} labels flipped "
                  f"(rate {noise_info['flip_rate']:.3f}); precision {issues.precision:.3f}, recall {issues.recall:.3f}")
    for i, sc in list(zip(issues.indices, issues.scores))[:top]:
        _out(f"  index {int(i):6d}  label {int(ds.y[i]):3d}  quality {float(sc):.4f}")
    if out is not None:
        payload = {**issues.to_dict(), "dataset": ds.name, "split": split, "noise": noise_info}
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(payload, indent=1))
        _out(f"issues: {out}")


def _parse_noise(text: str) -> tuple[str, float]:
    from robustlab.errors import ConfigError

    kind, sep, rate = text.partition(":")
    try:
        if not sep or not kind or not rate.strip():
            raise ValueError
        value = float(rate)
    except ValueError:
        raise ConfigError(
            f"--noise must look like KIND:RATE (e.g. symmetric:0.4), got {text!r}; for clean labels leave it out."
        ) from None
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"--noise rate must lie in [0, 1), got {value:g}.")
    return kind, value


def main(argv: list[str] | None = None) -> int:
    """Entry point: a RobustlabError is one clear line on stderr and exit code 2; usage
    errors exit 2 with click's message; Ctrl-C says how to resume and exits 130."""
    logger = logging.getLogger("robustlab")
    progress = logging.getLogger("robustlab.progress")
    saved = (list(logger.handlers), logger.level, logger.propagate, progress.level)
    try:
        return _main(argv)
    finally:  # main() may be called in-process (tests, notebooks): leave logging as it was
        logger.handlers[:], logger.level, logger.propagate = saved[:3]
        progress.setLevel(saved[3])


def _main(argv: list[str] | None) -> int:
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="robustlab", standalone_mode=False)
    except KeyboardInterrupt:
        _interrupted()
        return 130
    except RobustlabError as exc:
        _error(str(exc))
        return 2
    except BrokenPipeError:  # `robustlab runs | head`
        return 0
    except Exception as exc:
        # click's exceptions (typer's own copy of click in newer releases): by class name
        names = {c.__name__ for c in type(exc).__mro__}
        if "Abort" in names:  # click turns Ctrl-C into Abort
            _interrupted()
            return 130
        if "Exit" in names:
            code = int(getattr(exc, "exit_code", 0) or 0)
            if code == 130:
                _interrupted()
            return code
        if "ClickException" in names:
            exc.show()  # type: ignore[attr-defined]
            return int(getattr(exc, "exit_code", 2))
        raise
    code = int(rv) if isinstance(rv, int) else 0
    if code == 130:  # newer typer turns Ctrl-C into exit code 130 itself
        _interrupted()
    return code


def _error(text: str) -> None:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    sys.stderr.write("error: " + " ".join(lines) + "\n")


def _interrupted() -> None:
    sys.stderr.write("\ninterrupted; rerun the same command to resume (finished runs and epochs are kept).\n")


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
