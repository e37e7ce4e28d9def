"""Differences between the merged trees of two images: which paths were added,
removed or changed, and what changed (type, mode, owner, size, symlink target,
device numbers, xattrs, content), without pulling either image.

Content is compared as cheaply as the indexes allow: a size change needs no read;
the same entry of the same layer blob on both sides is the same content; a digest
the layer's index records (:func:`content_digest`) decides without a read; only
files of the same size with nothing else to go by are read, lazily and in chunks,
until the first differing byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from ocifs.errors import NotFoundError
from ocifs.image import Image, read_node
from ocifs.layers.entry import EntryType, LayerEntry, normalize_path
from ocifs.layers.index import Layer
from ocifs.tree import Node

__all__ = ["Change", "content_digest", "diff_images"]

CONTENT_CHUNK_BYTES = 1024 * 1024
COMPARE_CONCURRENCY = 8

ADDED = "A"
REMOVED = "D"
MODIFIED = "M"


@dataclass(slots=True)
class Change:
    """One differing path (``/a/b``; ``/`` is the root). ``status`` is ``A`` (only in
    the second image), ``D`` (only in the first) or ``M``; ``type`` is the node's type
    (``reg``, ``dir``, ...; the second image's for ``M``). For ``M``, ``changes`` maps
    what differs to ``[old, new]``: ``type``, ``mode`` (permission bits, 0o7777),
    ``owner`` (``[[uid, gid], [uid, gid]]``), ``size`` (bytes), ``target``, ``device``
    (``[[major, minor], ...]``), ``xattrs`` (``{"added"|"removed"|"changed": [names]}``)
    and ``content`` (True)."""

    path: str
    status: str
    type: str
    changes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """``A /path``, ``D /path`` or ``M /path (mode 0644→0755, content)``."""
        if self.status != MODIFIED:
            return f"{self.status} {self.path}"
        return f"{self.status} {self.path} ({', '.join(_describe(self.changes))})"

    def to_json(self) -> dict[str, Any]:
        """The change as a JSON object (exact numbers)."""
        out: dict[str, Any] = {"path": self.path, "status": self.status, "type": self.type}
        if self.status == MODIFIED:
            out["changes"] = self.changes
        return out


def _describe(changes: dict[str, Any]) -> Iterator[str]:
    for key, value in changes.items():
        if key == "content":
            yield "content"
        elif key == "mode":
            yield f"mode {value[0]:04o}→{value[1]:04o}"
        elif key in ("owner", "device"):
            sep = ":" if key == "owner" else ","
            old, new = (sep.join(str(n) for n in pair) for pair in value)
            yield f"{key} {old}→{new}"
        elif key == "xattrs":
            signs = {"added": "+", "removed": "-", "changed": "~"}
            names = [signs[k] + name for k, names in value.items() for name in names]
            yield f"xattrs {' '.join(names)}"
        else:
            yield f"{key} {value[0]}→{value[1]}"


def content_digest(layer: Layer, entry: LayerEntry) -> str | None:
    """The digest of ``entry``'s whole content when ``layer``'s index records one,
    else None. Hook for formats whose index carries per-file digests (the eStargz TOC
    ``digest`` field); tar and gzip indexes carry none."""
    return None


def _xattr_changes(old: dict[str, bytes], new: dict[str, bytes]) -> dict[str, list[str]]:
    found = {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(k for k in old.keys() & new.keys() if old[k] != new[k]),
    }
    return {k: v for k, v in found.items() if v}


def _meta_changes(a: Node, b: Node) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    same_type = a.type is b.type
    if not same_type:
        changes["type"] = [a.type.value, b.type.value]
    if a.mode != b.mode:
        changes["mode"] = [a.mode, b.mode]
    if (a.uid, a.gid) != (b.uid, b.gid):
        changes["owner"] = [[a.uid, a.gid], [b.uid, b.gid]]
    if same_type and a.size != b.size:
        changes["size"] = [a.size, b.size]
    if same_type and a.linkname != b.linkname:
        changes["target"] = [a.linkname, b.linkname]
    if same_type and (a.devmajor, a.devminor) != (b.devmajor, b.devminor):
        changes["device"] = [[a.devmajor, a.devminor], [b.devmajor, b.devminor]]
    xattrs = _xattr_changes(a.xattrs, b.xattrs)
    if xattrs:
        changes["xattrs"] = xattrs
    if same_type and a.type is EntryType.REG and a.size != b.size:
        changes["content"] = True
    return changes


def _same_content_known(ia: Image, a: Node, ib: Image, b: Node) -> bool | None:
    """Whether two regular files of the same size hold the same bytes, when that is
    known without reading them; None when only a read can tell."""
    if a.size == 0:
        return True
    if a.entry is None or b.entry is None:
        return None
    la, lb = ia.layers[a.layer], ib.layers[b.layer]
    if la.desc.digest == lb.desc.digest and (a.entry.path, a.entry.data_offset) == (
        b.entry.path,
        b.entry.data_offset,
    ):
        return True
    da, db = content_digest(la, a.entry), content_digest(lb, b.entry)
    if da is not None and db is not None:
        return da == db
    return None


async def _same_content_read(ia: Image, a: Node, ib: Image, b: Node) -> bool:
    offset = 0
    while offset < a.size:
        chunk_a = await read_node(ia, a, offset, CONTENT_CHUNK_BYTES)
        chunk_b = await read_node(ib, b, offset, CONTENT_CHUNK_BYTES)
        if chunk_a != chunk_b:
            return False
        if not chunk_a:
            break
        offset += len(chunk_a)
    return True


def _subtree(node: Node, path: str) -> Iterator[tuple[str, Node]]:
    """``node`` at ``path`` and everything below it."""
    stack = [(path, node)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if node.children:
            base = path.rstrip("/")
            stack.extend((f"{base}/{name}", child) for name, child in node.children.items())


class _Differ:
    def __init__(self, a: Image, b: Image) -> None:
        self.a, self.b = a, b
        self.changes: dict[str, Change] = {}
        self.to_read: list[tuple[str, Node, Node]] = []

    def only(self, status: str, node: Node, path: str) -> None:
        for sub, n in _subtree(node, path):
            self.changes[sub] = Change(sub, status, n.type.value)

    def pair(self, na: Node | None, nb: Node | None, path: str) -> None:
        stack = [(na, nb, path)]
        while stack:
            na, nb, path = stack.pop()
            if nb is None:
                if na is not None:
                    self.only(REMOVED, na, path)
                continue
            if na is None:
                self.only(ADDED, nb, path)
                continue
            meta = _meta_changes(na, nb)
            if meta:
                self.changes[path] = Change(path, MODIFIED, nb.type.value, meta)
            if na.type is EntryType.REG and nb.type is EntryType.REG and na.size == nb.size:
                known = _same_content_known(self.a, na, self.b, nb)
                if known is None:
                    self.to_read.append((path, na, nb))
                elif not known:
                    self.content_differs(path, nb)
            ca, cb = na.children or {}, nb.children or {}
            base = path.rstrip("/")
            for name in ca.keys() | cb.keys():
                stack.append((ca.get(name), cb.get(name), f"{base}/{name}"))

    def content_differs(self, path: str, nb: Node) -> None:
        change = self.changes.setdefault(path, Change(path, MODIFIED, nb.type.value))
        change.changes["content"] = True

    async def read_all(self) -> None:
        gate = trio.Semaphore(COMPARE_CONCURRENCY)

        async def one(path: str, na: Node, nb: Node) -> None:
            async with gate:
                if not await _same_content_read(self.a, na, self.b, nb):
                    self.content_differs(path, nb)

        async with trio.open_nursery() as nursery:
            for path, na, nb in self.to_read:
                nursery.start_soon(one, path, na, nb)


async def diff_images(a: Image, b: Image, path: str = "/") -> list[Change]:
    """The changes from image ``a`` to image ``b`` at and below ``path`` (not
    following symlinks), sorted by path; empty when the trees are the same. Raises
    :class:`NotFoundError` when neither image has ``path``, and what
    :func:`ocifs.image.read_node` raises when content cannot be read."""
    rel = normalize_path(path)
    na, nb = a.tree.lookup(rel), b.tree.lookup(rel)
    if na is None and nb is None:
        raise NotFoundError(f"{path}: no such file or directory in either image")
    differ = _Differ(a, b)
    differ.pair(na, nb, "/" + rel)
    await differ.read_all()
    return [differ.changes[p] for p in sorted(differ.changes)]
