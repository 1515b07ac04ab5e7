"""The ``robustlab`` command. Thin: parses, calls the API, prints.

Importing this module must not import torch (``robustlab --help`` stays fast); every
command imports what it needs when it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from robustlab.errors import RobustlabError

app = typer.Typer(
    name="robustlab",
    help=(
        "Train and evaluate the robustness of PyTorch classifiers: label noise, adversarial "
        "attacks and training. Results go to a SQLite store (default ./robustlab-results, "
        "or $ROBUSTLAB_RESULTS) and an offline HTML report."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ResultsOpt = typer.Option(None, "--results", "-r", help="Results folder (default: $ROBUSTLAB_RESULTS or ./robustlab-results).")


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _store(results: Optional[Path]) -> Any:
    from robustlab.experiments import ResultsStore

    return ResultsStore(results)


def _print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    from rich.table import Table

    from robustlab.report import results_table

    table_rows = results_table(rows)
    if not table_rows:
        _console().print("(no runs)")
        return
    skip = {"id", "status", "dataset", "model", "objective", "loss", "noise kind", "noise rate",
            "best_epoch", "best_val_accuracy", "test_accuracy_best", "test_accuracy_last"}
    cols = [c for c in table_rows[0] if c not in skip]
    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="left" if c == "name" else "right")
    for r in table_rows:
        t.add_row(*[_fmt(c, r.get(c)) for c in cols])
    _console().print(t)


def _fmt(col: str, v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if "accuracy" in col or col.startswith(("pgd", "fgsm")) or "eps=" in col or col in ("flip_rate", "ece"):
            return f"{100 * v:.1f}" if col != "ece" else f"{v:.3f}"
        return f"{v:.3g}"
    return str(v)


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
@app.command()
def bench(
    suite: str = typer.Option("bench", "--suite", "-s", help="Packaged suite name or a YAML file."),
    results: Optional[Path] = ResultsOpt,
    overrides: list[str] = typer.Argument(None, help="key=value overrides applied to every run, e.g. train.epochs=5"),
    force: bool = typer.Option(False, "--force", help="Re-run finished configs."),
    report: Optional[Path] = typer.Option(None, "--report", help="Report path (default: <results>/report.html)."),
) -> None:
    """Run the default benchmark suite on the embedded digits data and write the report."""
    import time

    from robustlab.experiments import load_suite, packaged_config, run_suite

    path = Path(suite) if suite.endswith((".yaml", ".yml")) else packaged_config(suite)
    s = load_suite(path)
    store = _store(results)
    con = _console()
    n = len(s.expand(overrides or []))
    con.print(f"[bold]robustlab bench[/]: suite {s.suite!r}, {n} runs, results in {store.root}")
    t0 = time.perf_counter()

    def on_run(i: int, total: int, cfg: Any, rec: Any) -> None:
        acc = (rec.metrics or {}).get("clean_accuracy")
        accs = "—" if acc is None else f"{100 * acc:.1f}%"
        con.print(f"  [{i + 1}/{total}] {cfg.label()}: clean accuracy {accs} ({rec.duration_s or 0:.1f}s)")

    records = run_suite(s, store, overrides=overrides or [], force=force, on_run=on_run)
    rows = [r.to_dict() for r in records]
    _print_table(rows, title=f"suite {s.suite}")
    out = _write_report(store, rows, report, s.report.get("title", f"robustlab {s.suite}"), [s.description.strip(), *_notes_for(rows)])
    con.print(f"wall time {time.perf_counter() - t0:.1f}s")
    con.print(f"report: {out.resolve()}")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment or suite YAML file."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. noise.rate=0.4 train.epochs=10"),
    results: Optional[Path] = ResultsOpt,
    force: bool = typer.Option(False, "--force", help="Re-run even if this config already finished."),
) -> None:
    """Run one experiment (or a suite) from a YAML config; finished configs are skipped."""
    from robustlab.experiments import load_suite, run_suite

    s = load_suite(config)
    store = _store(results)
    records = run_suite(s, store, overrides=overrides or [], force=force)
    _print_table([r.to_dict() for r in records])
    for r in records:
        _console().print(f"run {r.id[:10]} {r.status}: artifacts in {store.root / 'artifacts' / r.id}")


@app.command()
def train(
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets)."),
    model: str = typer.Option("mlp", help="Model name (robustlab ls models)."),
    loss: str = typer.Option("ce", help="Loss name (robustlab ls losses)."),
    objective: str = typer.Option("erm", help="Objective name (robustlab ls objectives)."),
    noise: Optional[str] = typer.Option(None, help="Label noise as KIND:RATE, e.g. symmetric:0.4."),
    epochs: int = typer.Option(20),
    lr: float = typer.Option(0.05),
    batch_size: int = typer.Option(128),
    seed: int = typer.Option(0),
    root: Optional[str] = typer.Option(None, help="Dataset folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also copy the trained weights here (.safetensors)."),
    results: Optional[Path] = ResultsOpt,
    overrides: list[str] = typer.Argument(None, help="Further key=value overrides."),
) -> None:
    """Train one model (stored as a run) and optionally copy its weights to --out."""
    import shutil

    from robustlab.experiments import make_config, run_experiment

    tree: dict[str, Any] = {
        "seed": seed,
        "data": {"name": data, "root": root},
        "model": {"name": model},
        "train": {"objective": objective, "loss": {"name": loss}, "epochs": epochs, "lr": lr, "batch_size": batch_size},
    }
    if noise:
        kind, rate = _parse_noise(noise)
        tree["noise"] = {"kind": kind, "rate": rate}
    cfg = make_config(tree, overrides or [])
    store = _store(results)
    rec = run_experiment(cfg, store)
    weights = store.root / "artifacts" / rec.id / "model.safetensors"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, out)
        weights = out
    _print_table([rec.to_dict()])
    _console().print(f"weights: {weights}")


def _eps_list(values: list[str]) -> list[float]:
    from robustlab.attacks import parse_eps

    return [parse_eps(v) for v in values]


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="Weights saved by robustlab (.safetensors)."),
    data: str = typer.Option("digits", help="Dataset name."),
    split: str = typer.Option("test"),
    root: Optional[str] = typer.Option(None, help="Dataset folder."),
    attack: str = typer.Option("pgd", help="Attack name (robustlab ls attacks)."),
    norm: str = typer.Option("linf"),
    eps: list[str] = typer.Option(["0.1"], help="Budget(s); repeat the option; fractions like 8/255 work."),
    steps: int = typer.Option(20, help="Attack iterations (for iterative attacks)."),
    subset: Optional[int] = typer.Option(None, help="Attack only this many test points."),
    factory: Optional[str] = typer.Option(None, help="module:function building a user model for these weights."),
    seed: int = typer.Option(0),
) -> None:
    """Evaluate saved weights: clean accuracy, calibration and robust accuracy (not stored;
    `robustlab attack` stores its evaluations as runs)."""
    import inspect

    from robustlab import data as data_mod
    from robustlab.attacks import attacks
    from robustlab.evaluate import EvaluationSpec, evaluate_model
    from robustlab.models import load_model

    net = load_model(model, factory=factory)
    ds = data_mod.load(data, split, root=root, seed=seed)
    takes_steps = "steps" in inspect.signature(attacks.get(attack)).parameters
    spec = EvaluationSpec(attack, norm, _eps_list(eps), {"steps": steps} if takes_steps else {}, subset)
    metrics, _ = evaluate_model(net, ds, [spec], seed=seed)
    con = _console()
    con.print(f"{ds.name} {split} ({len(ds)} points): clean accuracy {100 * metrics['clean_accuracy']:.2f}%, ECE {metrics['ece']:.4f}")
    for r in metrics["robust"]:
        con.print(f"  {r['attack']} {r['norm']} eps={r['eps']:.4g}: robust accuracy {100 * r['accuracy']:.2f}% on {r['num_points']} points")
    _print_flags([f for r in metrics["robust"] for f in r.get("flags", [])])


def _print_flags(flags: list[str]) -> None:
    from rich.markup import escape

    con = _console()
    for f in dict.fromkeys(flags):
        con.print(f"[bold yellow]flag[/] {escape(str(f))}", soft_wrap=True)
    if not flags:
        con.print("no audit flags")


_AUDIT_MODES: dict[str, bool | str] = {"full": True, "cheap": "cheap", "none": False}


@app.command()
def attack(
    model: Path = typer.Option(..., "--model", "-m", help="Weights saved by robustlab (.safetensors)."),
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets)."),
    split: str = typer.Option("test"),
    root: Optional[str] = typer.Option(None, help="Dataset folder."),
    norm: str = typer.Option("linf", help="Threat model: linf, l2 or l1."),
    eps: list[str] = typer.Option(["8/255"], help="Budget(s); repeat the option; fractions like 8/255 work."),
    attack_name: str = typer.Option("standard", "--attack", help="Attack or protocol (robustlab ls attacks): standard, fast, apgd-ce, pgd, ..."),
    subset: Optional[int] = typer.Option(None, help="Attack only the first N points of the split."),
    batch_size: str = typer.Option("auto", help="Points per batch, or 'auto' (memory-aware on CUDA)."),
    amp: bool = typer.Option(False, help="CUDA autocast for the attack; successes are re-checked in fp32."),
    audit: str = typer.Option("full", help="Audit checks: full, cheap (no extra attacks) or none."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1, ... (default: cuda when available)."),
    factory: Optional[str] = typer.Option(None, help="module:function building a user model for these weights."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full report (JSON) here."),
    results: Optional[Path] = ResultsOpt,
    force: bool = typer.Option(False, "--force", help="Re-run an evaluation that is already stored."),
    seed: int = typer.Option(0),
) -> None:
    """Robust accuracy under an attack (default: the standard ensemble) at each eps, after each
    ensemble member and per class, with the audit's flags; stored as a run (suite 'evaluations')."""
    import json

    from rich.markup import escape

    from robustlab._atomic import atomic_path
    from robustlab.errors import ConfigError
    from robustlab.experiments import evaluate_weights

    if audit not in _AUDIT_MODES:
        raise ConfigError(f"--audit must be one of {', '.join(_AUDIT_MODES)}, got {audit!r}.")
    if batch_size != "auto" and not (batch_size.isdigit() and int(batch_size) > 0):
        raise ConfigError(f"--batch-size must be a positive integer or 'auto', got {batch_size!r}.")
    store = _store(results)
    rec, _ = evaluate_weights(
        model, store, data=data, split=split, root=root, attack=attack_name, norm=norm, eps=_eps_list(eps),
        subset=subset, batch_size="auto" if batch_size == "auto" else int(batch_size), amp=amp,
        audit=_AUDIT_MODES[audit], device=device, factory=factory, seed=seed, force=force,
    )
    rep = rec.metrics["attack_report"]
    con = _console()
    con.print(f"{data} {split}: {rep['num_points']} points, clean accuracy {100 * rep['clean_accuracy']:.2f}% "
              f"({escape(rep['protocol'])} on {rep['device']}); run {rec.id[:10]}")
    for r in rep["results"]:
        stages = ", ".join(f"after {k} {100 * v:.2f}%" for k, v in r["per_attack"].items() if k != "clean")
        con.print(f"  {rep['norm']} eps={r['eps']:.4g}: robust accuracy {100 * r['robust_accuracy']:.2f}% "
                  f"({escape(stages)}; {r['forwards']} forward / {r['backwards']} backward passes, {r['seconds']:.1f}s)")
    _print_flags(rep["flags"])
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(rep, indent=2))
        con.print(f"report: {json_out}")


_FAMILIES = ("datasets", "models", "losses", "attacks", "objectives", "noise", "schedules")


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
        _console().print(f"[bold]{fam}[/]: {', '.join(names)}")


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
    status: Optional[str] = typer.Option(None, help="running | done | failed"),
) -> None:
    """List stored runs with their main metrics."""
    store = _store(results)
    recs = store.list(suite=suite, status=status)
    _print_table([r.to_dict() for r in recs], title=str(store.db_path))
    failed = [r for r in recs if r.status != "done"]
    for r in failed:
        first = (r.error or "").splitlines()[0] if r.error else ""
        _console().print(f"  {r.id[:10]} {r.status}: {r.name} {first}")


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
    _console().print(f"report: {path.resolve()}")


labels_app = typer.Typer(help="Label-issue detection: which training labels are probably wrong.",
                         no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("find-issues")
def labels_find_issues(
    data: str = typer.Option("digits", help="Dataset name (robustlab ls datasets)."),
    split: str = typer.Option("train"),
    root: Optional[str] = typer.Option(None, help="Dataset folder."),
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
    con = _console()
    con.print(f"{ds.name} {split}: {len(issues)} of {len(ds)} labels flagged ({folds}-fold cross-fitting with {model}, cleanlab)")
    if noise_info is not None:
        con.print(f"injected {noise_info['kind']} noise: {noise_info['num_flipped']} labels flipped "
                  f"(rate {noise_info['flip_rate']:.3f}); precision {issues.precision:.3f}, recall {issues.recall:.3f}")
    for i, sc in list(zip(issues.indices, issues.scores))[:top]:
        con.print(f"  index {int(i):6d}  label {int(ds.y[i]):3d}  quality {float(sc):.4f}")
    if out is not None:
        payload = {**issues.to_dict(), "dataset": ds.name, "split": split, "noise": noise_info}
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(payload, indent=1))
        con.print(f"issues: {out}")


def _parse_noise(text: str) -> tuple[str, float]:
    from robustlab.errors import ConfigError

    kind, _, rate = text.partition(":")
    try:
        return kind, float(rate or 0)
    except ValueError:
        raise ConfigError(f"--noise must look like KIND:RATE (e.g. symmetric:0.4), got {text!r}.") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point: RobustlabError -> one clear line on stderr and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except RobustlabError as exc:
        from rich.markup import escape

        _console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted; rerun the same command to resume.")
        return 130
    return 0


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
