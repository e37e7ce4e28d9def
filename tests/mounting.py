"""Running the real ``ocifs`` CLI in tests: mount as a daemon, always unmount."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["is_mounted", "mounted", "ocifs", "one_line_error"]

OCIFS_TIMEOUT_S = 120


def ocifs(*args: str, check: bool = False, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ocifs ARGS`` and capture its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=OCIFS_TIMEOUT_S,
        **kw,  # type: ignore[arg-type]
    )


def is_mounted(path: Path) -> bool:
    """True if ``path`` is a mount point in /proc/self/mountinfo."""
    target = str(path.absolute())
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


@contextlib.contextmanager
def mounted(ref: str, mountpoint: Path, cache_dir: Path, *extra: str) -> Iterator[Path]:
    """Mount ``ref`` at ``mountpoint`` with the daemonizing CLI; unmount on exit."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = ocifs("mount", ref, str(mountpoint), "--cache-dir", str(cache_dir), *extra)
    assert result.returncode == 0, f"mount failed: {result.stderr}"
    try:
        assert is_mounted(mountpoint)
        yield mountpoint
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert ``result`` failed with exactly one line on stderr and no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {result.stderr!r}"
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("ocifs: ")
    return lines[0]
