"""The mount daemon's lifecycle: open the image, mount it with pyfuse3, serve until
unmounted or signalled (SIGTERM/SIGINT/SIGHUP unmount cleanly), close everything.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from ocifs.cache import ChunkCache
from ocifs.errors import MountError
from ocifs.fs import ImageFS
from ocifs.gzindex import IndexTrust
from ocifs.image import open_image
from ocifs.oci import Platform
from ocifs.prefetch import PrefetchMode, prefetch
from ocifs.sources.base import ImageSource
from ocifs.status import publish_status

__all__ = [
    "MountOptions",
    "check_mountpoint",
    "run_mount",
    "unescape_mountinfo",
    "unmount",
    "unmount_ocifs",
]

log = logging.getLogger(__name__)

FSTYPE = "fuse.ocifs"


@dataclass(slots=True)
class MountOptions:
    """What ``ocifs mount`` was asked for."""

    mountpoint: Path
    cache_dir: Path
    platform: Platform | None = None
    cache_max: int | None = None
    prefetch: PrefetchMode = PrefetchMode.LANDMARK
    allow_other: bool = False  # let other users see the mount (FUSE allow_other)
    index_trust: IndexTrust = IndexTrust.ALLOW
    # Where the daemon publishes its status for ``ocifs mounts`` (None: nowhere).
    status_file: Path | None = None


def unescape_mountinfo(field: bytes) -> str:
    """A path field of /proc/self/mountinfo, unescaped: proc(5) writes space, tab,
    newline and backslash as ``\\ooo``."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))


def _mount_type(path: Path) -> str | None:
    """The file system type mounted at ``path`` (``fuse.ocifs``...), or None."""
    target = os.fsencode(path)
    with open("/proc/self/mountinfo", "rb") as fh:
        for line in fh:
            fields = line.split()
            if os.fsencode(unescape_mountinfo(fields[4])) == target:
                return os.fsdecode(fields[fields.index(b"-") + 1])
    return None


def check_mountpoint(path: Path) -> None:
    """Refuse a mount point that is missing, not a directory, not empty, or in use.

    A stale ocifs mount left by a killed daemon (its file system answers
    ``ENOTCONN``) is unmounted first, as the user would with ``fusermount3 -u -z``.
    Raises :class:`MountError`.
    """
    fstype = _mount_type(path)
    if fstype is not None and fstype.startswith("fuse"):
        try:
            os.statvfs(path)  # never answered from the kernel's caches
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise MountError(f"mount point {path}: {exc.strerror}") from None
            log.warning("%s: cleaning up the stale mount of a dead daemon", path)
            unmount(path, lazy=True)
            fstype = None
    if fstype is not None:
        raise MountError(f"mount point {path} is already a mount point ({fstype})")
    try:
        st = path.stat()
    except OSError as exc:
        raise MountError(f"mount point {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {path} is not a directory")
    if any(path.iterdir()):
        raise MountError(f"mount point {path} is not empty")


def unmount(path: Path, lazy: bool = False) -> None:
    """Unmount a FUSE mount with ``fusermount3 -u``; raises :class:`MountError`."""
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), str(path)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise MountError("fusermount3 not found: install the fuse3 package") from None
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        if "busy" in reason.lower():
            reason += " (a process is using it; `ocifs umount -z` detaches it lazily)"
        raise MountError(f"cannot unmount {path}: {reason}")


def unmount_ocifs(path: Path, lazy: bool = False) -> None:
    """Unmount an ocifs mount (live or left stale by a dead daemon); refuse any other
    mount. Raises :class:`MountError`."""
    fstype = _mount_type(path)
    if fstype is None:
        raise MountError(f"{path} is not mounted")
    if fstype != FSTYPE:
        raise MountError(f"{path} is not an ocifs mount ({fstype})")
    unmount(path, lazy=lazy)


async def run_mount(source: ImageSource, opts: MountOptions, ready: Callable[[str], None]) -> None:
    """Open the image, mount it at ``opts.mountpoint`` and serve until unmounted.

    ``ready`` is called with the mount's fsname once the tree is mounted. Errors
    before that propagate (nothing is left mounted).
    """
    cache = ChunkCache(opts.cache_dir, opts.cache_max)
    limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
    try:
        image = await open_image(source, cache, limiter, opts.platform, opts.index_trust)
        name = source.describe()
        fsname = (
            f"ocifs:{name}"
            if image.manifest.digest in name
            else f"ocifs:{name}@{image.manifest.digest}"
        )
        options = set(pyfuse3.default_options)
        options |= {f"fsname={fsname}", f"subtype={FSTYPE.split('.')[1]}", "ro"}
        # default_permissions (pyfuse3's default) has the kernel check the image's
        # modes and owners; nosuid/nodev make setuid files and device nodes inert.
        options |= {"nosuid", "nodev", *(["allow_other"] if opts.allow_other else [])}
        try:
            pyfuse3.init(ImageFS(image), str(opts.mountpoint), options)
        except RuntimeError as exc:
            raise MountError(f"cannot mount {opts.mountpoint}: {exc}") from None
        try:
            log.info("mounted %s at %s", fsname, opts.mountpoint)
            ready(fsname)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
                nursery.start_soon(prefetch, image, cache, opts.prefetch)
                if opts.status_file is not None:
                    nursery.start_soon(
                        publish_status, opts.status_file, opts.mountpoint, image, cache, fsname
                    )
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", opts.mountpoint)
    finally:
        await source.aclose()


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("received %s, unmounting", signal.Signals(signum).name)
            scope.cancel()
            return
