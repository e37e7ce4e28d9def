"""Writing eStargz layers: an uncompressed tar stream in, an eStargz blob out.

Pure format code (the reader is :mod:`ocifs.layers.estargz`), written from
stargz-snapshotter's ``docs/estargz.md``. Blocking: run it in a worker thread.

The tar stream is copied *losslessly*: each entry's header blocks (extended PAX and
GNU long-name headers included), content and padding are written byte for byte, so
that unpacking the output gives the same tree as the input. What changes:

- gzip members start at file boundaries: the content of every regular file starts a
  new member, and a file larger than the chunk size starts one member per chunk
  (each chunk's data sits at uncompressed offset 0 of its member, so no
  ``innerOffset`` is needed). Headers and padding go into whatever member is open.
- a landmark file comes first (``.no.prefetch.landmark``), or after the prioritized
  entries (``.prefetch.landmark``); bookkeeping entries already at the input's root
  are dropped.
- the input's end-of-archive blocks are dropped; the TOC member holds
  ``stargz.index.json`` and then the end-of-archive blocks; the 51-byte footer ends
  the blob.

*Compressed* offsets are bytes into the blob as written; *uncompressed* offsets and
sizes are bytes of the tar stream or of a file's content. Output is deterministic for
the same input and options: gzip headers carry mtime 0, and the TOC is compact JSON.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
import math
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from ocifs.errors import LayerFormatError, UnsupportedError
from ocifs.layers.entry import normalize_path
from ocifs.layers.estargz import (
    HIDDEN_AT_ROOT,
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC_NAME,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_COMPRESSION_LEVEL",
    "EStargzResult",
    "write_estargz",
]

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
DEFAULT_COMPRESSION_LEVEL = 6  # gzip(1)'s and zlib's default
COPY_PIECE_BYTES = 1024 * 1024
# Extended headers (PAX records, GNU long names) of one entry may not exceed this.
MAX_HEADER_BYTES = 16 * 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
LANDMARK_CONTENT = b"\x0f"

_ZERO_BLOCK = bytes(BLOCK)
_EXTENDED = frozenset(b"xgXLK")  # PAX (x, g, Solaris X) and GNU long name/link (L, K)
_TOC_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}
_XATTR_PREFIX = "SCHILY.xattr."


@dataclass(frozen=True, slots=True)
class EStargzResult:
    """What a consumer of the blob needs: its ``digest`` and ``size`` (compressed
    bytes), the ``diff_id`` and ``uncompressed_size`` of the tar stream it holds, the
    sha256 ``toc_digest`` of ``stargz.index.json`` (the layer annotation), and the
    normalized paths placed before ``.prefetch.landmark``."""

    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    toc_digest: str
    prioritized: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Frame:
    """One entry of the input: its header blocks at ``start`` (``header_len`` bytes),
    then ``data_len`` bytes of content and padding to the next block."""

    start: int
    header_len: int
    data_len: int
    path: str
    hardlink_to: str | None
    has_global: bool


class _Blob:
    """The output: gzip members written to ``out``, with the counters and hashes
    the result needs."""

    def __init__(self, out: BinaryIO, level: int) -> None:
        self.out = out
        self.level = level
        self.offset = 0  # compressed bytes written
        self.usize = 0  # uncompressed bytes written
        self.blob_hash = hashlib.sha256()
        self.diff_hash = hashlib.sha256()
        self._gz: Any = None  # the open member's zlib compressor, if any

    def _emit(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.blob_hash.update(data)
            self.offset += len(data)

    def write(self, data: bytes) -> None:
        """Uncompressed tar bytes into the open member (opening one if none is)."""
        if self._gz is None:
            self._gz = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        self.diff_hash.update(data)
        self.usize += len(data)
        self._emit(self._gz.compress(data))

    def new_member(self) -> int:
        """Close the open member; the next write starts a new one at the returned
        compressed offset."""
        if self._gz is not None:
            self._emit(self._gz.flush())
            self._gz = None
        return self.offset

    def raw(self, data: bytes) -> None:
        """Bytes outside any member (the footer)."""
        self.new_member()
        self._emit(data)


def footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer: an empty gzip member (RFC 1952) whose extra field
    holds subfield ``SG`` = ``%016x`` of the TOC's compressed offset + ``STARGZ``."""
    payload = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + len(payload).to_bytes(2, "little") + payload
    # FLG = FEXTRA, MTIME 0, XFL 0, OS 255 (unknown); then XLEN and the extra field.
    header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + len(extra).to_bytes(2, "little")
    # An empty final stored block, then CRC32 and ISIZE of nothing.
    body = b"\x01\x00\x00\xff\xff" + bytes(8)
    return header + extra + body


def _read_exact(fh: BinaryIO, size: int, what: str, offset: int) -> bytes:
    data = fh.read(size)
    if len(data) != size:
        raise LayerFormatError(f"{what}: tar stream ends inside an entry (at byte {offset})")
    return data


def _parse(header: bytes, what: str, offset: int) -> tarfile.TarInfo:
    """The entry the header blocks describe, as ``tarfile`` reads it (PAX records and
    GNU long names applied, numbers in octal or base-256)."""
    try:
        with tarfile.TarFile(fileobj=io.BytesIO(header + _ZERO_BLOCK * 2), errorlevel=2) as tf:
            info = tf.next()
    except (tarfile.TarError, EOFError, ValueError, UnicodeError) as exc:
        raise LayerFormatError(f"{what}: invalid tar header at byte {offset}: {exc}") from None
    if info is None:
        raise LayerFormatError(f"{what}: invalid tar header at byte {offset}")
    if info.type not in _TOC_TYPES:
        raise LayerFormatError(
            f"{what}: entry {info.name!r} has unsupported tar type {info.type!r}"
        )
    return info


def _size_field(field: bytes) -> int | None:
    """A ustar size field: octal digits, or GNU base-256 (high bit set); None if
    malformed or negative."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    if field[0] & 0x80:
        return None
    digits = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        return None


def _frames(fh: BinaryIO, what: str) -> Iterator[tuple[_Frame, tarfile.TarInfo]]:
    """The entries of the seekable tar stream ``fh`` from its start, up to the
    end-of-archive block (or the end of the stream). The caller may move ``fh``
    between entries. PAX global headers apply to every entry after them."""
    pos = 0
    globals_before = b""  # the global header blocks met so far, for parsing
    while True:
        fh.seek(pos)
        start = pos
        header = bytearray()
        own_globals = bytearray()
        while True:
            block = fh.read(BLOCK)
            if not block and not header:
                return
            if len(block) != BLOCK:
                raise LayerFormatError(f"{what}: tar stream ends inside a header (at {pos})")
            if block == _ZERO_BLOCK and not header:
                return
            header += block
            pos += BLOCK
            kind = block[156]
            if kind not in _EXTENDED:
                break
            size = _size_field(block[124:136])
            if size is None:
                raise LayerFormatError(f"{what}: invalid tar header at byte {pos - BLOCK}")
            padded = -(-size // BLOCK) * BLOCK
            if len(header) + len(globals_before) + padded > MAX_HEADER_BYTES:
                raise LayerFormatError(f"{what}: extended tar header at byte {start} too large")
            data = _read_exact(fh, padded, what, pos)
            header += data
            pos += padded
            if kind == ord("g"):
                own_globals += block + data
        info = _parse(globals_before + bytes(header), what, start)
        globals_before += own_globals
        data_len = -(-info.size // BLOCK) * BLOCK if info.isreg() else 0
        try:
            path = normalize_path(info.name)
            link = normalize_path(info.linkname) if info.islnk() else None
        except LayerFormatError as exc:
            raise LayerFormatError(f"{what}: {exc}") from None
        frame = _Frame(start, len(header), data_len, path, link, bool(own_globals))
        pos += data_len
        yield frame, info


def _modtime(mtime: float) -> str | None:
    """RFC 3339 UTC seconds (rounded), or None for 0 and out-of-range times."""
    seconds = math.floor(mtime + 0.5)  # half away from zero for positive times
    if seconds == 0:
        return None
    try:
        when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _toc_entry(info: tarfile.TarInfo) -> dict[str, Any]:
    """The TOC entry of a tar entry, zero fields left out (as the Go producer does)."""
    kind = _TOC_TYPES[info.type]
    entry: dict[str, Any] = {"name": info.name, "type": kind}
    if kind == "reg" and info.size:
        entry["size"] = info.size
    modtime = _modtime(info.mtime)
    if modtime:
        entry["modtime"] = modtime
    if kind in ("symlink", "hardlink"):
        entry["linkName"] = info.linkname
    for key, value in (("mode", info.mode), ("uid", info.uid), ("gid", info.gid)):
        if value:
            entry[key] = value
    if info.uname:
        entry["userName"] = info.uname
    if info.gname:
        entry["groupName"] = info.gname
    if kind in ("char", "block"):
        if info.devmajor:
            entry["devMajor"] = info.devmajor
        if info.devminor:
            entry["devMinor"] = info.devminor
    xattrs = {
        key[len(_XATTR_PREFIX) :]: base64.b64encode(
            value.encode("utf-8", "surrogateescape")
        ).decode()
        for key, value in sorted(info.pax_headers.items())
        # An empty PAX value deletes the record: no xattr (as the tar reader has it).
        if key.startswith(_XATTR_PREFIX) and value
    }
    if xattrs:
        entry["xattrs"] = xattrs
    return entry


class _Writer:
    """Copies entries from the input ``fh`` into the blob and collects the TOC."""

    def __init__(
        self,
        fh: BinaryIO,
        blob: _Blob,
        chunk_bytes: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.fh = fh
        self.blob = blob
        self.chunk_bytes = chunk_bytes
        self.progress = progress
        self.entries: list[dict[str, Any]] = []

    def copy(self, frame: _Frame, info: tarfile.TarInfo, what: str) -> None:
        """Copy one input entry: header blocks, content (in chunks), padding."""
        self.fh.seek(frame.start)
        self.blob.write(_read_exact(self.fh, frame.header_len, what, frame.start))
        size = info.size if info.isreg() else 0
        data_at = frame.start + frame.header_len
        self._add(_toc_entry(info), size, self.fh, what, data_at)
        if frame.data_len > size:
            self.blob.write(_read_exact(self.fh, frame.data_len - size, what, data_at + size))
        if self.progress is not None:
            self.progress(frame.header_len + frame.data_len)

    def _add(
        self, entry: dict[str, Any], size: int, src: BinaryIO, what: str, data_at: int
    ) -> None:
        """Append ``entry`` (and its chunk entries) to the TOC; for a regular file, copy
        its ``size`` bytes of content from ``src`` (positioned at them) chunk by chunk,
        each chunk starting a gzip member."""
        if entry["type"] != "reg":
            self.entries.append(entry)
            return
        whole = hashlib.sha256()
        done = 0
        current = entry
        while done < size:
            n = min(self.chunk_bytes, size - done)
            current["offset"] = self.blob.new_member()
            if done:
                current["chunkOffset"] = done
            if n < size - done:
                current["chunkSize"] = n  # the last chunk's size is implied
            digest = hashlib.sha256()
            left = n
            while left:
                data = _read_exact(src, min(left, COPY_PIECE_BYTES), what, data_at + done)
                digest.update(data)
                whole.update(data)
                self.blob.write(data)
                left -= len(data)
            current["chunkDigest"] = "sha256:" + digest.hexdigest()
            self.entries.append(current)
            done += n
            current = {"name": entry["name"], "type": "chunk"}
        if not size:
            self.entries.append(entry)
        entry["digest"] = "sha256:" + whole.hexdigest()

    def landmark(self, name: str) -> None:
        """A one-byte landmark file (mode 0644, owner 0:0, mtime 0)."""
        info = tarfile.TarInfo(name)
        info.size = len(LANDMARK_CONTENT)
        self.blob.write(info.tobuf(tarfile.USTAR_FORMAT))
        self._add(_toc_entry(info), info.size, io.BytesIO(LANDMARK_CONTENT), name, 0)
        self.blob.write(bytes(BLOCK - info.size))

    def finish(self) -> str:
        """Write the TOC member and the footer; return the TOC's sha256 digest."""
        toc_json = json.dumps(
            {"version": 1, "entries": self.entries}, separators=(",", ":")
        ).encode()
        toc_offset = self.blob.new_member()
        info = tarfile.TarInfo(TOC_NAME)
        info.size = len(toc_json)
        self.blob.write(info.tobuf(tarfile.USTAR_FORMAT))
        self.blob.write(toc_json + bytes(-len(toc_json) % BLOCK))
        self.blob.write(_ZERO_BLOCK * 2)  # end of archive
        self.blob.raw(footer(toc_offset))
        return "sha256:" + hashlib.sha256(toc_json).hexdigest()


def _prioritized(
    frames: Sequence[_Frame], wanted: Sequence[str]
) -> tuple[list[int], tuple[str, ...]]:
    """Indexes (in input order) of the frames to place first: every occurrence of each
    wanted path found, of its parent directories, and of the files its hardlinks name;
    and the wanted paths found."""
    by_path: dict[str, list[int]] = {}
    for i, frame in enumerate(frames):
        by_path.setdefault(frame.path, []).append(i)
    chosen: set[int] = set()
    seen: set[str] = set()

    def take(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        parent = path.rpartition("/")[0]
        if path:
            take(parent)
        for i in by_path.get(path, ()):
            target = frames[i].hardlink_to
            if target is not None:
                take(target)
            chosen.add(i)

    found = []
    for raw in wanted:
        path = normalize_path(raw)
        if path and path in by_path:
            take(path)
            found.append(path)
    return sorted(chosen), tuple(found)


def write_estargz(
    tar: BinaryIO,
    out: BinaryIO,
    *,
    what: str,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    level: int = DEFAULT_COMPRESSION_LEVEL,
    prioritize: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> EStargzResult:
    """Write the eStargz form of the uncompressed tar stream ``tar`` (a seekable
    binary file, read from offset 0) to ``out``.

    ``chunk_bytes`` bounds the uncompressed bytes of one chunk; ``level`` is the zlib
    compression level (0-9); ``prioritize`` lists paths to place before
    ``.prefetch.landmark`` (with their parent directories and hardlink targets, all in
    input order; paths the layer lacks are skipped; none found: the layer gets
    ``.no.prefetch.landmark`` first). ``progress`` is called with the uncompressed
    bytes of each entry copied. ``what`` names the layer in errors. Raises
    :class:`LayerFormatError` for a stream that is not a valid layer tar.
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    blob = _Blob(out, level)
    writer = _Writer(tar, blob, chunk_bytes, progress)
    first: list[int] = []
    found: tuple[str, ...] = ()
    if prioritize:
        frames = [f for f, _ in _frames(tar, what) if f.path not in HIDDEN_AT_ROOT]
        first, found = _prioritized(frames, prioritize)
        if first and any(f.has_global for f in frames):
            raise UnsupportedError(
                f"{what}: cannot reorder a layer with PAX global headers (--prioritize)"
            )
    if first:
        for i in first:
            _copy_at(writer, frames[i], what)
        writer.landmark(PREFETCH_LANDMARK)
        moved = set(first)
        for i, frame in enumerate(frames):
            if i not in moved:
                _copy_at(writer, frame, what)
    else:
        writer.landmark(NO_PREFETCH_LANDMARK)
        for frame, info in _frames(tar, what):
            if frame.path not in HIDDEN_AT_ROOT:
                writer.copy(frame, info, what)
    toc_digest = writer.finish()
    return EStargzResult(
        digest="sha256:" + blob.blob_hash.hexdigest(),
        size=blob.offset,
        diff_id="sha256:" + blob.diff_hash.hexdigest(),
        uncompressed_size=blob.usize,
        toc_digest=toc_digest,
        prioritized=found,
    )


def _copy_at(writer: _Writer, frame: _Frame, what: str) -> None:
    """Copy a frame found earlier (its header parsed again: frames keep no TarInfo, to
    keep memory to a few numbers per entry). Only for layers without global headers."""
    writer.fh.seek(frame.start)
    header = _read_exact(writer.fh, frame.header_len, what, frame.start)
    writer.copy(frame, _parse(header, what, frame.start), what)
