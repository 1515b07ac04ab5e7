"""Config schema, runner, results store and suites (the bench suite is a config file)."""

from __future__ import annotations

from robustlab.experiments.config import (
    ExperimentConfig,
    Suite,
    load_config,
    load_suite,
    make_config,
    packaged_config,
    parse_overrides,
)
from robustlab.experiments.store import ResultsStore, RunRecord, default_results_dir

__all__ = [
    "ExperimentConfig",
    "ResultsStore",
    "RunRecord",
    "Suite",
    "default_results_dir",
    "load_config",
    "load_suite",
    "make_config",
    "packaged_config",
    "parse_overrides",
    "evaluate_weights",
    "execute_run",
    "run_experiment",
    "run_suite",
]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # the runner imports torch; keep config/store importable without it
    if name in ("run_experiment", "run_suite", "prepare_data", "evaluate_weights", "execute_run"):
        from robustlab.experiments import runner

        return getattr(runner, name)
    raise AttributeError(name)
