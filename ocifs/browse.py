"""Reading an image's merged tree without a mount: paths resolved as the kernel would
inside the image root (with its errno), sorted walks, and file content in pieces.

Used by ``ls``, ``cat``, ``grep`` and ``export``; the bytes come through
:func:`ocifs.image.read_node`, the same lazy read path the mount uses.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Iterator

from ocifs.errors import FetchError, OcifsError
from ocifs.image import Image, read_node
from ocifs.layers.entry import EntryType
from ocifs.tree import Node, Tree

__all__ = [
    "PIECE_BYTES",
    "PathError",
    "child_names",
    "lookup",
    "quote_name",
    "read_pieces",
    "walk",
]

PIECE_BYTES = 1024 * 1024
# Linux's MAXSYMLINKS (fs/namei.c): more expansions in one lookup is ELOOP.
MAX_SYMLINK_HOPS = 40


class PathError(OcifsError):
    """A path that does not resolve in the image; ``errno`` says why (ENOENT, ENOTDIR,
    ELOOP) and ``path`` is the path as the user wrote it."""

    def __init__(self, path: str, code: int) -> None:
        super().__init__(f"{path}: {os.strerror(code)}")
        self.path = path
        self.errno = code
        self.strerror = os.strerror(code)


def lookup(tree: Tree, path: str, *, follow: bool = True) -> Node:
    """The node at ``path`` (absolute or relative: both start at the image root),
    following symlinks inside the image root as the kernel does in a chroot; the last
    component is followed only if ``follow``. Raises :class:`PathError`.

    A trailing slash requires a directory and follows a final symlink, as in POSIX.
    """
    todo = path.split("/")
    if path.endswith("/"):
        follow = True
    todo.reverse()
    stack = [tree.root]
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
        if children is None:
            raise PathError(path, errno.ENOTDIR)
        child = children.get(name)
        if child is None:
            raise PathError(path, errno.ENOENT)
        last = not any(part not in ("", ".") for part in todo)
        if child.type is EntryType.SYMLINK and (follow or not last):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise PathError(path, errno.ELOOP)
            target = child.linkname
            if not target:
                raise PathError(path, errno.ENOENT)
            if target.startswith("/"):
                del stack[1:]
            parts = target.split("/")
            parts.reverse()
            todo.extend(parts)
            continue
        if child.children is None and not last:
            raise PathError(path, errno.ENOTDIR)
        stack.append(child)
    if path.endswith("/") and stack[-1].children is None:
        raise PathError(path, errno.ENOTDIR)
    return stack[-1]


def child_names(node: Node) -> tuple[str, ...]:
    """A directory's child names in byte order (as ``LC_ALL=C ls`` sorts them)."""
    if node.children is None:
        return ()
    return tuple(sorted(node.children, key=os.fsencode))


def walk(node: Node, path: str) -> Iterator[tuple[str, Node]]:
    """``(path, node)`` for ``node`` and everything below it, depth first, children in
    byte order; ``path`` is joined onto as given ("/" gives "/etc", "x/" gives "x/etc")."""
    stack: list[tuple[str, Node]] = [(path, node)]
    while stack:
        here, current = stack.pop()
        yield here, current
        if current.children is not None:
            base = here if here.endswith("/") else here + "/"
            stack.extend(
                (base + name, current.children[name]) for name in reversed(child_names(current))
            )


async def read_pieces(
    image: Image, node: Node, piece_bytes: int = PIECE_BYTES
) -> AsyncIterator[bytes]:
    """A regular file's content in pieces of ``piece_bytes`` (the last may be shorter).

    Raises :class:`FetchError` if the layer ends before the size the tree gives, and
    whatever :func:`read_node` raises.
    """
    offset = 0
    while offset < node.size:
        data = await read_node(image, node, offset, min(piece_bytes, node.size - offset))
        if not data:
            raise FetchError(f"content ends at byte {offset} of {node.size}")
        offset += len(data)
        yield data


_SHELL_SPECIAL = frozenset(" \t\n!\"#$&'()*;<>?[\\]^`{|}~=%,")


def quote_name(name: str, *, always: bool = False) -> str:
    """``name`` quoted as coreutils 9 quotes file names in messages (its
    shell-escape style): bare when safe (unless ``always``), else in single quotes,
    with non-printable and non-UTF-8 bytes as ``$'\\ooo'``."""
    raw = os.fsencode(name)
    try:
        text = raw.decode("utf-8")
        printable = text.isprintable()
    except UnicodeDecodeError:
        printable = False
    if printable:
        if not always and text and not any(c in _SHELL_SPECIAL for c in text):
            return text
        if "'" not in text:
            return f"'{text}'"
        if not any(c in '"$`\\' for c in text):
            return f'"{text}"'
        return "'" + text.replace("'", "'\\''") + "'"
    out: list[str] = []
    plain = bytearray()

    def flush() -> None:
        if plain:
            out.append("'" + plain.decode("utf-8", "replace").replace("'", "'\\''") + "'")
            plain.clear()

    i = 0
    while i < len(raw):
        char_len = _utf8_len(raw, i)
        chunk = raw[i : i + char_len]
        if char_len and chunk.decode("utf-8").isprintable():
            plain += chunk
            i += char_len
            continue
        flush()
        out.append("$'" + "".join(f"\\{b:03o}" for b in raw[i : i + max(char_len, 1)]) + "'")
        i += max(char_len, 1)
    flush()
    return "".join(out)


def _utf8_len(raw: bytes, i: int) -> int:
    """Length of the valid UTF-8 character at ``raw[i]``, or 0 if there is none."""
    for n in (1, 2, 3, 4):
        try:
            raw[i : i + n].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return n if i + n <= len(raw) else 0
    return 0
