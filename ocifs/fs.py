"""The read-only FUSE file system (pyfuse3 ``Operations``) over a merged image tree.

Thin by design (after s3ql): it maps inodes to tree nodes and reads to layer
reads; it knows nothing of HTTP, caches or compression. Inodes are the tree's,
stable for the life of the mount, so ``forget`` has nothing to free. Every error
inside a handler becomes a ``FUSEError`` with an errno and one log line: the
main loop never dies.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from ocifs.errors import OcifsError
from ocifs.image import Image, read_node
from ocifs.layers.entry import EntryType
from ocifs.tree import Node

__all__ = ["ImageFS"]

log = logging.getLogger(__name__)

# The image never changes under a mount: let the kernel cache entries and attributes
# for long (timeouts of 0 made `find` ~19x slower here).
CACHE_TIMEOUT_S = 24 * 3600.0
BLOCK_SIZE_BYTES = 4096


P = ParamSpec("P")
R = TypeVar("R")


def _errors_to_errno(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn any exception of a handler into a FUSEError, logged once."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OcifsError as exc:
            log.error("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("%s: unexpected error", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class ImageFS(pyfuse3.Operations):
    """pyfuse3 operations serving one :class:`~ocifs.image.Image`, read-only."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, image: Image) -> None:
        super().__init__()
        self.image = image
        self.tree = image.tree
        self._total_bytes = sum(layer.desc.size for layer in image.layers)
        self._attrs: dict[int, pyfuse3.EntryAttributes] = {}

    def _node(self, inode: int) -> Node:
        try:
            return self.tree.get(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        # Built once per inode: readdir of big directories and find hit this hard.
        attr = self._attrs.get(node.ino)
        if attr is None:
            attr = self._attrs[node.ino] = self._make_attr(node)
        return attr

    def _make_attr(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = 0
        attr.entry_timeout = CACHE_TIMEOUT_S
        attr.attr_timeout = CACHE_TIMEOUT_S
        attr.st_mode = node.st_mode
        attr.st_nlink = node.nlink
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        if node.type in (EntryType.CHAR, EntryType.BLOCK):
            attr.st_rdev = os.makedev(node.devmajor, node.devminor)
        size = node.st_size
        attr.st_size = size
        attr.st_blksize = BLOCK_SIZE_BYTES
        attr.st_blocks = (size + 511) // 512
        attr.st_atime_ns = node.mtime_ns
        attr.st_mtime_ns = node.mtime_ns
        attr.st_ctime_ns = node.mtime_ns
        return attr

    @_errors_to_errno
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if parent.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        child = parent.children.get(os.fsdecode(name))
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(child)

    @_errors_to_errno
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    @_errors_to_errno
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.type is not EntryType.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.linkname)

    @_errors_to_errno
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if self._node(inode).children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_errors_to_errno
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._node(fh)
        assert node.children is not None
        # Offsets: 0 is ".", 1 is "..", then the sorted names; each reply carries the
        # offset to resume from, so a large directory lists across several calls.
        dots = [(b".", node), (b"..", node.parent or node)]
        for pos in range(start_id, len(node.names) + 2):
            if pos < 2:
                name, child = dots[pos]
            else:
                text = node.names[pos - 2]
                name, child = os.fsencode(text), node.children[text]
            if not pyfuse3.readdir_reply(token, name, self._attr(child), pos + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    @_errors_to_errno
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if node.type is not EntryType.REG:
            raise pyfuse3.FUSEError(errno.EISDIR if node.children is not None else errno.EINVAL)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @_errors_to_errno
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await read_node(self.image, self._node(fh), off, size)

    async def release(self, fh: int) -> None:
        return None

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # Inodes are the tree's and live as long as the mount: nothing to free.
        return None

    @_errors_to_errno
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self._node(inode).xattrs.get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_errors_to_errno
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return [os.fsencode(name) for name in self._node(inode).xattrs]

    @_errors_to_errno
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = BLOCK_SIZE_BYTES
        st.f_frsize = BLOCK_SIZE_BYTES
        st.f_blocks = (self._total_bytes + BLOCK_SIZE_BYTES - 1) // BLOCK_SIZE_BYTES
        st.f_bfree = 0
        st.f_bavail = 0
        st.f_files = self.tree.nodes
        st.f_ffree = 0
        st.f_favail = 0
        st.f_namemax = 255
        return st
