"""The merged view of an image: whiteouts, opaque directories, hardlinks, inode numbers.

Layers are applied bottom to top as image-spec layer.md "Changesets" and "Whiteouts"
describe. Where the spec leaves room, the result matches ``umoci raw unpack``
(checked against umoci 0.4.7), except that order inside one layer never matters for
whiteouts: a layer's whiteouts are applied to the lower layers before any of its other
entries, which is umoci's result whenever the whiteouts come first in the tar.
"""

from __future__ import annotations

import os
import stat
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from ocifs.errors import LayerFormatError
from ocifs.layers.entry import EntryType, LayerEntry

__all__ = ["ROOT_INO", "Node", "Tree", "apply_layer", "build_tree", "empty_root", "parent_of"]

ROOT_INO = 1  # pyfuse3.ROOT_INODE
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# filepath-securejoin's bound on symlink expansions, as umoci resolves entry parents
# with it; past it the resolution is a loop.
MAX_SYMLINK_HOPS = 255
# umoci creates missing parents with MkdirAll(0o777) under umask 022, owned by the
# unpacking user: 0755 0:0 when run as root. Their mtime is the unpack time there;
# here it is 0 so that the same image always gives the same tree.
IMPLICIT_DIR_MODE = 0o755

DIR_SIZE_BYTES = 4096
_S_IFMT = {
    EntryType.REG: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}

_DIR = EntryType.DIR
_SYMLINK = EntryType.SYMLINK
_HARDLINK = EntryType.HARDLINK


@dataclass(slots=True, eq=False)
class Node:
    """One inode of the merged tree; a hardlinked file is one node under several names.

    ``layer``/``entry`` name the layer entry whose content this node serves (-1/None
    for implicit directories). ``names`` (directories) are the sorted child names.
    """

    type: EntryType
    mode: int = IMPLICIT_DIR_MODE
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    children: dict[str, Node] | None = None
    layer: int = -1
    entry: LayerEntry | None = None
    ino: int = 0
    nlink: int = 0
    names: tuple[str, ...] = ()
    parent: Node | None = None  # directories only; the root is its own parent

    @property
    def st_mode(self) -> int:
        """The stat(2) ``st_mode``: file type bits and permission bits."""
        return _S_IFMT[self.type] | self.mode

    @property
    def st_size(self) -> int:
        """The stat(2) ``st_size`` in bytes, as a disk file system would report it:
        content length, symlink target length, :data:`DIR_SIZE_BYTES` for directories."""
        if self.type is EntryType.REG:
            return self.size
        if self.type is _SYMLINK:
            return len(os.fsencode(self.linkname))
        return DIR_SIZE_BYTES if self.type is _DIR else 0


def _implicit_dir() -> Node:
    return Node(_DIR, children={})


def _node_from(entry: LayerEntry, layer: int) -> Node:
    etype = entry.type
    return Node(
        etype,
        entry.mode & 0o7777,
        entry.uid,
        entry.gid,
        entry.mtime_ns,
        entry.size if etype is EntryType.REG else 0,
        entry.linkname if etype is _SYMLINK else "",
        entry.devmajor,
        entry.devminor,
        entry.xattrs,
        {} if etype is _DIR else None,
        layer,
        entry,
    )


def _set_dir_meta(node: Node, entry: LayerEntry, layer: int) -> None:
    # A directory entry over a directory replaces its metadata (xattrs too, as umoci
    # clears them before applying the entry's) and keeps its children.
    node.mode = entry.mode & 0o7777
    node.uid, node.gid, node.mtime_ns = entry.uid, entry.gid, entry.mtime_ns
    node.xattrs = entry.xattrs
    node.layer, node.entry = layer, entry


class _ResolveError(Exception):
    """A path could not be resolved; the caller adds layer and entry to the message."""


def _walk(root: Node, path: str, *, create: bool) -> Node | None:
    """Resolve ``path`` inside the image root following every symlink, securejoin-style.

    Absolute targets restart at the image root and ``..`` stops there. Missing
    components give None, or become implicit directories when ``create`` is set.
    """
    stack = [root]
    todo = path.split("/")
    todo.reverse()
    hops = 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if len(stack) > 1:
                stack.pop()
            continue
        children = stack[-1].children
        assert children is not None
        child = children.get(name)
        if child is None:
            if not create:
                return None
            child = children[name] = _implicit_dir()
        elif child.type is _SYMLINK:
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise _ResolveError("too many levels of symbolic links")
            target = child.linkname
            if not target:
                raise _ResolveError(f"empty symlink target at {name!r}")
            if target.startswith("/"):
                del stack[1:]
            parts = target.split("/")
            parts.reverse()
            todo.extend(parts)
            continue
        elif child.type is not _DIR:
            if todo:
                if not create:
                    return None
                raise _ResolveError(f"parent component {name!r} is not a directory")
            return child
        stack.append(child)
    return stack[-1]


class _LayerMerge:
    """Applies one layer to the tree built from the layers below it."""

    def __init__(self, root: Node, index: int, entries: Sequence[LayerEntry]) -> None:
        self.root = root
        self.index = index
        self.whiteouts: list[LayerEntry] = []
        self.entries: list[LayerEntry] = []
        for entry in entries:
            if entry.path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
                self.whiteouts.append(entry)
            else:
                self.entries.append(entry)
        # Parent path as written in this layer -> its resolved directory. Valid until
        # an entry replaces a directory or a symlink that a cached path may run through.
        self.dirs: dict[str, Node] = {}
        # Hardlink bookkeeping, only for layers that have hardlinks: the positions of
        # same-layer entries at each link target path, and the nodes made for them.
        self.targets: dict[str, list[int]] = {}
        self.made: dict[int, Node] = {}
        self.lower_links: dict[int, Node] = {}

    def error(self, path: str, what: str) -> LayerFormatError:
        return LayerFormatError(f"layer {self.index}: entry {path!r}: {what}")

    def apply(self) -> None:
        links = [(pos, e) for pos, e in enumerate(self.entries) if e.type is _HARDLINK]
        if links:
            link_targets = {e.linkname for _, e in links}
            for pos, entry in enumerate(self.entries):
                if entry.path in link_targets and entry.type is not _HARDLINK:
                    self.targets.setdefault(entry.path, []).append(pos)
            # A link to a lower file binds to it as the lower layers left it, before
            # this layer's whiteouts: those act on lower layers, not on this layer's links.
            for pos, entry in links:
                if entry.linkname not in self.targets:
                    node = self.find(entry)
                    if node is not None:
                        self.lower_links[pos] = node
        for entry in self.whiteouts:
            self.whiteout(entry)
        for pos, entry in enumerate(self.entries):
            self.place(pos, entry)

    def whiteout(self, entry: LayerEntry) -> None:
        dir_path, _, base = entry.path.rpartition("/")
        name = "" if base == OPAQUE_MARKER else base[len(WHITEOUT_PREFIX) :]
        if base != OPAQUE_MARKER and name in ("", ".", ".."):
            raise self.error(entry.path, f"whiteout names no file ({name!r})")
        try:
            directory = _walk(self.root, dir_path, create=False)
        except _ResolveError as exc:
            raise self.error(entry.path, str(exc)) from None
        if directory is None or directory.children is None:
            return  # nothing below to hide (umoci: a no-op too)
        if name:
            directory.children.pop(name, None)
        else:
            directory.children.clear()

    def parent_dir(self, parent_path: str, path: str) -> Node:
        node = self.dirs.get(parent_path)
        if node is not None:
            return node
        try:
            node = _walk(self.root, parent_path, create=True)
        except _ResolveError as exc:
            raise self.error(path, str(exc)) from None
        assert node is not None
        if node.children is None:
            # umoci 0.4.7 and containerd fail here (ENOTDIR); newer umoci replaces
            # the file with a directory. Failing loudly is the safer of the two.
            raise self.error(path, "parent is not a directory")
        self.dirs[parent_path] = node
        return node

    def place(self, pos: int, entry: LayerEntry) -> None:
        path, etype = entry.path, entry.type
        if not path:
            if etype is not _DIR:
                raise self.error(path, f"the root cannot be a {etype.value}")
            _set_dir_meta(self.root, entry, self.index)
            return
        parent_path, _, name = path.rpartition("/")
        children = self.parent_dir(parent_path, path).children
        assert children is not None
        old = children.get(name)
        if etype is _DIR and old is not None and old.type is _DIR:
            _set_dir_meta(old, entry, self.index)
            return
        if etype is _HARDLINK:
            node = self.link_target(pos, entry)
        else:
            made = self.made.pop(pos, None)
            node = made if made is not None else _node_from(entry, self.index)
            if path in self.targets:
                self.made[pos] = node
        if old is not None and (old.type is _DIR or old.type is _SYMLINK):
            self.dirs.clear()
        children[name] = node

    def find(self, entry: LayerEntry) -> Node | None:
        """The node at a hardlink's target path, its parents resolved in the image root."""
        parent_path, _, name = entry.linkname.rpartition("/")
        if not name:
            return self.root
        try:
            parent = _walk(self.root, parent_path, create=False)
        except _ResolveError as exc:
            raise self.error(entry.path, f"hardlink target {entry.linkname!r}: {exc}") from None
        return None if parent is None or parent.children is None else parent.children.get(name)

    def link_target(self, pos: int, entry: LayerEntry) -> Node:
        """The node a hardlink names: a same-layer entry at that path, else the file the
        lower layers have there, else what this layer has made there so far."""
        target = entry.linkname
        node: Node | None
        positions = self.targets.get(target)
        if positions:
            i = bisect_left(positions, pos)
            # The latest entry at the path before the link, else the first after it.
            tpos = positions[i - 1] if i > 0 else positions[i]
            if self.entries[tpos].type is _DIR:
                raise self.error(entry.path, f"hardlink to directory {target!r}")
            node = self.made.get(tpos)
            if node is None:
                node = self.made[tpos] = _node_from(self.entries[tpos], self.index)
        else:
            node = self.lower_links.get(pos) or self.find(entry)
        if node is None:
            raise self.error(entry.path, f"hardlink target {target!r} does not exist")
        if node.type is _DIR:
            raise self.error(entry.path, f"hardlink to directory {target!r}")
        return node


class Tree:
    """The merged tree of one image, with inodes numbered from :data:`ROOT_INO`."""

    def __init__(self, root: Node, by_ino: list[Node]) -> None:
        self.root = root
        self._by_ino = by_ino  # by_ino[ino - 1]
        self.nodes = len(by_ino)

    def get(self, ino: int) -> Node:
        """The node with inode number ``ino``; KeyError when there is none."""
        if 1 <= ino <= self.nodes:
            return self._by_ino[ino - 1]
        raise KeyError(ino)

    def lookup(self, path: str) -> Node | None:
        """The node at ``path`` ("" is the root) without following any symlink."""
        node = self.root
        for name in path.split("/"):
            if not name:
                continue
            if node.children is None:
                return None
            child = node.children.get(name)
            if child is None:
                return None
            node = child
        return node

    def resolve(self, path: str) -> Node | None:
        """The node at ``path`` following symlinks inside the image root (like the
        kernel in a chroot); None when missing or when the symlinks loop."""
        try:
            return _walk(self.root, path, create=False)
        except _ResolveError:
            return None


def _number(root: Node) -> list[Node]:
    # Depth-first in sorted name order, so the same image always gets the same inodes.
    by_ino = [root]
    root.ino, root.nlink, root.parent = ROOT_INO, 2, root
    root.names = tuple(sorted(root.children or ()))
    stack = [(root, iter(root.names))]
    while stack:
        directory, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        assert directory.children is not None
        child = directory.children[name]
        if child.ino:
            child.nlink += 1  # another name of a hardlinked node
            continue
        by_ino.append(child)
        child.ino = len(by_ino)
        if child.children is None:
            child.nlink = 1
        else:
            child.nlink, child.parent = 2, directory
            directory.nlink += 1
            child.names = tuple(sorted(child.children))
            stack.append((child, iter(child.names)))
    return by_ino


def build_tree(layers: Sequence[Sequence[LayerEntry]]) -> Tree:
    """Merge ``layers`` (index 0 at the bottom) per image-spec layer.md "Changesets" and
    "Whiteouts"; raises LayerFormatError naming the layer index and the entry path."""
    root = _implicit_dir()
    for index, entries in enumerate(layers):
        _LayerMerge(root, index, entries).apply()
    return Tree(root, _number(root))


def empty_root() -> Node:
    """A root with no children, as :func:`build_tree` starts from, for :func:`apply_layer`."""
    return _implicit_dir()


def apply_layer(root: Node, index: int, entries: Sequence[LayerEntry]) -> None:
    """Apply layer ``index`` in place on the tree at ``root`` as :func:`build_tree` does
    (for callers that look at the tree between layers); raises LayerFormatError."""
    _LayerMerge(root, index, entries).apply()


def parent_of(root: Node, path: str) -> Node | None:
    """The directory holding ``path`` (not "") in the tree at ``root``, its parents
    resolved through symlinks inside the image root as entries are placed; None when
    it is missing, not a directory, or the symlinks loop."""
    try:
        node = _walk(root, path.rpartition("/")[0], create=False)
    except _ResolveError:
        return None
    return node if node is not None and node.children is not None else None
