"""Verified range reads of one blob through the chunk cache.

A blob is cut into fixed-size chunks of its *compressed* (as stored) bytes; the
sha256 of every chunk is recorded while the layer index is built from a stream
whose blob digest was verified (every served byte is checked). A read asks for the chunks
it covers: cached ones are read from disk and re-verified, missing ones are
fetched with one range request per run of adjacent chunks, verified before a
byte is served or cached, and shared by every concurrent reader (single-flight).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import filelock
import trio

from ocifs.cache import ChunkCache
from ocifs.errors import DigestMismatchError
from ocifs.oci import Descriptor
from ocifs.sources.base import ImageSource

__all__ = ["CHUNK_SIZE_BYTES", "BlobReader", "ChunkHasher", "ChunkMap"]

log = logging.getLogger(__name__)

CHUNK_SIZE_BYTES = 256 * 1024
# One range request covers at most this many adjacent chunks (4 MiB).
MAX_RUN_CHUNKS = 16
# How often to look whether another process has fetched a chunk, and for how long.
LOCK_POLL_S = 0.01
LOCK_WAIT_S = 120.0
# Fetches of a run whose bytes fail their chunk digest, after the first.
MISMATCH_REFETCHES = 1


class _Foreground:
    """Counts foreground reads in flight, so that background prefetch yields to them."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: trio.Event | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0 and self._idle is not None:
                self._idle.set()
                self._idle = None

    async def wait_idle(self) -> None:
        while self.count:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()


FOREGROUND = _Foreground()

# Chunks being fetched by a task of this process, by (blob digest, chunk index): the
# in-process half of single-flight (file locks are the cross-process half).
_INFLIGHT: dict[tuple[str, int], trio.Event] = {}


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

    async def fetch_background(self, first: int, last: int) -> None:
        """Bring chunks ``first..last`` into the cache once no foreground read is
        fetching (prefetch runs below foreground reads in priority)."""
        await FOREGROUND.wait_idle()
        await self._read_chunks(first, last)

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
        with FOREGROUND.active():
            parts = await self._read_chunks(first, last)
        return self._slice(parts, first, offset, size)

    async def prefetch(self, offset: int, size: int) -> None:
        """Make sure the chunks covering the range are in the cache."""
        size = max(0, min(size, self.chunks.blob_size - offset))
        if size:
            with FOREGROUND.active():
                await self._read_chunks(*self._chunk_range(offset, size))

    def _chunk_range(self, offset: int, size: int) -> tuple[int, int]:
        cs = self.chunks.chunk_size
        return offset // cs, (offset + max(size, 1) - 1) // cs

    def _slice(self, parts: list[bytes], first: int, offset: int, size: int) -> bytes:
        start = offset - first * self.chunks.chunk_size
        return b"".join(parts)[start : start + size]

    async def _read_chunks(self, first: int, last: int) -> list[bytes]:
        wanted = range(first, last + 1)
        digest = self.desc.digest
        got: dict[int, bytes] = {}
        while len(got) < len(wanted):
            missing = [i for i in wanted if i not in got]
            waits = [_INFLIGHT[digest, i] for i in missing if (digest, i) in _INFLIGHT]
            mine = [i for i in missing if (digest, i) not in _INFLIGHT]
            if mine:
                events = {i: trio.Event() for i in mine}
                _INFLIGHT.update({(digest, i): e for i, e in events.items()})
                try:
                    got.update(await self._load(mine))
                finally:
                    for i, event in events.items():
                        del _INFLIGHT[digest, i]
                        event.set()
            for event in waits:
                await event.wait()
            if waits:
                # Another reader fetched these: they are in the disk cache now (or
                # that reader failed, and the next round fetches them here).
                pending = [i for i in missing if i not in got and (digest, i) not in _INFLIGHT]
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
        """Chunks from the disk cache, else fetched by this process while it holds their
        cross-process locks; chunks another process is fetching are waited for."""
        got = await self._from_disk(indexes)
        pending = [i for i in indexes if i not in got]
        deadline = trio.current_time() + LOCK_WAIT_S
        while pending:
            if trio.current_time() > deadline:
                # A holder that hangs must not hang us: fetch without the locks.
                log.warning("blob %s: gave up waiting for another process", self.desc.digest)
                for run in _runs(pending):
                    got.update(await self._fetch_run(run[0], run[-1]))
                break
            claimed, found = await trio.to_thread.run_sync(
                self._claim, pending, limiter=self.limiter
            )
            got.update(found)
            try:
                for run in _runs([i for i in claimed if i not in found]):
                    got.update(await self._fetch_run(run[0], run[-1]))
            finally:
                locks = list(claimed.values())
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_release, locks, limiter=self.limiter)
            pending = [i for i in pending if i not in got]
            if pending:
                await trio.sleep(LOCK_POLL_S)
        return got

    def _claim(
        self, indexes: list[int]
    ) -> tuple[dict[int, filelock.BaseFileLock], dict[int, bytes]]:
        """Take the locks of the chunks no other process is fetching; of those, return
        the ones found in the cache meanwhile (their locks released at once)."""
        claimed: dict[int, filelock.BaseFileLock] = {}
        found: dict[int, bytes] = {}
        for i in indexes:
            lock = self.cache.chunk_lock(self.desc.digest, i)
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue
            data = self.cached_chunk(i)
            if data is None:
                claimed[i] = lock
            else:
                lock.release()
                found[i] = data
        return claimed, found

    async def _fetch_run(self, first: int, last: int) -> dict[int, bytes]:
        start, _ = self.chunks.span(first)
        end_off, end_len = self.chunks.span(last)

        def verify_and_store(data: bytes) -> dict[int, bytes]:
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

        # Bytes damaged on the way (a flaky proxy or cache node) are fetched once more;
        # a second mismatch is the blob's own fault: EIO, never wrong bytes.
        for attempt in range(1 + MISMATCH_REFETCHES):
            data = await self.source.read_blob(self.desc, start, end_off + end_len - start)
            try:
                return await trio.to_thread.run_sync(verify_and_store, data, limiter=self.limiter)
            except DigestMismatchError as exc:
                if attempt == MISMATCH_REFETCHES:
                    raise
                log.warning("%s; fetching it again", exc)
        raise AssertionError("unreachable")


def _release(locks: list[filelock.BaseFileLock]) -> None:
    for lock in locks:
        lock.release()


def _runs(indexes: list[int]) -> list[list[int]]:
    """Adjacent indexes grouped into runs of at most :data:`MAX_RUN_CHUNKS`."""
    runs: list[list[int]] = []
    for i in sorted(indexes):
        if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < MAX_RUN_CHUNKS:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
