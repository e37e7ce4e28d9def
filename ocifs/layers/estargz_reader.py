"""Opening and reading eStargz layers lazily (the format is :mod:`ocifs.layers.estargz`).

Opening fetches the footer and the TOC with at most two range requests (one when the
TOC lies in the guessed tail), checks the TOC against the layer annotation
``containerd.io/snapshot/stargz/toc.digest`` when the manifest has it, and keeps it
in the index cache by blob digest, so that a remount needs no request.

A read of a file works out the chunks it covers, takes them from memory (the
mount's :class:`~ocifs.layers.gzip.SpanCache`) or the disk cache (re-verified), and
fetches the rest by group (a big file's chunk alone, small files a 256 KiB window of
the blob at a time): one range request per run of adjacent groups. Each chunk is
inflated in a worker thread and checked against its ``chunkDigest`` before a byte
of it is served or cached. Concurrent readers of one group share one fetch.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import json
import logging
import re
import zlib
from collections.abc import Sequence

import trio

from ocifs.cache import ChunkCache
from ocifs.errors import DigestMismatchError, LayerFormatError
from ocifs.layers.blob import FOREGROUND
from ocifs.layers.entry import EntryType, LayerEntry
from ocifs.layers.estargz import (
    MAX_TOC_COMPRESSED_BYTES,
    TOC_DIGEST_ANNOTATION,
    Chunk,
    Footer,
    Group,
    Toc,
    check_toc_digest,
    decompress_toc,
    group_chunks,
    parse_footer,
    parse_toc,
)
from ocifs.layers.gzip import SpanCache
from ocifs.oci import Descriptor
from ocifs.sources.base import ImageSource

__all__ = ["TAIL_GUESS_BYTES", "EStargzReader", "open_estargz"]

log = logging.getLogger(__name__)

# One request for footer + TOC when the TOC fits in the blob's last 512 KiB (a TOC
# of a few thousand files compresses to tens of KiB).
TAIL_GUESS_BYTES = 512 * 1024
# One range request covers at most this many compressed bytes of adjacent members.
MAX_FETCH_BYTES = 16 * 1024 * 1024
# Members of small files are fetched and cached a 256 KiB window of the blob at a
# time: one request and one (fsync'ed) cache entry for many small files.
GROUP_WINDOW_BYTES = 256 * 1024
# The disk cache keeps verified groups of members under "estargz:<blob hex>", index =
# the group's compressed offset, apart from what ``BlobReader`` keeps under the digest.
CACHE_ALGO = "estargz"
INDEX_SUFFIX = "estargz.gz"
INDEX_VERSION = 1
# The index part where a plain gzip layer's seek index lives (ocifs.layers.index):
# when it exists the layer was found not to be eStargz, and needs no probe.
_ANNOTATION_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


class EStargzReader:
    """Verified reads of the files of one eStargz layer (see the module docstring).

    ``toc`` is the layer's parsed TOC; ``spans`` the mount's bounded memory cache of
    decompressed data; ``limiter`` bounds the worker threads; ``what`` names the layer
    in errors. Chunks are fetched and cached by group
    (:func:`ocifs.layers.estargz.group_chunks`): the disk cache keeps a group's
    compressed bytes once all its chunks are verified, memory keeps verified chunks.
    """

    def __init__(
        self,
        source: ImageSource,
        desc: Descriptor,
        toc: Toc,
        cache: ChunkCache,
        limiter: trio.CapacityLimiter,
        spans: SpanCache,
        what: str,
    ) -> None:
        self.source = source
        self.desc = desc
        self.toc = toc
        self.cache = cache
        self.limiter = limiter
        self.spans = spans
        self.what = what
        self.groups, self._group_of = group_chunks(toc.chunks, GROUP_WINDOW_BYTES)
        self._key = f"{CACHE_ALGO}:{desc.digest.partition(':')[2]}"
        self._inflight: dict[int, trio.Event] = {}

    @property
    def entries(self) -> list[LayerEntry]:
        """The layer's entries, bookkeeping entries at the root left out."""
        return self.toc.entries

    async def read_entry(self, entry: LayerEntry, offset: int, size: int) -> bytes:
        """``size`` bytes at uncompressed ``offset`` of regular file ``entry``'s content
        (fewer at its end), verified. Raises :class:`DigestMismatchError` when a chunk
        does not match its ``chunkDigest`` (or does not inflate),
        :class:`ocifs.errors.FetchError` when the source fails."""
        end = min(offset + size, entry.size)
        chunks = self.toc.chunks_of(entry)
        if offset >= end or not chunks:
            return b""
        first = bisect.bisect_right(chunks, offset, key=_file_offset) - 1
        last = bisect.bisect_right(chunks, end - 1, key=_file_offset) - 1
        base = entry.data_offset
        with FOREGROUND.active():
            datas = await self._chunks(entry.path, range(base + first, base + last + 1))
        parts = []
        for chunk, data in zip(chunks[first : last + 1], datas, strict=True):
            lo = max(offset, chunk.file_offset) - chunk.file_offset
            hi = min(end, chunk.file_offset + chunk.size) - chunk.file_offset
            parts.append(data[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def prefetch(self) -> None:
        """Bring the files placed before ``.prefetch.landmark`` into the disk cache, a
        group at a time once no foreground read is fetching; stops at the cache bound
        (it never evicts to make room for itself). The layer's ``landmark`` hook."""
        for entry in self.toc.prefetch:
            if entry.type is not EntryType.REG or not entry.size:
                continue
            first = entry.data_offset
            for i in range(first, first + self.toc.counts[first]):
                group = self.groups[self._group_of[i]]
                free = await trio.to_thread.run_sync(self.cache.free_bytes, limiter=self.limiter)
                if free < group.end - group.start:
                    log.info("%s: prefetch stopped at the cache bound", self.what)
                    return
                await FOREGROUND.wait_idle()
                await self._chunks(entry.path, range(i, i + 1))

    async def seed(self, offset: int, data: bytes) -> None:
        """Verify and cache the groups lying wholly in ``data`` (blob bytes from
        compressed ``offset``), fetched anyway with the TOC. Chunks that fail are
        left for a read to fetch (and report)."""
        inside = [
            g
            for g, group in enumerate(self.groups)
            if group.start >= offset and group.end <= offset + len(data)
        ]
        if inside:
            found, _ = await trio.to_thread.run_sync(
                self._verify_and_store, inside, offset, data, limiter=self.limiter
            )
            for i, piece in found.items():
                self.spans.put((self._key, i), piece)

    # -- single-flight over memory, disk, network ----------------------------

    async def _chunks(self, path: str, wanted: range) -> list[bytes]:
        got: dict[int, bytes] = {}
        while True:
            for i in wanted:
                if i not in got:
                    data = self.spans.get((self._key, i))
                    if data is not None:
                        got[i] = data
            missing = [i for i in wanted if i not in got]
            if not missing:
                return [got[i] for i in wanted]
            need = sorted({self._group_of[i] for i in missing})
            waits = [self._inflight[g] for g in need if g in self._inflight]
            mine = [g for g in need if g not in self._inflight]
            if mine:
                events = {g: trio.Event() for g in mine}
                self._inflight.update(events)
                try:
                    loaded, bad = await self._load(mine)
                finally:
                    for g, event in events.items():
                        del self._inflight[g]
                        event.set()
                got.update(loaded)
                for i in missing:
                    if i in bad:
                        chunk = self.toc.chunks[i]
                        raise DigestMismatchError(
                            f"{self.what}: file {path!r}: chunk at {chunk.file_offset} (blob "
                            f"bytes {chunk.comp_offset}-{chunk.comp_end - 1}) {bad[i]}"
                        )
            # Groups another reader was loading are in memory now; when that reader
            # failed (or memory dropped them), the next round loads them here.
            for event in waits:
                await event.wait()

    async def _load(self, groups: list[int]) -> tuple[dict[int, bytes], dict[int, str]]:
        """The verified chunks of ``groups`` (from disk, else fetched), and for chunks
        that failed verification, why."""
        got, bad, missing = await trio.to_thread.run_sync(
            self._from_disk, groups, limiter=self.limiter
        )
        for run in _runs(self.groups, missing):
            start, end = self.groups[run[0]].start, self.groups[run[-1]].end
            data = await self.source.read_blob(self.desc, start, end - start)
            found, failed = await trio.to_thread.run_sync(
                self._verify_and_store, run, start, data, limiter=self.limiter
            )
            got.update(found)
            bad.update(failed)
        for i, piece in got.items():
            self.spans.put((self._key, i), piece)
        return got, bad

    # -- worker threads ---------------------------------------------------------

    def _from_disk(self, groups: list[int]) -> tuple[dict[int, bytes], dict[int, str], list[int]]:
        """Chunks of the groups found intact in the disk cache, and the groups not
        found; a group whose bytes no longer verify is dropped (and logged)."""
        got: dict[int, bytes] = {}
        missing = []
        for g in groups:
            group = self.groups[g]
            data = self.cache.get_chunk(self._key, group.start)
            if data is None:
                missing.append(g)
                continue
            found, failed = self._verify(group, data)
            if failed:
                log.warning("cache: dropping corrupt eStargz group %d of %s", g, self.desc.digest)
                self.cache.drop_chunk(self._key, group.start)
                missing.append(g)
            else:
                got.update(found)
        return got, {}, missing

    def _verify_and_store(
        self, run: list[int], start: int, data: bytes
    ) -> tuple[dict[int, bytes], dict[int, str]]:
        """Verify the groups ``run`` in ``data`` (compressed bytes from offset
        ``start``); cache each group whose chunks all verify."""
        got: dict[int, bytes] = {}
        bad: dict[int, str] = {}
        for g in run:
            group = self.groups[g]
            raw = data[group.start - start : group.end - start]
            found, failed = self._verify(group, raw)
            got.update(found)
            bad.update(failed)
            if not failed:
                self.cache.put_chunk(self._key, group.start, raw)
        return got, bad

    def _verify(self, group: Group, raw: bytes) -> tuple[dict[int, bytes], dict[int, str]]:
        """Inflate the group's chunks from its compressed bytes ``raw`` and check each
        against its digest: (verified chunks, reasons for the others)."""
        members: dict[int, bytes | str] = {}
        got: dict[int, bytes] = {}
        bad: dict[int, str] = {}
        for i in range(group.first, group.stop):
            chunk = self.toc.chunks[i]
            member = members.get(chunk.comp_offset)
            if member is None:
                need = max(
                    c.inner_offset + c.size
                    for c in self.toc.chunks[i : group.stop]
                    if c.comp_offset == chunk.comp_offset
                )
                member = members[chunk.comp_offset] = _inflate(
                    raw[chunk.comp_offset - group.start : chunk.comp_end - group.start], need
                )
            if isinstance(member, str):
                bad[i] = member
                continue
            piece = member[chunk.inner_offset : chunk.inner_offset + chunk.size]
            if len(piece) == chunk.size and hashlib.sha256(piece).digest() == chunk.digest:
                got[i] = piece
            else:
                bad[i] = "does not match its chunkDigest"
        return got, bad


def _inflate(raw: bytes, size: int) -> bytes | str:
    """The first ``size`` bytes a gzip member inflates to, or why it does not."""
    try:
        return zlib.decompressobj(wbits=31).decompress(raw, size)
    except zlib.error as exc:
        return f"does not inflate ({exc})"


def _file_offset(chunk: Chunk) -> int:
    return chunk.file_offset


def _runs(groups: Sequence[Group], indexes: list[int]) -> list[list[int]]:
    """Group indexes joined into runs of touching groups, each spanning at most
    :data:`MAX_FETCH_BYTES` of the blob: one range request per run."""
    runs: list[list[int]] = []
    for g in sorted(indexes):
        if runs:
            head, tail = groups[runs[-1][0]], groups[runs[-1][-1]]
            if groups[g].start <= tail.end and groups[g].end - head.start <= MAX_FETCH_BYTES:
                runs[-1].append(g)
                continue
        runs.append([g])
    return runs


# -- opening ----------------------------------------------------------------------


async def open_estargz(
    source: ImageSource,
    desc: Descriptor,
    cache: ChunkCache,
    limiter: trio.CapacityLimiter,
    spans: SpanCache,
    what: str,
) -> EStargzReader | None:
    """A reader for the gzip layer ``desc`` if it is eStargz, else None.

    eStargz is read lazily only when the TOC digest annotation names its TOC: a
    layer without it, or whose TOC lacks chunk digests (old stargz), gives None and
    is read as plain gzip, verified against its blob digest. Raises
    :class:`LayerFormatError` for an annotated layer without a valid footer, or a
    TOC that does not parse or breaks the rules of
    :func:`ocifs.layers.estargz.parse_toc`; :class:`DigestMismatchError` when the TOC
    does not match the annotation; what the source raises.
    """
    annotation = desc.annotations.get(TOC_DIGEST_ANNOTATION)
    if annotation is None:
        # Nothing names this layer's TOC digest, so its chunk digests could not be
        # trusted: read it as plain gzip, whose one stream is checked against the
        # blob digest (stargz-snapshotter likewise refuses lazy pulls without it).
        return None
    if not _ANNOTATION_RE.match(annotation):
        raise LayerFormatError(f"{what}: malformed {TOC_DIGEST_ANNOTATION} {annotation!r}")
    cached = await trio.to_thread.run_sync(
        _load_cached, cache, desc.digest, annotation, limiter=limiter
    )
    tail_start, tail = 0, b""
    if cached is not None:
        toc_offset, toc_json = cached
    else:
        footer, member, tail_start, tail = await _fetch_toc(source, desc, what)
        toc_offset = footer.toc_offset
        toc_json = await trio.to_thread.run_sync(decompress_toc, member, what, limiter=limiter)
        check_toc_digest(toc_json, annotation, what)
    toc = await trio.to_thread.run_sync(parse_toc, toc_json, toc_offset, what, limiter=limiter)
    if not toc.verifiable:
        log.info("%s: eStargz TOC without chunk digests: reading the layer as plain gzip", what)
        return None
    if cached is None:
        blob = _index_bytes(desc.digest, toc_offset, toc_json)
        await trio.to_thread.run_sync(cache.put_index, desc.digest, INDEX_SUFFIX, blob)
    log.info("%s: eStargz layer, %d entries", what, len(toc.entries))
    reader = EStargzReader(source, desc, toc, cache, limiter, spans, what)
    if cached is None:
        # Groups that came with the tail (all of a small layer) need no second fetch.
        await reader.seed(tail_start, tail)
    return reader


async def _fetch_toc(
    source: ImageSource, desc: Descriptor, what: str
) -> tuple[Footer, bytes, int, bytes]:
    """The footer, the TOC's compressed bytes, and the tail read (its offset and
    bytes), by at most two range requests: a guessed tail, then the rest of the TOC
    if the tail did not cover it."""
    size = desc.size
    tail_len = min(size, TAIL_GUESS_BYTES)
    tail = await source.read_blob(desc, size - tail_len, tail_len) if tail_len else b""
    footer = parse_footer(tail, size)
    if footer is None:
        raise LayerFormatError(
            f"{what}: layer has {TOC_DIGEST_ANNOTATION} but no valid eStargz footer"
        )
    member_len = size - footer.size - footer.toc_offset
    if member_len > MAX_TOC_COMPRESSED_BYTES:
        raise LayerFormatError(f"{what}: eStargz TOC of {member_len} bytes is too large")
    tail_start = size - tail_len
    if footer.toc_offset >= tail_start:
        member = tail[footer.toc_offset - tail_start : tail_len - footer.size]
    else:
        head = await source.read_blob(desc, footer.toc_offset, tail_start - footer.toc_offset)
        member = head + tail[: tail_len - footer.size]
    return footer, member, tail_start, tail


def _index_bytes(digest: str, toc_offset: int, toc_json: bytes) -> bytes:
    header = {"version": INDEX_VERSION, "digest": digest, "toc_offset": toc_offset}
    return gzip.compress(json.dumps(header).encode() + b"\n" + toc_json, 6)


def _load_cached(cache: ChunkCache, digest: str, annotation: str) -> tuple[int, bytes] | None:
    """(TOC offset, TOC JSON) from the index cache, or None. A cached TOC that does
    not match the annotation is ignored (the caller refetches and checks it)."""
    data = cache.get_index(digest, INDEX_SUFFIX)
    if data is not None:
        try:
            header_line, _, toc_json = gzip.decompress(data).partition(b"\n")
            header = json.loads(header_line)
            if header.get("version") == INDEX_VERSION and header.get("digest") == digest:
                toc_offset = int(header["toc_offset"])
                if "sha256:" + hashlib.sha256(toc_json).hexdigest() == annotation:
                    return toc_offset, toc_json
        except (ValueError, KeyError, TypeError, OSError, EOFError) as exc:
            log.warning("cache: ignoring unreadable eStargz index of %s (%s)", digest, exc)
    return None
