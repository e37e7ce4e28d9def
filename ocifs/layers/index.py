"""Layer indexes: what a layer holds and how to find an entry's bytes, built once
per blob digest and kept in the cache so that any image sharing the layer mounts
at once.

Building streams the blob once: the
compressed bytes are hashed whole (blob digest) and per chunk (for verified range
reads later) while they go to a scratch file; then, in worker threads, its chunks
go into the chunk cache when it has room (later reads need no request), the tar
listing (with the uncompressed stream hashed for the diffID) and, for gzip, the
seek index are built from that file, which is then removed.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import filelock
import trio

from ocifs.cache import ChunkCache
from ocifs.errors import DigestMismatchError, LayerFormatError, UnsupportedError
from ocifs.layers.blob import BlobReader, ChunkHasher, ChunkMap
from ocifs.layers.entry import EntryType, LayerEntry, normalize_path
from ocifs.layers.estargz import FOOTER_SIZE_BYTES, HIDDEN_AT_ROOT, parse_footer
from ocifs.layers.estargz_reader import open_estargz
from ocifs.layers.gzip import (
    SPACING_BYTES,
    GzipLayerReader,
    SpanCache,
    build_gzip_index,
    expansion_limit_bytes,
)
from ocifs.layers.tar import HashingReader, list_tar
from ocifs.oci import LAYER_GZIP, LAYER_TAR, LAYER_ZSTD, Descriptor
from ocifs.sources.base import ImageSource

__all__ = ["Layer", "LayerIndex", "open_layer"]

log = logging.getLogger(__name__)

INDEX_VERSION = 3
GZIDX_SUFFIX = "gzidx.z"
MIN_CHUNK_BYTES = 4 * 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024
INDEX_LOCK_POLL_S = 0.05
KEEP_BATCH_CHUNKS = 64
KIND_TAR = "tar"
KIND_GZIP = "gzip"


@dataclass(slots=True)
class LayerIndex:
    """What the cache keeps per layer blob: its kind, entries, chunk digests, and for
    gzip the seek index with its checkpoints (uncompressed, compressed offsets)."""

    digest: str
    kind: str
    entries: list[LayerEntry]
    chunks: ChunkMap
    uncompressed_size: int = 0
    gzip_index: bytes = b""
    points: Sequence[tuple[int, int]] = ()
    spacing: int = SPACING_BYTES

    def validate(self, blob_size: int, what: str) -> None:
        """Check an index that came from elsewhere (a published artifact) against the
        layer it claims to describe: sizes, chunking, checkpoints, entry bounds.
        Raises :class:`LayerFormatError` naming ``what``."""

        def bad(why: str) -> LayerFormatError:
            return LayerFormatError(f"{what}: published index rejected: {why}")

        chunks = self.chunks
        if self.kind != KIND_GZIP or not self.gzip_index:
            raise bad("not a gzip seek index")
        if chunks.blob_size != blob_size:
            raise bad(f"it describes {chunks.blob_size} bytes, the layer has {blob_size}")
        if not MIN_CHUNK_BYTES <= chunks.chunk_size <= MAX_CHUNK_BYTES:
            raise bad(f"chunk size {chunks.chunk_size}")
        count = -(-blob_size // chunks.chunk_size)
        if len(chunks.digests) != count or any(len(d) != 32 for d in chunks.digests):
            raise bad(f"{len(chunks.digests)} chunk digests for {count} chunks")
        last = (-1, -1)
        for u, c in self.points:
            if u <= last[0] or c < last[1] or c > blob_size or u > self.uncompressed_size:
                raise bad(f"checkpoint ({u}, {c}) out of order or out of bounds")
            last = (u, c)
        for e in self.entries:
            ints = (e.mode, e.uid, e.gid, e.size, e.data_offset)
            if not all(type(v) is int and v >= 0 for v in ints) or type(e.mtime_ns) is not int:
                raise bad(f"entry {e.path!r} has invalid numbers")
            if not isinstance(e.path, str) or normalize_path(e.path) != e.path:
                raise bad(f"entry {e.path!r} is not a normalized path")
            if e.data_offset + e.size > self.uncompressed_size:
                raise bad(f"entry {e.path!r} lies beyond the layer's end")

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "version": INDEX_VERSION,
            "digest": self.digest,
            "kind": self.kind,
            "blob_size": self.chunks.blob_size,
            "chunk_size": self.chunks.chunk_size,
            "uncompressed_size": self.uncompressed_size,
            "spacing": self.spacing,
            "chunk_digests": base64.b64encode(b"".join(self.chunks.digests)).decode(),
            "points": [list(p) for p in self.points],
            "entries": [_entry_to_json(e) for e in self.entries],
        }
        return gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)

    @classmethod
    def from_bytes(cls, data: bytes, digest: str, gzip_index: bytes) -> LayerIndex:
        doc = json.loads(gzip.decompress(data))
        if doc.get("version") != INDEX_VERSION or doc.get("digest") != digest:
            raise ValueError("index version or digest mismatch")
        raw = base64.b64decode(doc["chunk_digests"])
        digests = [raw[i : i + 32] for i in range(0, len(raw), 32)]
        chunks = ChunkMap(int(doc["blob_size"]), int(doc["chunk_size"]), digests)
        entries = [_entry_from_json(e) for e in doc["entries"]]
        points = [(int(u), int(c)) for u, c in doc["points"]]
        usize = int(doc["uncompressed_size"])
        spacing = int(doc.get("spacing", SPACING_BYTES))
        return cls(digest, doc["kind"], entries, chunks, usize, gzip_index, points, spacing)


def _entry_to_json(e: LayerEntry) -> list[Any]:
    xattrs = {k: base64.b64encode(v).decode() for k, v in e.xattrs.items()}
    return [
        e.path, e.type.value, e.mode, e.uid, e.gid, e.mtime_ns, e.size, e.linkname,
        e.devmajor, e.devminor, xattrs, e.data_offset,
    ]  # fmt: skip


def _entry_from_json(v: list[Any]) -> LayerEntry:
    return LayerEntry(
        path=v[0], type=EntryType(v[1]), mode=v[2], uid=v[3], gid=v[4], mtime_ns=v[5],
        size=v[6], linkname=v[7], devmajor=v[8], devminor=v[9],
        xattrs={k: base64.b64decode(x) for k, x in v[10].items()}, data_offset=v[11],
    )  # fmt: skip


class Layer:
    """A layer ready to serve reads: its descriptor, its entries, and a reader of
    entry content. Formats whose entries sit in one uncompressed tar stream (tar,
    gzip) read ``entry.data_offset + offset`` of that stream; a format with its own
    addressing (eStargz) passes its own ``read_entry``."""

    def __init__(
        self,
        desc: Descriptor,
        entries: list[LayerEntry],
        read_stream: Callable[[int, int], Awaitable[bytes]] | None = None,
        read_entry: Callable[[LayerEntry, int, int], Awaitable[bytes]] | None = None,
        uncompressed_size: int = 0,
        blob: BlobReader | None = None,
        landmark: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if (read_stream is None) == (read_entry is None):
            raise ValueError("a layer reads by stream offset or by entry, not both")
        self.desc = desc
        self.entries = entries
        # Length in bytes of the uncompressed tar stream (the diffID's input); 0 if unknown.
        self.uncompressed_size = uncompressed_size
        self._read_stream = read_stream
        self._read_entry = read_entry
        # The verified chunk reader of the whole blob, for whole-layer prefetch, and
        # the format's start-up prefetch (eStargz: files before .prefetch.landmark).
        self.blob = blob
        self.landmark = landmark

    async def read(self, entry: LayerEntry, offset: int, size: int) -> bytes:
        """``size`` bytes (fewer at the end) at ``offset`` of ``entry``'s content,
        verified. Raises :class:`DigestMismatchError` or
        :class:`ocifs.errors.FetchError` when the bytes cannot be fetched and verified."""
        if self._read_entry is not None:
            return await self._read_entry(entry, offset, size)
        assert self._read_stream is not None
        return await self._read_stream(entry.data_offset + offset, size)


def layer_kind(desc: Descriptor, what: str) -> str:
    """``tar`` or ``gzip`` for the layer's media type; raises :class:`UnsupportedError`
    naming the digest and media type for anything ocifs cannot read yet."""
    mt = desc.media_type
    if "encrypted" in mt:
        raise UnsupportedError(f"{what}: encrypted layers ({mt}) are not supported")
    if desc.urls:
        raise UnsupportedError(f"{what}: foreign layers ({mt}, with urls) are not supported")
    if mt in LAYER_GZIP:
        return KIND_GZIP
    if mt in LAYER_TAR:
        return KIND_TAR
    if mt in LAYER_ZSTD:
        raise UnsupportedError(f"{what}: zstd layers ({mt}) are not supported yet")
    raise UnsupportedError(f"{what}: unknown layer media type {mt!r}")


async def open_layer(
    source: ImageSource,
    desc: Descriptor,
    diff_id: str,
    cache: ChunkCache,
    limiter: trio.CapacityLimiter,
    spans: SpanCache,
    what: str,
) -> Layer:
    """Load the layer's index from the cache, or build and store it; a gzip layer
    that is eStargz (:func:`ocifs.layers.estargz_reader.open_estargz`) needs only its TOC.

    Raises :class:`DigestMismatchError` when the blob or its uncompressed stream do
    not match ``desc.digest`` / ``diff_id``, :class:`LayerFormatError` for a blob that
    is not a valid (gzip'd) tar, :class:`UnsupportedError` for other media types.
    """
    kind = layer_kind(desc, what)
    if kind == KIND_GZIP:
        esgz = await open_estargz(source, desc, cache, limiter, spans, what)
        if esgz is not None:
            return Layer(desc, esgz.entries, read_entry=esgz.read_entry, landmark=esgz.prefetch)
    index = await _cached_or_built(source, desc, diff_id, kind, cache, limiter, what)
    blob = BlobReader(source, desc, index.chunks, cache, limiter)
    if kind == KIND_GZIP:
        gz = GzipLayerReader(
            blob, index.gzip_index, index.points, index.uncompressed_size, spans, limiter
        )
        read = gz.read
    else:
        read = blob.read
    return Layer(
        desc,
        index.entries,
        read_stream=read,
        uncompressed_size=index.uncompressed_size,
        blob=blob,
    )


async def _cached_or_built(
    source: ImageSource,
    desc: Descriptor,
    diff_id: str,
    kind: str,
    cache: ChunkCache,
    limiter: trio.CapacityLimiter,
    what: str,
) -> LayerIndex:
    """The layer's index from the cache, else built while holding the blob's lock, so
    that of several processes mounting the same layer one streams it, the rest wait."""

    def cached() -> LayerIndex | None:
        index = load_cached_index(cache, desc.digest)
        return index if index is not None and index.kind == kind else None

    index = await trio.to_thread.run_sync(cached, limiter=limiter)
    if index is not None:
        return index
    lock = cache.blob_lock(desc.digest)
    while True:
        try:
            await trio.to_thread.run_sync(lambda: lock.acquire(timeout=0), limiter=limiter)
            break
        except filelock.Timeout:
            await trio.sleep(INDEX_LOCK_POLL_S)
    try:
        index = await trio.to_thread.run_sync(cached, limiter=limiter)
        if index is None:
            index = await _build(source, desc, diff_id, kind, cache, limiter, what)
        return index
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lock.release, limiter=limiter)


async def gzip_index_for(
    source: ImageSource,
    desc: Descriptor,
    diff_id: str,
    cache: ChunkCache,
    limiter: trio.CapacityLimiter,
    what: str,
    spacing: int = SPACING_BYTES,
) -> LayerIndex:
    """The index of a gzip layer with checkpoints every ``spacing`` bytes: the cached
    one when it has that spacing, else built (and cached) anew. Raises as
    :func:`open_layer`."""
    index = await trio.to_thread.run_sync(load_cached_index, cache, desc.digest, limiter=limiter)
    if index is not None and index.kind == KIND_GZIP and index.spacing == spacing:
        return index
    return await _build(source, desc, diff_id, KIND_GZIP, cache, limiter, what, spacing)


def store_index(cache: ChunkCache, index: LayerIndex) -> None:
    """Keep ``index`` in the cache (the seek index zlib-compressed: its windows shrink
    ~2.5x). Blocking."""
    if index.kind == KIND_GZIP:
        cache.put_index(index.digest, GZIDX_SUFFIX, zlib.compress(index.gzip_index, 6))
    cache.put_index(index.digest, "json.gz", index.to_bytes())


def load_cached_index(cache: ChunkCache, digest: str) -> LayerIndex | None:
    """The cached index of blob ``digest``, or None (also when unreadable). Blocking."""
    data = cache.get_index(digest, "json.gz")
    if data is None:
        return None
    try:
        gz = zlib.decompress(cache.get_index(digest, GZIDX_SUFFIX) or zlib.compress(b""))
        index = LayerIndex.from_bytes(data, digest, gz)
    except (ValueError, KeyError, TypeError, IndexError, OSError, EOFError, zlib.error) as exc:
        log.warning("cache: ignoring unreadable index of %s (%s)", digest, exc)
        return None
    if index.kind == KIND_GZIP and not gz:
        return None  # the seek index part was evicted: rebuild both
    return index


async def _build(
    source: ImageSource,
    desc: Descriptor,
    diff_id: str,
    kind: str,
    cache: ChunkCache,
    limiter: trio.CapacityLimiter,
    what: str,
    spacing: int = SPACING_BYTES,
) -> LayerIndex:
    fd, tmp = tempfile.mkstemp(dir=cache.scratch_dir(), prefix=cache.scratch_prefix("blob"))
    try:
        chunks = await _download(source, desc, os.fdopen(fd, "wb"), what)

        entries: list[LayerEntry] = []
        usize = 0
        gz: tuple[bytes, list[tuple[int, int]]] = (b"", [])

        def listing() -> None:
            nonlocal usize
            found, usize = _list_file(tmp, kind, diff_id, what)
            if kind == KIND_GZIP and _has_estargz_footer(tmp, desc.size):
                # An eStargz layer read as plain gzip: its bookkeeping stays hidden.
                found = [e for e in found if e.path not in HIDDEN_AT_ROOT]
            entries.extend(found)

        def seek_index() -> None:
            nonlocal gz
            gz = build_gzip_index(tmp, what, spacing)

        def keep_chunks() -> None:
            # The whole blob went by once, verified: keep its chunks while the cache has
            # room for them without evicting anything, so that reads need no request.
            if getattr(source, "local", False) or desc.size > cache.free_bytes():
                return
            with open(tmp, "rb") as fh:
                batch: list[tuple[int, bytes]] = []
                for i in range(len(chunks.digests)):
                    batch.append((i, fh.read(chunks.chunk_size)))
                    if len(batch) == KEEP_BATCH_CHUNKS or i == len(chunks.digests) - 1:
                        cache.put_chunks(desc.digest, batch)
                        batch = []

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, listing)
            if kind == KIND_GZIP:
                nursery.start_soon(trio.to_thread.run_sync, seek_index)
            nursery.start_soon(trio.to_thread.run_sync, keep_chunks)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    index = LayerIndex(desc.digest, kind, entries, chunks, usize, gz[0], gz[1], spacing)

    await trio.to_thread.run_sync(store_index, cache, index, limiter=limiter)
    log.info("%s: indexed %s (%d entries, %d bytes)", what, desc.digest, len(entries), desc.size)
    return index


def _has_estargz_footer(path: str, size: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(max(0, size - FOOTER_SIZE_BYTES))
        return parse_footer(fh.read(), size) is not None


async def _download(source: ImageSource, desc: Descriptor, fh: BinaryIO, what: str) -> ChunkMap:
    """Stream the blob into ``fh`` (closed on return), hashing it whole and per chunk."""
    hasher = ChunkHasher()
    whole = hashlib.new(desc.digest.partition(":")[0])
    async with trio.wrap_file(fh) as out, contextlib.aclosing(source.stream_blob(desc)) as stream:
        async for piece in stream:
            hasher.update(piece)
            whole.update(piece)
            await out.write(piece)
            if hasher.size > desc.size:
                break
    got = f"{desc.digest.partition(':')[0]}:{whole.hexdigest()}"
    if hasher.size != desc.size or got != desc.digest:
        raise DigestMismatchError(
            f"{what}: blob {desc.digest} does not match its descriptor "
            f"(got {hasher.size} bytes, digest {got})"
        )
    return hasher.finish()


def _list_file(path: str, kind: str, diff_id: str, what: str) -> tuple[list[LayerEntry], int]:
    """The entries of the layer file at ``path`` and the length of its tar stream."""
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if kind == KIND_GZIP else raw
        bound = expansion_limit_bytes(os.path.getsize(path)) if kind == KIND_GZIP else None
        reader = HashingReader(stream, bound, what)  # type: ignore[arg-type]
        try:
            entries = list_tar(reader, what)  # type: ignore[arg-type]
            reader.drain()
        except (OSError, EOFError, zlib.error) as exc:
            raise LayerFormatError(f"{what}: not a valid gzip stream: {exc}") from None
    if diff_id and reader.digest() != diff_id:
        raise DigestMismatchError(
            f"{what}: uncompressed layer digest {reader.digest()} does not match "
            f"the config's diffID {diff_id}"
        )
    return entries, reader.count
