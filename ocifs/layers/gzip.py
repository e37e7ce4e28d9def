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
from collections.abc import Sequence

import trio
from indexed_gzip import indexed_gzip as _igz

from ocifs.errors import LayerFormatError
from ocifs.layers.blob import BlobReader

__all__ = ["SPACING_BYTES", "GzipLayerReader", "build_gzip_index"]

SPACING_BYTES = 1024 * 1024
WINDOW_BYTES = 32 * 1024
# zran reads its input in pieces this large: small, so a read past the span we
# prefetched costs little.
READBUF_BYTES = 64 * 1024


def build_gzip_index(path: str, what: str) -> tuple[bytes, list[tuple[int, int]]]:
    """Build the seek index of the gzip file at ``path``.

    Returns the exported index (indexed_gzip's format) and its checkpoints as
    (uncompressed offset, compressed offset) pairs in bytes. Raises
    :class:`LayerFormatError` when the file is not valid gzip. Blocking.
    """
    try:
        igz = _igz._IndexedGzipFile(
            filename=path,
            spacing=SPACING_BYTES,
            window_size=WINDOW_BYTES,
            readbuf_size=1024 * 1024,
            drop_handles=False,
        )
        try:
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
        self.mode = "rb"

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
        if size <= 0:
            return b""
        data = self._blob.read_sync(self._pos, size)
        self._pos += len(data)
        return data


class GzipLayerReader:
    """Reads uncompressed byte ranges of a gzip layer (see module docstring).

    ``points`` are the checkpoints (uncompressed, compressed offsets); ``index`` is the
    exported indexed_gzip index. Handles are pooled, one per concurrent reader.
    """

    def __init__(
        self,
        blob: BlobReader,
        index: bytes,
        points: Sequence[tuple[int, int]],
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.blob = blob
        self._index = index
        self._uoffs = [u for u, _ in points]
        self._coffs = [c for _, c in points]
        self._limiter = limiter
        self._idle: list[_igz._IndexedGzipFile] = []
        self._lock = threading.Lock()

    def span(self, offset: int, size: int) -> tuple[int, int]:
        """The compressed (offset, length) in bytes a read of ``size`` uncompressed bytes
        at ``offset`` needs: from the checkpoint at or before ``offset`` (one byte
        earlier, for a checkpoint's leftover bits) to the first one at or after the end."""
        i = bisect.bisect_right(self._uoffs, offset) - 1
        start = max(0, self._coffs[i] - 1) if i >= 0 else 0
        j = bisect.bisect_left(self._uoffs, offset + size)
        end = self._coffs[j] + 1 if j < len(self._coffs) else self.blob.chunks.blob_size
        return start, min(end, self.blob.chunks.blob_size) - start

    async def read(self, offset: int, size: int) -> bytes:
        """``size`` uncompressed bytes at uncompressed ``offset`` of the layer's tar stream."""
        if size <= 0:
            return b""
        await self.blob.prefetch(*self.span(offset, size))
        return await trio.to_thread.run_sync(self._pread, offset, size, limiter=self._limiter)

    def _pread(self, offset: int, size: int) -> bytes:
        with self._lock:
            handle = self._idle.pop() if self._idle else None
        if handle is None:
            handle = _igz._IndexedGzipFile(
                fileobj=_BlobFile(self.blob),
                spacing=SPACING_BYTES,
                window_size=WINDOW_BYTES,
                readbuf_size=READBUF_BYTES,
                auto_build=False,
                skip_crc_check=True,
            )
            handle.import_index(fileobj=io.BytesIO(self._index))
        try:
            data: bytes = handle.pread(size, offset)
        except BaseException:
            handle.close()
            raise
        with self._lock:
            self._idle.append(handle)
        return data
