"""Listing a layer's tar stream as :class:`LayerEntry` values.

The tar formats are Python's ``tarfile``'s to parse (ustar, GNU long names and
links, PAX incl. ``SCHILY.xattr.*`` and sizes > 8 GiB); this module only maps its
members onto the layer-entry model and refuses what a layer may not hold.
"""

from __future__ import annotations

import hashlib
import tarfile
from decimal import Decimal
from typing import BinaryIO

from ocifs.errors import LayerFormatError
from ocifs.layers.entry import EntryType, LayerEntry, normalize_path

__all__ = ["HashingReader", "list_tar"]

_TYPES = {
    tarfile.REGTYPE: EntryType.REG,
    tarfile.AREGTYPE: EntryType.REG,
    tarfile.CONTTYPE: EntryType.REG,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}
_XATTR_PREFIX = "SCHILY.xattr."
READ_SIZE_BYTES = 1024 * 1024
NS_PER_S = 1_000_000_000


class HashingReader:
    """A read-only file object over ``raw`` that hashes (sha256) every byte read;
    past ``max_bytes`` (None: no bound) it raises :class:`LayerFormatError` naming
    ``what`` (a decompressed stream that expands without bound is a gzip bomb)."""

    def __init__(self, raw: BinaryIO, max_bytes: int | None = None, what: str = "layer") -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.count = 0
        self._max_bytes = max_bytes
        self._what = what

    def read(self, size: int = -1) -> bytes:
        if self._max_bytes is not None:
            left = self._max_bytes + 1 - self.count
            size = left if size < 0 else min(size, left)
        data = self._raw.read(size)
        self.hash.update(data)
        self.count += len(data)
        if self._max_bytes is not None and self.count > self._max_bytes:
            raise LayerFormatError(
                f"{self._what}: uncompressed stream longer than {self._max_bytes} bytes: "
                "refusing a likely gzip bomb"
            )
        return data

    def drain(self) -> None:
        """Read (and hash) whatever is left of the stream."""
        while self.read(READ_SIZE_BYTES):
            pass

    def digest(self) -> str:
        """``sha256:<hex>`` of every byte read so far."""
        return "sha256:" + self.hash.hexdigest()


def _mtime_ns(info: tarfile.TarInfo) -> int:
    """The entry's mtime in nanoseconds, exact for PAX's decimal fractions (a float
    of seconds would round 1600000000.25 to ...0.2499998)."""
    raw = info.pax_headers.get("mtime")
    if raw:
        try:
            return int(Decimal(raw) * NS_PER_S)
        except ArithmeticError:
            pass
    return int(info.mtime) * NS_PER_S


def _entry(info: tarfile.TarInfo, what: str) -> LayerEntry:
    etype = _TYPES.get(info.type)
    if etype is None:
        raise LayerFormatError(
            f"{what}: entry {info.name!r} has unsupported tar type {info.type!r}"
        )
    try:
        path = normalize_path(info.name)
        linkname = info.linkname
        if etype is EntryType.HARDLINK:
            linkname = normalize_path(linkname)
    except LayerFormatError as exc:
        raise LayerFormatError(f"{what}: {exc}") from None
    if info.size < 0:
        # tarfile takes a base-256 size field as signed; no entry has a negative length.
        raise LayerFormatError(f"{what}: entry {info.name!r} has a negative size")
    if etype is EntryType.HARDLINK and not linkname:
        raise LayerFormatError(f"{what}: hardlink {info.name!r} names the root")
    # An empty PAX value deletes the keyword (POSIX pax "extended header"), so an
    # xattr record with an empty value sets nothing (Go's archive/tar agrees).
    xattrs = {
        key[len(_XATTR_PREFIX) :]: value.encode("utf-8", "surrogateescape")
        for key, value in info.pax_headers.items()
        if key.startswith(_XATTR_PREFIX) and value
    }
    return LayerEntry(
        path=path,
        type=etype,
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        mtime_ns=_mtime_ns(info),
        size=info.size if etype is EntryType.REG else 0,
        linkname=linkname,
        devmajor=info.devmajor if etype in (EntryType.CHAR, EntryType.BLOCK) else 0,
        devminor=info.devminor if etype in (EntryType.CHAR, EntryType.BLOCK) else 0,
        xattrs=xattrs,
        data_offset=info.offset_data,
    )


class _Tail:
    """A file object over ``raw`` that remembers the bytes of its last reads, so that
    the header block where ``tarfile`` stopped can be looked at afterwards."""

    KEEP_BYTES = 64 * 1024
    # tarfile skips an entry's data by reading; with a size far past the end of the
    # stream (a PAX "size" of 10**15) it would read nothing for ever.
    MAX_READS_AT_EOF = 16

    def __init__(self, raw: BinaryIO, what: str) -> None:
        self._raw = raw
        self._what = what
        self._pos = 0
        self._start = 0
        self._tail = b""
        self._reads_at_eof = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if not data and size != 0:
            self._reads_at_eof += 1
            if self._reads_at_eof > self.MAX_READS_AT_EOF:
                raise LayerFormatError(
                    f"{self._what}: tar stream ends inside an entry (at byte {self._pos})"
                )
        self._tail = (self._tail + data)[-self.KEEP_BYTES :]
        self._pos += len(data)
        self._start = self._pos - len(self._tail)
        return data

    def block(self, offset: int) -> bytes | None:
        """The 512-byte block at ``offset`` if still remembered (and read whole)."""
        if offset < self._start or offset + tarfile.BLOCKSIZE > self._pos:
            return None
        return self._tail[offset - self._start : offset - self._start + tarfile.BLOCKSIZE]


def list_tar(stream: BinaryIO, what: str) -> list[LayerEntry]:
    """List the entries of an uncompressed tar stream read forward once.

    ``what`` names the layer in error messages. Offsets in the entries are into this
    (uncompressed) stream. Raises :class:`LayerFormatError` for a stream that is not
    a tar archive, is truncated, or holds an entry a layer may not hold (a path
    escaping the root, an unsupported type such as GNU sparse files).
    """
    entries: list[LayerEntry] = []
    tail = _Tail(stream, what)
    try:
        with tarfile.open(fileobj=tail, mode="r|", errorlevel=2) as archive:  # type: ignore[call-overload]
            for info in archive:
                entries.append(_entry(info, what))
                # Stream mode keeps every TarInfo; the entries list is the only copy we need.
                archive.members = []
            # tarfile ends quietly at an invalid header after the first one; a layer's
            # archive ends with zero blocks, anything else is a broken entry.
            stop = tail.block(archive.offset)
            if stop is not None and stop.strip(b"\0"):
                raise LayerFormatError(
                    f"{what}: invalid tar header at byte {archive.offset} "
                    f"(after {len(entries)} entries)"
                )
    except LayerFormatError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as exc:
        raise LayerFormatError(f"{what}: not a valid tar stream: {exc}") from None
    return entries
