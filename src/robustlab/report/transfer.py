"""Transfer matrices in reports: text and HTML renderings of a stored matrix (the dict
of :meth:`robustlab.evaluate.transfer.TransferMatrix.to_dict`).

Rows are sources, columns targets; a cell is the share (%) of the target's
clean-correct points that the examples crafted on the source break. The cell where a
source is the target itself is the white-box attack and is bracketed; a last row gives
the white-box success on every target and one more the number of clean-correct points
(the denominators). Audit flags (``black-box-stronger``: transfer broke points the
target's own white-box attack missed) follow the table.

Not hooked into the HTML report of runs (``report/html.py``): a transfer matrix is not
a row of a stored run yet; :func:`transfer_html` returns a self-contained fragment (all
text escaped) that a page can embed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * float(v):.1f}"


def _as_dict(matrix: Any) -> Mapping[str, Any]:
    return matrix.to_dict() if hasattr(matrix, "to_dict") else matrix


def _caption(d: Mapping[str, Any]) -> str:
    eps = float(d["eps"])
    return (f"Transfer success (%), {d['attack']} at {d['norm']} eps={eps:g} on {d['num_points']} points: "
            f"rows craft, columns are attacked; share of each target's clean-correct points broken")


def _cells(d: Mapping[str, Any]) -> list[list[str]]:
    rows = [["source \\ target", *d["targets"]]]
    for s in d["sources"]:
        row = [s]
        for t in d["targets"]:
            v = _pct(d["success"][s].get(t))
            row.append(f"[{v}]" if s == t else v)
        rows.append(row)
    rows.append(["white-box", *(_pct(d["white_box"].get(t)) for t in d["targets"])])
    rows.append(["clean-correct", *(str(d["clean_correct"].get(t, "-")) for t in d["targets"])])
    return rows


def _flag_lines(d: Mapping[str, Any]) -> list[str]:
    return [f"{t}: {f['code']}: {f['message']}" for t, fs in (d.get("flags") or {}).items() for f in fs]


def transfer_text(matrix: Any) -> str:
    """A fixed-width text table of a transfer matrix (a :class:`TransferMatrix` or its dict)."""
    d = _as_dict(matrix)
    rows = _cells(d)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [_caption(d)]
    for r in rows:
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    flags = _flag_lines(d)
    lines += ["flags:", *("  " + f for f in flags)] if flags else ["flags: none"]
    return "\n".join(lines)


def transfer_html(matrix: Any) -> str:
    """An HTML fragment (``<figure>`` with a ``<table>`` and the flags), every text escaped."""
    from markupsafe import escape

    d = _as_dict(matrix)
    rows = _cells(d)
    out = [f'<figure class="transfer"><figcaption>{escape(_caption(d))}</figcaption><table>',
           "<thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in rows[0]) + "</tr></thead><tbody>"]
    for r in rows[1:]:
        out.append("<tr>" + f"<th>{escape(r[0])}</th>" + "".join(
            f'<td class="num">{escape(c)}</td>' for c in r[1:]) + "</tr>")
    out.append("</tbody></table>")
    flags = _flag_lines(d)
    if flags:
        out.append('<ul class="flags">' + "".join(f"<li>{escape(f)}</li>" for f in flags) + "</ul>")
    out.append("</figure>")
    return "\n".join(out)


__all__ = ["transfer_html", "transfer_text"]
