"""Progress lines: exact formatting, ETA arithmetic, and one log line per unit."""

import logging

import pytest

from robustlab.progress import Progress, eta, format_seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.44, "0.4 s"), (12.4, "12 s"), (185, "3 min 05 s"), (3725, "1 h 02 min"), (float("nan"), "?")],
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_eta_is_the_mean_unit_time_times_the_units_left():
    assert eta(3, 10, 6.0) == pytest.approx(14.0)
    assert eta(10, 10, 6.0) == 0.0
    assert eta(0, 10, 6.0) != eta(0, 10, 6.0)  # NaN before the first unit


def test_progress_without_a_terminal_writes_one_line_per_note(caplog):
    with caplog.at_level(logging.INFO, logger="robustlab.progress"):
        with Progress("epoch 1/2", total=4, show=False) as p:
            for _ in range(4):
                p.advance(loss=0.5)
            p.note("epoch 1/2  loss 0.5")
            assert p.done == 4 and p.eta() == 0.0
    assert [r.getMessage() for r in caplog.records] == ["epoch 1/2  loss 0.5"]
