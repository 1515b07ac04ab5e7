"""atomic_path: all or nothing, and write failures named for people (WriteError)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustlab import _atomic
from robustlab._atomic import atomic_path
from robustlab.errors import WriteError

ROOT = Path(__file__).resolve().parents[1]


def test_success_replaces_the_target_and_keeps_nothing_else(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp")
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["out.txt"]


def test_a_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "a") as tmp:
            tmp.write_text("a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640  # not mkstemp's 0o600
    (tmp_path / "b").write_text("old")
    (tmp_path / "b").chmod(0o444)
    with atomic_path(tmp_path / "b") as tmp:
        tmp.write_text("new")  # writable while being written
    assert (tmp_path / "b").read_text() == "new"
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o444


def test_other_errors_propagate_unchanged_and_clean_up(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyError("x")
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            raise OSError(errno.EIO, "I/O error")
    assert not isinstance(info.value, WriteError)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left on device (ENOSPC); free some space or choose another folder"),
        (errno.EDQUOT, "disk quota exceeded (EDQUOT); free space within your quota"),
        (errno.EFBIG, "file too large (EFBIG); the file system or this process's file-size limit"),
        (errno.EACCES, "permission denied (EACCES); choose a folder you can write to"),
        (errno.EROFS, "read-only file system (EROFS); choose a folder on a writable file system"),
    ],
)
def test_write_failures_name_the_cause_and_the_target(tmp_path, code, words):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the old weights")
    with pytest.raises(WriteError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise OSError(code, os.strerror(code))
    msg = str(info.value)
    assert msg.startswith(f"cannot write {target}: {words}") and "\n" not in msg
    assert info.value.errno == code
    assert isinstance(info.value.__cause__, OSError)
    assert target.read_bytes() == b"the old weights"
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no .tmp left


def test_a_folder_that_cannot_be_written_is_a_write_error(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_atomic.tempfile, "mkstemp", denied)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'r.html'}: permission denied"):
        with atomic_path(tmp_path / "r.html"):
            pytest.fail("the body must not run")


def test_a_full_disk_behind_a_non_oserror_is_diagnosed(tmp_path, monkeypatch):
    """torch.save reports write failures as RuntimeError without an errno."""

    class Full:
        f_frsize = 4096
        f_bavail = f_bfree = 0

    target = tmp_path / "ckpt.pt"
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: unchanged
        with atomic_path(target):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(_atomic.os, "statvfs", lambda path: Full())
    with pytest.raises(WriteError, match="no space left on device"):
        with atomic_path(target):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    with pytest.raises(ValueError):  # programming errors are not blamed on the disk
        with atomic_path(target):
            raise ValueError("bad")
    # a library that writes "(os error 28)" in its message
    monkeypatch.undo()
    with pytest.raises(WriteError, match=r"\(ENOSPC\)"):
        with atomic_path(target):
            raise RuntimeError("Error while serializing: I/O error: No space left (os error 28)")
    assert os.listdir(tmp_path) == []


_EFBIG_SCRIPT = """
import json, resource, signal, sys, torch
from pathlib import Path
from robustlab import models
from robustlab._atomic import atomic_path
from robustlab.errors import WriteError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
out = {}
folder = Path(sys.argv[1])
net = models.create("mlp", num_classes=10, in_channels=64, hidden=[256])  # ~100 KB of weights
try:
    models.save_model(net, folder / "model.safetensors")
except WriteError as e:
    out["save_model"] = [str(e), e.errno]
try:
    with atomic_path(folder / "ckpt.pt") as tmp:
        torch.save(net.state_dict(), tmp)
except WriteError as e:
    out["torch.save"] = [str(e), e.errno]
print(json.dumps(out))
"""


def test_file_size_limit_is_a_write_error_for_real(tmp_path):
    """RLIMIT_FSIZE makes write(2) fail with EFBIG: once through our own safetensors
    writer (an OSError) and once through torch.save (a RuntimeError without errno)."""
    (tmp_path / "model.safetensors").write_bytes(b"old model")
    (tmp_path / "ckpt.pt").write_bytes(b"old checkpoint")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run(
        [sys.executable, "-c", _EFBIG_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(out) == {"save_model", "torch.save"}, run.stderr
    for name, what in [("model.safetensors", "save_model"), ("ckpt.pt", "torch.save")]:
        msg, code = out[what]
        assert msg.startswith(f"cannot write {tmp_path / name}: file too large (EFBIG); ")
        assert "ulimit -f" in msg and code == errno.EFBIG
    assert (tmp_path / "model.safetensors").read_bytes() == b"old model"
    assert (tmp_path / "ckpt.pt").read_bytes() == b"old checkpoint"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "model.safetensors"]


def test_write_error_is_none_for_causes_it_does_not_explain(tmp_path):
    assert _atomic.write_error(tmp_path / "x", errno.EIO) is None
    err = _atomic.write_error(tmp_path / "x", errno.ENOSPC)
    assert isinstance(err, WriteError) and isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert str(err).startswith(f"cannot write {tmp_path / 'x'}: no space left on device")


def test_torch_save_into_atomic_path_round_trips(tmp_path):
    with atomic_path(tmp_path / "c.pt") as tmp:
        torch.save({"w": torch.arange(3)}, tmp)
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
