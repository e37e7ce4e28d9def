"""``ocifs ls``, ``cat``, ``grep`` and ``export``: look inside an image without a mount.

All four read through the same lazy path as the mount (``opened_image`` -> tree ->
``read_node``): only the bytes a command needs are fetched, through the cache.
Messages follow the coreutils/grep tools they mirror, with ``ocifs: CMD:`` in front.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import json
import os
import stat
import sys
from typing import Any, BinaryIO

import trio

from ocifs.browse import PathError, child_names, lookup, quote_name, read_pieces
from ocifs.cli._common import add_image_options
from ocifs.cli._grep import register_grep
from ocifs.cli._imageio import Output, error_line, run_on_image
from ocifs.errors import OcifsError
from ocifs.export import export_tar
from ocifs.image import Image
from ocifs.layers.entry import EntryType
from ocifs.tree import Node

__all__ = ["register"]


# ---- ls


def mode_string(node: Node) -> str:
    """``ls -l``'s mode column, e.g. ``-rwsr-xr-x`` (filemode(3) of the type and bits)."""
    return stat.filemode(node.st_mode)


def _size_text(node: Node) -> str:
    if node.type in (EntryType.CHAR, EntryType.BLOCK):
        return f"{node.devmajor}, {node.devminor}"
    return str(node.st_size)


def _mtime(node: Node, *, iso: bool) -> str:
    seconds, ns = divmod(node.mtime_ns, 1_000_000_000)
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    if not iso:
        return when.strftime("%Y-%m-%d %H:%M")
    frac = f".{ns:09d}".rstrip("0") if ns else ""
    return when.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def _json_entry(path: str, node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": path,
        "type": node.type.value,
        "mode": f"{node.mode:04o}",
        "uid": node.uid,
        "gid": node.gid,
        "size": node.st_size,
        "nlink": node.nlink,
        "mtime": _mtime(node, iso=True),
    }
    if node.type is EntryType.SYMLINK:
        out["target"] = node.linkname
    if node.type in (EntryType.CHAR, EntryType.BLOCK):
        out["devmajor"], out["devminor"] = node.devmajor, node.devminor
    return out


def _long_lines(rows: list[tuple[str, Node]]) -> list[str]:
    cols = [
        (mode_string(n), str(n.nlink), str(n.uid), str(n.gid), _size_text(n), _mtime(n, iso=False))
        for _, n in rows
    ]
    widths = [max((len(c[i]) for c in cols), default=0) for i in range(6)]
    lines = []
    for (name, node), c in zip(rows, cols, strict=True):
        head = " ".join(
            c[i].rjust(widths[i]) if i in (1, 2, 3, 4) else c[i].ljust(widths[i]) for i in range(6)
        )
        tail = f" -> {node.linkname}" if node.type is EntryType.SYMLINK else ""
        lines.append(f"{head} {name}{tail}")
    return lines


def _listing(args: argparse.Namespace, node: Node, path: str) -> list[tuple[str, Node]]:
    """The (name, node) rows ``ls`` shows for directory ``node``."""
    assert node.children is not None
    rows = [
        (name, node.children[name])
        for name in child_names(node)
        if args.all or args.almost_all or not name.startswith(".")
    ]
    if args.all:
        parent = node.parent or node
        rows[:0] = [(".", node), ("..", parent)]
    return rows


def _cmd_ls(args: argparse.Namespace) -> int:
    async def body(image: Image) -> int:
        out = Output(sys.stdout.buffer)
        status = 0
        files: list[tuple[str, Node]] = []
        dirs: list[tuple[str, Node]] = []
        for path in args.paths or ["/"]:
            try:
                node = lookup(image.tree, path, follow=not args.long or path.endswith("/"))
            except PathError as exc:
                error_line(f"ls: cannot access {quote_name(path, always=True)}: {exc.strerror}")
                status = 2
                continue
            (dirs if node.children is not None and not args.directory else files).append(
                (path, node)
            )
        records: list[dict[str, Any]] = []
        blocks: list[str] = []
        if files:
            if args.json:
                records.extend(_json_entry(p, n) for p, n in files)
            else:
                blocks.append(_render(args, files))
        todo = list(reversed(dirs))
        headers = args.recursive or len(dirs) + len(files) > 1
        while todo:
            path, node = todo.pop()
            rows = _listing(args, node, path)
            base = path if path.endswith("/") else path + "/"
            if args.json:
                records.extend(_json_entry(base + n, c) for n, c in rows if n not in (".", ".."))
            else:
                text = _render(args, rows)
                blocks.append(f"{path}:\n{text}" if headers else text)
            if args.recursive:
                subdirs = [
                    (base + n, c)
                    for n, c in rows
                    if c.children is not None and n not in (".", "..")
                ]
                todo.extend(reversed(subdirs))
        if args.json:
            await out.write(os.fsencode(json.dumps(records, indent=2) + "\n"))
        else:
            await out.write(os.fsencode("\n".join(b for b in blocks)))
        await out.flush()
        return status

    return run_on_image(args, body, failure=2)


def _render(args: argparse.Namespace, rows: list[tuple[str, Node]]) -> str:
    lines = _long_lines(rows) if args.long else [name for name, _ in rows]
    return "".join(line + "\n" for line in lines)


# ---- cat


def _cmd_cat(args: argparse.Namespace) -> int:
    async def body(image: Image) -> int:
        out = Output(sys.stdout.buffer)
        status = 0
        for path in args.paths:
            try:
                node = lookup(image.tree, path)
                if node.type is EntryType.DIR:
                    raise PathError(path, errno.EISDIR)
            except PathError as exc:
                await out.flush()
                error_line(f"cat: {quote_name(path)}: {exc.strerror}")
                status = 1
                continue
            if node.type is EntryType.REG:
                await _stream(image, node, out)
        await out.flush()
        return status

    return run_on_image(args, body)


async def _stream(image: Image, node: Node, out: Output) -> None:
    """Copy a file to ``out``, reading the next piece while the last one is written."""
    send, recv = trio.open_memory_channel[bytes](1)

    async def reader() -> None:
        async with send:
            async for piece in read_pieces(image, node):
                await send.send(piece)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        async with recv:
            async for piece in recv:
                await out.write(piece)


# ---- export


def _cmd_export(args: argparse.Namespace) -> int:
    if args.output == "-" and sys.stdout.isatty():
        raise OcifsError("export: refusing to write a tar stream to a terminal (use -o FILE)")

    def failed(exc: OSError) -> OcifsError:
        return OcifsError(f"export: {args.output}: {exc.strerror or exc}")

    raw: BinaryIO = sys.stdout.buffer
    if args.output != "-":
        # Opened before the image: a bad output path fails at once, with no request.
        try:
            raw = open(args.output, "wb")  # noqa: SIM115 - closed after the export
        except OSError as exc:
            raise failed(exc) from None

    async def body(image: Image) -> int:
        out = Output(raw)
        try:
            await export_tar(image, out.write)
            await out.flush()
        except OSError as exc:
            raise failed(exc) from None
        return 0

    try:
        return run_on_image(args, body)
    finally:
        if raw is not sys.stdout.buffer:
            with contextlib.suppress(OSError):
                raw.close()


# ---- registration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ls``, ``cat``, ``grep`` and ``export`` commands."""
    p = sub.add_parser("ls", help="list a directory of an image (like ls -1 / ls -l)")
    p.add_argument("ref", metavar="REF", help="image reference, or oci:DIR[:TAG]")
    p.add_argument("paths", metavar="PATH", nargs="*", help="paths in the image (default /)")
    p.add_argument("-l", dest="long", action="store_true", help="long listing (numeric owners)")
    p.add_argument("-R", "--recursive", action="store_true", help="list subdirectories too")
    p.add_argument("-a", "--all", action="store_true", help="show names starting with ., and . ..")
    p.add_argument("-A", "--almost-all", action="store_true", help="show names starting with .")
    p.add_argument("-d", "--directory", action="store_true", help="list directories themselves")
    p.add_argument("--json", action="store_true", help="print a JSON array of entries")
    add_image_options(p)
    p.set_defaults(func=_cmd_ls)

    p = sub.add_parser("cat", help="print files of an image (symlinks followed in the image)")
    p.add_argument("ref", metavar="REF", help="image reference, or oci:DIR[:TAG]")
    p.add_argument("paths", metavar="PATH", nargs="+", help="paths in the image")
    add_image_options(p)
    p.set_defaults(func=_cmd_cat)

    p = sub.add_parser("export", help="write the merged root filesystem as a tar stream")
    p.add_argument("ref", metavar="REF", help="image reference, or oci:DIR[:TAG]")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="tar file, - for stdout")
    add_image_options(p)
    p.set_defaults(func=_cmd_export)

    register_grep(sub)
