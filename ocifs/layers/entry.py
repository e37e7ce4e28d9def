"""The layer-entry model every layer format produces and the merged tree consumes.

A layer format (tar, gzip'd tar, eStargz) lists its entries as :class:`LayerEntry`
values in the order of the layer; the tree (``ocifs.tree``) needs nothing else.
Whiteout entries (image-spec layer.md "Whiteouts") are kept as ordinary entries
with their ``.wh.`` names: interpreting them is the tree's job.
"""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass, field

from ocifs.errors import LayerFormatError

__all__ = ["EntryType", "LayerEntry", "normalize_path"]


class EntryType(enum.Enum):
    """The kinds of tar entry a layer may hold (POSIX ustar typeflags)."""

    REG = "reg"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(slots=True)
class LayerEntry:
    """One entry of a layer.

    ``path`` is normalized by :func:`normalize_path` ("" is the root). ``mode`` holds
    the permission bits including setuid/setgid/sticky (``0o7777``), not the type.
    ``size`` is the content length in bytes (regular files; 0 otherwise).
    ``linkname`` is the raw symlink target, or for a hardlink the normalized path of
    the entry it names. ``data_offset`` is the offset in bytes of the content in the
    layer's *uncompressed* tar stream (for eStargz, which addresses files by chunk, the
    index of the file's first chunk in the layer's chunk table: see
    ``ocifs.layers.estargz.Toc``). ``mtime_ns`` is nanoseconds since the epoch.
    """

    path: str
    type: EntryType
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    data_offset: int = 0


def normalize_path(name: str) -> str:
    """Return ``name`` as a root-relative path: ``./x``, ``x`` and ``/x`` all give ``x``.

    The root itself gives "". Raises :class:`LayerFormatError` when the path would
    leave the root through ``..`` or holds a NUL byte.
    """
    if "\0" in name:
        raise LayerFormatError(f"entry name holds a NUL byte: {name!r}")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise LayerFormatError(f"entry escapes the root: {name!r}")
            parts.pop()
            continue
        parts.append(part)
    return posixpath.join(*parts) if parts else ""
