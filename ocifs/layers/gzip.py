"""Plain gzip layers: a zran-style seek index built with ``indexed_gzip``.

The index is built once from the whole (digest-verified) blob and kept in the
cache; afterwards a read of uncompressed bytes ``[u, u+n)`` needs only the
compressed span from the checkpoint at or before ``u`` to the first checkpoint at
or after ``u+n`` — known from the checkpoints before any byte is fetched.
Decompression runs in worker threads over a file object whose bytes come from a
:class:`~ocifs.layers.blob.BlobReader` (verified chunks), never from the network
directly.
"""

from __future__ import annotations

import bisect
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

import trio
from indexed_gzip import indexed_gzip as _igz

from ocifs.errors import LayerFormatError
from ocifs.layers.blob import BlobReader

__all__ = ["SPACING_BYTES", "GzipLayerReader", "SpanCache", "build_gzip_index"]

SPACING_BYTES = 1024 * 1024
WINDOW_BYTES = 32 * 1024
# zran reads its input in pieces this large: small, so a read past the span we
# prefetched costs little.
READBUF_BYTES = 64 * 1024
# Decompressed spans kept per mount, and the longest span kept whole.
SPAN_CACHE_BYTES = 64 * 1024 * 1024
MAX_SPAN_BYTES = 8 * 1024 * 1024
# Gzip bombs: a layer may expand to at most this many times its compressed size, or
# to MIN_EXPANSION_LIMIT_BYTES, whichever is more. Real layers expand 2-10x (text-heavy
# ones ~20x); deflate's ceiling is ~1032x, which only long runs of one byte reach.
MAX_EXPANSION_RATIO = 250
MIN_EXPANSION_LIMIT_BYTES = 1024**3


def expansion_limit_bytes(compressed_bytes: int) -> int:
    """The most uncompressed bytes a gzip layer of ``compressed_bytes`` may expand to."""
    return max(MIN_EXPANSION_LIMIT_BYTES, MAX_EXPANSION_RATIO * compressed_bytes)


def build_gzip_index(
    path: str, what: str, spacing: int = SPACING_BYTES
) -> tuple[bytes, list[tuple[int, int]]]:
    """Build the seek index of the gzip file at ``path``, a checkpoint about every
    ``spacing`` uncompressed bytes.

    Returns the exported index (indexed_gzip's format) and its checkpoints as
    (uncompressed offset, compressed offset) pairs in bytes. Raises
    :class:`LayerFormatError` when the file is not valid gzip. Blocking.
    """
    try:
        igz = _igz._IndexedGzipFile(
            filename=path,
            spacing=spacing,
            window_size=WINDOW_BYTES,
            readbuf_size=1024 * 1024,
            drop_handles=False,
        )
        try:
            # Seeking builds the index only up to the offset: a bomb stops at the limit.
            limit = expansion_limit_bytes(os.path.getsize(path))
            if igz.seek(limit + 1) > limit:
                raise LayerFormatError(
                    f"{what}: gzip stream expands to more than {limit} bytes "
                    f"({MAX_EXPANSION_RATIO}x its size): refusing a likely gzip bomb"
                )
            igz.build_full_index()
            out = io.BytesIO()
            igz.export_index(fileobj=out)
            points = [(int(u), int(c)) for u, c in igz.seek_points()]
        finally:
            igz.close()
    except (_igz.ZranError, OSError, ValueError) as exc:
        raise LayerFormatError(f"{what}: not a valid gzip stream: {exc}") from None
    return out.getvalue(), points


class _BlobFile(io.RawIOBase):
    """A read-only, seekable file object over a blob, for zran in a worker thread."""

    def __init__(self, blob: BlobReader) -> None:
        super().__init__()
        self._blob = blob
        self._pos = 0
        self._chunk_index = -1
        self._chunk = b""
        self._held_start = 0
        self._held = b""
        self.mode = "rb"

    def hold(self, offset: int, data: bytes) -> None:
        """Serve reads of ``[offset, offset + len(data))`` from ``data`` (verified bytes
        the caller already has) instead of the cache."""
        self._held_start, self._held = offset, data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no file descriptor")

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._blob.chunks.blob_size}
        self._pos = max(0, base[whence] + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        remaining = self._blob.chunks.blob_size - self._pos
        size = remaining if size < 0 else min(size, remaining)
        parts = []
        while size > 0:
            held = self._pos - self._held_start
            if 0 <= held < len(self._held):
                piece = self._held[held : held + size]
                parts.append(piece)
                self._pos += len(piece)
                size -= len(piece)
                continue
            # zran reads in pieces smaller than a chunk: keep the last chunk, so that
            # each is read from the cache and verified once per decompression.
            index, skip = divmod(self._pos, self._blob.chunks.chunk_size)
            if index != self._chunk_index:
                self._chunk = self._blob.chunk_sync(index)
                self._chunk_index = index
            piece = self._chunk[skip : skip + size]
            parts.append(piece)
            self._pos += len(piece)
            size -= len(piece)
        return b"".join(parts)


class SpanCache:
    """A bounded LRU of decompressed spans (the bytes between two checkpoints), shared
    by the gzip layers of a mount, so that sequential and repeated reads inflate each
    span once. Keyed by (blob digest, span number); ``max_bytes`` bounds the total.
    Used from the trio loop only."""

    def __init__(self, max_bytes: int = SPAN_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._spans: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, int]) -> bytes | None:
        data = self._spans.get(key)
        if data is not None:
            self._spans.move_to_end(key)
        return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        if key in self._spans or len(data) > self.max_bytes:
            return
        self._spans[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, old = self._spans.popitem(last=False)
            self._bytes -= len(old)


class GzipLayerReader:
    """Reads uncompressed byte ranges of a gzip layer (see module docstring).

    ``points`` are the checkpoints (uncompressed, compressed offsets); ``index`` is the
    exported indexed_gzip index; ``uncompressed_size`` the tar stream's length in bytes.
    A read inflates whole spans (checkpoint to checkpoint) into ``spans``; a span
    longer than :data:`MAX_SPAN_BYTES` is read piecewise instead. Handles are pooled,
    one per concurrent reader.
    """

    def __init__(
        self,
        blob: BlobReader,
        index: bytes,
        points: Sequence[tuple[int, int]],
        uncompressed_size: int,
        spans: SpanCache,
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.blob = blob
        self._index = index
        self._uoffs = [u for u, _ in points]
        self._coffs = [c for _, c in points]
        self._usize = uncompressed_size
        self._spans = spans
        # Inflating threads call back into the loop on a chunk-cache miss
        # (BlobReader.chunk_sync), whose cache I/O takes ``limiter``: sharing it would
        # deadlock once every slot is held by an inflater waiting for it (seen with 100
        # readers and a cache bound that evicts prefetched chunks).
        self._limiter = trio.CapacityLimiter(limiter.total_tokens)
        self._idle: list[tuple[_igz._IndexedGzipFile, _BlobFile]] = []
        self._lock = threading.Lock()
        self._inflight: dict[int, trio.Event] = {}

    def _span_bounds(self, k: int) -> tuple[int, int, int, int]:
        """Span ``k``: uncompressed (start, end) and the compressed (start, end) it needs,
        one byte before its checkpoint (leftover bits) to one past the next one."""
        ustart = self._uoffs[k] if k >= 0 else 0
        uend = self._uoffs[k + 1] if k + 1 < len(self._uoffs) else self._usize
        cstart = max(0, self._coffs[k] - 1) if k >= 0 else 0
        cend = self._coffs[k + 1] + 1 if k + 1 < len(self._coffs) else self.blob.chunks.blob_size
        return ustart, uend, cstart, min(cend, self.blob.chunks.blob_size)

    async def read(self, offset: int, size: int) -> bytes:
        """``size`` uncompressed bytes at uncompressed ``offset`` of the layer's tar stream
        (fewer at its end). Raises what :class:`BlobReader` raises."""
        end = min(offset + size, self._usize)
        parts: list[bytes] = []
        pos = offset
        while pos < end:
            k = bisect.bisect_right(self._uoffs, pos) - 1
            ustart, uend, cstart, cend = self._span_bounds(k)
            if uend - ustart > MAX_SPAN_BYTES:
                # A huge span (long runs compress ~1000:1): inflate just what is asked.
                await self.blob.prefetch(cstart, cend - cstart)
                take = min(end, uend) - pos
                parts.append(await self._inflate(pos, take))
                pos += take
                continue
            data = await self._span(k, ustart, uend, cstart, cend)
            piece = data[pos - ustart : end - ustart]
            if not piece:
                break
            parts.append(piece)
            pos += len(piece)
        return b"".join(parts)

    async def _span(self, k: int, ustart: int, uend: int, cstart: int, cend: int) -> bytes:
        key = (self.blob.desc.digest, k)
        while True:
            data = self._spans.get(key)
            if data is not None:
                return data
            event = self._inflight.get(k)
            if event is None:
                break
            await event.wait()
        event = self._inflight[k] = trio.Event()
        try:
            # Fetched (or read from the cache) and verified once, then inflated from
            # memory: the worker thread does not read the chunks again.
            compressed = await self.blob.read(cstart, cend - cstart)
            data = await self._inflate(ustart, uend - ustart, cstart, compressed)
            self._spans.put(key, data)
            return data
        finally:
            del self._inflight[k]
            event.set()

    async def _inflate(self, offset: int, size: int, held_at: int = 0, held: bytes = b"") -> bytes:
        return await trio.to_thread.run_sync(
            self._pread, offset, size, held_at, held, limiter=self._limiter
        )

    def _pread(self, offset: int, size: int, held_at: int, held: bytes) -> bytes:
        with self._lock:
            idle = self._idle.pop() if self._idle else None
        if idle is None:
            blobfile = _BlobFile(self.blob)
            handle = _igz._IndexedGzipFile(
                fileobj=blobfile,
                spacing=SPACING_BYTES,
                window_size=WINDOW_BYTES,
                readbuf_size=READBUF_BYTES,
                auto_build=False,
                skip_crc_check=True,
            )
            handle.import_index(fileobj=io.BytesIO(self._index))
        else:
            handle, blobfile = idle
        blobfile.hold(held_at, held)
        try:
            data: bytes = handle.pread(size, offset)
        except BaseException:
            handle.close()
            raise
        finally:
            blobfile.hold(0, b"")
        with self._lock:
            self._idle.append((handle, blobfile))
        return data
