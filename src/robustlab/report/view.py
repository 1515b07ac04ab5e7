"""What a results table shows, decided once for the HTML report and the plain-text table.

A :class:`TableView` is one table of runs (one suite): its columns in display order, one
cell text per run and column, the columns that are the same for every run (shown as a
caption line above the table instead of a column), and the notes a reader needs to read
the numbers right (which columns were measured on which points, which number is
optimistic).

Column order puts what a reader compares first: the run's name, its clean accuracy, the
robust accuracies and, when some run was measured under corruptions, its mean corruption
accuracy (the *key* columns), then what tells runs apart (model, objective,
loss, label noise), then the remaining metrics and the run id.

Every robust column names its attack, norm, eps and the number of attacked points n.
Point sets: the clean accuracy is measured on the whole split, a robust column on the
points it attacked (``point_set`` ids in the stored rows, equal ids = same points). When
a table holds results on more than one set of points, every such column carries a letter
(``A``, ``B``, ...) and a note says what each letter is; a column whose runs were
attacked on different points is marked ``mixed`` and each of its cells carries its own
letter. Pure Python, like :mod:`robustlab.report.table`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from robustlab.report.table import (
    SHORT_ID,
    RobustEval,
    Run,
    eps_text,
    format_value,
    robust_column,
    robust_columns,
    robust_eval_of,
)

MISSING = "\u2014"
MIXED = "mixed"
CORRUPTION_NOTE = (
    "\u2020 mean over only the measured corruption \u00d7 severity pairs: the mean corruption accuracy of "
    "the benchmark averages all 15 common corruptions \u00d7 5 severities, which these runs did not all "
    "measure, so the marked numbers are not comparable with it (see Corruptions below)."
)
OPTIMISTIC_NOTE = (
    "Best-epoch test accuracy is the highest per-epoch test accuracy, i.e. the epoch was chosen "
    "on the test set itself: an optimistic number, not an estimate of accuracy on new data "
    "(shown because the literature often reports it). Compare the last-epoch value or a "
    "validation-selected model."
)


@dataclass
class Column:
    """One displayed column.

    ``lines``: the header as short lines (a renderer stacks them); ``title``: the header
    on one line. ``key``: a name, clean-accuracy or robust column. ``mark``: the letter of
    the point set the column was measured on (only when the table mixes point sets), or
    ``"mixed"`` when its cells differ. ``note``: a footnote symbol.
    """

    id: str
    title: str
    lines: list[str]
    key: bool = False
    numeric: bool = True
    mark: str | None = None
    note: str | None = None
    robust: RobustEvalColumn | None = None


@dataclass
class RobustEvalColumn:
    """What a robust column measured (shared by all its cells)."""

    attack: str
    norm: str
    eps: float
    num_points: int | None


@dataclass
class Cell:
    text: str
    mark: str | None = None  # point-set letter of this cell in a "mixed" column


@dataclass
class RowView:
    run: Run
    cells: dict[str, Cell]


@dataclass
class PointSet:
    letter: str
    description: str
    columns: list[str] = field(default_factory=list)


@dataclass
class TableView:
    """One table of runs; see the module docstring."""

    suite: str | None
    columns: list[Column]
    rows: list[RowView]
    constants: list[tuple[str, str]]
    point_sets: list[PointSet]  # empty unless the table mixes point sets
    point_note: str | None  # what each point-set letter means (shown above the table)
    footnotes: list[str]  # shown below the table
    point_keys: list[tuple[Any, ...]] = field(default_factory=list)
    """Every set of points in the table, in letter order (also when only one, so the
    certificate tables can go on with the same letters)."""

    @property
    def robust_columns(self) -> list[Column]:
        return [c for c in self.columns if c.robust is not None]

    @property
    def marks_shown(self) -> bool:
        return len(self.point_sets) > 1


# -- grouping -------------------------------------------------------------------------------
def suite_groups(runs: Sequence[Run]) -> list[tuple[str | None, list[Run]]]:
    """Runs grouped by suite, in order of first appearance (one group when all share one)."""
    groups: dict[str | None, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.suite, []).append(r)
    return list(groups.items())


# -- point sets -----------------------------------------------------------------------------
def _point_key(ev: RobustEval) -> tuple[Any, ...]:
    if ev.all_points:
        return ("all", ev.num_total)
    if ev.point_set:
        return ("id", ev.point_set)
    if ev.num_points is not None:
        return ("n", ev.num_points, ev.num_total)
    return ("unknown",)


def _describe(key: tuple[Any, ...], example: RobustEval | None) -> str:
    if key[0] == "all":
        return f"all {key[1]} points of the split" if key[1] is not None else "all points of the split"
    if key[0] == "id":
        assert example is not None
        n, total = example.num_points, example.num_total
        of = f"{n} of {total} points" if n is not None and total is not None else (
            f"{n} points" if n is not None else "a subset of the points")
        return f"{of} (a fixed subset, point-set id {key[1]})"
    if key[0] == "n":
        of = f"{key[1]} of {key[2]} points" if key[2] is not None else f"{key[1]} points"
        return f"{of} (which points was not recorded; grouped by n)"
    return "points not recorded"


# -- the table ------------------------------------------------------------------------------
def _fmt(column: str, v: Any) -> str:
    return format_value(column, v)


def noise_cell(r: Run) -> str:
    """Label noise of a run's training labels: ``"symmetric 0.4"``, ``"none"``, ``"unknown"``."""
    if not r.noise_known:
        return "unknown"
    if r.noise_kind is None or not r.noise_rate:
        return "none"
    return f"{r.noise_kind} {r.noise_rate:g}"


_Spec = tuple[str, str, list[str], bool, Callable[[Run], str]]


def _descriptive_specs(runs: Sequence[Run]) -> list[_Spec]:
    """(id, title, header lines, numeric, cell text) of the non-key columns, in display order."""
    specs: list[_Spec] = [
        ("model", "model", ["model"], False, lambda r: r.model or MISSING),
        ("objective", "objective", ["objective"], False, lambda r: r.objective or MISSING),
        ("loss", "loss", ["loss"], False, lambda r: r.loss or MISSING),
        ("noise", "label noise", ["label", "noise"], False, noise_cell),
        ("flip_rate", "flipped labels (%)", ["flipped", "labels"], True,
         lambda r: _fmt("flip_rate", r.flip_rate)),
        ("dataset", "dataset", ["dataset"], False, lambda r: r.dataset or MISSING),
        ("status", "status", ["status"], False, lambda r: r.status),
        ("ece", "ECE", ["ECE"], True, lambda r: _fmt("ece", r.ece)),
    ]
    extras: list[_Spec] = [
        ("best_epoch", "best epoch", ["best", "epoch"], True,
         lambda r: _fmt("best_epoch", r.extra.get("best_epoch"))),
        ("best_val_accuracy", "best validation accuracy", ["best val.", "accuracy"], True,
         lambda r: _fmt("best_val_accuracy", r.extra.get("best_val_accuracy"))),
        ("test_accuracy_last", "test accuracy, last epoch", ["test acc.", "last epoch"], True,
         lambda r: _fmt("test_accuracy_last", r.extra.get("test_accuracy_last"))),
        ("test_accuracy_best", "test accuracy, best epoch (optimistic)",
         ["test acc.", "best epoch", "(optimistic)"], True,
         lambda r: _fmt("test_accuracy_best", r.extra.get("test_accuracy_best"))),
    ]
    specs.extend(s for s in extras if any(s[0] in r.extra for r in runs))
    specs.extend([
        ("train_seconds", "train seconds", ["train", "s"], True, lambda r: _fmt("train_seconds", r.train_seconds)),
        ("seconds", "total seconds", ["total", "s"], True, lambda r: _fmt("seconds", r.seconds)),
        ("id", "id", ["id"], False, lambda r: r.id[:SHORT_ID]),
    ])
    return specs


def _clean_n(runs: Sequence[Run]) -> int | None:
    ns = {r.num_test for r in runs if r.clean_accuracy is not None}
    return ns.pop() if len(ns) == 1 else None


def _column_list(columns: Sequence[Column]) -> str:
    """``"clean; pgd linf eps=0.02, 0.05 (n=30); standard linf eps=0.1 (n=30) (some runs)"``."""
    parts: dict[tuple[Any, ...], list[str]] = {}
    for c in columns:
        mixed = " (some runs)" if c.mark == MIXED else ""
        if c.robust is None:
            parts.setdefault((c.title + mixed,), [])
        else:
            rb = c.robust
            n = f" (n={rb.num_points})" if rb.num_points is not None else ""
            parts.setdefault((f"{rb.attack} {rb.norm} eps=", f"{n}{mixed}"), []).append(eps_text(rb.eps))
    return "; ".join(k[0] if len(k) == 1 else f"{k[0]}{', '.join(v)}{k[1]}" for k, v in parts.items())


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"S{i + 1}"


def table_view(runs: Sequence[Run], *, suite: str | None = None) -> TableView:
    """The table of ``runs`` (decoded by :func:`~robustlab.report.table.normalize_rows`)."""
    n_clean = _clean_n(runs)
    columns: list[Column] = [
        Column("name", "run", ["run"], key=True, numeric=False),
        Column("clean_accuracy", "clean" + (f" (n={n_clean})" if n_clean is not None else ""),
               ["clean"] + ([f"n={n_clean}"] if n_clean is not None else []), key=True),
    ]
    cells: list[dict[str, Cell]] = [{} for _ in runs]
    partial = False  # some mean corruption accuracy is over the measured pairs only
    point_of: list[dict[str, tuple[Any, ...]]] = [{} for _ in runs]  # column id -> point-set key
    examples: dict[tuple[Any, ...], RobustEval] = {}
    for i, r in enumerate(runs):
        text = _fmt("clean_accuracy", r.clean_accuracy)
        if n_clean is None and r.num_test is not None and r.clean_accuracy is not None:
            text += f" (n={r.num_test})"
        cells[i]["name"] = Cell(r.label)
        cells[i]["clean_accuracy"] = Cell(text)
        if r.clean_accuracy is not None:
            point_of[i]["clean_accuracy"] = ("all", r.num_test)

    for col in robust_columns(runs):
        first = next(ev for r in runs for ev in r.robust if ev.column == col)
        n = first.num_points
        header = [first.attack, f"{first.norm} eps={eps_text(first.eps)}"] + ([f"n={n}"] if n is not None else [])
        repeat = col[len(robust_column(first.attack, first.norm, first.eps, n)):].strip()
        if repeat:  # the same measurement twice in one run: "#2"
            header.append(repeat)
        columns.append(Column(col, col, header, key=True,
                              robust=RobustEvalColumn(first.attack, first.norm, first.eps, n)))
        for i, r in enumerate(runs):
            ev = robust_eval_of(r, col)
            cells[i][col] = Cell(_fmt(col, ev.accuracy) if ev is not None else MISSING)
            if ev is not None and ev.accuracy is not None:
                k = _point_key(ev)
                point_of[i][col] = k
                examples.setdefault(k, ev)

    if any(r.corruptions for r in runs):
        from robustlab.report.corruption import PARTIAL_MARK, corruption_view

        columns.append(Column("corruption_accuracy", "mean corruption accuracy", ["corruption", "acc."], key=True))
        for i, r in enumerate(runs):
            cv = corruption_view(r)
            mean, full = cv.headline() if cv is not None else (None, True)
            text = _fmt("accuracy", mean)
            if mean is not None and not full:
                text += PARTIAL_MARK
                partial = True
            cells[i]["corruption_accuracy"] = Cell(text)
            if mean is not None and r.corruptions:
                k = _point_key(r.corruptions[0])
                point_of[i]["corruption_accuracy"] = k
                examples.setdefault(k, r.corruptions[0])

    # one letter per set of points, in column order (A: the points of the clean column)
    sets: dict[tuple[Any, ...], PointSet] = {}
    for c in columns:
        for i in range(len(runs)):
            pk = point_of[i].get(c.id)
            if pk is not None and pk not in sets:
                sets[pk] = PointSet(_letter(len(sets)), _describe(pk, examples.get(pk)))
    point_note = None
    members: dict[tuple[Any, ...], list[Column]] = {}
    if len(sets) > 1:
        for c in columns:
            keys = list(dict.fromkeys(point_of[i][c.id] for i in range(len(runs)) if c.id in point_of[i]))
            if len(keys) == 1:
                c.mark = sets[keys[0]].letter
            elif keys:
                c.mark = MIXED
                for i in range(len(runs)):
                    if c.id in point_of[i]:
                        cells[i][c.id].mark = sets[point_of[i][c.id]].letter
            for k in keys:
                members.setdefault(k, []).append(c)
        mixed = any(c.mark == MIXED for c in columns)
        point_note = (
            "Results on different points: each letter names one set of evaluated points; numbers "
            "marked with different letters were measured on different points and are not directly "
            "comparable"
            + (" (a column marked \u201cmixed\u201d holds runs measured on different points; each of "
               "its cells carries its own letter)" if mixed else "")
            + ". " + "; ".join(f"{ps.letter} = {ps.description}: {_column_list(members[k])}"
                               for k, ps in sets.items()) + "."
        )
        for k, ps in sets.items():
            ps.columns = [c.title for c in members[k]]
    footnotes: list[str] = [CORRUPTION_NOTE] if partial else []

    # descriptive columns; those equal for every run move to the caption
    constants: list[tuple[str, str]] = []
    for cid, title, lines, numeric, value in _descriptive_specs(runs):
        texts = [value(r) for r in runs]
        if all(t == MISSING for t in texts):
            continue  # recorded for no run (e.g. training columns of evaluations)
        if cid != "id" and len(runs) >= 2 and len(set(texts)) == 1:
            constants.append((title, texts[0]))
            continue
        columns.append(Column(cid, title, lines, numeric=numeric,
                              note="*" if cid == "test_accuracy_best" else None))
        for i, t in enumerate(texts):
            cells[i][cid] = Cell(t)
    if any(c.id == "test_accuracy_best" for c in columns):
        footnotes.append("* " + OPTIMISTIC_NOTE)
    elif any(t.startswith("test accuracy, best epoch") for t, _ in constants):
        footnotes.append(OPTIMISTIC_NOTE)
    rows = [RowView(r, cells[i]) for i, r in enumerate(runs)]
    return TableView(suite, columns, rows, constants, list(sets.values()) if len(sets) > 1 else [],
                     point_note, footnotes, list(sets))
