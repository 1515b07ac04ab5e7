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
``"<attack> <norm> eps=<eps> (n=<points>)"`` (e.g. ``"pgd linf eps=0.1 (n=360)"``; an eps
that is a whole number of 255ths, such as 8/255, is written as the fraction; ``(n=...)``
is left out when the stored row does not say how many points were attacked), then the
optional ``weights`` (provenance of evaluated weights, when some run is an evaluation),
``best_epoch``, ``best_val_accuracy``, ``test_accuracy_best``, ``test_accuracy_last``
(only when some run stores them), ``train_seconds`` and ``seconds`` (wall time of the run).

Robust results are rows of ``metrics["robust"]`` (one per measurement and eps). Keys
added over time (``num_total``, ``point_set``, ``subset``, ``stages``, ``protocol``,
``kind``) may be missing in older stores; everything here tolerates their absence.
Rows of kind ``"certify"`` (certified accuracy at a radius) never become robust columns:
they are decoded into :attr:`Run.certificates` and shown by
:mod:`robustlab.report.certificates` beside the attacks. Rows of kind ``"corruption"``
(accuracy per corruption and severity) and ``"detect"`` (a detector's AUROC per shift and
level) are decoded into :attr:`Run.corruptions` and :attr:`Run.detections` and shown by
:mod:`robustlab.report.corruption` and :mod:`robustlab.report.detection`; calibration
(``metrics["reliability"]``, ``extra["reliability"]`` of the rows) and per-class accuracy by
:mod:`robustlab.report.calibration`.
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


def robust_column(attack: str, norm: str, eps: float, n: int | None = None) -> str:
    """The table column of one robust evaluation, e.g. ``"pgd linf eps=0.1 (n=360)"``
    (``n``: the number of points attacked; without it the ``(n=...)`` part is left out)."""
    base = f"{attack} {norm} eps={eps_text(eps)}"
    return base if n is None else f"{base} (n={n})"


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
    """One robust evaluation of one run (a row of ``metrics["robust"]``).

    ``per_attack`` holds only the stages (no ``"clean"`` entry), in the order they ran
    when the row stores ``stages``; ``stage_order_known`` says whether it did (older
    stores kept ``per_attack`` alphabetical). ``clean_on_points`` is the clean accuracy
    on the attacked points (``per_attack["clean"]``), which differs from the run's clean
    accuracy when only a subset was attacked.
    """

    attack: str
    norm: str
    eps: float
    accuracy: float | None
    num_points: int | None
    flags: list[str] | None  # None: the evaluation carries no audit at all
    per_attack: dict[str, float | None] | None
    column: str = ""
    num_total: int | None = None
    point_set: str | None = None
    subset: int | None = None
    protocol: str | None = None
    stages: list[str] | None = None
    stage_order_known: bool = True
    clean_on_points: float | None = None
    kind: str = "attack"  # "certify": accuracy is certified accuracy at radius eps
    params: dict[str, Any] = field(default_factory=dict)
    lower: float | None = None  # certify: high-probability lower bound on the population's value
    per_class: list[float | None] | None = None  # accuracy per true class (None: class absent)
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific numbers (stored "extra")

    @property
    def all_points(self) -> bool:
        """Every point of the split was attacked (known only when both counts are stored)."""
        return self.num_points is not None and self.num_points == self.num_total


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
    suite: str | None = None
    is_evaluation: bool = False
    weights: str | None = None  # provenance of evaluated weights, in words
    noise_known: bool = True  # False: an evaluation of weights whose training is unknown
    num_test: int | None = None
    training_flags: list[str] = field(default_factory=list)
    certificates: list[RobustEval] = field(default_factory=list)  # rows of kind "certify"
    corruptions: list[RobustEval] = field(default_factory=list)  # rows of kind "corruption"
    detections: list[RobustEval] = field(default_factory=list)  # rows of kind "detect"
    corruption: dict[str, Any] | None = None  # metrics["corruption"] (corruption_summary)
    reliability: dict[str, Any] | None = None  # metrics["reliability"]: the clean reliability diagram
    per_class: list[float | None] | None = None  # metrics["per_class_accuracy"]: clean, per class

    @property
    def is_clean(self) -> bool:
        """Trained on clean labels (no noise model, or a zero noise rate), as far as known.

        False for an evaluation of weights whose training is not known."""
        if not self.noise_known:
            return False
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


def _int(v: Any) -> int | None:
    x = _num(v)
    return int(x) if x is not None and math.isfinite(x) else None


def _decode_robust(r: Mapping[str, Any], kind: str = "attack") -> RobustEval | None:
    """One ``metrics["robust"]`` row of ``kind`` (rows without a kind are attacks); None
    for rows of another kind or without a numeric eps."""
    if _num(r.get("eps")) is None or r.get("kind", "attack") != kind:
        return None
    stored = r.get("per_attack")
    stored = {str(k): _num(v) for k, v in stored.items()} if isinstance(stored, Mapping) else {}
    clean_on_points = stored.pop("clean", None)
    stages_raw = r.get("stages")
    stages = [str(s) for s in stages_raw] if isinstance(stages_raw, (list, tuple)) else None
    per_attack: dict[str, float | None] | None = None
    if stored:
        if stages:  # the run order; stages without a stored value and extra keys keep their place
            order = [s for s in stages if s in stored] + [k for k in stored if k not in stages]
            per_attack = {k: stored[k] for k in order}
        else:
            per_attack = dict(stored)
    subset = r.get("subset")
    return RobustEval(
        attack=str(r.get("attack", "?")),
        norm=str(r.get("norm", "?")),
        eps=float(r["eps"]),
        accuracy=_num(r.get("accuracy")),
        num_points=_int(r.get("num_points")),
        flags=_as_flags(r["flags"]) if "flags" in r else None,
        per_attack=per_attack,
        num_total=_int(r.get("num_total")),
        point_set=str(r["point_set"]) if r.get("point_set") else None,
        subset=_int(subset),
        protocol=str(r["protocol"]) if r.get("protocol") else None,
        stages=stages,
        stage_order_known=bool(stages) or len(stored) <= 1,
        clean_on_points=clean_on_points,
        kind=kind,
        params=dict(r["params"]) if isinstance(r.get("params"), Mapping) else {},
        lower=_num(_get(r, "extra", "lower")),
        per_class=_per_class(r.get("per_class")),
        extra=dict(r["extra"]) if isinstance(r.get("extra"), Mapping) else {},
    )


def _per_class(v: Any) -> list[float | None] | None:
    """A stored per-class list as floats (None entries kept); None when not a list."""
    if not isinstance(v, (list, tuple)):
        return None
    return [_num(x) for x in v]


def _rows_of(metrics: Mapping[str, Any], kind: str) -> list[RobustEval]:
    return [ev for r in metrics.get("robust") or [] if isinstance(r, Mapping)
            for ev in [_decode_robust(r, kind)] if ev is not None]


def noise_text(kind: Any, rate: Any) -> str:
    """``"symmetric 40% label noise"``; ``"clean labels"`` for no noise or a zero rate."""
    r = _num(rate)
    if kind is None or not r:
        return "clean labels"
    return f"{kind} {100 * r:g}% label noise"


def weights_text(metrics: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    """Where evaluated weights came from, in words, from ``metrics["provenance"]``:
    ``"weights of run ce/sym-0.4 (symmetric 40% label noise)"``, ``"weights of unknown
    origin"``, or (older stores without provenance) ``"weights 1a2b3c4d5e (provenance not
    recorded)"``."""
    prov = metrics.get("provenance")
    if not isinstance(prov, Mapping):
        sha = _get(cfg, "model", "weights_sha256")
        return f"weights {str(sha)[:10]} (provenance not recorded)" if sha else "weights (provenance not recorded)"
    run_id, run_name = prov.get("run_id"), prov.get("run_name")
    if not run_id and not run_name:
        return "weights of unknown origin"
    who = f"run {run_name}" if run_name else f"run {str(run_id)[:SHORT_ID]}"
    training = prov.get("training")
    if not isinstance(training, Mapping):
        return f"weights of {who} (training not recorded)"
    noise = training.get("noise") if isinstance(training.get("noise"), Mapping) else None
    return f"weights of {who} ({noise_text(noise.get('kind') if noise else None, noise.get('rate') if noise else 0)})"


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
        is_eval = cfg.get("kind") == "evaluation" or row.get("suite") == "evaluations"
        train_cfg: Mapping[str, Any] = cfg["train"] if isinstance(cfg.get("train"), Mapping) else {}
        noise_cfg = cfg.get("noise") if isinstance(cfg.get("noise"), Mapping) else None
        noise_known = True
        weights = None
        if is_eval:
            weights = weights_text(metrics, cfg)
            training = _get(metrics, "provenance", "training")
            if isinstance(training, Mapping):
                noise_cfg = training.get("noise") if isinstance(training.get("noise"), Mapping) else None
                train_cfg = {"objective": training.get("objective"), "loss": {"name": training.get("loss")}}
            else:
                noise_known, noise_cfg, train_cfg = False, None, {}
        noise_kind = noise_cfg.get("kind") if noise_cfg else None
        noise_rate = _num(noise_cfg.get("rate")) if noise_cfg else (0.0 if noise_known else None)
        flip_rate = _num(_get(metrics, "noise", "flip_rate"))
        if flip_rate is None and metrics and metrics.get("noise") is None and noise_cfg is None and not is_eval:
            flip_rate = 0.0  # a finished training run without a noise model flipped no label
        robust = _rows_of(metrics, "attack")
        certificates = _rows_of(metrics, "certify")
        history = [h for h in (metrics.get("history") or []) if isinstance(h, Mapping)]
        extra = {k: metrics[k] for k in OPTIONAL_METRIC_COLUMNS if metrics.get(k) is not None}
        if "best_epoch" not in extra and _get(metrics, "training", "best_epoch") is not None:
            extra["best_epoch"] = _get(metrics, "training", "best_epoch")
        name = str(row.get("name") or row.get("id") or "")
        dataset = _get(cfg, "data", "name")
        if is_eval and _get(cfg, "data", "split") not in (None, "test"):
            dataset = f"{dataset}/{_get(cfg, 'data', 'split')}"
        runs.append(
            Run(
                id=str(row.get("id") or ""),
                name=name,
                label=name,
                status=str(row.get("status") or "unknown"),
                dataset=dataset,
                model=_get(cfg, "model", "name") if not is_eval else
                (_get(metrics, "provenance", "training", "model") or _get(cfg, "model", "name")),
                objective=_with_params(train_cfg.get("objective"), train_cfg.get("objective_params"),
                                       train_cfg.get("objective_preset")),
                loss=_with_params(_get(train_cfg, "loss", "name"), _get(train_cfg, "loss", "params"),
                                  _get(train_cfg, "loss", "preset")),
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
                suite=str(row["suite"]) if row.get("suite") else None,
                is_evaluation=is_eval,
                weights=weights,
                noise_known=noise_known,
                num_test=_int(metrics.get("num_test")) if _int(metrics.get("num_test")) is not None
                else _int(_get(metrics, "data", "num_test")),
                training_flags=_as_flags(_get(metrics, "training", "flags")),
                certificates=certificates,
                corruptions=_rows_of(metrics, "corruption"),
                detections=_rows_of(metrics, "detect"),
                corruption=dict(metrics["corruption"]) if isinstance(metrics.get("corruption"), Mapping) else None,
                reliability=dict(metrics["reliability"]) if isinstance(metrics.get("reliability"), Mapping)
                else None,
                per_class=_per_class(metrics.get("per_class_accuracy")),
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
    """Name each evaluation's column; a repeat of the same attack/norm/eps/n in one run gets ``#2``."""
    for r in runs:
        seen: dict[str, int] = {}
        for ev in r.robust:
            base = robust_column(ev.attack, ev.norm, ev.eps, ev.num_points)
            seen[base] = seen.get(base, 0) + 1
            ev.column = base if seen[base] == 1 else f"{base} #{seen[base]}"


def robust_columns(runs: Sequence[Run]) -> list[str]:
    """Robust columns over all runs: grouped by (attack, norm) in order of first appearance,
    then by eps ascending, then by the number of points (descending; unknown last)."""
    groups: dict[tuple[str, str], dict[str, tuple[float, float, str]]] = {}
    for r in runs:
        for ev in r.robust:
            g = groups.setdefault((ev.attack, ev.norm), {})
            g.setdefault(ev.column, (ev.eps, -(ev.num_points if ev.num_points is not None else -1), ev.column))
    out: list[str] = []
    for g in groups.values():
        out.extend(col for *_, col in sorted(g.values()))
    return out


def robust_eval_of(run: Run, column: str) -> RobustEval | None:
    """The evaluation of ``run`` shown in robust ``column`` (None if the run has none)."""
    return next((ev for ev in run.robust if ev.column == column), None)


def columns_of(runs: Sequence[Run]) -> list[str]:
    """All table columns for these runs, in order."""
    optional = [c for c in OPTIONAL_METRIC_COLUMNS if any(c in r.extra for r in runs)]
    weights = ["weights"] if any(r.is_evaluation for r in runs) else []
    return [*BASE_COLUMNS, *robust_columns(runs), *weights, *optional, *TAIL_COLUMNS]


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
        "weights": run.weights,
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
    >>> results_table([r.to_dict() for r in store.list()])[0]["pgd linf eps=0.1 (n=360)"]
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
