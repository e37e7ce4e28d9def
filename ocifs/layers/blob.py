"""Verified range reads of one blob through the chunk cache.

A blob is cut into fixed-size chunks of its *compressed* (as stored) bytes; the
sha256 of every chunk is recorded while the layer index is built from a stream
whose blob digest was verified (DESIGN.md "Trust"). A read asks for the chunks
it covers: cached ones are read from disk and re-verified, missing ones are
fetched with one range request per run of adjacent chunks, verified before a
byte is served or cached, and shared by every concurrent reader (single-flight).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ocifs.cache import ChunkCache
from ocifs.errors import DigestMismatchError
from ocifs.oci import Descriptor
from ocifs.sources.base import ImageSource

__all__ = ["CHUNK_SIZE_BYTES", "BlobReader", "ChunkHasher", "ChunkMap"]

log = logging.getLogger(__name__)

CHUNK_SIZE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ChunkMap:
    """The chunking of one blob: ``chunk_size`` bytes each (the last may be shorter),
    with the raw 32-byte sha256 of each chunk, over ``blob_size`` bytes."""

    blob_size: int
    chunk_size: int
    digests: Sequence[bytes]

    def span(self, index: int) -> tuple[int, int]:
        """(offset, length) in bytes of chunk ``index`` in the blob."""
        start = index * self.chunk_size
        return start, min(self.chunk_size, self.blob_size - start)


class ChunkHasher:
    """Accumulates a stream's bytes into per-chunk sha256 digests."""

    def __init__(self, chunk_size: int = CHUNK_SIZE_BYTES) -> None:
        self.chunk_size = chunk_size
        self.digests: list[bytes] = []
        self.size = 0
        self._current = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.chunk_size - self._filled)
            self._current.update(view[:take])
            self._filled += take
            self.size += take
            view = view[take:]
            if self._filled == self.chunk_size:
                self.digests.append(self._current.digest())
                self._current = hashlib.sha256()
                self._filled = 0

    def finish(self) -> ChunkMap:
        if self._filled:
            self.digests.append(self._current.digest())
        return ChunkMap(self.size, self.chunk_size, self.digests)


class BlobReader:
    """Verified reads of one blob: see the module docstring.

    ``limiter`` bounds the worker threads used for cache file I/O and hashing.
    """

    def __init__(
        self,
        source: ImageSource,
        desc: Descriptor,
        chunks: ChunkMap,
        cache: ChunkCache,
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.source = source
        self.desc = desc
        self.chunks = chunks
        self.cache = cache
        self.limiter = limiter
        self._inflight: dict[int, trio.Event] = {}

    # -- sync side (worker threads) ------------------------------------------

    def cached_chunk(self, index: int) -> bytes | None:
        """Chunk ``index`` from the disk cache if present and intact, else None.

        A chunk whose bytes do not match the recorded digest is dropped (and logged).
        Blocking: call from a worker thread.
        """
        data = self.cache.get_chunk(self.desc.digest, index)
        if data is None:
            return None
        if hashlib.sha256(data).digest() != self.chunks.digests[index]:
            log.warning("cache: dropping corrupt chunk %d of blob %s", index, self.desc.digest)
            self.cache.drop_chunk(self.desc.digest, index)
            return None
        return data

    def chunk_sync(self, index: int) -> bytes:
        """Chunk ``index``, verified, from a worker thread started by trio: read from
        the cache directly, or on a miss fetched by the trio loop (single-flight)."""
        data = self.cached_chunk(index)
        if data is None:
            data = trio.from_thread.run(self._read_chunks, index, index)[0]
        return data

    # -- async side (the trio loop) ------------------------------------------

    async def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the blob (compressed offsets), verified.

        Reads past the end of the blob are cut short. Raises
        :class:`DigestMismatchError` when fetched bytes do not match their chunk
        digest, :class:`ocifs.errors.FetchError` when the source fails.
        """
        size = max(0, min(size, self.chunks.blob_size - offset))
        if size == 0:
            return b""
        first, last = self._chunk_range(offset, size)
        parts = await self._read_chunks(first, last)
        return self._slice(parts, first, offset, size)

    async def prefetch(self, offset: int, size: int) -> None:
        """Make sure the chunks covering the range are in the cache."""
        size = max(0, min(size, self.chunks.blob_size - offset))
        if size:
            await self._read_chunks(*self._chunk_range(offset, size))

    def _chunk_range(self, offset: int, size: int) -> tuple[int, int]:
        cs = self.chunks.chunk_size
        return offset // cs, (offset + max(size, 1) - 1) // cs

    def _slice(self, parts: list[bytes], first: int, offset: int, size: int) -> bytes:
        start = offset - first * self.chunks.chunk_size
        return b"".join(parts)[start : start + size]

    async def _read_chunks(self, first: int, last: int) -> list[bytes]:
        wanted = range(first, last + 1)
        got: dict[int, bytes] = {}
        while len(got) < len(wanted):
            missing = [i for i in wanted if i not in got]
            waits = [self._inflight[i] for i in missing if i in self._inflight]
            mine = [i for i in missing if i not in self._inflight]
            if mine:
                events = {i: trio.Event() for i in mine}
                self._inflight.update(events)
                try:
                    got.update(await self._load(mine))
                finally:
                    for i, event in events.items():
                        del self._inflight[i]
                        event.set()
            for event in waits:
                await event.wait()
            if waits:
                # Another reader fetched these: they are in the disk cache now (or
                # that reader failed, and the next round fetches them here).
                pending = [i for i in missing if i not in got and i not in self._inflight]
                got.update(await self._from_disk(pending))
        return [got[i] for i in wanted]

    async def _from_disk(self, indexes: list[int]) -> dict[int, bytes]:
        def work() -> dict[int, bytes]:
            found = {}
            for i in indexes:
                data = self.cached_chunk(i)
                if data is not None:
                    found[i] = data
            return found

        if not indexes:
            return {}
        return await trio.to_thread.run_sync(work, limiter=self.limiter)

    async def _load(self, indexes: list[int]) -> dict[int, bytes]:
        got = await self._from_disk(indexes)
        missing = [i for i in indexes if i not in got]
        for run in _runs(missing):
            got.update(await self._fetch_run(run[0], run[-1]))
        return got

    async def _fetch_run(self, first: int, last: int) -> dict[int, bytes]:
        start, _ = self.chunks.span(first)
        end_off, end_len = self.chunks.span(last)
        data = await self.source.read_blob(self.desc, start, end_off + end_len - start)

        def verify_and_store() -> dict[int, bytes]:
            out = {}
            for i in range(first, last + 1):
                off, length = self.chunks.span(i)
                piece = data[off - start : off - start + length]
                if hashlib.sha256(piece).digest() != self.chunks.digests[i]:
                    raise DigestMismatchError(
                        f"blob {self.desc.digest}: chunk {i} (bytes {off}-{off + length - 1}) "
                        "does not match its recorded digest"
                    )
                self.cache.put_chunk(self.desc.digest, i, piece)
                out[i] = piece
            return out

        return await trio.to_thread.run_sync(verify_and_store, limiter=self.limiter)


def _runs(indexes: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in sorted(indexes):
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
