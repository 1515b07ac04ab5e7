"""The results as plain text for a terminal or a log: :func:`text_table`.

It shows the same table as the HTML report (:mod:`robustlab.report.view`) in fewer
columns, and never cuts a run name, a header or a number to make it fit. Three layouts,
the first that fits ``width`` wins:

1. one table with full headers (run, clean, one column per robust evaluation with its
   attack, eps and n), plus as many of label noise, flipped labels and ECE as fit;
2. the same table with numbered robust columns (``[1]``, ``[2]``, ...) and a legend
   under it that names each one in full;
3. one block per run: its name on a line of its own, then its clean accuracy and one
   line per attack with every eps and robust accuracy (wrapped at word boundaries).

Captions (values the same for every run, what the point-set letters mean), the
provenance of evaluated weights and the flags follow, wrapped to ``width``. Every run
with certificates (rows of kind ``certify``) then gets a *certificates* block: certified
accuracy per radius and setting beside the attacks on the base model at the same radii
(:mod:`robustlab.report.certificates`, the same numbers as the HTML report), as a
table of radii x columns when it fits ``width``, else one line per column. Every run with
corruption rows gets a *corruptions* block (:func:`corruption_text`: the summary line, the
corruption x severity table and the family means; a run x family comparison when several
runs have them), and every run with detect rows a *detectors* block (:func:`detection_text`:
AUROC / TNR at 95% TPR per shift and detector and the non-adaptive-only warnings). Pure
Python and no matplotlib or terminal library; the corruption block imports the corruption
names from :mod:`robustlab.corruptions.base` (torch) when a run has corruption rows.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from robustlab.report import corruption as corr
from robustlab.report import detection as det
from robustlab.report.certificates import (
    CertificateView,
    ascii_text,
    certificate_views,
    explanation,
)
from robustlab.report.table import Run, eps_text, format_value, normalize_rows
from robustlab.report.view import MIXED, Column, TableView, suite_groups, table_view

MIN_WIDTH = 20
"""Narrower widths are treated as this one."""

SEP = "  "
EXTRA_COLUMNS: tuple[str, ...] = ("corruption_accuracy", "noise", "flip_rate", "ece")
"""Descriptive columns the text table shows when they fit, in this order of priority."""


@dataclass
class _Col:
    header: list[str]
    cells: list[str]
    left: bool = False

    @property
    def width(self) -> int:
        return max([len(h) for h in self.header] + [len(c) for c in self.cells])


NBSP = "\u00a0"
"""Joins words that must stay on one line (``eps=0.1 53.3``); printed as a space."""


def _wrap(text: str, width: int, indent: str = "", subsequent: str | None = None) -> list[str]:
    """``text`` wrapped at spaces (words joined by :data:`NBSP` stay together unless they
    alone are wider than ``width``)."""
    rest = indent + "  " if subsequent is None else subsequent
    lines = textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=rest,
                          break_long_words=True, break_on_hyphens=False)
    out = []
    for i, line in enumerate(lines):
        prefix = indent if i == 0 else rest
        out.append(prefix + line[len(prefix):].lstrip(NBSP).replace(NBSP, " "))
    return out or [""]


def _mark(mark: str | None) -> str:
    return f"[{mark}]" if mark else ""


def _cell_text(view_cell: Any) -> str:
    text = view_cell.text.replace("\u2014", "-").replace(corr.PARTIAL_MARK, "+")
    return text + _mark(view_cell.mark)


def _name(r: Run) -> str:
    return r.label if r.status == "done" else f"{r.label} ({r.status})"


def _robust_header(c: Column, show_norm: bool) -> list[str]:
    rb = c.robust
    assert rb is not None
    lines = [rb.attack] + ([rb.norm] if show_norm else []) + [f"eps={eps_text(rb.eps)}"]
    tail = [f"n={rb.num_points}"] if rb.num_points is not None else []
    if len(c.lines) > (3 if rb.num_points is not None else 2):  # a repeated measurement: "#2"
        tail.append(c.lines[-1])
    if c.mark:
        tail.append("[mixed]" if c.mark == MIXED else f"[{c.mark}]")
    return lines + ([" ".join(tail)] if tail else [])


def _render(cols: list[_Col]) -> list[str]:
    widths = [c.width for c in cols]
    height = max(len(c.header) for c in cols)
    lines = []
    for i in range(height):
        parts = []
        for c, w in zip(cols, widths):
            h = ([""] * (height - len(c.header)) + c.header)[i]
            parts.append(h.ljust(w) if c.left else h.rjust(w))
        lines.append(SEP.join(parts).rstrip())
    lines.append(SEP.join("-" * w for w in widths))
    for j in range(len(cols[0].cells)):
        lines.append(SEP.join(c.cells[j].ljust(w) if c.left else c.cells[j].rjust(w)
                              for c, w in zip(cols, widths)).rstrip())
    return lines


def _total(cols: list[_Col]) -> int:
    return sum(c.width for c in cols) + len(SEP) * (len(cols) - 1)


def _table_layout(view: TableView, width: int, numbered: bool) -> tuple[list[str], list[str]] | None:
    """(table lines, legend lines) of layout 1 or 2, or None when it does not fit."""
    robust = view.robust_columns
    show_norm = len({c.robust.norm for c in robust if c.robust}) > 1
    name = _Col(["run"], [_name(rv.run) for rv in view.rows], left=True)
    clean_col = next(c for c in view.columns if c.id == "clean_accuracy")
    clean = _Col(["clean"] + [line for line in clean_col.lines[1:]]
                 + ([_mark(clean_col.mark)] if clean_col.mark else []),
                 [_cell_text(rv.cells["clean_accuracy"]) for rv in view.rows])
    cols = [name, clean]
    legend = []
    for i, c in enumerate(robust, 1):
        header = [f"[{i}]"] if numbered else _robust_header(c, show_norm)
        cols.append(_Col(header, [_cell_text(rv.cells[c.id]) for rv in view.rows]))
        if numbered:
            legend.append(f"[{i}] " + " ".join(_robust_header(c, True)))
    if _total(cols) > width:
        return None
    for cid in EXTRA_COLUMNS:
        spec = next((c for c in view.columns if c.id == cid), None)
        if spec is None:
            continue
        extra = _Col(spec.lines, [_cell_text(rv.cells[cid]) for rv in view.rows], left=not spec.numeric)
        if _total([*cols, extra]) <= width:
            cols.append(extra)
    return _render(cols), legend


def _blocks(view: TableView, width: int) -> list[str]:
    lines: list[str] = []
    ind = "    " if width >= 40 else "  "
    clean_col = next(c for c in view.columns if c.id == "clean_accuracy")
    for rv in view.rows:
        r = rv.run
        if lines:
            lines.append("")
        lines.extend(_wrap(_name(r), width, subsequent=""))
        if r.weights:
            lines.extend(_wrap(r.weights, width, ind))
        if r.status != "done":
            first = (r.error or "").strip().splitlines()
            lines.extend(_wrap(f"{r.status}" + (f": {first[0]}" if first else ""), width, ind))
            continue
        clean = rv.cells["clean_accuracy"]
        parts = [f"clean{NBSP}{clean.text.replace(chr(0x2014), '-')}"
                 + (f" ({clean_col.lines[1]})" if len(clean_col.lines) > 1 else "")
                 + (f" [{clean_col.mark}]" if clean_col.mark else "")]
        for cid in EXTRA_COLUMNS:
            c = next((c for c in view.columns if c.id == cid), None)
            if c is not None:
                parts.append(f"{c.title.replace(' (%)', '')}{NBSP}{_cell_text(rv.cells[cid]).replace(' ', NBSP)}")
        lines.extend(_wrap("; ".join(parts), width, ind))
        groups: dict[str, list[str]] = {}
        for c in view.robust_columns:
            rb = c.robust
            assert rb is not None
            cell = rv.cells[c.id]
            if cell.text == "\u2014":
                continue
            mark = cell.mark or (c.mark if c.mark != MIXED else None)
            head = f"{rb.attack} {rb.norm}" + (f" (n={rb.num_points})" if rb.num_points is not None else "") \
                + (f" [{mark}]" if mark else "")
            repeat = f" {c.lines[-1]}" if c.lines[-1].startswith("#") else ""
            groups.setdefault(head, []).append(f"eps={eps_text(rb.eps)}{repeat}{NBSP}{_cell_text(cell)}")
        for head, items in groups.items():
            lines.extend(_wrap(f"{head}: " + ", ".join(items), width, ind))
    return lines


def _view_lines(view: TableView, width: int) -> list[str]:
    out: list[str] = []
    caption = "Accuracies in %."
    norms = {c.robust.norm for c in view.robust_columns if c.robust}
    if norms:
        caption = "Accuracies in %; robust columns name the attack, eps and n (points attacked)" + (
            f", all under the {next(iter(norms))} norm." if len(norms) == 1 else ".")
    out.extend(_wrap(caption, width, subsequent=""))
    if view.constants:
        out.extend(_wrap("Same for every run: " + "; ".join(f"{k} {v}" for k, v in view.constants) + ".",
                         width, subsequent=""))
    if view.point_note:
        out.extend(_wrap(view.point_note, width, subsequent=""))
    out.append("")
    table = _table_layout(view, width, numbered=False) or _table_layout(view, width, numbered=True)
    if table is not None:
        lines, legend = table
        out.extend(lines)
        for entry in legend:
            out.extend(_wrap(entry, width, subsequent="    "))
    else:
        out.extend(_blocks(view, width))
    if any(rv.cells.get("corruption_accuracy") and corr.PARTIAL_MARK in rv.cells["corruption_accuracy"].text
           for rv in view.rows):
        out.extend(_wrap(_ascii(view_note(view)), width, subsequent="  "))
    evaluated = [rv.run for rv in view.rows if rv.run.weights]
    if evaluated and table is not None:  # (the blocks name the weights under each run)
        out.append("")
        for r in evaluated:
            out.extend(_wrap(f"{r.label}: {r.weights}", width))
    return out


def _certificate_cell(view: CertificateView, column: str, radius: float) -> str:
    cell = view.cell(column, radius)
    if cell.accuracy is None:
        return "-"
    return ascii_text(cell.text()) + (" (clean)" if cell.clean else "") + _mark(cell.mark)


def certificate_lines(view: CertificateView, width: int = 80) -> list[str]:
    """One run's certificates beside its attacks as text lines of at most ``width``
    characters (a table of radii x columns, or one line per column when the table is
    wider)."""
    r = view.run
    out = _wrap(f"Certificates of {r.label} ({view.norm}), accuracies in %:", width, subsequent="  ")
    if r.weights:
        out.extend(_wrap(r.weights, width, "  "))
    note = view.point_note or view.same_points
    if note:
        out.extend(_wrap(ascii_text(note), width, "  ", "  "))
    radius = _Col([view.norm, "radius"], [eps_text(rad) for rad in view.radii], left=True)
    cols = [radius]
    for c in view.columns:
        head = ([*c.name.split(" ", 1)] if c.kind == "certify" else
                [c.name, "attack"] if c.kind == "attack" else ["base model", "clean"])
        tail = " ".join(([f"n={c.num_points}"] if c.num_points is not None else [])
                        + ([f"[{c.mark}]"] if c.mark else []))
        cols.append(_Col([ascii_text(h) for h in head] + ([tail] if tail else []),
                         [_certificate_cell(view, c.id, rad) for rad in view.radii]))
    if _total(cols) + 2 <= width:
        out.extend("  " + line for line in _render(cols))
    else:
        for c, col in zip(view.columns, cols[1:]):
            items = [f"r={eps_text(rad)}{NBSP}{_certificate_cell(view, c.id, rad).replace(' ', NBSP)}"
                     for rad in view.radii if view.cell(c.id, rad).accuracy is not None]
            out.extend(_wrap(" ".join(col.header) + ": " + ", ".join(items), width, "  ", "      "))
    for line in view.settings:
        out.extend(_wrap(ascii_text(line), width, "  ", "    "))
    for f in view.flags:
        out.extend(_wrap(f"! {ascii_text(f)}", width, "  ", "      "))
    return out


def _certificate_block(views: Sequence[CertificateView], width: int) -> list[str]:
    if not views:
        return []
    out = ["", *_wrap(explanation(views, plain=True), width, subsequent="")]
    for v in views:
        out.append("")
        out.extend(certificate_lines(v, width))
    return out


def _flag_lines(runs: Sequence[Run], width: int) -> list[str]:
    entries = [(r.label, "training", f) for r in runs for f in r.training_flags]
    entries += [(r.label, ev.column, f) for r in runs for ev in r.robust for f in (ev.flags or [])]
    if not entries:
        return []
    out = ["", *_wrap("Flags (read them before trusting the numbers):", width, subsequent="")]
    for label, what, flag in entries:
        out.extend(_wrap(f"! {label}, {what}: {flag}", width, subsequent="    "))
    return out


def text_table(rows: Sequence[Any], width: int = 80, *, flags: bool = True) -> str:
    """The results as plain text whose every line is at most ``width`` characters.

    ``rows``: ``RunRecord.to_dict()`` dicts (as for :func:`~robustlab.report.results_table`).
    Run names, headers and numbers are never cut: when one table does not fit, the robust
    columns are numbered with a legend, and when that does not fit either, each run gets a
    block of its own (see the module docstring). Runs of several suites get one part per
    suite. With ``flags`` the training flags and audit flags are listed at the end.
    Widths below :data:`MIN_WIDTH` are treated as ``MIN_WIDTH``; a CLI whose output is not
    a terminal should pass 80.

    >>> print(text_table([r.to_dict() for r in store.list()], width=80))
    """
    width = max(int(width), MIN_WIDTH)
    runs = normalize_rows(rows)
    if not runs:
        return "(no runs)"
    groups = suite_groups(runs)
    out: list[str] = []
    for suite, members in groups:
        if len(groups) > 1:
            if out:
                out.append("")
            evaluations = all(r.is_evaluation for r in members)
            head = f"== suite {suite}" + (": evaluations of saved weights" if evaluations else "") \
                + f" ({len(members)} run{'' if len(members) == 1 else 's'}) =="
            out.extend(_wrap(head, width, subsequent=""))
        view = table_view(members, suite=suite)
        out.extend(_view_lines(view, width))
        out.extend(_certificate_block(certificate_views(members, view), width))
        out.extend(_corruption_block(corr.corruption_views(members), width))
        out.extend(_detection_block(det.detection_views(members), width))
    if flags:
        out.extend(_flag_lines(runs, width))
    return "\n".join(line.rstrip() for line in out)



def certificate_text(rows: Sequence[Any], width: int = 80) -> str:
    """The certificates of stored runs beside their attacks, as text (what ``robustlab
    certify`` prints): the explanation, then one table of radii per run with
    certificates (the same block :func:`text_table` ends each suite with)."""
    runs = normalize_rows(rows)
    lines = _certificate_block(certificate_views(runs), max(int(width), MIN_WIDTH))
    return "\n".join(line.rstrip() for line in lines).strip("\n") or "no certificates"


# -- corruptions and detectors ------------------------------------------------------------------
def _ascii(text: str) -> str:
    for k, v in (("\u2014", "-"), ("\u00d7", "x"), ("\u03b5", "eps"), ("\u2212", "-"),
                 (corr.PARTIAL_MARK, "+")):
        text = text.replace(k, v)
    return ascii_text(text)


def view_note(view: TableView) -> str:
    """The footnote of a partial mean corruption accuracy, as the table view words it."""
    return next(n for n in view.footnotes if n.startswith(corr.PARTIAL_MARK))


def _pct(v: float | None) -> str:
    return format_value("accuracy", v).replace("\u2014", "-")


def corruption_lines(view: corr.CorruptionView, width: int = 80) -> list[str]:
    """One run's corruptions as text lines of at most ``width`` characters: the summary
    line, a corruption x severity table (one line per corruption with its family, the
    accuracy at each severity and the row mean; or, when that is wider than ``width``,
    one wrapped line per corruption) and the family means."""
    r = view.run
    n = f", n={view.num_points}" if view.num_points is not None else ""
    out = _wrap(f"Corruptions of {r.label} (accuracy in %{n}):", width, subsequent="  ")
    if r.weights:
        out.extend(_wrap(r.weights, width, "  "))
    out.extend(_wrap(view.summary(plain=True), width, "  ", "  "))
    cols = [_Col(["corruption"], list(view.corruptions), left=True),
            _Col(["family"], [view.family_of[c] for c in view.corruptions], left=True)]
    for s_ in view.severities:
        cols.append(_Col([f"s{s_}"], [_pct(view.accuracy[c].get(s_)) for c in view.corruptions]))
    cols.append(_Col(["mean"], [_pct(view.row_mean[c]) for c in view.corruptions]))
    if _total(cols) + 2 <= width:
        out.extend("  " + line for line in _render(cols))
    else:
        for c in view.corruptions:
            items = [f"s{s_}{NBSP}{_pct(a)}" for s_ in view.severities for a in [view.accuracy[c].get(s_)]
                     if a is not None]
            out.extend(_wrap(f"{c} ({view.family_of[c]}): " + ", ".join(items)
                             + f", mean{NBSP}{_pct(view.row_mean[c])}", width, "  ", "      "))
    out.extend(_wrap("family means: " + ", ".join(f"{f}{NBSP}{_pct(m)}" for f, m in view.family_mean.items()),
                     width, "  ", "    "))
    for f in view.flags:
        out.extend(_wrap(f"! {_ascii(f)}", width, "  ", "      "))
    return out


def _comparison_lines(comp: corr.Comparison, width: int) -> list[str]:
    cols = [_Col(["run"], [v.run.label for v, _ in comp.rows], left=True)]
    for f in comp.families:
        cols.append(_Col([f], [_pct(m[f]) for _, m in comp.rows]))
    means = []
    for v, _ in comp.rows:
        mean, full = v.headline()
        means.append(_pct(mean) + ("" if full or mean is None else "+"))
    cols.append(_Col(["mean"], means))
    if comp.any_mce:
        cols.append(_Col(["mCE"], [_pct(v.mce) for v, _ in comp.rows]))
    head = "Corruptions, run by run (family means, mean corruption accuracy" + (", mCE" if comp.any_mce else "") \
        + "; in %):"
    out = ["", *_wrap(head, width, subsequent="  ")]
    if _total(cols) + 2 <= width:
        out.extend("  " + line for line in _render(cols))
    else:
        for j, (v, m) in enumerate(comp.rows):
            items = [f"{f}{NBSP}{_pct(m[f])}" for f in comp.families] + [f"mean{NBSP}{means[j]}"]
            if comp.any_mce:
                items.append(f"mCE{NBSP}{_pct(v.mce)}")
            out.extend(_wrap(f"{v.run.label}: " + ", ".join(items), width, "  ", "      "))
    notes = []
    if comp.baselines and comp.any_mce:
        notes.append("mCE against baseline " + ", ".join(comp.baselines) + ".")
    if any(not v.headline()[1] and v.headline()[0] is not None for v, _ in comp.rows):
        notes.append("+ mean over only the measured corruption x severity pairs, not all 15 x 5.")
    for note in notes:
        out.extend(_wrap(note, width, "  ", "  "))
    return out


def _corruption_block(views: Sequence[corr.CorruptionView], width: int) -> list[str]:
    if not views:
        return []
    out = ["", *_wrap(corr.explanation(plain=True), width, subsequent="")]
    comp = corr.comparison(views)
    if comp is not None:
        out.extend(_comparison_lines(comp, width))
    for v in views:
        out.append("")
        out.extend(corruption_lines(v, width))
    return out


def detection_lines(view: det.DetectionView, width: int = 80) -> list[str]:
    """One run's detectors as text lines of at most ``width`` characters: the warnings
    first, then a table of shifts x detectors (cells ``AUROC/TNR`` or, for attacks,
    ``AUROC/TNR/undetected``, in %), or one line per shift when it is wider."""
    r = view.run
    out = _wrap(f"Detectors of {r.label} (AUROC / TNR at 95% TPR"
                + (" / undetected attack success" if view.any_attack else "") + ", in %):", width,
                subsequent="  ")
    if r.weights:
        out.extend(_wrap(r.weights, width, "  "))
    for w in view.warnings:
        out.extend(_wrap(f"! {_ascii(w)}", width, "  ", "    "))

    def cell(row: det.DetectionRow, d: str) -> str:
        return view.cell(row, d).text(plain=True).replace(" / ", "/")

    labels = [row.label(plain=True) for row in view.rows]  # "adaptive/<norm>" names itself
    cols = [_Col(["shift"], labels, left=True)]
    for d in view.detectors:
        cols.append(_Col([d], [cell(row, d) for row in view.rows]))
    if _total(cols) + 2 <= width:
        out.extend("  " + line for line in _render(cols))
    else:
        for label, row in zip(labels, view.rows):
            items = [f"{d}{NBSP}{cell(row, d)}" for d in view.detectors]
            out.extend(_wrap(f"{label}: " + ", ".join(items), width, "  ", "      "))
    for f in view.flags:
        out.extend(_wrap(f"! {_ascii(f)}", width, "  ", "      "))
    return out


def _detection_block(views: Sequence[det.DetectionView], width: int) -> list[str]:
    if not views:
        return []
    out = ["", *_wrap(det.explanation(views, plain=True), width, subsequent="")]
    for v in views:
        out.append("")
        out.extend(detection_lines(v, width))
    return out


def corruption_text(rows: Sequence[Any], width: int = 80) -> str:
    """The corruption results of stored runs as text (what ``robustlab corrupt`` prints):
    the explanation, a run x family comparison when several runs have corruption rows,
    then per run the summary line (mean corruption accuracy, clean accuracy, mCE and
    relative mCE against the named baseline), the corruption x severity table and the
    family means; every line at most ``width`` characters. ``"no corruption results"``
    when no run has rows of kind ``corruption``."""
    runs = normalize_rows(rows)
    lines = _corruption_block(corr.corruption_views(runs), max(int(width), MIN_WIDTH))
    return "\n".join(line.rstrip() for line in lines).strip("\n") or "no corruption results"


def detection_text(rows: Sequence[Any], width: int = 80) -> str:
    """The detector results of stored runs as text: the explanation, then per run the
    warnings for detectors that detect only non-adaptive attacks and the table of AUROC /
    TNR at 95% TPR (and undetected attack success) per shift and detector; every line at
    most ``width`` characters. ``"no detection results"`` when no run has rows of kind
    ``detect``."""
    runs = normalize_rows(rows)
    lines = _detection_block(det.detection_views(runs), max(int(width), MIN_WIDTH))
    return "\n".join(line.rstrip() for line in lines).strip("\n") or "no detection results"
