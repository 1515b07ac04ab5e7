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
then, for runs that store them, (f) corruptions: per run a corruption x severity heatmap
table, the summary (mean corruption accuracy, mCE against the named baseline) and accuracy
vs severity per family, and a run x family comparison when several runs have them
(:mod:`robustlab.report.corruption`); (g) detectors: per run a table of AUROC / TNR at 95%
TPR per shift and detector, with a warning for detectors that only detect non-adaptive
attacks (:mod:`robustlab.report.detection`); (h) calibration and per-class accuracy:
reliability diagrams, ECE under shift, the disparity table and per-class accuracy vs eps
(:mod:`robustlab.report.calibration`); last, the stored config of every run. A suite of evaluations of saved weights gets only the
table, the robust plot, the breakdown and the certificates, and each of its runs is
labelled by where its weights came from.

The results table is described in :mod:`robustlab.report.view`: key columns (name,
clean and robust accuracy, each robust column with its attack, eps and n) first, the
columns that are the same for every run in a caption line above it, letters that mark
results measured on different points, and the best-epoch test accuracy marked optimistic.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from robustlab.report import calibration as calib
from robustlab.report import corruption as corr
from robustlab.report import detection as det
from robustlab.report._io import utc_now, write_text_atomic
from robustlab.report.certificates import CertificateView, certificate_views, explanation
from robustlab.report.table import (
    SHORT_ID,
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


def heat_colour(accuracy: float | None) -> tuple[str, str]:
    """(background, text colour) of a heatmap cell: matplotlib's viridis on the fixed range
    0..100% (so colours compare across runs), dark text on light cells and white on dark."""
    if accuracy is None or not math.isfinite(accuracy):
        return "#ffffff", "#1d1d1f"
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["viridis"](min(1.0, max(0.0, float(accuracy))))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * v) for v in (r, g, b))), (
        "#000000" if luminance > 0.45 else "#ffffff")


def _heat_cell(acc: float | None, what: str) -> dict[str, Any]:
    bg, fg = heat_colour(acc)
    return {"text": format_value("accuracy", acc), "what": what, "missing": acc is None,
            "style": f"background:{bg};color:{fg}"}


def _corruptions(views: Sequence[corr.CorruptionView], suffix: str) -> dict[str, Any] | None:
    """The template's data for the corruption section of one suite."""
    from markupsafe import Markup

    from robustlab.report import plots

    if not views:
        return None
    tables = []
    for i, v in enumerate(views):
        v.id = f"corruption{suffix}-{i + 1}"
        rows = []
        for fam, names in v.families.items():
            for j, c in enumerate(names):
                rows.append({
                    "corruption": c, "family": fam, "span": len(names) if j == 0 else 0,
                    "cells": [dict(_heat_cell(v.accuracy[c].get(s), str(s)), severity=s) for s in v.severities],
                    "mean": _heat_cell(v.row_mean[c], "mean"),
                })
        svg, reason = plots.corruption_plot(v, prefix=f"fig{suffix}-corruption-{i + 1}")
        tables.append({
            "id": v.id, "run": v.run.label, "run_id": v.run.id[:10], "weights": v.run.weights,
            "n": v.num_points, "summary": v.summary(), "severities": v.severities, "rows": rows,
            "families": [(f, format_value("accuracy", m)) for f, m in v.family_mean.items()],
            "plot_id": f"plot-corruption{suffix}-{i + 1}", "svg": Markup(svg) if svg else None, "reason": reason,
            "flags": v.flags,
        })
    comp = corr.comparison(views)
    compare = None
    if comp is not None:
        compare = {
            "families": comp.families, "mce": comp.any_mce, "baselines": comp.baselines,
            "rows": [{"run": v.run.label,
                      "families": [format_value("accuracy", means[f]) for f in comp.families],
                      "mean": format_value("accuracy", v.headline()[0])
                      + ("" if v.headline()[1] or v.headline()[0] is None else corr.PARTIAL_MARK),
                      "mce": format_value("accuracy", v.mce),
                      "clean": format_value("accuracy", v.clean_accuracy)} for v, means in comp.rows],
            "partial": any(not v.headline()[1] and v.headline()[0] is not None for v, _ in comp.rows),
        }
    lo, mid, hi = heat_colour(0.0)[0], heat_colour(0.5)[0], heat_colour(1.0)[0]
    return {"id": f"corruptions{suffix}", "explanation": corr.explanation(), "tables": tables,
            "compare": compare, "scale": f"background:linear-gradient(to right,{lo},{mid},{hi})"}


def _detections(views: Sequence[det.DetectionView], suffix: str) -> dict[str, Any] | None:
    """The template's data for the detection section of one suite."""
    if not views:
        return None
    tables = []
    for i, v in enumerate(views):
        v.id = f"detect{suffix}-{i + 1}"
        rows = []
        for r in v.rows:
            cells = []
            for d in v.detectors:
                c = v.cell(r, d)
                title = ", ".join(f"{k} {format_value('accuracy', x)}" for k, x in
                                  (("AUPR in", c.aupr_in), ("AUPR out", c.aupr_out), ("attack success", c.success))
                                  if x is not None)
                cells.append({"detector": d, "missing": c.auroc is None,
                              "auroc": format_value("accuracy", c.auroc), "tnr": format_value("accuracy", c.tnr),
                              "undetected": None if c.undetected is None else format_value("accuracy", c.undetected),
                              "title": title})
            n = (f"{r.num_in} / {r.num_out}" if r.num_in is not None and r.num_out is not None else "—")
            rows.append({"shift": r.shift, "level": repr(r.level), "label": r.label(), "adaptive": r.adaptive,
                         "attack": r.attack, "n": n, "cells": cells})
        tables.append({"id": v.id, "run": v.run.label, "run_id": v.run.id[:10], "weights": v.run.weights,
                       "detectors": v.detectors, "rows": rows, "warnings": v.warnings, "flags": v.flags,
                       "attack": v.any_attack})
    return {"id": f"detect{suffix}", "explanation": det.explanation(views), "tables": tables}


def _calibration(views: Sequence[calib.CalibrationView], suffix: str) -> dict[str, Any] | None:
    """The template's data for the calibration and per-class section of one suite."""
    from markupsafe import Markup

    from robustlab.report import plots

    if not views:
        return None
    out = []
    for i, v in enumerate(views):
        v.id = f"calibration{suffix}-{i + 1}"
        rel, rel_reason = plots.reliability_plot(v, prefix=f"fig{suffix}-reliability-{i + 1}")
        pc, pc_reason = plots.per_class_plot(v, prefix=f"fig{suffix}-per-class-{i + 1}")
        out.append({
            "id": v.id, "run": v.run.label, "run_id": v.run.id[:10], "ece": calib.ece_text(v),
            "reliability": Markup(rel) if rel else None, "reliability_reason": rel_reason,
            "per_class": Markup(pc) if pc else None, "per_class_reason": pc_reason,
            "attack": " ".join(v.attack) if v.attack else None,
            "disparity": [{"what": d.what, "kind": d.kind, "mean": format_value("accuracy", d.mean),
                           "worst": format_value("accuracy", d.worst),
                           "worst_class": "—" if d.worst_class is None else str(d.worst_class),
                           "best": format_value("accuracy", d.best), "gap": format_value("accuracy", d.gap),
                           "std": format_value("accuracy", d.std)} for d in v.disparity],
        })
    return {"id": f"calibration{suffix}", "explanation": calib.EXPLANATION, "runs": out}


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
        "corruptions": _corruptions(corr.corruption_views(members), suffix),
        "detect": _detections(det.detection_views(members), suffix),
        "calibration": _calibration(calib.calibration_views(members), suffix),
        "transfer": _transfers(members, suffix),
    }


def _transfers(members: Sequence[Run], suffix: str) -> list[dict[str, Any]]:
    """The stored transfer matrices of ``members`` (``metrics["transfer"]``, written by
    ``robustlab transfer``) as escaped HTML fragments, one per run."""
    from markupsafe import Markup

    from robustlab.report.transfer import transfer_html

    out = []
    for i, r in enumerate(members):
        matrix = (r.row.get("metrics") or {}).get("transfer")
        if isinstance(matrix, dict):
            out.append({"id": f"transfer{suffix}-{i + 1}", "run": r.label, "run_id": r.id[:SHORT_ID],
                        "html": Markup(transfer_html(matrix))})  # every text escaped by transfer_html
    return out


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
