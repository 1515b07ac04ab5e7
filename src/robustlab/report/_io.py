"""Atomic text writes for the report files, with errors people can act on."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from robustlab._atomic import atomic_path
from robustlab.errors import ReportError, WriteError


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename.

    If anything fails, ``path`` keeps its previous content (or stays absent) and no
    temporary file is left behind.
    """
    target = Path(path)
    if target.is_dir():
        raise ReportError(f"cannot write the report to {target}: it is a folder; give a file path.")
    try:
        with atomic_path(target) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
    except WriteError as exc:  # already names the file, the reason and what to do
        raise ReportError(str(exc)) from exc
    except OSError as exc:
        raise ReportError(
            f"cannot write {target}: {exc.strerror or exc}. Choose a writable location (e.g. --out)."
        ) from exc
    return target


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
