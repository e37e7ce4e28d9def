"""Background prefetch after mount (``--prefetch``), below foreground reads in priority.

``none`` fetches nothing; ``landmark`` fetches what an eStargz layer marks as needed
at start-up (files before ``.prefetch.landmark``), nothing for other layers; ``all``
also brings whole layers into the cache, bottom layer first. Prefetch stops when the
cache has no room left: it never evicts to make room for itself.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable

import trio

from ocifs.cache import ChunkCache
from ocifs.errors import OcifsError
from ocifs.image import Image
from ocifs.layers.blob import MAX_RUN_CHUNKS

__all__ = ["PrefetchMode", "prefetch"]

log = logging.getLogger(__name__)


class PrefetchMode(enum.Enum):
    """What to fetch in the background after mount."""

    NONE = "none"
    LANDMARK = "landmark"
    ALL = "all"


async def prefetch(image: Image, cache: ChunkCache, mode: PrefetchMode) -> None:
    """Run the prefetch ``mode`` asks for; errors are logged, never raised (a failed
    prefetch leaves the foreground read to try again)."""
    if mode is PrefetchMode.NONE:
        return
    for layer in image.layers:
        if layer.landmark is not None:
            await _guard(layer.landmark(), layer.desc.digest)
    if mode is not PrefetchMode.ALL:
        return
    for layer in image.layers:
        blob = layer.blob
        if blob is None:
            continue
        count = len(blob.chunks.digests)
        for first in range(0, count, MAX_RUN_CHUNKS):
            last = min(count, first + MAX_RUN_CHUNKS) - 1
            need = (last - first + 1) * blob.chunks.chunk_size
            if await trio.to_thread.run_sync(cache.free_bytes) < need:
                log.info("prefetch: stopped at the cache bound")
                return
            if not await _guard(blob.fetch_background(first, last), layer.desc.digest):
                break
        log.info("prefetch: layer %s is in the cache", layer.desc.digest)


async def _guard(work: Awaitable[None], digest: str) -> bool:
    try:
        await work
    except OcifsError as exc:
        log.warning("prefetch: layer %s: %s", digest, exc)
        return False
    return True
