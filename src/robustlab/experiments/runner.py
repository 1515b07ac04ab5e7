"""Run experiments: data -> noise -> model -> Trainer -> evaluation -> results store.

>>> from robustlab.experiments import make_config, run_experiment, ResultsStore
>>> cfg = make_config({"data": {"name": "digits"}}, ["noise.rate=0.4", "train.epochs=10"])
>>> record = run_experiment(cfg, ResultsStore("results"))
>>> record.metrics["clean_accuracy"]

A finished config is a no-op on rerun; an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustlab import __version__
from robustlab._atomic import atomic_path
from robustlab.errors import ConfigError, TrainingError
from robustlab.experiments.config import ExperimentConfig, Suite, config_hash
from robustlab.experiments.store import ResultsStore, RunRecord, run_lock
from robustlab.progress import log as progress_log

log = logging.getLogger("robustlab.experiments")


def package_versions() -> dict[str, str]:
    """Versions of robustlab and the libraries that decide its numbers."""
    import numpy
    import scipy
    import sklearn

    return {
        "robustlab": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_sha() -> str | None:
    """The git commit of the robustlab source tree, if it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def prepare_data(cfg: ExperimentConfig) -> tuple[Any, Any, Any, dict[str, Any] | None]:
    """Load train/test (and a validation split), apply label noise to train only."""
    from robustlab import data

    opts = dict(cfg.data.options)
    train = data.load(cfg.data.name, "train", root=cfg.data.root, download=cfg.data.download, seed=cfg.seed, **opts)
    test = data.load(cfg.data.name, "test", root=cfg.data.root, download=cfg.data.download, seed=cfg.seed, **opts)
    val = None
    if cfg.data.val_fraction > 0:
        tr_idx, va_idx = data.stratified_split(train.y, cfg.data.val_fraction, seed=cfg.seed)
        train, val = train.subset(torch.from_numpy(tr_idx)), train.subset(torch.from_numpy(va_idx))
    noise_info = None
    if cfg.noise is not None:
        options = dict(cfg.noise.options)
        if cfg.noise.kind == "instance" and "features" not in options:
            options["features"] = train.x.reshape(len(train), -1)
        res = data.noise.corrupt_labels(
            train.y, cfg.noise.kind, cfg.noise.rate, train.num_classes, seed=cfg.seed,
            exact=cfg.noise.exact, **options,
        )
        train = train.with_labels(res.noisy_labels)
        noise_info = res.to_dict()
    return train, val, test, noise_info


def validate_config(cfg: ExperimentConfig) -> None:
    """Check every registry name and parameter of ``cfg`` before anything runs or is stored."""
    from robustlab import data, losses, models
    from robustlab import train as train_mod

    data.datasets.get(cfg.data.name)
    models.models.get(cfg.model.name)
    losses.losses.get(cfg.train.loss.name)
    train_mod.objectives.get(cfg.train.objective)  # names first; parameters when built below
    if cfg.noise is not None:
        data.noise.noise_models.get(cfg.noise.kind)
    for m in cfg.evaluate.measurements():
        m.build()
    t = cfg.train
    if (t.select is not None or t.val_attack is not None) and cfg.data.val_fraction == 0:
        raise ConfigError(
            f"train.select={t.select!r} / train.val_attack={t.val_attack!r} validate on a held-out part "
            f"of the training set; set data.val_fraction (e.g. 0.1)."
        )
    objective = build_objective(cfg)  # refuses bad objective parameters before anything runs
    objective.check_training(t.epochs)
    _trainer(cfg, nn.Identity(), objective, checkpoint_dir=None, progress=False)


def _trainer(cfg: ExperimentConfig, model: nn.Module, objective: Any, *, checkpoint_dir: Path | None,
             progress: bool | None) -> Any:
    from robustlab import train as train_mod

    return train_mod.Trainer(model, objective, seed=cfg.seed, checkpoint_dir=checkpoint_dir, progress=progress,
                             **cfg.train.trainer_kwargs())


def build_objective(cfg: ExperimentConfig) -> Any:
    """The configured objective; objectives that take a ``loss`` get the configured one."""
    import inspect

    from robustlab import losses
    from robustlab import train as train_mod

    params = cfg.train.resolved_objective_params()
    factory = train_mod.objectives.get(cfg.train.objective)
    accepted = inspect.signature(factory).parameters
    if "loss" in accepted and "loss" not in params:
        params["loss"] = losses.create(cfg.train.loss.name, reduction="none", **cfg.train.loss.resolved_params())
    if "forget_rate" in accepted and "forget_rate" not in params and cfg.noise is not None:
        params["forget_rate"] = cfg.noise.rate  # co-teaching's official default: the noise rate
    return train_mod.create(cfg.train.objective, **params)


def run_experiment(
    cfg: ExperimentConfig,
    store: ResultsStore,
    *,
    suite: str | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> RunRecord:
    """Run one experiment and store it. Returns the stored record.

    Everything that can be refused (names, parameters, the device, the data) is refused
    before a row is stored. A config whose run is already ``done`` is not run again
    (unless ``force``; the returned record then has ``reused=True``). A run that was
    interrupted (status ``running``/``failed``) resumes from the checkpoint in its
    artifacts folder. Two processes never run one config at the same time: the second
    waits for the first and reuses its result.
    """
    validate_config(cfg)
    run_id = cfg.hash()
    existing = store.get(run_id)
    if existing is not None and existing.status == "done" and not force:
        existing.reused = True
        return existing
    prepared = prepare_data(cfg)  # missing or bad data is refused before a row is stored

    def fresh(art: Path) -> None:
        if (art / "train" / "last.pt").exists():
            (art / "train" / "last.pt").unlink()

    def work(art: Path) -> dict[str, Any]:
        return train_and_evaluate(cfg, run_id, art, prepared, progress=progress,
                                  baseline=lambda metrics: _corruption_baseline(store, cfg, run_id, metrics))

    return execute_run(store, run_id, cfg.label(), cfg.to_dict(), work, suite=suite, force=force, fresh=fresh,
                       every_rank=True)


def train_and_evaluate(
    cfg: ExperimentConfig,
    run_id: str,
    art: Path,
    prepared: tuple[Any, Any, Any, dict[str, Any] | None],
    *,
    progress: bool | None = None,
    baseline: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` on ``prepared`` (:func:`prepare_data`) and evaluate it, writing only into
    the run's artifacts folder ``art`` (checkpoints, ``model.safetensors``, ``records.npz``);
    return its metrics. ``baseline(metrics)`` puts CE/mCE against the corruption baseline in
    (it reads the store, so a sweep's driver calls it, not its workers)."""
    from robustlab import models
    from robustlab import train as train_mod
    from robustlab.evaluate import evaluate_model
    from robustlab.train.distributed import is_main

    train_set, val_set, test_set, noise_info = prepared
    progress_log.info("run %s: %s on %s, %d training points, %d epochs", cfg.label(), cfg.model.name,
                      cfg.data.name, len(train_set), cfg.train.epochs)
    with torch.random.fork_rng(devices=[]):  # seeded init; the global RNG is restored
        torch.manual_seed(train_mod.derive_seed("init", cfg.seed))
        model = models.for_dataset(cfg.model.name, train_set, **cfg.model.params)
    objective = build_objective(cfg)
    trainer = _trainer(cfg, model, objective, checkpoint_dir=art / "train", progress=progress)
    t_train = time.perf_counter()
    history = trainer.fit(train_set, val_set, test=test_set if cfg.evaluate.per_epoch_test else None)
    train_seconds = time.perf_counter() - t_train
    if not is_main():  # torchrun rank > 0: trained alongside rank 0, which saves and evaluates
        return {}
    model = model.cpu()
    models.save_model(model, art / "model.safetensors", metadata=provenance_metadata(run_id, cfg))
    specs = cfg.evaluate.measurements()
    metrics, records = evaluate_model(model, test_set, specs, seed=cfg.seed, batch_size=cfg.evaluate.batch_size,
                                      threads=getattr(cfg.train, "threads", None), progress=progress,
                                      reference=train_set if cfg.evaluate.detect else None)
    with atomic_path(art / "records.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **records)  # type: ignore[arg-type]
    if baseline is not None:
        baseline(metrics)
    metrics.update(
        {
            "train_seconds": train_seconds,
            "training": trainer.summary(),
            "history": history,
            "resumed_from_epoch": trainer.resumed_from_epoch,
            "noise": noise_info,
            "data": {
                "train": getattr(train_set, "description", ""),
                "num_train": len(train_set),
                "num_val": 0 if val_set is None else len(val_set),
                "num_test": len(test_set),
            },
            "final_train_accuracy_noisy_labels": history[-1].get("train_accuracy") if history else None,
            **test_curve_summary(history),
        }
    )
    return metrics


def training_summary(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a run trained on, in a few words a report can show beside its weights."""
    noise = None
    if cfg.noise is not None and (cfg.noise.rate or 0) > 0:
        noise = {"kind": cfg.noise.kind, "rate": cfg.noise.rate}
    return {
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "objective": cfg.train.objective,
        "loss": cfg.train.loss.name,
        "noise": noise,
    }


def provenance_metadata(run_id: str, cfg: ExperimentConfig) -> dict[str, str]:
    """The strings a run's ``model.safetensors`` carries about where its weights came from."""
    import json

    return {
        "robustlab_run_id": run_id,
        "robustlab_run_name": cfg.label(),
        "robustlab_training": json.dumps(training_summary(cfg), sort_keys=True),
    }


def test_curve_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Last-epoch and best-epoch test accuracy from the per-epoch ``test_accuracy`` of a
    history. ``test_accuracy_best`` is the maximum over epochs, i.e. chosen on the test
    set: optimistic, reported because the literature often does (ties: the earlier epoch)."""
    curve = [(h["test_accuracy"], int(h["epoch"])) for h in history if h.get("test_accuracy") is not None]
    if not curve:
        return {}
    best, epoch = max(curve, key=lambda p: (p[0], -p[1]))
    return {"test_accuracy_last": curve[-1][0], "test_accuracy_best": best, "test_accuracy_best_epoch": epoch}


def execute_run(
    store: ResultsStore,
    run_id: str,
    name: str,
    config: dict[str, Any],
    work: Callable[[Path], dict[str, Any]],
    *,
    suite: str | None = None,
    force: bool = False,
    fresh: Callable[[Path], None] | None = None,
    every_rank: bool = False,
) -> RunRecord:
    """Run ``work(artifact_dir) -> metrics`` as the stored run ``run_id``, transactionally.

    A run already ``done`` is returned as it is (``reused=True``) unless ``force`` (then
    ``fresh(artifact_dir)`` clears what a resume would read). One process runs a config at
    a time (:func:`~robustlab.experiments.store.run_lock`): a second one waits, then reuses
    the finished run. Otherwise the run is marked running, ``work`` computes its metrics,
    and they are written and the run marked done in one transaction; any exception (an
    interrupt included) marks it failed with the reason and is re-raised, so no row is ever
    left half-written as done.

    Under ``torchrun`` only rank 0 takes the lock and writes the row and the artifacts.
    The other ranks write nothing: with ``every_rank`` (a training run, whose Trainer needs
    every rank) they call ``work`` too, which must then write nothing on them; then they
    wait for rank 0 to mark the run done or failed and return its row.
    """
    existing = store.get(run_id)
    if existing is not None and existing.status == "done" and not force:
        log.info("run %s (%s) is already done; reusing it", run_id[:10], name)
        existing.reused = True
        return existing
    from robustlab.train.distributed import is_main

    if not is_main():
        return _follow_main(store, run_id, work if every_rank else None)
    store._check_writable()
    art = store.root / "artifacts" / run_id

    def waiting() -> None:
        progress_log.info("run %s (%s): another process is running this config; waiting for it", run_id[:10], name)

    with run_lock(art, on_wait=waiting):
        existing = store.get(run_id)
        if existing is not None and existing.status == "done" and not force:
            existing.reused = True
            return existing
        if force and fresh is not None:
            fresh(art)
        store.start(run_id, name, config, suite=suite, versions=package_versions(), git_sha=git_sha(), force=True)
        t0 = time.perf_counter()
        try:
            metrics = work(art)
            store.finish(run_id, _jsonable(metrics), time.perf_counter() - t0)
        except BaseException as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            store.fail(run_id, reason + "\n" + traceback.format_exc(limit=5))
            raise
    record = store.get(run_id)
    assert record is not None
    return record


def _follow_main(store: ResultsStore, run_id: str, work: Callable[[Path], dict[str, Any]] | None) -> RunRecord:
    """A torchrun rank > 0: run ``work`` (the training it shares with rank 0) if given,
    then poll the store until rank 0 has finished the run and return its row."""
    if work is not None:
        work(store.root / "artifacts" / run_id)  # its Trainer synchronises with rank 0's
    while True:
        record = store.get(run_id)
        if record is not None and record.status in ("done", "failed"):
            return record
        time.sleep(0.5)


def evaluate_weights(
    weights: str | Path,
    store: ResultsStore,
    *,
    data: str = "digits",
    split: str = "test",
    root: str | None = None,
    measurements: Sequence[Any] | None = None,
    attack: str = "standard",
    norm: str = "linf",
    eps: Iterable[float | str] = (8 / 255,),
    subset: int | None = None,
    attack_params: dict[str, Any] | None = None,
    audit: bool | str = True,
    batch_size: int | str = "auto",
    amp: bool = False,
    device: str | None = None,
    factory: str | None = None,
    seed: int = 0,
    threads: int | str | None = None,
    progress: bool | None = None,
    force: bool = False,
    corruption_baseline: str | None = None,
    chunk_size: int | None = None,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
) -> tuple[RunRecord, Any]:
    """Evaluate saved weights and store it as a run (suite ``evaluations``): the
    evaluation path (:func:`robustlab.evaluate.evaluate`) on a dataset split.

    ``measurements`` (a list of :class:`robustlab.evaluate.Measurement`) or one attack
    given by ``attack``, ``norm``, ``eps``, ``attack_params``, ``subset`` and ``audit``.
    The run is keyed by the sha256 of the weights' *tensors* (not the file's bytes) and
    the evaluation's settings, so re-evaluating the same weights the same way is a no-op
    that returns the stored run (the second item is then ``None``, otherwise the
    :class:`~robustlab.evaluate.Evaluation`). Everything is checked — names, parameters,
    eps, subset, device, the data — before a row is stored. Metrics are those of every
    evaluation (``clean_accuracy``, ``robust`` rows, ...) plus the full report of each
    measurement (``reports``; the first also as ``attack_report``) and ``provenance``:
    the weights' sha256 and, for weights a robustlab run wrote, that run's id, name and
    what it trained on. ``corruption_baseline``: a stored run (name or id) whose corruption
    errors normalise CE and mCE (``metrics["corruption"]``); it must exist before anything runs.

    ``chunk_size``: evaluate in chunks of that many points
    (:func:`robustlab.evaluate.sharded.evaluate_sharded`; part of the settings and the key)
    on ``backend`` (``"local"``, ``"pool"`` with ``workers``, ``"ray"`` at ``ray_address``;
    not part of the key: every backend gives the same numbers). Finished chunks are recorded
    in the store's ``shards`` table and files in the run's artifacts, so an interrupted
    evaluation redoes only the missing chunks; ``force`` forgets them.
    """
    from robustlab import data as data_mod
    from robustlab.evaluate import Measurement, evaluate
    from robustlab.models import load_model, weights_sha256
    from robustlab.validation import check_device, check_int, default_device

    if measurements is None:
        measurements = [Measurement(attack, norm, list(eps), dict(attack_params or {}), subset, audit)]
    measurements = list(measurements)
    specs = [_measurement_dict(m) for m in measurements]  # refuses bad names, parameters, eps, subsets
    dev = check_device(device or default_device())
    if batch_size != "auto":
        check_int(batch_size, "batch_size", minimum=1)
    if chunk_size is not None:
        from robustlab.evaluate.sharded import measurement_dict, pinned_batch_size

        pinned_batch_size(batch_size, chunk_size)  # refuses bad chunk sizes before anything runs
        for m in measurements:
            measurement_dict(m)  # refuses what is not sharded (detectors, attack objects)
    elif backend != "local" or workers is not None or ray_address is not None:
        raise ConfigError("--backend, --workers and --ray-address run the chunks of a sharded evaluation; "
                          "pass --chunk-size too.")
    baseline = find_baseline(store, corruption_baseline) if corruption_baseline is not None else None
    net = load_model(weights, factory=factory)
    ds = data_mod.load(data, split, root=root, seed=seed)
    # detectors are fitted on the training split (never on the points they are measured on)
    ref = data_mod.load(data, "train", root=root, seed=seed) if any(m.kind == "detect" for m in measurements) else None
    sha = weights_sha256(net)
    model_cfg = getattr(net, "robustlab_config", None) or {"name": factory or "user"}
    config: dict[str, Any] = {
        "kind": "evaluation",
        "seed": seed,
        "data": {"name": data, "split": split, "root": root},
        "model": {**model_cfg, "weights_sha256": sha},
        "evaluate": {"measurements": specs, "amp": amp, "batch_size": batch_size},
    }
    if baseline is not None:  # evaluations without a baseline keep their hash
        config["evaluate"]["corruption_baseline"] = baseline.id
    if chunk_size is not None:  # unsharded evaluations keep their hash; the backend is not part of it
        config["evaluate"]["chunk_size"] = chunk_size
    run_id = config_hash(config)
    corr = [s for s in specs if s.get("kind") == "corruption"]
    what = ", ".join([f"{s['attack']} {s['norm']}" for s in specs if s.get("kind") != "corruption"]
                     + ([f"{len(corr)} corruption{'s' * (len(corr) > 1)}"] if corr else []))
    name = f"{Path(weights).name}: {what} on {data}/{split}"
    box: list[Any] = []

    runner_backend = None
    done = store.get(run_id)
    if chunk_size is not None and (force or done is None or done.status != "done"):
        # a missing Ray or an unreachable cluster is refused before a row is stored
        from robustlab.experiments.backends import get_backend

        runner_backend = get_backend(backend, workers=workers, ray_address=ray_address)

    def evaluation(art: Path) -> Any:
        if chunk_size is None:
            return evaluate(net.to(dev), ds.x, ds.y, measurements, seed=seed, batch_size=batch_size, amp=amp,
                            threads=threads, num_classes=ds.num_classes, progress=progress,
                            reference=(ref.x, ref.y) if ref is not None else None)
        from robustlab.evaluate.sharded import ModelSource, PointSource, evaluate_sharded

        if backend == "local":
            src, pts = ModelSource(module=net.to(dev)), PointSource(x=ds.x, y=ds.y)
        else:
            src = ModelSource(weights=str(Path(weights).resolve()), factory=factory, sha256=sha,
                              device=None if dev.type == "cpu" else str(dev))
            pts = PointSource(dataset=data, split=split, root=None if root is None else str(Path(root).resolve()),
                              seed=seed)
        return evaluate_sharded(src, pts, measurements, chunk_size=chunk_size, seed=seed, batch_size=batch_size,
                                backend=runner_backend, workdir=art, shard_log=store.shard_log(run_id),
                                num_classes=ds.num_classes, amp=amp, progress=progress)

    def fresh(art: Path) -> None:
        import shutil

        store.clear_shards(run_id)
        shutil.rmtree(art / "chunks", ignore_errors=True)

    def work(art: Path) -> dict[str, Any]:
        ev = evaluation(art)
        box.append(ev)
        for k, cert in enumerate(ev.certifications):
            if hasattr(cert.details, "write_tsv"):  # the reference's per-point TSV
                cert.details.write_tsv(art / f"certify-{k}-sigma{cert.details.sigma:g}.tsv")
        reports = [r.to_dict() for r in ev.reports]
        metrics = ev.metrics()
        if baseline is not None and "corruption" in metrics:
            add_corruption_baseline(metrics, baseline.metrics or {}, baseline.name)
        return {
            **metrics,
            "reports": reports,
            "attack_report": reports[0] if reports else None,
            "provenance": weights_provenance(net, sha),
            "data": {"test": ds.description, "num_test": len(ds)},
        }

    try:
        record = execute_run(store, run_id, name, config, work, suite="evaluations", force=force, fresh=fresh)
    finally:
        if runner_backend is not None:
            runner_backend.close()
    return record, (box[0] if box else None)


def _measurement_dict(m: Any) -> dict[str, Any]:
    name, atk, threats = m.build()
    kind = {"kind": m.kind} if m.kind != "attack" else {}  # attack measurements keep their stored keys
    if m.kind == "corruption":  # "threats" are the severities
        norm, eps = "severity", [float(s) for s in threats]
    elif m.kind == "detect":  # "norm" is the shift, "threats" its levels
        norm, eps = m.norm, [float(v) for v in threats]
    else:
        norm, eps = threats[0].norm, [t.eps for t in threats]
    return {"attack": name, "norm": norm, "eps": eps,
            "params": _jsonable(dict(m.params)), "subset": m.subset, "audit": m.audit, **kind}


def _corruption_baseline(store: ResultsStore, cfg: ExperimentConfig, run_id: str, metrics: dict[str, Any]) -> None:
    """CE/mCE against the config's named baseline run; a run that is its own baseline gets
    mCE = 100% by definition, a baseline not (yet) in the store is noted, not an error (the
    trained model and its accuracies are kept)."""
    cc = cfg.evaluate.corruptions
    if cc is None or cc.baseline is None or "corruption" not in metrics:
        return
    if cc.baseline in (cfg.label(), run_id):
        add_corruption_baseline(metrics, dict(metrics), cfg.label())
        return
    try:
        base = find_baseline(store, cc.baseline)
        add_corruption_baseline(metrics, base.metrics or {}, base.name)
    except ConfigError as exc:
        metrics["corruption"]["baseline"] = cc.baseline
        metrics["corruption"]["baseline_missing"] = str(exc)
        progress_log.warning("corruption baseline: %s", exc)


def find_baseline(store: ResultsStore, name_or_id: str) -> RunRecord:
    """The finished run called ``name_or_id`` (or whose id starts with it) that measured
    corruptions: the baseline whose errors normalise CE and mCE."""
    runs = [r for r in store.list(status="done")
            if r.name == name_or_id or (len(name_or_id) >= 6 and r.id.startswith(name_or_id))]
    runs = [r for r in runs if any(isinstance(x, dict) and x.get("kind") == "corruption"
                                   for x in (r.metrics or {}).get("robust") or [])]
    if not runs:
        raise ConfigError(
            f"no finished run called {name_or_id!r} (or with that id) measured corruptions in {store.root}; "
            f"run the baseline with the same corruptions first (robustlab ls runs shows the names)."
        )
    if len({r.id for r in runs}) > 1:
        raise ConfigError(f"{len(runs)} finished runs are called {name_or_id!r}; name the baseline by its id instead.")
    return runs[0]


def add_corruption_baseline(metrics: dict[str, Any], baseline_metrics: dict[str, Any], baseline_name: str) -> None:
    """Put CE, mCE and relative mCE against a baseline run's stored metrics into
    ``metrics["corruption"]``."""
    from robustlab.evaluate.corruption import corruption_summary

    metrics["corruption"] = corruption_summary(
        metrics.get("robust") or [], clean_accuracy=metrics.get("clean_accuracy"),
        baseline_rows=baseline_metrics.get("robust") or [],
        baseline_clean_accuracy=baseline_metrics.get("clean_accuracy"), baseline_name=baseline_name,
    )


def weights_provenance(net: Any, sha: str) -> dict[str, Any]:
    """Where evaluated weights came from: their sha256 and, when a robustlab run wrote
    them, that run's id, name and what it trained on (None for weights of unknown origin)."""
    import json

    meta = getattr(net, "robustlab_metadata", None) or {}
    training = None
    if meta.get("robustlab_training"):
        try:
            training = json.loads(meta["robustlab_training"])
        except ValueError:
            training = None
    return {
        "weights_sha256": sha,
        "run_id": meta.get("robustlab_run_id"),
        "run_name": meta.get("robustlab_run_name"),
        "training": training,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj



# -- suites and sweeps ---------------------------------------------------------------------------
class SweepError(TrainingError):
    """Some runs of a sweep failed (each is stored as failed with its error; the others finished)."""


def run_suite(
    suite: Suite,
    store: ResultsStore,
    *,
    overrides: Iterable[str] = (),
    force: bool = False,
    progress: bool | None = None,
    on_run: Callable[[int, int, ExperimentConfig, RunRecord], None] | None = None,
    backend: str | Any = "local",
    workers: int | None = None,
    ray_address: str | None = None,
) -> list[RunRecord]:
    """Run every config of ``suite`` (skipping finished ones) and return their records, in
    the suite's order. ``on_run(i, total, config, record)`` is called as each run is stored.

    ``backend="local"`` (default): one config after another in this process
    (:func:`run_experiment`); the first failing run raises. ``"pool"`` / ``"ray"`` (or a
    :class:`~robustlab.experiments.backends.Backend`): a sweep, see :func:`run_sweep`.
    """
    from robustlab.experiments.backends import BACKENDS

    if isinstance(backend, str) and backend.strip().lower() not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    configs = suite.expand(overrides)
    if isinstance(backend, str) and backend.strip().lower() == "local":
        if workers is not None or ray_address is not None:
            raise ConfigError("--workers and --ray-address are for --backend pool or ray; drop them or choose a backend.")
        out = []
        for i, cfg in enumerate(configs):
            rec = run_experiment(cfg, store, suite=suite.suite, force=force, progress=progress)
            out.append(rec)
            if on_run is not None:
                on_run(i, len(configs), cfg, rec)
        return out
    return run_sweep(configs, store, suite=suite.suite, force=force, progress=progress, on_run=on_run,
                     backend=backend, workers=workers, ray_address=ray_address)


def sweep_resources(cfg: ExperimentConfig, threads_per_worker: int = 1) -> dict[str, Any]:
    """What one run of a sweep asks Ray for: ``num_gpus=1`` (and one CPU) when the config
    trains on ``cuda``; otherwise ``num_cpus`` = the config's ``train.threads`` (or
    ``threads_per_worker``). The pool ignores it (each process runs one run at a time)."""
    device = str(getattr(cfg.train, "device", "cpu") or "cpu")
    threads = getattr(cfg.train, "threads", None)
    cpus = int(threads) if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 \
        else threads_per_worker
    if device.startswith("cuda"):
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": cpus}


def _sweep_task(task: dict[str, Any]) -> dict[str, Any]:
    """One run of a sweep, in a worker: load the data, train, evaluate; write only into the
    run's artifacts folder (never the store) and return the metrics and the seconds it took."""
    from robustlab.experiments.config import make_config

    cfg = make_config(task["config"])
    if cfg.hash() != task["run_id"]:
        raise ConfigError(
            f"the worker rebuilt config {task['name']!r} with another hash ({cfg.hash()[:10]}, driver "
            f"{task['run_id'][:10]}); driver and workers need the same robustlab version."
        )
    art = Path(task["artifacts"])
    if not art.is_dir():
        from robustlab.errors import DataError

        raise DataError(
            f"worker {platform.node()} does not see the run's artifacts folder {art}; a sweep on Ray needs "
            f"the results folder on a file system every node shares, at the same path."
        )
    prepared = prepare_data(cfg)
    t0 = time.perf_counter()
    metrics = train_and_evaluate(cfg, task["run_id"], art, prepared, progress=task["progress"])
    return {"metrics": metrics, "seconds": time.perf_counter() - t0}


def _error_text(exc: BaseException) -> str:
    """What a failed run's row holds: ``Type: message`` first, then a short traceback."""
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=5))
    return reason + "\n" + tb


def _baseline_of(i: int, cfg: ExperimentConfig, ids: list[str], labels: list[str]) -> int | None:
    """The index of the config of this sweep that ``cfg``'s corruption baseline names (not itself)."""
    cc = cfg.evaluate.corruptions
    if cc is None or cc.baseline is None:
        return None
    for j, (rid, label) in enumerate(zip(ids, labels)):
        if j != i and rid != ids[i] and (cc.baseline == label or cc.baseline == rid):
            return j
    return None


def run_sweep(
    configs: Sequence[ExperimentConfig],
    store: ResultsStore,
    *,
    suite: str | None = None,
    force: bool = False,
    progress: bool | None = None,
    on_run: Callable[[int, int, ExperimentConfig, RunRecord], None] | None = None,
    backend: str | Any = "pool",
    workers: int | None = None,
    ray_address: str | None = None,
    threads_per_worker: int = 1,
) -> list[RunRecord]:
    """Run ``configs`` as tasks of a backend (one run per task) and return their records in
    the given order (a failed run's record has status ``failed``).

    The split: this process (the driver) validates every config first (a bad name or
    parameter refuses the whole sweep before anything is stored), reuses the configs already
    ``done`` (same keys as :func:`run_experiment`; ``force`` reruns them), holds each
    remaining run's lock, marks it ``running`` and sends it to a worker. A worker loads the
    data, trains and evaluates, writing only into the run's artifacts folder (checkpoints,
    ``model.safetensors``, ``records.npz``) — on Ray that folder must be on a file system
    every node shares at the same path — and returns the metrics. The driver writes each
    row as its result arrives: ``done`` with the metrics, or ``failed`` with the run's
    one-line error; a failing run stops no other. An interrupted sweep marks its unfinished
    runs failed (``interrupted``); rerunning it reuses the finished runs and resumes the
    started ones from their checkpoints.

    Resources per run: :func:`sweep_resources`. A corruption baseline that names another
    config of the sweep is looked up once that run is stored (whatever its place in the
    list). Each config gives the same numbers as in this process (same seeds, one thread).
    """
    import contextlib

    from robustlab.experiments.backends import Backend, get_backend

    configs = list(configs)
    for cfg in configs:
        validate_config(cfg)
    n = len(configs)
    ids = [cfg.hash() for cfg in configs]
    labels = [cfg.label() for cfg in configs]
    records: list[RunRecord | None] = [None] * n
    todo: list[int] = []  # first index of each run id still to compute
    first: dict[str, int] = {}

    def stored(i: int, rec: RunRecord) -> None:
        records[i] = rec
        if on_run is not None:
            on_run(i, n, configs[i], rec)

    for i, rid in enumerate(ids):
        if rid in first:
            continue
        first[rid] = i
        existing = store.get(rid)
        if existing is not None and existing.status == "done" and not force:
            existing.reused = True
            stored(i, existing)
        else:
            todo.append(i)
    if todo:
        store._check_writable()
        own = isinstance(backend, str)
        runner: Backend = (get_backend(backend, workers=workers, ray_address=ray_address,
                                       threads_per_worker=threads_per_worker) if isinstance(backend, str) else backend)
        try:
            with contextlib.ExitStack() as locks:
                _sweep(configs, store, suite, force, progress, runner, todo, ids, labels, stored, locks)
        finally:
            if own:
                runner.close()
    for i, rid in enumerate(ids):  # a config listed twice: the later ones reuse the first's run
        if records[i] is None:
            rec = store.get(rid)
            assert rec is not None
            rec.reused = rec.status == "done"
            stored(i, rec)
    return [r for r in records if r is not None]


def _sweep(configs: list[ExperimentConfig], store: ResultsStore, suite: str | None, force: bool,
           progress: bool | None, runner: Any, todo: list[int], ids: list[str], labels: list[str],
           stored: Callable[[int, RunRecord], None], locks: Any) -> None:
    """The driver's part of :func:`run_sweep` for the runs in ``todo``."""
    sent: list[int] = []
    for i in todo:
        rid, art = ids[i], store.root / "artifacts" / ids[i]

        def waiting(i: int = i) -> None:
            progress_log.info("run %s (%s): another process is running this config; waiting for it",
                              ids[i][:10], labels[i])

        locks.enter_context(run_lock(art, on_wait=waiting))
        existing = store.get(rid)
        if existing is not None and existing.status == "done" and not force:
            existing.reused = True
            stored(i, existing)
            continue
        if force and (art / "train" / "last.pt").exists():
            (art / "train" / "last.pt").unlink()
        store.start(rid, labels[i], configs[i].to_dict(), suite=suite, versions=package_versions(),
                    git_sha=git_sha(), force=True)
        sent.append(i)
    if not sent:
        return
    threads = getattr(runner, "threads_per_worker", 1)
    tasks = [{"config": configs[i].to_dict(), "run_id": ids[i], "name": labels[i], "progress": progress,
              "artifacts": str((store.root / "artifacts" / ids[i]).resolve())} for i in sent]
    resources = [sweep_resources(configs[i], threads) for i in sent]
    progress_log.info("sweep: %d run%s on %s", len(sent), "s" * (len(sent) != 1), runner.describe())
    waits = {i: j for i in sent if (j := _baseline_of(i, configs[i], ids, labels)) is not None and j in sent}
    resolved: set[int] = set()
    held: dict[int, dict[str, Any]] = {}

    def write(i: int, out: dict[str, Any]) -> None:
        metrics = out["metrics"]
        _corruption_baseline(store, configs[i], ids[i], metrics)
        store.finish(ids[i], _jsonable(metrics), float(out["seconds"]))
        settle(i)

    def settle(i: int) -> None:
        resolved.add(i)
        rec = store.get(ids[i])
        assert rec is not None
        stored(i, rec)
        for k in [k for k, j in waits.items() if j == i and k in held]:
            write(k, held.pop(k))

    try:
        for t, out in runner.run(_sweep_task, tasks, resources=resources):
            i = sent[t]
            if isinstance(out, BaseException):
                progress_log.warning("run %s (%s) failed: %s: %s", ids[i][:10], labels[i], type(out).__name__,
                                     str(out).strip().splitlines()[0] if str(out).strip() else "")
                store.fail(ids[i], _error_text(out))
                settle(i)
            elif i in waits and waits[i] not in resolved:
                held[i] = out  # its corruption baseline is another run of this sweep, not stored yet
            else:
                write(i, out)
    except BaseException as exc:
        for i in sent:
            if i not in resolved:
                store.fail(ids[i], _error_text(exc))
        raise
    for i in list(held):  # a baseline that never came back (cannot happen: every task yields)
        write(i, held.pop(i))


def sweep_failures(records: Sequence[RunRecord]) -> SweepError | None:
    """The error that says which runs of a sweep failed (None when none did)."""
    failed = [r for r in records if r.status != "done"]
    if not failed:
        return None
    parts = [f"{r.name} ({r.id[:10]}): {(r.error or r.status).strip().splitlines()[0].rstrip('.')}" for r in failed]
    return SweepError(
        f"{len(failed)} of {len(records)} runs failed: {'; '.join(parts)}. Fix them and rerun the same command "
        f"(finished runs are reused, started ones resume from their checkpoints)."
    )
