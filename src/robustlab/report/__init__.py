"""Reports from the results store: a flat results table, CSV and JSON exports, a
plain-text table for terminals and logs, and one self-contained offline HTML file with
plots.

>>> from robustlab.experiments import ResultsStore
>>> from robustlab.report import results_table, text_table, write_report, write_csv, write_json
>>> rows = [r.to_dict() for r in ResultsStore("robustlab-results").list()]
>>> results_table(rows)[0]["clean_accuracy"]
0.97
>>> print(text_table(rows, width=80))          # never wider than 80 columns, nothing cut
>>> write_report(rows, "report.html", title="digits", notes=["Data: ..."])
>>> write_csv(rows, "report.csv"); write_json(rows, "report.json")

Importing this package is cheap: it imports neither torch nor matplotlib (the plots
import matplotlib when a report is written).
"""

from __future__ import annotations

from robustlab.report._io import ReportError
from robustlab.report.export import write_csv, write_json
from robustlab.report.html import render_report, write_report
from robustlab.report.table import format_value, results_table, robust_column
from robustlab.report.text import text_table

__all__ = [
    "ReportError",
    "format_value",
    "render_report",
    "results_table",
    "robust_column",
    "text_table",
    "write_csv",
    "write_json",
    "write_report",
]
