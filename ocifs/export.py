"""The merged root filesystem of an image as one tar stream (what ``crane export`` gives).

POSIX pax format (headers written by Python's ``tarfile``): long names and link
targets, large ids and sizes, sub-second mtimes and ``SCHILY.xattr.*`` records go to
pax extended headers as GNU tar and umoci read them. Whiteouts are already applied
by the tree; a file with several names is written once, and its later names (in the
walk's order) as hardlinks to the first. Content is streamed piece by piece: memory
does not grow with the image's size.
"""

from __future__ import annotations

import tarfile
from collections.abc import Awaitable, Callable

from ocifs.browse import read_pieces, walk
from ocifs.errors import FetchError
from ocifs.image import Image
from ocifs.layers.entry import EntryType
from ocifs.tree import Node

__all__ = ["export_tar", "tar_header"]

BLOCK_BYTES = tarfile.BLOCKSIZE  # 512
RECORD_BYTES = tarfile.RECORDSIZE  # 10240: GNU tar's and tarfile's default blocking

_TAR_TYPES = {
    EntryType.REG: tarfile.REGTYPE,
    EntryType.DIR: tarfile.DIRTYPE,
    EntryType.SYMLINK: tarfile.SYMTYPE,
    EntryType.CHAR: tarfile.CHRTYPE,
    EntryType.BLOCK: tarfile.BLKTYPE,
    EntryType.FIFO: tarfile.FIFOTYPE,
}


def tar_header(node: Node, name: str, hardlink_to: str | None = None) -> bytes:
    """The pax header block(s) for ``node`` stored as ``name`` (or as a hardlink to the
    earlier name ``hardlink_to``)."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hardlink_to is not None else _TAR_TYPES[node.type]
    info.mode = node.mode & 0o7777
    info.uid, info.gid = node.uid, node.gid
    info.uname = info.gname = ""
    seconds, frac_ns = divmod(node.mtime_ns, 1_000_000_000)
    info.mtime = seconds
    pax: dict[str, str] = {}
    if frac_ns:
        pax["mtime"] = f"{seconds}.{frac_ns:09d}".rstrip("0")
    if hardlink_to is not None:
        info.linkname = hardlink_to
    elif node.type is EntryType.REG:
        info.size = node.size
    elif node.type is EntryType.SYMLINK:
        info.linkname = node.linkname
    elif node.type in (EntryType.CHAR, EntryType.BLOCK):
        info.devmajor, info.devminor = node.devmajor, node.devminor
    for key, value in sorted(node.xattrs.items()):
        # An empty pax value would delete the record rather than set an empty xattr.
        if value:
            pax["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


async def export_tar(image: Image, write: Callable[[bytes], Awaitable[object]]) -> int:
    """Write the image's merged tree as a tar stream through ``write``; returns the
    number of bytes written. The root is ``./``, other names have no leading ``./``.

    Raises what :func:`ocifs.browse.read_pieces` raises when content cannot be read.
    """
    first_name: dict[int, str] = {}  # ino -> first name of a file with several names
    total = 0
    for path, node in walk(image.tree.root, ""):
        name = path.lstrip("/") or "."
        if node.type is EntryType.DIR:
            name += "/"
        earlier = first_name.get(node.ino) if node.nlink > 1 else None
        if node.type is EntryType.REG and node.nlink > 1 and earlier is None:
            first_name[node.ino] = name
        header = tar_header(node, name, earlier)
        await write(header)
        total += len(header)
        if node.type is EntryType.REG and earlier is None:
            written = 0
            async for piece in read_pieces(image, node):
                await write(piece)
                written += len(piece)
            if written != node.size:
                raise FetchError(f"{path}: read {written} of {node.size} bytes")
            pad = -written % BLOCK_BYTES
            if pad:
                await write(bytes(pad))
            total += written + pad
    # Two zero blocks end the archive; pad the last record as tar does.
    end = 2 * BLOCK_BYTES
    end += -(total + end) % RECORD_BYTES
    await write(bytes(end))
    return total + end
