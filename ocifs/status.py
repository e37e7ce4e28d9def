"""What a running mount daemon publishes about itself, for ``ocifs mounts``.

The daemon writes ``$XDG_STATE_HOME/ocifs/mounts/<hash of the mount point>.json``
(mode 0600, temp + rename) when the tree is mounted and every
:data:`STATUS_INTERVAL_S` seconds after, and removes it on unmount: mount point,
reference, digest, pid, bytes received from the source and chunk-cache lookups.
The kernel's mount table stays the truth about what is mounted; a file whose daemon
is gone is stale and ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ocifs.offline import MetadataCachingSource

if TYPE_CHECKING:
    from ocifs.cache import ChunkCache
    from ocifs.image import Image

__all__ = [
    "MountStatus",
    "publish_status",
    "read_status_files",
    "remove_status",
    "status_dir",
    "status_file_for",
    "write_status",
]

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0


def status_dir() -> Path:
    """``$XDG_STATE_HOME/ocifs/mounts``, else ``~/.local/state/ocifs/mounts``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "ocifs" / "mounts"


def status_file_for(mountpoint: Path) -> Path:
    """The status file of the mount at ``mountpoint`` (an absolute path)."""
    tag = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
    return status_dir() / f"{tag}.json"


@dataclass(slots=True)
class MountStatus:
    """One mount as its daemon last described it; ``updated`` is seconds since the
    epoch, ``bytes_fetched`` counts bytes received from the image source."""

    mountpoint: str
    reference: str
    digest: str
    fsname: str
    pid: int
    started: float
    updated: float
    bytes_fetched: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def hit_ratio(self) -> float | None:
        """Chunk lookups answered by the disk cache, 0..1 (None before any lookup)."""
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else None

    def to_json(self) -> dict[str, Any]:
        """A JSON object of every field plus ``cache_hit_ratio``."""
        return {**asdict(self), "cache_hit_ratio": self.hit_ratio}


def write_status(path: Path, status: MountStatus) -> None:
    """Write ``status`` to ``path`` atomically (blocking: call from a thread)."""
    status.updated = time.time()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(status), fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_status(path: Path) -> None:
    """Remove a status file; absent is fine."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_status_files(directory: Path | None = None) -> dict[str, MountStatus]:
    """Every readable status file in ``directory`` (default :func:`status_dir`),
    keyed by mount point; malformed files are skipped."""
    found: dict[str, MountStatus] = {}
    folder = directory or status_dir()
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError:
        return found
    fields = set(MountStatus.__dataclass_fields__)
    for path in paths:
        try:
            doc = json.loads(path.read_text())
            status = MountStatus(**{k: v for k, v in doc.items() if k in fields})
        except (OSError, ValueError, TypeError):
            continue
        found[status.mountpoint] = status
    return found


async def publish_status(
    path: Path, mountpoint: Path, image: Image, cache: ChunkCache, fsname: str
) -> None:
    """Keep ``path`` describing this daemon's mount of ``image`` at ``mountpoint``
    until cancelled, then remove it. A status file that cannot be written is logged
    once, never fatal."""
    source = image.source
    stats = source.stats if isinstance(source, MetadataCachingSource) else None
    now = time.time()
    status = MountStatus(
        mountpoint=str(mountpoint),
        reference=source.describe(),
        digest=image.manifest.digest,
        fsname=fsname,
        pid=os.getpid(),
        started=now,
        updated=now,
    )
    try:
        while True:
            status.bytes_fetched = stats.bytes_fetched if stats is not None else 0
            status.cache_hits, status.cache_misses = cache.chunk_hits, cache.chunk_misses
            try:
                await trio.to_thread.run_sync(write_status, path, status)
            except OSError as exc:
                log.warning("cannot write the mount status file %s: %s", path, exc.strerror)
                return
            await trio.sleep(STATUS_INTERVAL_S)
    finally:
        remove_status(path)
