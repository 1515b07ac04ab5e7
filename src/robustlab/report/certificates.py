"""Certificates beside attacks: what the report shows of rows of kind ``certify``.

A stored run's ``metrics["robust"]`` may hold certificates (``kind: "certify"``, see
:mod:`robustlab.evaluate.results`): ``attack`` names the certifier (``smoothing`` =
randomized smoothing, Cohen et al. 2019), ``eps`` is the radius, ``accuracy`` the
*certified* accuracy there (a lower bound on robustness) and ``extra["lower"]`` a
high-probability lower bound on the population's certified accuracy. They never become
robust columns of the results table; instead every run with certificates gets one
:class:`CertificateView` per norm:

- rows: the radii (every certified radius and every eps the run's attacks under the same
  norm were measured at, and 0);
- columns: one per certificate setting (``"smoothing σ=0.25"``: certified accuracy and,
  in brackets, its lower bound), then one per attack under that norm (its robust
  accuracy, an upper bound; at radius 0 the base model's clean accuracy on the attack's
  points), or, when the run has no such attack, the base model's clean accuracy at
  radius 0; every header names its n (points measured);
- point sets: the letters of :mod:`robustlab.report.view`, continued from the suite's
  results table (the same letter means the same points in the whole section); a table
  shows them when its columns were measured on different points (or when the results
  table shows letters), with a note that says what each letter is.

Pure Python, like :mod:`robustlab.report.view`; the HTML, the text and the plot draw
from these views, and :func:`explanation` says what their numbers mean.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robustlab.report.table import RobustEval, Run
from robustlab.report.view import TableView, _describe, _letter, _point_key

_PARAM_NAMES = {"sigma": "\u03c3", "alpha": "\u03b1", "gamma": "\u03b3", "n": "N"}
_ASCII = {"\u03c3": "sigma", "\u03b1": "alpha", "\u03b3": "gamma", "\u2265": ">=", "\u2212": "-",
          "\u2014": "-", "\u00b7": "-"}


def ascii_text(text: str) -> str:
    """``text`` with the Greek letters and signs the certificate views use spelled out
    (``σ`` -> ``sigma``, ``≥`` -> ``>=``), for plain-text logs."""
    for k, v in _ASCII.items():
        text = text.replace(k, v)
    return text


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _pct(v: float) -> str:
    return "nan" if math.isnan(v) else f"{100 * v:.1f}"


@dataclass
class CertColumn:
    """One column of a certificate table.

    ``kind``: ``"certify"`` (certified accuracy of one setting), ``"attack"`` (robust
    accuracy of one attack on the base model) or ``"clean"`` (the base model's clean
    accuracy, only at radius 0, when the run has no attack under this norm). ``lines``:
    the header as short lines; ``key``: the point set it was measured on; ``mark``: its
    point-set letter when the table shows letters.
    """

    id: str
    kind: str
    name: str
    lines: list[str]
    num_points: int | None
    key: tuple[Any, ...]
    mark: str | None = None
    setting: str | None = None  # certify: the setting in words (sigma, samples, alpha, gamma)
    legend: str = ""

    @property
    def title(self) -> str:
        return " ".join(self.lines)


@dataclass
class CertCell:
    """One number of a certificate table (``accuracy`` and ``lower`` are fractions)."""

    accuracy: float | None
    lower: float | None = None
    clean: bool = False  # an attack column at radius 0: the base model's clean accuracy
    key: tuple[Any, ...] | None = None  # its own point set, when not its column's
    mark: str | None = None

    def text(self) -> str:
        """``"48.0 (≥22.2)"``, ``"82.0"`` or an em dash (percent, one decimal)."""
        if self.accuracy is None:
            return "\u2014"
        out = _pct(self.accuracy)
        if self.lower is not None:
            out += f" (\u2265{_pct(self.lower)})"
        return out


@dataclass
class CertificateView:
    """The certificates of one run under one norm, beside its attacks (module docstring)."""

    run: Run
    norm: str
    radii: list[float]
    columns: list[CertColumn]
    cells: dict[str, dict[float, CertCell]]
    point_note: str | None = None  # what each letter means (when letters are shown)
    same_points: str | None = None  # the one set of points every column was measured on
    flags: list[str] = field(default_factory=list)
    id: str = ""  # HTML anchor (set by the report)

    @property
    def marks_shown(self) -> bool:
        return any(c.mark for c in self.columns)

    @property
    def settings(self) -> list[str]:
        """Each certificate setting in words; settings that differ only in their title
        (e.g. sigma) share one line: ``"smoothing σ=0.25, σ=0.5: n0 = 100 ..."``."""
        merged: dict[str, list[str]] = {}
        for c in self.columns:
            if c.setting:
                rest = c.setting[len(c.name) + 2:] if c.setting.startswith(c.name + ": ") else c.setting
                merged.setdefault(rest, []).append(c.name)
        out = []
        for rest, names in merged.items():
            stem = names[0].split(" ")[0] + " "
            if len(names) > 1 and all(n.startswith(stem) for n in names):
                names = [names[0]] + [n[len(stem):] for n in names[1:]]
            out.append(f"{', '.join(names)}: {rest}.")
        return out

    def cell(self, column: str, radius: float) -> CertCell:
        return self.cells.get(column, {}).get(radius) or CertCell(None)


def _setting_title(certifier: str, params: dict[str, Any]) -> str:
    if "sigma" in params:
        return f"{certifier} \u03c3={_value(params['sigma'])}"
    return certifier


def _setting_text(title: str, certifier: str, params: dict[str, Any], protocol: str | None) -> str:
    """The setting in words, e.g. ``"smoothing σ=0.25: n0 = 100 selection and N = 2000
    estimation noise samples per point, α = 0.001, γ = 0.001 (protocol ...)"``."""
    p = dict(params)
    if certifier == "smoothing" and {"n0", "n", "alpha"} <= p.keys():
        text = (f"{title}: n0 = {_value(p['n0'])} selection and N = {_value(p['n'])} estimation noise "
                f"samples per point, α = {_value(p['alpha'])}")
        text += f", γ = {_value(p['gamma'])}" if "gamma" in p else ""
    else:
        rest = [f"{_PARAM_NAMES.get(k, k)} = {_value(v)}" for k, v in p.items() if k != "sigma"]
        text = f"{title}: " + (", ".join(rest) if rest else "default settings")
    return text + (f" (protocol {protocol})" if protocol else "")


def _rkey(eps: float) -> float:
    return round(float(eps), 12)


def _n_line(n: int | None) -> list[str]:
    return [f"n={n}"] if n is not None else []


def _certificate_columns(run: Run, norm: str) -> tuple[list[CertColumn], dict[str, dict[float, CertCell]],
                                                       dict[tuple[Any, ...], RobustEval]]:
    certs = [ev for ev in run.certificates if ev.norm == norm]
    groups: dict[tuple[Any, ...], list[RobustEval]] = {}
    for ev in certs:
        params = json.dumps(ev.params, sort_keys=True, default=str)
        groups.setdefault((ev.attack, params, _point_key(ev)), []).append(ev)
    titles = {k: _setting_title(k[0], evs[0].params) for k, evs in groups.items()}
    columns: list[CertColumn] = []
    cells: dict[str, dict[float, CertCell]] = {}
    examples: dict[tuple[Any, ...], RobustEval] = {}
    for i, (k, evs) in enumerate(groups.items()):
        first = evs[0]
        title = titles[k]
        twins = [kk for kk in groups if titles[kk] == title]
        if len(twins) > 1:  # the same title twice: name what differs (other params, or the points)
            others = [groups[kk][0].params for kk in twins if kk != k]
            diff = [f"{_PARAM_NAMES.get(p, p)}={_value(v)}" for p, v in first.params.items()
                    if p != "sigma" and any(o.get(p) != v for o in others)]
            title += ", " + ", ".join(diff) if diff else f" #{twins.index(k) + 1}"
        cid = f"cert-{i}"
        columns.append(CertColumn(
            cid, "certify", title, [title, "certified", *_n_line(first.num_points)], first.num_points,
            k[2], setting=_setting_text(title, first.attack, first.params, first.protocol),
            legend=f"certified: {title}"))
        examples.setdefault(k[2], first)
        cells[cid] = {}
        for ev in evs:
            cells[cid].setdefault(_rkey(ev.eps), CertCell(ev.accuracy, ev.lower))
    return columns, cells, examples


def _attack_columns(run: Run, norm: str) -> tuple[list[CertColumn], dict[str, dict[float, CertCell]],
                                                  dict[tuple[Any, ...], RobustEval]]:
    groups: dict[tuple[Any, ...], list[RobustEval]] = {}
    for ev in run.robust:
        if ev.norm == norm:
            groups.setdefault((ev.attack, _point_key(ev)), []).append(ev)
    columns: list[CertColumn] = []
    cells: dict[str, dict[float, CertCell]] = {}
    examples: dict[tuple[Any, ...], RobustEval] = {}
    names = [k[0] for k in groups]
    for i, (k, evs) in enumerate(groups.items()):
        first = evs[0]
        name = first.attack + (f" (n={first.num_points})" if names.count(first.attack) > 1 else "")
        cid = f"attack-{i}"
        columns.append(CertColumn(cid, "attack", name, [first.attack, "attack on", "base model",
                                                          *_n_line(first.num_points)],
                                  first.num_points, k[1], legend=f"attack on the base model: {name}"))
        examples.setdefault(k[1], first)
        col = cells[cid] = {}
        for ev in evs:
            col.setdefault(_rkey(ev.eps), CertCell(ev.accuracy))
        if 0.0 not in col:  # no perturbation: the base model's clean accuracy on the same points
            clean = next((ev.clean_on_points for ev in evs if ev.clean_on_points is not None), None)
            if clean is not None:
                col[0.0] = CertCell(clean, clean=True)
            elif run.clean_accuracy is not None:  # older rows: the clean accuracy of the whole split
                col[0.0] = CertCell(run.clean_accuracy, clean=True, key=("all", run.num_test))
    return columns, cells, examples


def _column_names(columns: Sequence[CertColumn]) -> str:
    return ", ".join(f"{c.kind if c.kind != 'certify' else 'certified'} {c.name}" for c in columns)


def certificate_views(runs: Sequence[Run], table: TableView | None = None) -> list[CertificateView]:
    """One :class:`CertificateView` per run and norm with certificates, in run order.

    ``table``: the results table of the same runs (:func:`~robustlab.report.view.table_view`);
    its point-set letters are kept and continued, so one letter means one set of points
    in the whole section. Runs without certificates give no view.
    """
    letters: dict[tuple[Any, ...], str] = {}
    for k in table.point_keys if table is not None else []:
        letters.setdefault(k, _letter(len(letters)))
    table_marks = table is not None and table.marks_shown
    views: list[CertificateView] = []
    for run in runs:
        for norm in dict.fromkeys(ev.norm for ev in run.certificates):
            columns, cells, examples = _certificate_columns(run, norm)
            acols, acells, aexamples = _attack_columns(run, norm)
            columns += acols
            cells.update(acells)
            for k, v in aexamples.items():
                examples.setdefault(k, v)
            if not acols and run.clean_accuracy is not None:
                columns.append(CertColumn("clean", "clean", "base model, clean",
                                          ["base model", "clean", *_n_line(run.num_test)], run.num_test,
                                          ("all", run.num_test), legend="base model, clean accuracy"))
                cells["clean"] = {0.0: CertCell(run.clean_accuracy, clean=True)}
            radii = sorted({r for col in cells.values() for r in col})
            # point sets: the columns' own, then those of single cells (older attack rows at radius 0)
            keys = list(dict.fromkeys([c.key for c in columns]
                                      + [cell.key for col in cells.values() for cell in col.values()
                                         if cell.key is not None]))
            for k in keys:
                letters.setdefault(k, _letter(len(letters)))
            view = CertificateView(run, norm, radii, columns, cells)
            if len(keys) > 1 or table_marks:
                for c in columns:
                    c.mark = letters[c.key]
                    for cell in cells[c.id].values():
                        if cell.key is not None and cell.key != c.key:
                            cell.mark = letters[cell.key]
                parts = []
                for k in sorted(keys, key=lambda k: (len(letters[k]), letters[k])):
                    members = [c for c in columns if c.key == k]
                    own = [c for c in columns if any(cell.key == k for cell in cells[c.id].values())]
                    what = _column_names(members) + (("; " if members else "") + "radius 0 of "
                                                     + _column_names(own) if own else "")
                    parts.append(f"{letters[k]} = {_describe(k, examples.get(k))}: {what}")
                view.point_note = (
                    ("Measured on different points: numbers marked with different letters are not "
                     "directly comparable. " if len(keys) > 1 else "")
                    + "; ".join(parts) + "."
                )
            else:
                view.same_points = f"Every column: {_describe(keys[0], examples.get(keys[0]))}."
            seen: dict[str, None] = {}
            for ev in run.certificates:
                if ev.norm == norm:
                    for f in ev.flags or []:
                        seen.setdefault(f"{_setting_title(ev.attack, ev.params)}: {f}", None)
            view.flags = list(seen)
            views.append(view)
    return views


def _attack_names(views: Sequence[CertificateView]) -> str | None:
    names = list(dict.fromkeys(c.name.split(" (n=")[0] for v in views for c in v.columns if c.kind == "attack"))
    if not names:
        return None
    return (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]) + (
        " attack" if len(names) == 1 else " attacks")


def _certifier_kinds(views: Sequence[CertificateView]) -> tuple[bool, bool]:
    """(any randomized-smoothing column, any deterministic bound-propagation column)."""
    names = {c.name.split(" ")[0] for v in views for c in v.columns if c.kind == "certify"}
    return "smoothing" in names, bool(names - {"smoothing"})


def explanation(views: Sequence[CertificateView], *, plain: bool = False) -> str:
    """What the numbers of these certificate tables mean, naming the attacks shown
    (``plain``: the shorter, ASCII version for text logs). Randomized smoothing certifies
    the smoothed classifier with high probability; bound propagation verifies the model
    itself, deterministically, so its attack columns bracket the same classifier."""
    attacks = _attack_names(views)
    smooth, bounds = _certifier_kinds(views)
    if plain:
        parts = []
        if smooth:
            parts.append("Certified accuracy (smoothing) is a lower bound (each certificate holds with "
                         "probability 1-alpha per point; >= a lower bound for the whole population, "
                         "probability 1-gamma)")
        if bounds:
            parts.append("verified accuracy (bound propagation) is a lower bound that holds for every point "
                         "it counts (deterministic: correct, and every margin has a positive lower bound over "
                         "the whole ball)")
        text = "; ".join(parts)
        text = text[0].upper() + text[1:]
        if attacks is None:
            return text + "; no attack under the same norm was run (radius 0: the base model's clean accuracy)."
        whose = ("on the base model, not on the smoothed classifier" if smooth and not bounds else
                 "on the model" if not smooth else "on the base model (the model the bounds verify)")
        return text + (f"; attack accuracy is an upper bound, here of the {attacks} {whose}. At radius 0 "
                       "the attack columns show the base model's clean accuracy on the attacked points (clean).")
    text = ""
    if smooth:
        text += ("Certified accuracy (randomized smoothing) is a lower bound: a point counts only when the "
                 "smoothed classifier classifies it correctly and certifies it at that radius; each "
                 "certificate holds with probability at least 1\u2212\u03b1 per point, and \u2265 is a lower "
                 "bound on the certified accuracy of the whole population the points were drawn from "
                 "(probability 1\u2212\u03b3). ")
    if bounds:
        text += ("Verified accuracy (bound propagation) is a lower bound that holds for every point it "
                 "counts, deterministically: the model classifies the point correctly and every margin "
                 "z_y \u2212 z_j has a positive lower bound over the whole ball around it within the input "
                 "box. ")
    if attacks is None:
        return text + ("No attack under the same norm was run, so there is no empirical upper bound here; "
                       "radius 0 shows the base model's clean accuracy.")
    text += "Attack accuracy is an upper bound: the points the attack did not break. "
    if bounds:
        text += (f"The {attacks} and the bounds are about the same model, so its true robust accuracy lies "
                 "between the verified and the attack accuracy; the gap is robustness neither verified nor "
                 "broken. ")
    if smooth:
        text += (f"For randomized smoothing the attack here is the {attacks} on the base model, not on the "
                 "smoothed classifier: the smoothed classifier's true robust accuracy lies at or above its "
                 "certified accuracy, the base model's at or below its attack accuracy (a guide, not an exact "
                 "bracket: two classifiers built from the same weights). ")
    return text + "At radius 0 the attack columns show the base model's clean accuracy on the attacked points."
