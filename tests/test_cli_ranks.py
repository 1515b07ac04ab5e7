"""Under torchrun only rank 0 prints: the other ranks' stdout is empty and their progress
loggers say only warnings; errors still reach every rank's stderr."""

import logging
import subprocess
import sys

from robustlab.cli import _setup_logging, main


def test_rank_above_zero_prints_nothing_and_logs_only_warnings(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    assert main(["ls", "losses"]) == 0
    assert capsys.readouterr().out.startswith("losses: ")
    monkeypatch.setenv("RANK", "1")
    assert main(["ls", "losses"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["ls", "lossses"]) == 2  # an error is still said on every rank
    assert "losses" in capsys.readouterr().err
    progress, root = logging.getLogger("robustlab.progress"), logging.getLogger("robustlab")
    before = (progress.level, root.level)
    try:
        _setup_logging(quiet=False)
        assert logging.getLogger("robustlab").level == logging.WARNING
        assert progress.level == logging.WARNING
        monkeypatch.setenv("RANK", "0")
        _setup_logging(quiet=False)
        assert logging.getLogger("robustlab").level == logging.INFO
    finally:
        progress.setLevel(before[0])
        root.setLevel(before[1])
        root.handlers[:] = [h for h in root.handlers if not getattr(h, "_robustlab_cli", False)]


def test_rank_is_read_without_importing_torch():
    code = ("import os, sys; os.environ['RANK'] = '3'; from robustlab.cli import _rank0, _out; "
            "_out('hidden'); print(_rank0(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
