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

from robustlab.report.calibration import CalibrationView
from robustlab.report.certificates import CertificateView
from robustlab.report.corruption import CorruptionView
from robustlab.report.table import Run

HISTORY_SKIP: frozenset[str] = frozenset({"epoch", "lr", "seconds", "samples_per_s"})
"""Per-epoch keys that are bookkeeping, not training curves."""

PALETTE: tuple[str, ...] = (
    # matplotlib's tab10, then darker and lighter companions of its hues (tab20b/tab20c/tab20)
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#393b79", "#e6550d", "#31a354", "#843c39", "#7b4173",
    "#637939", "#3182bd", "#d6616b", "#8c6d31", "#636363",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
    "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#c7c7c7",
)
"""Series colours in order; past the palette, colours are spread around the hue circle."""

MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2, 2, 2)))
_SVG_META = {"Date": None, "Creator": None, "Format": None, "Type": None}


def _extra_color(i: int, used: set[str]) -> str:
    """A colour for series ``i`` past the palette: golden-ratio hue steps, two lightness
    levels, never one already used."""
    import colorsys

    k = i
    while True:
        h = (k * 0.6180339887498949) % 1.0
        light = 0.38 if (k // 7) % 2 == 0 else 0.55
        r, g, b = colorsys.hls_to_rgb(h, light, 0.75)
        c = "#{:02x}{:02x}{:02x}".format(*(round(255 * v) for v in (r, g, b)))
        if c not in used:
            return c
        k += 1_000_003


def series_styles(n: int) -> list[dict[str, Any]]:
    """Matplotlib styles (``color``, ``linestyle``, ``marker``) of ``n`` series of one plot.

    Every series gets a colour of its own (no two of the ``n`` are equal), and a
    (line style, marker) pair of its own for the first ``len(MARKERS) * len(LINESTYLES)``
    (72) series, so lines stay apart in grey-scale print and for colour-blind readers too.
    """
    used: set[str] = set()
    out = []
    for i in range(n):
        color = PALETTE[i] if i < len(PALETTE) else _extra_color(i, used)
        used.add(color)
        m = i % len(MARKERS)
        ls = (m + (i // len(MARKERS))) % len(LINESTYLES)
        out.append({"color": color, "linestyle": LINESTYLES[ls], "marker": MARKERS[m]})
    return out


def run_style(i: int) -> dict[str, Any]:
    """The style of the i-th series (see :func:`series_styles`)."""
    return series_styles(i + 1)[i]


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
    done = [r for r in runs if r.status == "done" and _finite(r.clean_accuracy) and not r.is_evaluation]
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
    styles = series_styles(len(groups))
    for style, members in zip(styles, groups.values()):
        pts = sorted((_noise_x(r, actual), 100.0 * float(r.clean_accuracy)) for r in members)  # type: ignore[arg-type]
        xs = sorted({x for x, _ in pts})
        means = [sum(y for x, y in pts if x == u) / sum(1 for x, _ in pts if x == u) for u in xs]
        (line,) = ax.plot([100 * x for x in xs], means, markersize=5, **style)
        ax.scatter([100 * x for x, _ in pts], [y for _, y in pts], s=10, color=style["color"], alpha=0.6)
        handles.append(line)
    ax.set_xlabel("actual label-noise rate (% of training labels flipped)" if actual else "nominal label-noise rate (%)")
    ax.set_ylabel("clean test accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(fig, handles, labels)
    return to_svg(fig, prefix), ""


# -- (b) robust accuracy vs eps ----------------------------------------------------------------
def robust_series(runs: Sequence[Run]) -> list[tuple[str, str, list[tuple[float, float]]]]:
    """(norm, legend label, points) of every line of the robust plot: one per run, attack
    and number of attacked points, in run order. Points are (eps, robust accuracy %);
    the eps = 0 point is the clean accuracy on the same points when the row stores it
    (``per_attack["clean"]``), else the run's clean accuracy."""
    out: list[tuple[str, str, list[tuple[float, float]]]] = []
    for r in runs:
        if r.status != "done":
            continue
        lines: dict[tuple[str, str, int | None], list[tuple[float, float]]] = {}
        clean0: dict[tuple[str, str, int | None], float] = {}
        for ev in r.robust:
            if not _finite(ev.accuracy):
                continue
            key = (ev.norm, ev.attack, ev.num_points)
            lines.setdefault(key, []).append((ev.eps, 100.0 * float(ev.accuracy)))  # type: ignore[arg-type]
            c = ev.clean_on_points if _finite(ev.clean_on_points) else r.clean_accuracy
            if _finite(c):
                clean0.setdefault(key, 100.0 * float(c))  # type: ignore[arg-type]
        for (norm, attack, n), pts in lines.items():
            if (norm, attack, n) in clean0 and all(x != 0.0 for x, _ in pts):
                pts = [(0.0, clean0[(norm, attack, n)]), *pts]
            label = f"{r.label} \u00b7 {attack}" + (f" (n={n})" if n is not None else "")
            out.append((norm, label, sorted(pts)))
    return out


def robust_plot(runs: Sequence[Run], prefix: str = "fig-robust") -> tuple[str | None, str]:
    """(b) Robust accuracy against eps: one panel per norm, one line per run, attack and
    number of attacked points, each with a colour, line style and marker of its own."""
    series = robust_series(runs)
    norms = list(dict.fromkeys(norm for norm, _, _ in series))
    if not norms:
        return None, (
            "No robust evaluations were recorded; list attacks under evaluate.attacks in the config "
            "(e.g. pgd linf eps: [0.05, 0.1])."
        )
    ncols = min(len(norms), 3)
    nrows = math.ceil(len(norms) / ncols)
    labels_all = [label for _, label, _ in series]
    fig = _figure(nrows, panel_height=3.2 if ncols > 1 else 3.6,
                  width=9.0 if ncols > 1 else 7.5, legend_rows=_legend_rows(labels_all))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handles: list[Any] = []
    for (norm, _label, pts), style in zip(series, series_styles(len(series))):
        ax = axes[norms.index(norm) // ncols][norms.index(norm) % ncols]
        (h,) = ax.plot([x for x, _ in pts], [y for _, y in pts], markersize=4.5, linewidth=1.4, **style)
        handles.append(h)
    for j, norm in enumerate(norms):
        ax = axes[j // ncols][j % ncols]
        ax.set_title(f"{norm}", fontsize="medium")
        ax.set_xlabel(f"eps ({norm})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for j in range(len(norms), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    _legend(fig, handles, [mpl_text(s) for s in labels_all])
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
    so new per-epoch metrics appear without code changes. Accuracy keys are in percent.
    Every run has a colour, line style and marker of its own, named in the legend."""
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
    styles = series_styles(len(with_hist))
    for j, key in enumerate(keys):
        ax = axes[j // ncols][j % ncols]
        scale = 100.0 if "accuracy" in key else 1.0
        for (_, r), style in zip(with_hist, styles):
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
            (h_,) = ax.plot(xs, ys, markersize=3.5, linewidth=1.2, markevery=max(1, len(xs) // 8), **style)
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


# -- (d) certified vs attacked accuracy ----------------------------------------------------------
#: Certificate panels drawn at most (one per run and norm with certificates).
MAX_CERTIFICATE_PANELS = 24


def _panel_title(view: CertificateView, chars: int) -> str:
    import textwrap

    ns = {c.kind: c.num_points for c in view.columns}
    counts = {c.num_points for c in view.columns}
    if len(counts) == 1:
        n = next(iter(counts))
        tail = f"{view.norm}, n={n}" if n is not None else view.norm
    else:
        tail = f"{view.norm}, n: " + ", ".join(f"{'certified' if k == 'certify' else k} {v}"
                                               for k, v in ns.items() if v is not None)
    return "\n".join(textwrap.wrap(mpl_text(view.run.label), chars) + [tail])


def certify_plot(views: Sequence[CertificateView], prefix: str = "fig-certify") -> tuple[str | None, str]:
    """(d) Certified accuracy against the radius beside the attacks' robust accuracy at
    the same radii: one panel per run (and norm), certified accuracy of each setting as a
    solid step line (between two measured radii it shows the value at the larger one,
    which certified accuracy, falling with the radius, is sure to reach), each attack on
    the base model as a dashed line with open markers (radius 0: the base model's clean
    accuracy on the attacked points), the base model's clean accuracy as a cross where no
    attack was run. A series keeps its colour and marker in every panel; one legend.

    Every line carries an SVG id naming what it is (``<prefix>-certified-<panel>-<i>``,
    ``<prefix>-attack-<panel>-<i>``, ``<prefix>-clean-<panel>``)."""
    if not views:
        return None, ("No certificates were recorded; add evaluate.certify to the config "
                      "(e.g. method: smoothing, radii: [0, 0.25, 0.5], params: {sigma: 0.25}) or run "
                      "robustlab certify.")
    if len(views) > MAX_CERTIFICATE_PANELS:
        return None, (f"{len(views)} runs recorded certificates; plotted only up to {MAX_CERTIFICATE_PANELS} "
                      f"per report (write a report of a smaller selection, e.g. robustlab report --suite NAME). "
                      f"The tables above hold every number.")
    labels = list(dict.fromkeys(c.legend for v in views for c in v.columns))
    styles = dict(zip(labels, series_styles(len(labels))))
    ncols = min(len(views), 3)
    nrows = math.ceil(len(views) / ncols)
    fig = _figure(nrows, width=9.0 if ncols > 1 else 7.5, panel_height=3.4 if ncols > 1 else 3.8,
                  legend_rows=_legend_rows(labels))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handles: dict[str, Any] = {}
    for p, view in enumerate(views):
        ax = axes[p // ncols][p % ncols]
        for j, c in enumerate(view.columns):
            pts = [(r, 100.0 * acc) for r in view.radii
                   for acc in [view.cell(c.id, r).accuracy] if acc is not None and math.isfinite(acc)]
            if not pts:
                continue
            st = styles[c.legend]
            xs, ys = [x for x, _ in pts], [y for _, y in pts]
            if c.kind == "certify":
                (h,) = ax.plot(xs, ys, drawstyle="steps-pre", linestyle="-", linewidth=1.8, markersize=5,
                               color=st["color"], marker=st["marker"], gid=f"certified-{p}-{j}")
            elif c.kind == "attack":
                (h,) = ax.plot(xs, ys, linestyle="--", linewidth=1.2, markersize=6, color=st["color"],
                               marker=st["marker"], markerfacecolor="none", gid=f"attack-{p}-{j}")
            else:
                (h,) = ax.plot(xs, ys, linestyle="none", markersize=8, color=st["color"], marker="X",
                               gid=f"clean-{p}")
            handles.setdefault(c.legend, h)
        ax.set_title(_panel_title(view, max(20, 90 // ncols)), fontsize="small")
        ax.set_xlabel(f"radius ({view.norm})")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for j in range(len(views), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    _legend(fig, list(handles.values()), [mpl_text(s) for s in handles])
    return to_svg(fig, prefix), ""


# -- (f) corruptions: accuracy vs severity per family ------------------------------------------
def corruption_plot(view: CorruptionView, prefix: str = "fig-corruption") -> tuple[str | None, str]:
    """(f) Accuracy against the severity for one run: one panel per corruption family
    (in the order of :data:`robustlab.corruptions.base.FAMILIES`), one line per corruption
    (its own colour, line style and marker within the panel), severity 0 = the clean
    accuracy. Every panel's axes carry the SVG id ``<prefix>-family-<family>``."""
    ys = [a for row in view.accuracy.values() for a in row.values() if _finite(a)]
    if not ys:
        return None, "No corruption accuracy was recorded for this run."
    fams = list(view.families)
    ncols = min(len(fams), 3)
    nrows = math.ceil(len(fams) / ncols)
    fig = _figure(nrows, width=9.0 if ncols > 1 else 6.0, panel_height=2.9)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    clean = 100.0 * view.clean_accuracy if view.clean_accuracy is not None and _finite(view.clean_accuracy) else None
    for j, fam in enumerate(fams):
        ax = axes[j // ncols][j % ncols]
        ax.set_gid(f"family-{fam}")
        names = view.families[fam]
        for name, style in zip(names, series_styles(len(names))):
            pts = sorted((float(s), 100.0 * a) for s, a in view.accuracy[name].items() if a is not None and _finite(a))
            if clean is not None:
                pts = [(0.0, clean), *pts]
            ax.plot([x for x, _ in pts], [y for _, y in pts], markersize=4, linewidth=1.3,
                    label=mpl_text(name), gid=f"corruption-{name}", **style)
        ax.set_title(mpl_text(fam), fontsize="medium")
        ax.set_xlabel("severity (0 = clean)", fontsize="small")
        ax.set_ylabel("accuracy (%)", fontsize="small")
        ax.set_xticks(range(0, max(view.severities, default=5) + 1))
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", frameon=False, loc="lower left")
    for j in range(len(fams), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    return to_svg(fig, prefix), ""


# -- (g) reliability diagrams and per-class accuracy ---------------------------------------------
def reliability_plot(view: CalibrationView, prefix: str = "fig-reliability") -> tuple[str | None, str]:
    """(g) The run's reliability diagrams side by side (clean, corruptions at the highest
    severity pooled, the main attack at its largest eps): per bin a bar of the accuracy
    (SVG id ``<prefix>-bar-<panel>-<bin>``, empty bins have none) with the gap to the bin's
    mean confidence hatched (``<prefix>-gap-<panel>-<bin>``), and the diagonal."""
    if not view.diagrams:
        return None, "No reliability diagram was recorded for this run."
    n = len(view.diagrams)
    fig = _figure(1, width=min(9.0, 3.0 * n + 0.3), panel_height=3.1)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for p, (ax, d) in enumerate(zip(axes, view.diagrams)):
        w = 1.0 / d.bins
        for b in range(d.bins):
            acc, conf = d.accuracy[b], d.confidence[b]
            if not d.count[b] or acc is None:
                continue
            left = b * w
            ax.bar(left, acc, width=w, align="edge", color="#1f77b4", edgecolor="#0b3c61", linewidth=0.5,
                   gid=f"bar-{p}-{b}")
            if conf is not None:
                lo, hi = sorted((acc, conf))
                ax.bar(left, hi - lo, bottom=lo, width=w, align="edge", color="none", edgecolor="#d62728",
                       hatch="///", linewidth=0.5, gid=f"gap-{p}-{b}")
        ax.plot([0, 1], [0, 1], linestyle="--", color="#555555", linewidth=1.0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        title = mpl_text(d.title) + (f"\nECE {d.ece:.3f}" if _finite(d.ece) else "")
        if d.note:
            title += f" ({mpl_text(d.note)})"
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("confidence", fontsize="small")
        ax.set_ylabel("accuracy", fontsize="small")
        ax.tick_params(labelsize="x-small")
    return to_svg(fig, prefix), ""


def per_class_plot(view: CalibrationView, prefix: str = "fig-per-class") -> tuple[str | None, str]:
    """(h) Per-class accuracy of the run's main attack against eps (eps 0: the clean
    per-class accuracy), one line per class with its own colour, line style and marker
    (SVG id ``<prefix>-class-<k>``), the mean over classes as a thick black line."""
    if not view.per_class or view.attack is None:
        return None, ("Per-class accuracy needs the clean per-class accuracy or an attack at two or more eps "
                      "with per-class numbers.")
    k = view.num_classes
    eps = sorted(view.per_class)
    labels = [f"class {c}" for c in range(k)] + ["mean over classes"]
    fig = _figure(1, width=7.5, panel_height=3.6, legend_rows=math.ceil(len(labels) / 6))
    ax = fig.add_subplot()
    handles = []
    for c, style in zip(range(k), series_styles(k)):
        pts = [(e, 100.0 * v) for e in eps for v in [view.per_class[e][c] if c < len(view.per_class[e])
                                                      else None] if v is not None and _finite(v)]
        (h,) = ax.plot([x for x, _ in pts], [y for _, y in pts], markersize=4, linewidth=1.1,
                       gid=f"class-{c}", **style)
        handles.append(h)
    means = []
    for e in eps:
        vals = [v for v in view.per_class[e] if v is not None and _finite(v)]
        if vals:
            means.append((e, 100.0 * sum(vals) / len(vals)))
    (h,) = ax.plot([x for x, _ in means], [y for _, y in means], color="black", linewidth=2.6, gid="class-mean")
    handles.append(h)
    attack, norm = view.attack
    ax.set_title(mpl_text(f"{attack} {norm}: accuracy per true class"), fontsize="medium")
    ax.set_xlabel(f"eps ({norm}; 0 = clean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(6, len(labels)), fontsize="small",
               frameon=False)
    return to_svg(fig, prefix), ""
