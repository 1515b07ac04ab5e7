"""The offline HTML report: one self-contained file (inline CSS and SVG, no scripts, no
external resources), rendered from ``templates/report.html`` with Jinja2 autoescaping.

Top to bottom: the flags (training flags and the audit flags of every robust
evaluation) and unfinished runs, the notes (data provenance, protocol), then one section
per suite (one section when all runs share a suite) with its results table, (a)
accuracy vs label-noise rate, (b) robust accuracy vs eps, (c) training curves and (e)
the per-attack breakdown of ensemble evaluations (in the order the stages ran) and (d)
certificates beside attacks: for every run with rows of kind ``certify``, a table of
certified accuracy per radius and setting beside the attacks on the base model at the
same radii (:mod:`robustlab.report.certificates`) and one plot with a panel per run;
last, the stored config of every run. A suite of evaluations of saved weights gets only the
table, the robust plot, the breakdown and the certificates, and each of its runs is
labelled by where its weights came from.

The results table is described in :mod:`robustlab.report.view`: key columns (name,
clean and robust accuracy, each robust column with its attack, eps and n) first, the
columns that are the same for every run in a caption line above it, letters that mark
results measured on different points, and the best-epoch test accuracy marked optimistic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from robustlab.report._io import utc_now, write_text_atomic
from robustlab.report.certificates import CertificateView, certificate_views, explanation
from robustlab.report.table import (
    Run,
    eps_text,
    format_value,
    normalize_rows,
)
from robustlab.report.view import MIXED, TableView, suite_groups, table_view

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
    """Training flags and flagged evaluations (training flags first), and whether any
    evaluation carried an audit at all."""
    flagged: list[dict[str, Any]] = []
    audited = evaluations = 0
    for r in runs:
        if r.training_flags:
            flagged.append({"run": r.label, "id": r.id[:10], "what": "training", "flags": r.training_flags})
    training = len(flagged)
    for r in runs:
        for ev in r.robust:
            evaluations += 1
            if ev.flags is None:
                continue
            audited += 1
            if ev.flags:
                flagged.append({"run": r.label, "id": r.id[:10], "what": ev.column, "flags": ev.flags})
    return {"flagged": flagged, "training": training, "evaluations_flagged": len(flagged) - training,
            "audited": audited, "evaluations": evaluations}


def _per_attack(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Rows of the per-attack breakdown: ensembles (two or more stages) only."""
    out = []
    for r in runs:
        for ev in r.robust:
            if not ev.per_attack or (len(ev.per_attack) < 2 and ev.per_attack.keys() <= {ev.attack}):
                continue
            clean = ev.clean_on_points if ev.clean_on_points is not None else r.clean_accuracy
            out.append(
                {
                    "run": r.label,
                    "attack": ev.attack,
                    "norm": ev.norm,
                    "eps": eps_text(ev.eps),
                    "num_points": "\u2014" if ev.num_points is None else str(ev.num_points),
                    "clean": format_value("accuracy", clean),
                    "stages": [(k, format_value("accuracy", v)) for k, v in ev.per_attack.items()],
                    "order_known": ev.stage_order_known,
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
        "weights": r.weights,
        "error": (r.error or "").strip(),
        "config": json.dumps(row.get("config"), indent=2, sort_keys=True, default=str),
        "data": json.dumps((row.get("metrics") or {}).get("data"), indent=2, sort_keys=True, default=str)
        if isinstance(row.get("metrics"), dict) and (row.get("metrics") or {}).get("data") is not None
        else "",
    }


def _header_html(lines: Sequence[str]) -> Any:
    from markupsafe import Markup, escape

    return Markup("<br>").join(escape(line.replace("eps=", "\u03b5=")) for line in lines)


def _table(view: TableView, certified: dict[str, str] | None = None) -> dict[str, Any]:
    """The template's data for one results table (``certified``: run id -> the anchor of
    its certificates, named under the run's name)."""
    certified = certified or {}
    columns = [
        {"id": c.id, "header": _header_html(c.lines), "title": c.title, "key": c.key, "numeric": c.numeric,
         "mark": c.mark, "note": c.note, "name": c.id == "name"}
        for c in view.columns
    ]
    rows = []
    for rv in view.rows:
        cells = []
        for c in view.columns:
            cell = rv.cells[c.id]
            cells.append({"text": cell.text, "mark": cell.mark, "numeric": c.numeric, "key": c.key,
                          "name": c.id == "name",
                          "sub": rv.run.weights if c.id == "name" and rv.run.is_evaluation else None,
                          "certified": certified.get(rv.run.id) if c.id == "name" else None})
        rows.append({"status": rv.run.status, "cells": cells})
    return {
        "columns": columns,
        "rows": rows,
        "constants": view.constants,
        "point_note": view.point_note,
        "footnotes": view.footnotes,
        "mixed": MIXED,
    }


_FIGURES = (
    ("noise", "Accuracy vs label-noise rate",
     "Clean test accuracy of each (model, objective, loss, noise kind) group against the rate of "
     "label noise in the training labels; a line joins the mean at each rate, small dots are runs. "
     "Evaluations of saved weights are not drawn here."),
    ("robust", "Robust accuracy vs eps",
     "Robust accuracy against the perturbation budget, one panel per norm and one line per run, "
     "attack and number of attacked points n (each with its own colour, line style and marker); "
     "eps = 0 is the clean accuracy on the same points."),
    ("history", "Training curves",
     "Every per-epoch metric a run recorded (one panel per metric, one line per run, named in the "
     "legend); accuracies in %. test_accuracy is watched per epoch, never used for decisions."),
)


def _certificates(views: Sequence[CertificateView]) -> list[dict[str, Any]]:
    """The template's data for the certificate tables of one section."""
    out = []
    for v in views:
        columns = [{"id": c.id, "kind": c.kind, "header": _header_html(c.lines), "title": c.title, "mark": c.mark}
                   for c in v.columns]
        rows = []
        for r in v.radii:
            cells = []
            for c in v.columns:
                cell = v.cell(c.id, r)
                cells.append({"col": c.id, "kind": c.kind, "missing": cell.accuracy is None,
                              "acc": format_value("accuracy", cell.accuracy), "clean": cell.clean,
                              "lower": None if cell.lower is None else format_value("accuracy", cell.lower),
                              "mark": cell.mark})
            rows.append({"radius": repr(r), "text": eps_text(r), "cells": cells})
        out.append({"id": v.id, "run": v.run.label, "run_id": v.run.id[:10], "norm": v.norm,
                    "weights": v.run.weights, "columns": columns, "rows": rows,
                    "settings": v.settings,
                    "point_note": v.point_note, "same_points": v.same_points, "flags": v.flags})
    return out


def _section(index: int, suite: str | None, members: list[Run], multi: bool) -> dict[str, Any]:
    from markupsafe import Markup

    from robustlab.report import plots

    fns = {"noise": plots.noise_plot, "robust": plots.robust_plot, "history": plots.history_plot}
    evaluations_only = all(r.is_evaluation for r in members)
    suffix = f"-{index + 1}" if multi else ""
    figures = []
    for key, heading, caption in _FIGURES:
        if evaluations_only and key != "robust":
            continue
        svg, reason = fns[key](members, prefix=f"fig{suffix}-{key}")
        figures.append({"key": key, "id": f"plot-{key}{suffix}", "heading": heading, "caption": caption,
                        "svg": Markup(svg) if svg else None,  # matplotlib escapes all text it writes
                        "reason": reason})
    if suite is None:
        heading = "Runs without a suite"
    elif evaluations_only:
        heading = f"Suite {suite}: evaluations of saved weights"
    else:
        heading = f"Suite {suite}"
    view = table_view(members, suite=suite)
    certs = certificate_views(members, view)
    anchors: dict[str, str] = {}
    for i, cv in enumerate(certs):
        cv.id = f"certify{suffix}-{i + 1}"
        anchors.setdefault(cv.run.id, cv.id)
    certify = None
    if certs:
        svg, reason = plots.certify_plot(certs, prefix=f"fig{suffix}-certify")
        certify = {"id": f"certify{suffix}", "plot_id": f"plot-certify{suffix}", "explanation": explanation(certs),
                   "tables": _certificates(certs), "svg": Markup(svg) if svg else None, "reason": reason}
    return {
        "id": f"suite{suffix}" if multi else "",
        "results_id": f"results{suffix}",
        "per_attack_id": f"per-attack{suffix}",
        "heading": heading,
        "num_runs": len(members),
        "table": _table(view, anchors),
        "figures": figures,
        "per_attack": _per_attack(members),
        "certify": certify,
    }


def render_report(rows: Sequence[Any], *, title: str = "robustlab report", notes: Iterable[str] = ()) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    from robustlab import __version__

    runs = normalize_rows(rows)
    groups = suite_groups(runs)
    multi = len(groups) > 1
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
        multi=multi,
        sections=[_section(i, suite, members, multi) for i, (suite, members) in enumerate(groups)],
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
