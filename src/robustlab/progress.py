"""Progress of long work, readable both on a terminal and in a log file.

Every long piece of work (a training run's epochs, an epoch's steps, an ensemble's
stages, a suite's runs) reports through :class:`Progress`:

- on a terminal (stderr is a TTY, or ``show=True``) a transient progress bar with the
  rate and the time remaining;
- always, one log line per finished unit (``note``) on the ``robustlab.progress``
  logger, e.g. ``epoch 3/40  loss 0.412  acc 0.881  1.2 s  ETA 44 s``. The CLI sends
  these lines to stderr; a library user sees them after ``logging.basicConfig(level=INFO)``.

No global state: a :class:`Progress` is created by the work it measures and closed when
that work ends.

>>> with Progress("epoch 1/3", total=12, unit="step") as p:    # doctest: +SKIP
...     for batch in batches:
...         p.advance(loss=0.41)
...     p.note("epoch 1/3  loss 0.41")
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

log = logging.getLogger("robustlab.progress")


def format_seconds(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``, ``1 h 02 min`` (for ETAs and durations)."""
    if seconds != seconds or seconds < 0:  # NaN
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def eta(done: int, total: int, elapsed: float) -> float:
    """Seconds left if the remaining ``total - done`` units take as long as the done ones."""
    if done <= 0:
        return float("nan")
    return elapsed / done * max(total - done, 0)


def is_terminal() -> bool:
    """Whether stderr is an interactive terminal (progress bars go there)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A unit of long work with ``total`` steps: a bar on a terminal, log lines always.

    ``show``: draw a bar (``None``: only when stderr is a terminal). ``advance(**stats)``
    moves the bar one step and shows the running ``stats``; ``note(text)`` writes one
    line to the log (printed above the bar on a terminal).
    """

    def __init__(self, label: str, total: int, *, show: bool | None = None, unit: str = "step") -> None:
        self.label = label
        self.total = max(int(total), 0)
        self.unit = unit
        self.show = is_terminal() if show is None else bool(show)
        self.done = 0
        self.t0 = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None

    # context -----------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self.t0 = time.perf_counter()
        if self.show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                transient=True,
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total or None, stats="")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    # reporting -----------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def eta(self) -> float:
        """Seconds left at the current rate (NaN before the first step)."""
        return eta(self.done, self.total, self.elapsed)

    def advance(self, steps: int = 1, **stats: float) -> None:
        """One (or ``steps``) more unit(s) done; ``stats`` are shown beside the bar."""
        self.done += steps
        if self._bar is not None:
            rate = self.done / max(self.elapsed, 1e-9)
            text = "  ".join(f"{k} {v:.4g}" for k, v in stats.items())
            self._bar.update(self._task, advance=steps, stats=f"{text}  {rate:.1f} {self.unit}/s")

    def note(self, text: str) -> None:
        """One line for the log (and above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False, soft_wrap=True)
            if log.isEnabledFor(logging.INFO) and not _logs_to_terminal():
                log.info("%s", text)
        else:
            log.info("%s", text)


def _logs_to_terminal() -> bool:
    """Whether the progress log lines already reach the terminal (so a bar's notes are not
    printed twice)."""
    logger: logging.Logger | None = log
    while logger is not None:
        for h in logger.handlers:
            stream = getattr(h, "stream", None)
            if stream is not None and getattr(stream, "isatty", lambda: False)():
                return True
        if not logger.propagate:
            break
        logger = logger.parent
    return False


__all__ = ["Progress", "eta", "format_seconds", "is_terminal"]
