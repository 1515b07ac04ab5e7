"""The results as CSV (the flat table) and JSON (every run, with config and metrics)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustlab.report._io import utc_now, write_text_atomic
from robustlab.report.table import normalize_rows, results_table


def write_csv(rows: Sequence[Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`~robustlab.report.results_table` as CSV (header = the columns).

    Values are written losslessly: floats with ``repr`` (they parse back to the same
    float), ``None`` as an empty cell. The file is replaced atomically.
    """
    table = results_table(rows)
    cols = list(table[0]) if table else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in table:
        writer.writerow(["" if r[c] is None else repr(r[c]) if isinstance(r[c], float) else r[c] for c in cols])
    return write_text_atomic(path, buf.getvalue())


def _strict(obj: Any) -> Any:
    """JSON-able copy with NaN/inf replaced by None (strict JSON, readable by any parser)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(rows: Sequence[Any], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write ``{"title"?, "generated_at", "robustlab_version", "runs": [...]}`` where each run
    is the full stored row (id, name, status, config, metrics, error, versions, ...).

    The JSON is strict: non-finite floats (NaN, inf) are written as ``null``. The file
    is replaced atomically.
    """
    from robustlab import __version__

    runs = [r.row for r in normalize_rows(rows)]
    doc: dict[str, Any] = {}
    if title is not None:
        doc["title"] = title
    doc["generated_at"] = utc_now()
    doc["robustlab_version"] = __version__
    doc["runs"] = runs
    text = json.dumps(_strict(doc), indent=1, sort_keys=False, allow_nan=False, default=str)
    return write_text_atomic(path, text + "\n")
