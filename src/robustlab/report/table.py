"""Stored runs as one flat table: one dict per run, the same columns for every run.

The rows handed in are ``RunRecord.to_dict()`` dicts (``id``, ``name``, ``suite``,
``status``, ``config``, ``metrics``, ``error``, ``attempts``, ``created_at``, ...).
Everything here is pure Python (no torch, no matplotlib), so the CLI can print a
table without importing either.

Columns, in order (see :func:`results_table`):

``id`` (first 10 characters), ``name``, ``status``, ``dataset``, ``model``,
``objective``, ``loss``, ``noise kind``, ``noise rate`` (nominal, from the config),
``flip_rate`` (actual share of flipped training labels, ``metrics["noise"]["flip_rate"]``),
``clean_accuracy``, ``ece``, one column per robust evaluation named
``"<attack> <norm> eps=<eps>"`` (e.g. ``"pgd linf eps=0.1"``; an eps that is a whole
number of 255ths, such as 8/255, is written as the fraction), then the optional
``best_epoch``, ``best_val_accuracy``, ``test_accuracy_best``, ``test_accuracy_last``
(only when some run stores them), ``train_seconds`` and ``seconds`` (wall time of the run).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from robustlab.errors import InvalidInputError

BASE_COLUMNS: tuple[str, ...] = (
    "id",
    "name",
    "status",
    "dataset",
    "model",
    "objective",
    "loss",
    "noise kind",
    "noise rate",
    "flip_rate",
    "clean_accuracy",
    "ece",
)
"""Columns every table has, before the robust-evaluation columns."""

OPTIONAL_METRIC_COLUMNS: tuple[str, ...] = (
    "best_epoch",
    "best_val_accuracy",
    "test_accuracy_best",
    "test_accuracy_last",
)
"""Top-level metrics shown as columns only when at least one run stores them."""

TAIL_COLUMNS: tuple[str, ...] = ("train_seconds", "seconds")

SHORT_ID = 10
"""Characters of the run id shown in the table (the CLI prints the same prefix)."""


# -- small helpers ------------------------------------------------------------------------
def _num(v: Any) -> float | None:
    """``v`` as a float if it is a real number (bools and strings are not), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _get(tree: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(k)
    return tree


def eps_text(eps: float) -> str:
    """Compact text for a budget: ``0.1`` -> ``"0.1"``, ``8/255`` -> ``"8/255"``.

    A budget is written as ``k/255`` only when it is exactly a whole number of 255ths
    *and* its decimal form needs more than four significant digits (so 0.2, which is
    51/255, stays ``"0.2"``).
    """
    k = eps * 255.0
    short, full = f"{eps:.4g}", f"{eps:g}"
    if short != full and round(k) >= 1 and math.isclose(k, round(k), rel_tol=0.0, abs_tol=1e-9):
        return f"{round(k)}/255"
    return full


def robust_column(attack: str, norm: str, eps: float) -> str:
    """The table column of one robust evaluation, e.g. ``"pgd linf eps=0.1"``."""
    return f"{attack} {norm} eps={eps_text(eps)}"


def _as_flags(v: Any) -> list[str]:
    """Audit flags as a list of strings (tolerates one string or a mapping)."""
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, Mapping):
        return [f"{k}: {w}" for k, w in v.items()]
    if isinstance(v, Iterable):
        return [str(x) for x in v if x is not None and str(x)]
    return [str(v)]


# -- normalised runs ----------------------------------------------------------------------
@dataclass
class RobustEval:
    """One robust evaluation of one run (a row of ``metrics["robust"]``)."""

    attack: str
    norm: str
    eps: float
    accuracy: float | None
    num_points: int | None
    flags: list[str] | None  # None: the evaluation carries no audit at all
    per_attack: dict[str, float | None] | None
    column: str = ""


@dataclass
class Run:
    """A stored run, decoded once for the table, the plots and the HTML."""

    id: str
    name: str
    label: str  # unique display name (the name, plus a short id when names repeat)
    status: str
    dataset: str | None
    model: str | None
    objective: str | None
    loss: str | None
    noise_kind: str | None
    noise_rate: float | None
    flip_rate: float | None
    clean_accuracy: float | None
    ece: float | None
    robust: list[RobustEval]
    history: list[dict[str, Any]]
    extra: dict[str, Any]
    train_seconds: float | None
    seconds: float | None
    error: str | None
    row: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def is_clean(self) -> bool:
        """Trained on clean labels (no noise model, or a zero noise rate)."""
        return self.noise_kind is None or not self.noise_rate


def _with_params(name: Any, params: Any, preset: Any) -> str | None:
    """``gce(q=0.7)``, ``sce[cifar10]``: a method's name with what distinguishes its runs."""
    if name is None:
        return None
    text = str(name)
    if preset:
        text += f"[{preset}]"
    if isinstance(params, Mapping) and params:
        text += "(" + ", ".join(f"{k}={params[k]}" for k in sorted(params)) + ")"
    return text


def _as_row(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "to_dict") and not isinstance(obj, Mapping):
        obj = obj.to_dict()
    if not isinstance(obj, Mapping):
        raise InvalidInputError(
            f"report rows must be RunRecord.to_dict() dicts (or RunRecords), got {type(obj).__name__}; "
            "pass [r.to_dict() for r in store.list()]."
        )
    return dict(obj)


def normalize_rows(rows: Sequence[Any]) -> list[Run]:
    """Decode stored rows into :class:`Run` objects (missing pieces become None)."""
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise InvalidInputError(
            f"report rows must be a list of run dicts, got {type(rows).__name__}; "
            "pass [r.to_dict() for r in store.list()]."
        )
    runs: list[Run] = []
    for obj in rows:
        row = _as_row(obj)
        cfg: Mapping[str, Any] = row["config"] if isinstance(row.get("config"), Mapping) else {}
        metrics: Mapping[str, Any] = row["metrics"] if isinstance(row.get("metrics"), Mapping) else {}
        noise_cfg = cfg.get("noise") if isinstance(cfg.get("noise"), Mapping) else None
        noise_kind = noise_cfg.get("kind") if noise_cfg else None
        noise_rate = _num(noise_cfg.get("rate")) if noise_cfg else 0.0
        flip_rate = _num(_get(metrics, "noise", "flip_rate"))
        if flip_rate is None and metrics and metrics.get("noise") is None and noise_cfg is None:
            flip_rate = 0.0  # a finished run without a noise model flipped no label
        robust = []
        for r in metrics.get("robust") or []:
            if not isinstance(r, Mapping) or _num(r.get("eps")) is None:
                continue
            per_attack = r.get("per_attack")
            robust.append(
                RobustEval(
                    attack=str(r.get("attack", "?")),
                    norm=str(r.get("norm", "?")),
                    eps=float(r["eps"]),
                    accuracy=_num(r.get("accuracy")),
                    num_points=int(r["num_points"]) if _num(r.get("num_points")) is not None else None,
                    flags=_as_flags(r["flags"]) if "flags" in r else None,
                    per_attack=(
                        {str(k): _num(v) for k, v in per_attack.items()}
                        if isinstance(per_attack, Mapping) and per_attack
                        else None
                    ),
                )
            )
        history = [h for h in (metrics.get("history") or []) if isinstance(h, Mapping)]
        extra = {k: metrics[k] for k in OPTIONAL_METRIC_COLUMNS if metrics.get(k) is not None}
        name = str(row.get("name") or row.get("id") or "")
        runs.append(
            Run(
                id=str(row.get("id") or ""),
                name=name,
                label=name,
                status=str(row.get("status") or "unknown"),
                dataset=_get(cfg, "data", "name"),
                model=_get(cfg, "model", "name"),
                objective=_with_params(_get(cfg, "train", "objective"), _get(cfg, "train", "objective_params"),
                                       _get(cfg, "train", "objective_preset")),
                loss=_with_params(_get(cfg, "train", "loss", "name"), _get(cfg, "train", "loss", "params"),
                                  _get(cfg, "train", "loss", "preset")),
                noise_kind=noise_kind,
                noise_rate=noise_rate,
                flip_rate=flip_rate,
                clean_accuracy=_num(metrics.get("clean_accuracy")),
                ece=_num(metrics.get("ece")),
                robust=robust,
                history=[dict(h) for h in history],
                extra=extra,
                train_seconds=_num(metrics.get("train_seconds")),
                seconds=_num(row.get("duration_s")),
                error=row.get("error"),
                row=row,
            )
        )
    _assign_labels(runs)
    _assign_robust_columns(runs)
    return runs


def _assign_labels(runs: list[Run]) -> None:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runs:
        if counts[r.name] > 1 and r.id:
            r.label = f"{r.name} [{r.id[:6]}]"


def _assign_robust_columns(runs: list[Run]) -> None:
    """Name each evaluation's column; a repeat of the same attack/norm/eps in one run gets ``#2``."""
    for r in runs:
        seen: dict[str, int] = {}
        for ev in r.robust:
            base = robust_column(ev.attack, ev.norm, ev.eps)
            seen[base] = seen.get(base, 0) + 1
            ev.column = base if seen[base] == 1 else f"{base} #{seen[base]}"


def robust_columns(runs: Sequence[Run]) -> list[str]:
    """Robust columns over all runs: grouped by (attack, norm) in order of first appearance,
    eps ascending within a group."""
    groups: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}
    for r in runs:
        for ev in r.robust:
            g = groups.setdefault((ev.attack, ev.norm), {})
            g.setdefault(ev.column, (ev.eps, ev.column))
    out: list[str] = []
    for g in groups.values():
        out.extend(col for _, col in sorted(g.values()))
    return out


def columns_of(runs: Sequence[Run]) -> list[str]:
    """All table columns for these runs, in order."""
    optional = [c for c in OPTIONAL_METRIC_COLUMNS if any(c in r.extra for r in runs)]
    return [*BASE_COLUMNS, *robust_columns(runs), *optional, *TAIL_COLUMNS]


def table_row(run: Run, columns: Sequence[str]) -> dict[str, Any]:
    """The flat row of one run (every column present; missing values are None)."""
    values: dict[str, Any] = {
        "id": run.id[:SHORT_ID],
        "name": run.name,
        "status": run.status,
        "dataset": run.dataset,
        "model": run.model,
        "objective": run.objective,
        "loss": run.loss,
        "noise kind": run.noise_kind,
        "noise rate": run.noise_rate,
        "flip_rate": run.flip_rate,
        "clean_accuracy": run.clean_accuracy,
        "ece": run.ece,
        "train_seconds": run.train_seconds,
        "seconds": run.seconds,
    }
    for ev in run.robust:
        values[ev.column] = ev.accuracy
    for k, v in run.extra.items():
        values[k] = v if k == "best_epoch" else _num(v)
    return {c: values.get(c) for c in columns}


def results_table(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """One flat dict per run, with the same columns (in the same order) for every run.

    ``rows``: ``RunRecord.to_dict()`` dicts (or RunRecords). Failed and running runs
    appear with their status and ``None`` metrics. See the module docstring for the
    columns; accuracies, ``flip_rate`` and robust accuracies are fractions in [0, 1].

    >>> from robustlab.report import results_table
    >>> results_table([r.to_dict() for r in store.list()])[0]["pgd linf eps=0.1"]
    0.62
    """
    runs = normalize_rows(rows)
    cols = columns_of(runs)
    return [table_row(r, cols) for r in runs]


def format_value(column: str, value: Any) -> str:
    """Text of one cell: accuracies, robust accuracies and flip rates in percent (one
    decimal), ECE with three decimals, seconds with one, other floats with 3 significant
    digits; ``None`` is an em dash."""
    if value is None:
        return "\u2014"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if "accuracy" in column or "eps=" in column or column == "flip_rate":
            return f"{100 * value:.1f}"
        if column == "ece":
            return f"{value:.3f}"
        if column in TAIL_COLUMNS:
            return f"{value:.1f}"
        if column == "noise rate":
            return f"{value:g}"
        return f"{value:.3g}"
    return str(value)


def is_percent_column(column: str) -> bool:
    """Whether :func:`format_value` prints this column in percent."""
    return "accuracy" in column or "eps=" in column or column == "flip_rate"
