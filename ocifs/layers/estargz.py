"""The eStargz layer format: footer, table of contents (TOC), chunk table.

Pure format code: bytes in, values out; no I/O, no FUSE, no cache (the reader is
:mod:`ocifs.layers.estargz_reader`). Written from stargz-snapshotter's
``docs/estargz.md``; section names below are that document's.

An eStargz blob is a valid tar.gz whose gzip members start at file (or chunk)
boundaries ("Structure"). Offsets called *compressed* are byte offsets into the
blob as stored; *uncompressed* offsets are into a file's content.

- The footer ("Footer") is the last 51 bytes: an empty gzip member whose extra
  field holds subfield ``SG`` with ``%016x`` of the TOC's compressed offset and
  ``STARGZ``. The legacy stargz footer is 47 bytes: the same without the subfield
  header.
- The TOC ("TOC, TOCEntries and Footer") is one gzip member from that offset to the
  footer, holding a tar with one file, ``stargz.index.json``. Its sha256 is the
  layer annotation :data:`TOC_DIGEST_ANNOTATION`.
- Each ``reg`` entry's content is one chunk or several (``chunk`` entries follow
  it); a chunk's data starts ``innerOffset`` bytes into the gzip member at
  ``offset`` and is checked by ``chunkDigest``, the sha256 of its uncompressed bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ocifs.errors import DigestMismatchError, LayerFormatError
from ocifs.layers.entry import EntryType, LayerEntry, normalize_path

__all__ = [
    "FOOTER_SIZE_BYTES",
    "LEGACY_FOOTER_SIZE_BYTES",
    "MAX_CHUNK_BYTES",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TOC_DIGEST_ANNOTATION",
    "TOC_NAME",
    "UNCOMPRESSED_SIZE_ANNOTATION",
    "Chunk",
    "Footer",
    "Group",
    "Toc",
    "check_toc_digest",
    "decompress_toc",
    "group_chunks",
    "parse_footer",
    "parse_toc",
]

FOOTER_SIZE_BYTES = 51
LEGACY_FOOTER_SIZE_BYTES = 47
TOC_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
HIDDEN_AT_ROOT = frozenset({TOC_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"

# Bounds that keep a hostile TOC from exhausting memory. A chunk is held whole in
# memory while it is verified; producers default to 4 MiB chunks.
MAX_TOC_COMPRESSED_BYTES = 64 * 1024 * 1024
MAX_TOC_JSON_BYTES = 256 * 1024 * 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024
MAX_FILE_BYTES = 1 << 62

_GZIP_MAGIC = b"\x1f\x8b"
_FEXTRA = 0x04
_FOOTER_MAGIC = b"STARGZ"
_SUBFIELD_LEN = 16 + len(_FOOTER_MAGIC)
_TYPES = {t.value: t for t in EntryType}


@dataclass(frozen=True, slots=True)
class Footer:
    """A parsed footer: the compressed offset of the TOC member and the footer's
    length in bytes (51, or 47 for legacy stargz)."""

    toc_offset: int
    size: int


def parse_footer(tail: bytes, blob_size: int) -> Footer | None:
    """The footer at the end of ``tail`` (the last bytes of a ``blob_size``-byte blob),
    or None when they are not an eStargz (or legacy stargz) footer.

    Checks the gzip member per RFC 1952 (header, FEXTRA, an empty deflate body and
    trailer) and that the TOC offset lies before the footer.
    """
    for size in (FOOTER_SIZE_BYTES, LEGACY_FOOTER_SIZE_BYTES):
        if len(tail) < size or blob_size < size:
            continue
        footer = tail[-size:]
        offset = _footer_offset(footer, legacy=size == LEGACY_FOOTER_SIZE_BYTES)
        if offset is not None and 0 <= offset < blob_size - size:
            return Footer(offset, size)
    return None


def _footer_offset(footer: bytes, *, legacy: bool) -> int | None:
    if footer[:3] != _GZIP_MAGIC + b"\x08" or not footer[3] & _FEXTRA:
        return None
    xlen = int.from_bytes(footer[10:12], "little")
    extra = footer[12 : 12 + xlen]
    if legacy:
        if xlen != _SUBFIELD_LEN:
            return None
        payload = extra
    else:
        # One subfield: SI1 'S', SI2 'G', LEN (little-endian), then the payload.
        if xlen != 4 + _SUBFIELD_LEN or extra[:2] != b"SG":
            return None
        if int.from_bytes(extra[2:4], "little") != _SUBFIELD_LEN:
            return None
        payload = extra[4:]
    hexpart, magic = payload[:16], payload[16:]
    if magic != _FOOTER_MAGIC or not all(c in b"0123456789abcdefABCDEF" for c in hexpart):
        return None
    inflater = zlib.decompressobj(wbits=31)
    try:
        body = inflater.decompress(footer)
    except zlib.error:
        return None
    if body or not inflater.eof or inflater.unused_data:
        return None
    return int(hexpart, 16)


def decompress_toc(member: bytes, what: str) -> bytes:
    """The ``stargz.index.json`` bytes from the TOC's compressed bytes (one gzip member
    holding a tar). Raises :class:`LayerFormatError` naming the layer ``what``."""
    if len(member) > MAX_TOC_COMPRESSED_BYTES:
        raise LayerFormatError(f"{what}: eStargz TOC of {len(member)} bytes is too large")
    inflater = zlib.decompressobj(wbits=31)
    try:
        tar = inflater.decompress(member, MAX_TOC_JSON_BYTES + 64 * 1024)
    except zlib.error as exc:
        raise LayerFormatError(f"{what}: eStargz TOC is not valid gzip: {exc}") from None
    if not inflater.eof:
        raise LayerFormatError(f"{what}: eStargz TOC is truncated or too large")
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:", errorlevel=2) as archive:
            info = archive.next()
            if info is None or normalize_path(info.name) != TOC_NAME or not info.isreg():
                raise LayerFormatError(f"{what}: eStargz TOC member does not hold {TOC_NAME}")
            fh = archive.extractfile(info)
            assert fh is not None
            data = fh.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise LayerFormatError(f"{what}: eStargz TOC is not a valid tar: {exc}") from None
    if len(data) != info.size:
        raise LayerFormatError(f"{what}: eStargz TOC is truncated")
    return data


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a file: ``file_offset``/``size`` (uncompressed bytes of the file),
    the gzip member it sits in, ``comp_offset`` to ``comp_end`` (compressed offsets in
    the blob), ``inner_offset`` (uncompressed bytes into that member before the chunk),
    and the raw 32-byte sha256 of its uncompressed bytes."""

    file_offset: int
    size: int
    comp_offset: int
    comp_end: int
    inner_offset: int
    digest: bytes


@dataclass(slots=True)
class Toc:
    """A layer's parsed TOC: its entries (bookkeeping entries at the root removed), the
    chunk table, and what a prefetch needs.

    For a regular file with content, ``entry.data_offset`` is the index in ``chunks``
    of its first chunk and ``counts[entry.data_offset]`` its number of chunks.
    ``prefetch`` holds the entries placed before ``.prefetch.landmark`` (empty when the
    layer has none). ``verifiable`` is False when some chunk has no digest to check
    (old stargz): such a layer must not be read lazily.
    """

    entries: list[LayerEntry]
    chunks: list[Chunk]
    counts: dict[int, int] = field(default_factory=dict)
    prefetch: list[LayerEntry] = field(default_factory=list)
    verifiable: bool = True

    def chunks_of(self, entry: LayerEntry) -> Sequence[Chunk]:
        """The chunks of a regular file's content, in file order."""
        if entry.type is not EntryType.REG or entry.size == 0:
            return ()
        first = entry.data_offset
        return self.chunks[first : first + self.counts[first]]


@dataclass(frozen=True, slots=True)
class Group:
    """Chunks fetched, verified and cached together: ``chunks[first:stop]``, whose gzip
    members span compressed offsets ``start`` to ``end`` of the blob."""

    start: int
    end: int
    first: int
    stop: int


def group_chunks(chunks: Sequence[Chunk], window_bytes: int) -> tuple[list[Group], list[int]]:
    """Cut the chunk table into groups: the members lying wholly inside one aligned
    ``window_bytes`` window of the blob form one group; a member crossing a window's
    end is a group of its own. Returns the groups and, per chunk, its group's index.

    Small files are so fetched and cached a window at a time (one request and one
    cache entry for many files), while a read of a big file's chunk fetches just it.
    """
    groups: list[Group] = []
    group_of: list[int] = []
    i, n = 0, len(chunks)
    while i < n:
        head = chunks[i]
        window = head.comp_offset // window_bytes
        limit = (window + 1) * window_bytes
        j = i + 1
        if head.comp_end > limit:
            while j < n and chunks[j].comp_offset == head.comp_offset:
                j += 1
        else:
            while (
                j < n
                and chunks[j].comp_offset // window_bytes == window
                and chunks[j].comp_end <= limit
            ):
                j += 1
        end = max(c.comp_end for c in chunks[i:j])
        group_of.extend([len(groups)] * (j - i))
        groups.append(Group(head.comp_offset, end, i, j))
        i = j
    return groups, group_of


def check_toc_digest(toc_json: bytes, annotation: str, what: str) -> None:
    """Raise :class:`DigestMismatchError` unless sha256 of ``toc_json`` equals the
    ``containerd.io/snapshot/stargz/toc.digest`` annotation's value."""
    got = "sha256:" + hashlib.sha256(toc_json).hexdigest()
    if got != annotation:
        raise DigestMismatchError(
            f"{what}: eStargz TOC digest {got} does not match the annotation {annotation}"
        )


def parse_toc(toc_json: bytes, toc_offset: int, what: str) -> Toc:
    """Turn ``stargz.index.json`` into layer entries and a chunk table.

    ``toc_offset`` is the TOC member's compressed offset: every data offset must lie
    before it. Raises :class:`LayerFormatError` naming the layer and entry for JSON
    that does not parse, unknown types, names escaping the root, offsets outside the
    blob or out of order, chunks that do not tile their file, and over-large sizes.
    """
    try:
        doc = json.loads(toc_json)
    except (ValueError, UnicodeError) as exc:
        raise LayerFormatError(f"{what}: eStargz TOC is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise LayerFormatError(f"{what}: eStargz TOC has no entries list")
    builder = _TocBuilder(toc_offset)
    try:
        for pos, raw in enumerate(doc["entries"]):
            if not isinstance(raw, dict):
                raise _Bad(f"#{pos}", "not an object")
            builder.add(raw)
        return builder.finish()
    except _Bad as exc:
        raise LayerFormatError(f"{what}: eStargz TOC entry {exc.name!r}: {exc.msg}") from None


class _Bad(Exception):
    """A TOC entry that breaks a rule; :func:`parse_toc` adds the layer's name."""

    def __init__(self, name: object, msg: str) -> None:
        super().__init__(msg)
        self.name = name
        self.msg = msg


class _TocBuilder:
    """Accumulates TOC entries in order; see :func:`parse_toc`."""

    def __init__(self, toc_offset: int) -> None:
        self.toc_offset = toc_offset
        self.toc = Toc([], [])
        self.file: LayerEntry | None = None  # the regular file whose chunks are open
        self.file_digest = ""
        self.covered = 0  # uncompressed bytes of self.file covered by its chunks so far
        self.last_offset = 0
        self.landmark_seen = False
        self.raw_chunks: list[tuple[int, int, int, int, bytes | None]] = []

    def error(self, name: object, msg: str) -> _Bad:
        return _Bad(name, msg)

    def add(self, raw: dict[str, Any]) -> None:
        kind = raw.get("type")
        name = raw.get("name", "")
        if kind == "chunk":
            if self.file is None:
                raise self.error(name, "chunk without a regular file before it")
            self.add_chunk(self.file.path, raw)
            return
        self.close_file()
        etype = _TYPES.get(kind) if isinstance(kind, str) else None
        if etype is None:
            raise self.error(name, f"unknown type {kind!r}")
        if not isinstance(name, str):
            raise self.error(name, "name is not a string")
        try:
            path = normalize_path(name)
            link = self.text(raw, "linkName")
            if etype is EntryType.HARDLINK:
                link = normalize_path(link)
                if not link:
                    raise LayerFormatError("hardlink names the root")
        except LayerFormatError as exc:
            raise self.error(name, str(exc)) from None
        size = self.field(raw, "size", MAX_FILE_BYTES) if etype is EntryType.REG else 0
        entry = LayerEntry(
            path=path,
            type=etype,
            mode=self.field(raw, "mode", 1 << 32) & 0o7777,
            uid=self.field(raw, "uid", 1 << 32),
            gid=self.field(raw, "gid", 1 << 32),
            mtime_ns=self.mtime(raw),
            size=size,
            linkname=link,
            devmajor=self.field(raw, "devMajor", 1 << 32),
            devminor=self.field(raw, "devMinor", 1 << 32),
            xattrs=self.xattrs(raw),
        )
        hidden = path in HIDDEN_AT_ROOT
        if path == PREFETCH_LANDMARK:
            self.landmark_seen = True
        if not hidden:
            self.toc.entries.append(entry)
            if not self.landmark_seen:
                self.toc.prefetch.append(entry)
        if etype is EntryType.REG and size > 0:
            self.file = entry
            self.file_digest = self.text(raw, "digest")
            entry.data_offset = len(self.raw_chunks)
            self.covered = 0
            self.add_chunk(path, raw)

    def field(self, raw: dict[str, Any], key: str, limit: int) -> int:
        """The non-negative integer ``raw[key]`` (0 when absent), at most ``limit``."""
        value = raw.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
            raise self.error(raw.get("name"), f"invalid {key} {value!r}")
        return value

    def text(self, raw: dict[str, Any], key: str) -> str:
        value = raw.get(key, "")
        if not isinstance(value, str):
            raise self.error(raw.get("name"), f"{key} is not a string")
        return value

    def digest(self, name: object, text: str) -> bytes | None:
        """The raw sha256 of a ``sha256:<hex>`` digest; None when absent. Other
        algorithms are refused rather than ignored."""
        if not text:
            return None
        algo, _, hexpart = text.partition(":")
        if algo != "sha256" or len(hexpart) != 64:
            raise self.error(name, f"unsupported chunk digest {text!r}")
        try:
            return bytes.fromhex(hexpart)
        except ValueError:
            raise self.error(name, f"malformed chunk digest {text!r}") from None

    def mtime(self, raw: dict[str, Any]) -> int:
        text = raw.get("modtime", "")
        if text == "":
            return 0
        try:
            when = datetime.datetime.fromisoformat(str(text))
        except ValueError:
            raise self.error(raw.get("name"), f"invalid modtime {text!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        delta = when - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000

    def xattrs(self, raw: dict[str, Any]) -> dict[str, bytes]:
        found = raw.get("xattrs") or {}
        if not isinstance(found, dict):
            raise self.error(raw.get("name"), "xattrs is not an object")
        out = {}
        for key, value in found.items():
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise self.error(raw.get("name"), f"xattr {key!r} is not base64") from None
            # An empty value deletes the record (POSIX pax), as the tar reader has it.
            if data:
                out[key] = data
        return out

    def add_chunk(self, path: str, raw: dict[str, Any]) -> None:
        assert self.file is not None
        offset = self.field(raw, "offset", MAX_FILE_BYTES)
        if offset >= self.toc_offset:
            raise self.error(path, f"offset {offset} is not before the TOC at {self.toc_offset}")
        if offset < self.last_offset:
            raise self.error(path, f"offset {offset} goes back (previous {self.last_offset})")
        self.last_offset = offset
        chunk_offset = self.field(raw, "chunkOffset", MAX_FILE_BYTES)
        if chunk_offset != self.covered:
            raise self.error(path, f"chunkOffset {chunk_offset}, expected {self.covered}")
        size = self.field(raw, "chunkSize", MAX_FILE_BYTES) or self.file.size - chunk_offset
        if size <= 0 or chunk_offset + size > self.file.size:
            raise self.error(path, f"chunk {chunk_offset}+{size} outside the file's size")
        if size > MAX_CHUNK_BYTES:
            raise self.error(path, f"chunk of {size} bytes exceeds {MAX_CHUNK_BYTES}")
        inner = self.field(raw, "innerOffset", MAX_CHUNK_BYTES)
        digest = self.digest(path, self.text(raw, "chunkDigest"))
        self.covered += size
        self.raw_chunks.append((chunk_offset, size, offset, inner, digest))

    def close_file(self) -> None:
        if self.file is None:
            return
        if self.covered != self.file.size:
            raise self.error(
                self.file.path, f"chunks cover {self.covered} of {self.file.size} bytes"
            )
        first = self.file.data_offset
        count = len(self.raw_chunks) - first
        self.toc.counts[first] = count
        if count == 1 and self.raw_chunks[first][4] is None:
            # A one-chunk file without chunkDigest: its whole-content digest is the same.
            fo, size, off, inner, _ = self.raw_chunks[first]
            whole = self.digest(self.file.path, self.file_digest)
            self.raw_chunks[first] = (fo, size, off, inner, whole)
        self.file = None

    def finish(self) -> Toc:
        self.close_file()
        if not self.landmark_seen:
            self.toc.prefetch.clear()
        # A member ends where the next one (at a greater offset) starts, the last at the TOC.
        ends: dict[int, int] = {}
        nxt = self.toc_offset
        for _, _, offset, _, _ in reversed(self.raw_chunks):
            if offset not in ends:
                ends[offset] = nxt
                nxt = offset
        for file_offset, size, offset, inner, digest in self.raw_chunks:
            if digest is None:
                self.toc.verifiable = False
                digest = b""
            self.toc.chunks.append(Chunk(file_offset, size, offset, ends[offset], inner, digest))
        return self.toc
