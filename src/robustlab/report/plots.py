"""The report's plots, drawn with matplotlib's object-oriented API and returned as
inline SVG text.

matplotlib is imported inside the functions (``import robustlab.report`` stays cheap).
Figures are built with :class:`matplotlib.figure.Figure` directly, which draws without
any GUI backend and without pyplot, so the process-wide backend and pyplot's figure
list are left as they are. Every figure is saved with a fixed ``svg.hashsalt`` and no
date, and its element ids carry a per-figure prefix, so several figures can live in one
HTML page and the same runs give the same bytes.

Each ``*_plot`` function returns ``(svg, reason)``: the SVG text, or ``None`` and one
sentence that says what would make the plot appear.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

from robustlab.report.table import Run

HISTORY_SKIP: frozenset[str] = frozenset({"epoch", "lr", "seconds", "samples_per_s"})
"""Per-epoch keys that are bookkeeping, not training curves."""

_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
_STYLES = ("-", "--", ":", "-.")
_SVG_META = {"Date": None, "Creator": None, "Format": None, "Type": None}


def run_style(i: int) -> dict[str, Any]:
    """Colour and line style of the i-th run (the same in every plot)."""
    return {"color": _COLORS[i % len(_COLORS)], "linestyle": _STYLES[(i // len(_COLORS)) % len(_STYLES)]}


def mpl_text(s: str) -> str:
    """User text made literal for matplotlib: no mathtext (``$`` escaped) and no
    legend-hiding leading underscore."""
    s = s.replace("$", r"\$")
    return " " + s if s.startswith("_") else s


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _figure(nrows: int, *, width: float = 9.0, panel_height: float = 2.8, legend_rows: int = 0) -> Any:
    from matplotlib.figure import Figure

    height = panel_height * nrows + 0.22 * legend_rows + 0.3
    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Any, prefix: str) -> str:
    """The figure as one ``<svg>`` element for inline HTML.

    The XML prolog and DOCTYPE are dropped, namespace declarations are removed (the
    HTML parser puts ``<svg>`` in the SVG namespace itself), and every id and internal
    reference gets ``prefix`` so ids stay unique across figures in one page.
    """
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata=_SVG_META)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    head_end = text.index(">")
    head = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text[:head_end])
    text = head + text[head_end:]
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    return text.strip()


def _legend_cols(labels: Sequence[str]) -> int:
    longest = max((len(s) for s in labels), default=0)
    return max(1, min(len(labels), 1 if longest > 45 else 2 if longest > 22 else 3))


def _legend_rows(labels: Sequence[str]) -> int:
    return math.ceil(len(labels) / _legend_cols(labels)) if labels else 0


def _legend(fig: Any, handles: list[Any], labels: list[str]) -> None:
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=_legend_cols(labels),
                   fontsize="small", frameon=False)


# -- (a) accuracy vs label-noise rate -------------------------------------------------------
def noise_groups(runs: Sequence[Run]) -> tuple[dict[tuple[Any, ...], list[Run]], bool]:
    """Runs grouped by (dataset, model, objective, loss, noise kind) for the noise plot.

    A run on clean labels is the rate-0 point of every noise kind trained with the same
    dataset, model, objective and loss (and its own group when there is none). Returns
    the groups and whether the x-axis is the *actual* flip rate (True when every run
    stores it) or the nominal rate.
    """
    done = [r for r in runs if r.status == "done" and _finite(r.clean_accuracy)]
    base = lambda r: (r.dataset, r.model, r.objective, r.loss)  # noqa: E731
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for r in done:
        if not r.is_clean:
            groups.setdefault((*base(r), r.noise_kind), []).append(r)
    for r in done:
        if r.is_clean:
            kinds = [k for k in groups if k[:4] == base(r) and k[4] is not None]
            for k in kinds or [(*base(r), None)]:
                groups.setdefault(k, []).append(r)
    actual = all(_finite(r.flip_rate) for g in groups.values() for r in g)
    return groups, actual


def _noise_x(r: Run, actual: bool) -> float:
    if actual:
        return float(r.flip_rate)  # type: ignore[arg-type]
    return float(r.noise_rate or 0.0)


def noise_plot(runs: Sequence[Run], prefix: str = "fig-noise") -> tuple[str | None, str]:
    """(a) Clean test accuracy against the label-noise rate, one line per
    (model, objective, loss, noise kind) group; a line joins the mean accuracy at
    each rate and every run is a marker. Drawn when some group has two or more rates."""
    groups, actual = noise_groups(runs)
    if not any(len({_noise_x(r, actual) for r in g}) >= 2 for g in groups.values()):
        return None, (
            "This plot appears when runs with the same model, objective and loss are trained at two "
            "or more label-noise rates (for example a suite grid over noise.rate: [0, 0.2, 0.4])."
        )
    multi_data = len({k[0] for k in groups}) > 1
    labels = []
    for dataset, model, objective, loss, kind in groups:
        name = f"{model} {objective}/{loss}, {kind or 'clean labels only'}"
        labels.append(mpl_text(f"{dataset}: {name}" if multi_data else name))
    fig = _figure(1, width=7.5, panel_height=3.6, legend_rows=_legend_rows(labels))
    ax = fig.add_subplot()
    handles = []
    for i, members in enumerate(groups.values()):
        pts = sorted((_noise_x(r, actual), 100.0 * float(r.clean_accuracy)) for r in members)  # type: ignore[arg-type]
        xs = sorted({x for x, _ in pts})
        means = [sum(y for x, y in pts if x == u) / sum(1 for x, _ in pts if x == u) for u in xs]
        style = run_style(i)
        (line,) = ax.plot([100 * x for x in xs], means, marker="o", markersize=4, **style)
        ax.scatter([100 * x for x, _ in pts], [y for _, y in pts], s=10, color=style["color"], alpha=0.6)
        handles.append(line)
    ax.set_xlabel("actual label-noise rate (% of training labels flipped)" if actual else "nominal label-noise rate (%)")
    ax.set_ylabel("clean test accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(fig, handles, labels)
    return to_svg(fig, prefix), ""


# -- (b) robust accuracy vs eps ----------------------------------------------------------------
def robust_plot(runs: Sequence[Run], prefix: str = "fig-robust") -> tuple[str | None, str]:
    """(b) Robust accuracy against eps: one panel per norm, one line per run and attack;
    the eps = 0 point is the run's clean accuracy."""
    order = [r for r in runs if r.status == "done" and r.robust]
    norms: list[str] = []
    for r in order:
        for ev in r.robust:
            if ev.norm not in norms:
                norms.append(ev.norm)
    if not norms:
        return None, (
            "No robust evaluations were recorded; list attacks under evaluate.attacks in the config "
            "(e.g. pgd linf eps: [0.05, 0.1])."
        )
    index = {id(r): i for i, r in enumerate(runs)}
    lines: list[tuple[str, Run, str, list[tuple[float, float]]]] = []
    for r in order:
        attacks: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for ev in r.robust:
            if _finite(ev.accuracy):
                attacks.setdefault((ev.norm, ev.attack), []).append((ev.eps, 100.0 * float(ev.accuracy)))  # type: ignore[arg-type]
        several = len({a for _, a in attacks}) > 1
        for (norm, attack), pts in attacks.items():
            if _finite(r.clean_accuracy):
                pts = [(0.0, 100.0 * float(r.clean_accuracy)), *pts]  # type: ignore[arg-type]
            label = f"{r.label} \u00b7 {attack}" if several else f"{r.label} ({attack})"
            lines.append((norm, r, label, sorted(pts)))
    ncols = min(len(norms), 3)
    nrows = math.ceil(len(norms) / ncols)
    labels_all = list(dict.fromkeys(label for _, _, label, _ in lines))
    fig = _figure(nrows, panel_height=3.2 if ncols > 1 else 3.6,
                  width=9.0 if ncols > 1 else 7.5, legend_rows=_legend_rows(labels_all))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handles: dict[str, Any] = {}
    for j, norm in enumerate(norms):
        ax = axes[j // ncols][j % ncols]
        for n, r, label, pts in lines:
            if n != norm:
                continue
            style = run_style(index[id(r)])
            (h,) = ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=3.5, **style)
            handles.setdefault(label, h)
        ax.set_title(f"{norm}", fontsize="medium")
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for j in range(len(norms), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    _legend(fig, list(handles.values()), [mpl_text(s) for s in handles])
    return to_svg(fig, prefix), ""


# -- (c) training curves ---------------------------------------------------------------------
#: Training curves are drawn for at most this many runs (one legend entry each).
MAX_CURVES = 40


def history_keys(runs: Sequence[Run]) -> list[str]:
    """Numeric per-epoch keys over all histories (bookkeeping keys skipped), in order of
    first appearance."""
    keys: dict[str, None] = {}
    for r in runs:
        for h in r.history:
            for k, v in h.items():
                if k in HISTORY_SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                keys.setdefault(k, None)
    return list(keys)


def history_plot(runs: Sequence[Run], prefix: str = "fig-history") -> tuple[str | None, str]:
    """(c) Training curves: one small panel per per-epoch metric (every numeric key of
    ``metrics["history"]`` except epoch, lr, seconds, samples_per_s), one line per run,
    so new per-epoch metrics appear without code changes. Accuracy keys are in percent."""
    keys = history_keys(runs)
    if not keys:
        return None, "No per-epoch training history was recorded for these runs."
    from matplotlib.ticker import MaxNLocator
    with_hist = [(i, r) for i, r in enumerate(runs) if r.history]
    if len(with_hist) > MAX_CURVES:
        return None, (
            f"{len(with_hist)} runs recorded training curves; plotted only up to {MAX_CURVES} runs per "
            f"report (write a report of a smaller selection, e.g. robustlab report --suite NAME). "
            f"Every curve is in report.json."
        )
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    labels_all = [r.label for _, r in with_hist]
    fig = _figure(nrows, panel_height=2.4, legend_rows=_legend_rows(labels_all))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handles: dict[str, Any] = {}
    for j, key in enumerate(keys):
        ax = axes[j // ncols][j % ncols]
        scale = 100.0 if "accuracy" in key else 1.0
        for i, r in with_hist:
            xs, ys = [], []
            for t, h in enumerate(r.history):
                v = h.get(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                e = h.get("epoch")
                xs.append(e if isinstance(e, (int, float)) and not isinstance(e, bool) else t + 1)
                ys.append(scale * float(v))
            if not xs:
                continue
            (h_,) = ax.plot(xs, ys, marker="o" if len(xs) == 1 else None, markersize=3, linewidth=1.2,
                            **run_style(i))
            handles.setdefault(r.label, h_)
        ax.set_title(mpl_text(key + (" (%)" if scale != 1.0 else "")), fontsize="medium")
        ax.set_xlabel("epoch", fontsize="small")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize="small")
        ax.grid(alpha=0.3)
    for j in range(len(keys), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    _legend(fig, list(handles.values()), [mpl_text(s) for s in handles])
    return to_svg(fig, prefix), ""
