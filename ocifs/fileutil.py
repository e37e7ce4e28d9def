"""Crash-safe file writes: a temp file in the target's directory, fsync, rename, so a
crash never leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "make_dirs",
    "pid_alive",
    "write_atomic",
]


def make_dirs(path: Path, mode: int = 0o700) -> None:
    """``mkdir -p`` giving every directory it makes ``mode`` (pathlib's
    ``parents=True`` makes the intermediate ones with the default mode)."""
    missing = []
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):
            new.mkdir(mode=mode)


def write_atomic(
    path: Path,
    data: bytes | Iterable[bytes],
    prefix: str = ".tmp-",
    mode: int = 0o700,
    durable: bool = True,
) -> None:
    """Write ``data`` (bytes, or pieces of bytes) to ``path`` atomically; missing
    parent directories are made with ``mode``. Temp files are named ``prefix*``.
    ``durable=False`` skips the fsync: for content checked against a digest on every
    read, where a torn file after a crash is caught then, not served.
    Blocking: call from a worker thread."""
    make_dirs(path.parent, mode)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as fh:
            for piece in [data] if isinstance(data, bytes) else data:
                fh.write(piece)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists (even if another user owns it): whether the
    writer of a temp or status file named by its pid may still be at work."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
