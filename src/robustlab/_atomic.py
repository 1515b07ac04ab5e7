"""Atomic file writes: write to a temporary file in the same folder, then rename.

Every file robustlab writes (checkpoints, weights, per-sample records, reports,
downloads) goes through :func:`atomic_path`, so a failed or interrupted write never
leaves half a file behind and never damages the file it was meant to replace.

When the write fails because the disk is full, a quota or file-size limit is reached, or
the folder is not writable, :func:`atomic_path` raises :class:`~robustlab.errors.WriteError`
whose one-line message names the operating system's reason and the target path::

    cannot write /runs/abc/model.safetensors: no space left on device (ENOSPC); free some
    space or choose another folder (e.g. another --results folder).

Writers that do not raise ``OSError`` are diagnosed too: a message that carries
``os error N`` (the ``safetensors`` library) gives the errno; a ``RuntimeError`` (how
``torch.save`` reports a file-size limit: ``unexpected pos ...``) is read from the
evidence left behind: the temporary file has reached the process's ``RLIMIT_FSIZE``
(EFBIG), or the file system has no free space left (ENOSPC).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from robustlab.errors import RobustlabError, WriteError

#: errno -> (the operating system's reason, what to do about it)
_REASONS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: (
        "no space left on device",
        "free some space or choose another folder (e.g. another --results folder)",
    ),
    errno.EDQUOT: (
        "disk quota exceeded",
        "free space within your quota or choose another folder (e.g. another --results folder)",
    ),
    errno.EFBIG: (
        "file too large",
        "the file system or this process's file-size limit (ulimit -f) does not allow a file "
        "this big; raise the limit or write to another file system",
    ),
    errno.EACCES: (
        "permission denied",
        "choose a folder you can write to, or fix the permissions of this one",
    ),
    errno.EPERM: (
        "operation not permitted",
        "choose a folder you can write to, or fix the permissions of this one",
    ),
    errno.EROFS: ("read-only file system", "choose a folder on a writable file system"),
}

#: Free space below which a failed write is attributed to a full disk.
_FULL_BYTES = 1 << 20

_OS_ERROR_IN_TEXT = re.compile(r"(?:os error|\[Errno) (\d+)")


def write_error(target: str | os.PathLike[str], code: int) -> WriteError | None:
    """The :class:`WriteError` for a write of ``target`` that failed with ``errno`` ``code``,
    or ``None`` when ``code`` is not a cause this module explains (the caller re-raises)."""
    if code not in _REASONS:
        return None
    reason, advice = _REASONS[code]
    err = WriteError(
        f"cannot write {os.fspath(target)}: {reason} ({errno.errorcode[code]}); {advice}."
    )
    err.errno = code  # the one-line message stays the str(); callers can still test errno
    return err


def _diagnose(exc: BaseException, tmp: Path) -> int | None:
    """The errno behind a failed write, from the exception or the state it left behind."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno if exc.errno in _REASONS else None
    if isinstance(exc, RobustlabError) or not isinstance(exc, Exception):
        return None
    match = _OS_ERROR_IN_TEXT.search(str(exc))
    if match and int(match.group(1)) in _REASONS:
        return int(match.group(1))
    if not isinstance(exc, RuntimeError):  # how C++ writers (torch.save) report failures
        return None
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and tmp.stat().st_size >= soft:
            return errno.EFBIG
    except (ImportError, OSError, ValueError):  # pragma: no cover - no resource module
        pass
    try:
        st = os.statvfs(tmp.parent)
        blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use reserved blocks
        if blocks * st.f_frsize < _FULL_BYTES:
            return errno.ENOSPC
    except (AttributeError, OSError):  # pragma: no cover - no statvfs (Windows)
        pass
    return None


def _umask() -> int:
    """The process's umask, read without changing it where the platform allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # pragma: no cover - not Linux
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. A
    failure to write (no space, quota, file size limit, no permission, read-only file
    system) is raised as :class:`~robustlab.errors.WriteError` naming the cause and
    ``path``; other exceptions propagate unchanged. An ``OSError`` with one of those
    errnos raised inside the block is taken as the write's failure, so a block that also
    *reads* local files should turn its own read errors into its own exception first. The new file gets the permissions
    of the file it replaces, or the usual ``0o666 & ~umask`` for a new file (not the
    ``0o600`` of a bare temporary file).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        err = write_error(target, exc.errno or 0)
        if err is None:
            raise
        raise err from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            mode = target.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp_path, mode)  # after the writes: the mode may be read-only
        os.replace(tmp_path, target)
    except BaseException as exc:
        code = _diagnose(exc, tmp_path)
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        err = None if code is None else write_error(target, code)
        if err is None:
            raise
        raise err from exc


__all__ = ["atomic_path", "write_error"]
