"""The offline HTML report: one self-contained file (inline CSS and SVG, no scripts, no
external resources), rendered from ``templates/report.html`` with Jinja2 autoescaping.

Sections, top to bottom: the audit flags of every robust evaluation (and failed
runs), the notes (data provenance, protocol), the results table, (a) accuracy vs
label-noise rate, (b) robust accuracy vs eps, (c) training curves, (e) the per-attack
breakdown of ensemble evaluations, and the stored config of every run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from robustlab.report._io import utc_now, write_text_atomic
from robustlab.report.table import (
    Run,
    columns_of,
    eps_text,
    format_value,
    is_percent_column,
    normalize_rows,
    table_row,
)

TEMPLATE = "report.html"


def _template() -> Any:
    from importlib.resources import files

    import jinja2

    text = (files("robustlab.report") / "templates" / TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    return env.from_string(text)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _audit(runs: Sequence[Run]) -> dict[str, Any]:
    """Flagged evaluations, and whether any evaluation carried an audit at all."""
    flagged, audited, evaluations = [], 0, 0
    for r in runs:
        for ev in r.robust:
            evaluations += 1
            if ev.flags is None:
                continue
            audited += 1
            if ev.flags:
                flagged.append({"run": r.label, "id": r.id[:10], "evaluation": ev.column, "flags": ev.flags})
    return {"flagged": flagged, "audited": audited, "evaluations": evaluations}


def _per_attack(runs: Sequence[Run]) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        for ev in r.robust:
            if not ev.per_attack:
                continue
            out.append(
                {
                    "run": r.label,
                    "attack": ev.attack,
                    "norm": ev.norm,
                    "eps": eps_text(ev.eps),
                    "num_points": "\u2014" if ev.num_points is None else str(ev.num_points),
                    "clean": format_value("accuracy", r.clean_accuracy),
                    "stages": [(k, format_value("accuracy", v)) for k, v in ev.per_attack.items()],
                    "final": format_value("accuracy", ev.accuracy),
                }
            )
    return out


def _provenance(runs: Sequence[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for r in runs:
        v = r.row.get("versions") or {}
        if not isinstance(v, dict):
            continue
        parts = [f"{k} {v[k]}" for k in ("robustlab", "torch", "numpy", "python") if v.get(k)]
        sha = r.row.get("git_sha")
        if sha:
            parts.append(f"git {str(sha)[:12]}")
        if v.get("platform"):
            parts.append(str(v["platform"]))
        if parts:
            seen.setdefault(", ".join(parts), None)
    return list(seen)


def _details(r: Run) -> dict[str, Any]:
    row = r.row
    return {
        "label": r.label,
        "id": r.id,
        "status": r.status,
        "attempts": row.get("attempts"),
        "created_at": row.get("created_at"),
        "finished_at": row.get("finished_at"),
        "suite": row.get("suite"),
        "error": (r.error or "").strip(),
        "config": json.dumps(row.get("config"), indent=2, sort_keys=True, default=str),
        "data": json.dumps((row.get("metrics") or {}).get("data"), indent=2, sort_keys=True, default=str)
        if isinstance(row.get("metrics"), dict) and (row.get("metrics") or {}).get("data") is not None
        else "",
    }


def render_report(rows: Sequence[Any], *, title: str = "robustlab report", notes: Iterable[str] = ()) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    from robustlab import __version__
    from robustlab.report import plots

    runs = normalize_rows(rows)
    cols = columns_of(runs)
    table = []
    for r in runs:
        flat = table_row(r, cols)
        cells = [
            {"text": format_value(c, flat[c]), "num": c not in ("id", "name", "status", "dataset", "model",
                                                                  "objective", "loss", "noise kind")}
            for c in cols
        ]
        table.append({"status": r.status, "cells": cells})
    figures = []
    for key, heading, caption, fn in (
        ("noise", "Accuracy vs label-noise rate",
         "Clean test accuracy of each (model, objective, loss, noise kind) group against the rate of "
         "label noise in the training labels; a line joins the mean at each rate, markers are runs.",
         plots.noise_plot),
        ("robust", "Robust accuracy vs eps",
         "Robust test accuracy against the perturbation budget, one panel per norm and one line per run "
         "and attack; eps = 0 is the run's clean accuracy.",
         plots.robust_plot),
        ("history", "Training curves",
         "Every per-epoch metric a run recorded (one panel per metric, one line per run); accuracies in %.",
         plots.history_plot),
    ):
        svg, reason = fn(runs, prefix=f"fig-{key}")
        figures.append({"key": key, "heading": heading, "caption": caption, "svg": svg, "reason": reason})
    from markupsafe import Markup

    for f in figures:
        f["svg"] = Markup(f["svg"]) if f["svg"] else None  # matplotlib escapes all text it writes
    status_counts: dict[str, int] = {}
    for r in runs:
        status_counts[r.status] = status_counts.get(r.status, 0) + 1
    return _template().render(
        title=title,
        generated_at=utc_now(),
        version=__version__,
        num_runs=len(runs),
        status_counts=status_counts,
        audit=_audit(runs),
        failed=[{"label": r.label, "id": r.id[:10], "status": r.status, "error": _first_line(r.error)}
                for r in runs if r.status != "done"],
        notes=[str(n) for n in notes if str(n).strip()],
        provenance=_provenance(runs),
        columns=[{"name": c, "percent": is_percent_column(c)} for c in cols],
        table=table,
        figures=figures,
        per_attack=_per_attack(runs),
        details=[_details(r) for r in runs],
    )


def write_report(
    rows: Sequence[Any],
    path: str | os.PathLike[str],
    *,
    title: str = "robustlab report",
    notes: Iterable[str] = (),
) -> Path:
    """Write one self-contained offline HTML report of ``rows`` to ``path``.

    ``rows``: ``RunRecord.to_dict()`` dicts (e.g. ``[r.to_dict() for r in store.list()]``).
    ``notes``: lines of provenance and protocol shown under the title. The page holds
    the audit flags of every robust evaluation at the top, the results table (see
    :func:`~robustlab.report.results_table`), the plots as inline SVG and each run's
    config; it has no scripts and loads nothing from the network. All user text is
    HTML-escaped. The file is rendered completely first and then replaced atomically,
    so a failure leaves an existing report untouched.

    >>> from robustlab.report import write_report
    >>> write_report([r.to_dict() for r in store.list()], "report.html", title="digits", notes=["..."])
    """
    html = render_report(rows, title=title, notes=notes)
    return write_text_atomic(path, html)
