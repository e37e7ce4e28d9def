"""Crash-safe file writes: a temp file in the target's directory, fsync, rename, so a
crash never leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(
    path: Path, data: bytes | Iterable[bytes], prefix: str = ".tmp-", mode: int = 0o700
) -> None:
    """Write ``data`` (bytes, or pieces of bytes) to ``path`` atomically; missing
    parent directories are made with ``mode``. Temp files are named ``prefix*``.
    Blocking: call from a worker thread."""
    path.parent.mkdir(mode=mode, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as fh:
            for piece in [data] if isinstance(data, bytes) else data:
                fh.write(piece)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
