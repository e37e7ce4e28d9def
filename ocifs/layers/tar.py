"""Listing a layer's tar stream as :class:`LayerEntry` values.

The tar formats are Python's ``tarfile``'s to parse (ustar, GNU long names and
links, PAX incl. ``SCHILY.xattr.*`` and sizes > 8 GiB); this module only maps its
members onto the layer-entry model and refuses what a layer may not hold.
"""

from __future__ import annotations

import hashlib
import tarfile
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


class HashingReader:
    """A read-only file object over ``raw`` that hashes (sha256) every byte read."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) whatever is left of the stream."""
        while self.read(READ_SIZE_BYTES):
            pass

    def digest(self) -> str:
        """``sha256:<hex>`` of every byte read so far."""
        return "sha256:" + self.hash.hexdigest()


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
        mtime_ns=int(info.mtime * 1_000_000_000),
        size=info.size if etype is EntryType.REG else 0,
        linkname=linkname,
        devmajor=info.devmajor if etype in (EntryType.CHAR, EntryType.BLOCK) else 0,
        devminor=info.devminor if etype in (EntryType.CHAR, EntryType.BLOCK) else 0,
        xattrs=xattrs,
        data_offset=info.offset_data,
    )


def list_tar(stream: BinaryIO, what: str) -> list[LayerEntry]:
    """List the entries of an uncompressed tar stream read forward once.

    ``what`` names the layer in error messages. Offsets in the entries are into this
    (uncompressed) stream. Raises :class:`LayerFormatError` for a stream that is not
    a tar archive, is truncated, or holds an entry a layer may not hold (a path
    escaping the root, an unsupported type such as GNU sparse files).
    """
    entries: list[LayerEntry] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as archive:
            for info in archive:
                entries.append(_entry(info, what))
                # Stream mode keeps every TarInfo; the entries list is the only copy we need.
                archive.members = []  # type: ignore[attr-defined]
    except LayerFormatError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as exc:
        raise LayerFormatError(f"{what}: not a valid tar stream: {exc}") from None
    return entries
