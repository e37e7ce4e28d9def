"""``ocifs grep``: walking the image's tree and reading files concurrently (bounded)
through the cache, printing in the order of a sorted walk; matching is ``ocifs.grep``'s.

Paths print as ``grep -r PATTERN ROOT`` prints them with ``ROOT`` taken off: operands
as given (default ``/``), then ``/`` and the names below them.
"""

from __future__ import annotations

import argparse
import errno
import fnmatch
import os
import sys
from collections.abc import Iterator
from typing import Any

import trio

from ocifs.browse import PathError, child_names, lookup, read_pieces
from ocifs.cli._common import add_image_options, parse_size
from ocifs.cli._imageio import Output, error_line, run_on_image
from ocifs.errors import OcifsError
from ocifs.grep import FileScan, GrepOptions, Matcher, Mode, PatternError, Syntax
from ocifs.image import Image
from ocifs.layers.entry import EntryType
from ocifs.tree import Node

__all__ = ["register_grep"]

GREP_FILES_AT_ONCE = 16
GREP_PIECES_QUEUED = 2  # per file: bounds memory to files x pieces x piece size


def _glob(pattern: str, name: str) -> bool:
    # fnmatch(3) spells a negated bracket [!...] or [^...]; Python's fnmatch only [!...].
    return fnmatch.fnmatchcase(name, pattern.replace("[^", "[!"))


def _selected(rules: list[tuple[str, str]], name: str, command_line: bool) -> bool:
    """GNU grep's --include/--exclude: the last matching rule wins; when none matches,
    a file is in unless the first rule is an --include. Command-line names match on
    any suffix that starts after a slash, others on their base name."""
    if not rules:
        return True
    names = [name]
    if command_line:
        names += [name[i + 1 :] for i, c in enumerate(name) if c == "/" and i + 1 < len(name)]
    else:
        names = [name.rpartition("/")[2]]
    verdict = rules[0][0] != "include"
    for kind, pattern in rules:
        if any(_glob(pattern, n) for n in names):
            verdict = kind == "include"
    return verdict


def _grep_jobs(
    args: argparse.Namespace, image: Image, recursive: bool
) -> Iterator[tuple[str, Node | None, str]]:
    """What grep visits in order: (display path, node, "") or (path, None, error)."""
    file_rules = [(k, p) for k, p in args.file_rules]
    for operand in args.paths or ["/"]:
        try:
            node = lookup(image.tree, operand)
        except PathError as exc:
            yield operand, None, exc.strerror
            continue
        if node.children is None:
            if _selected(file_rules, operand, True) and _size_ok(args, node):
                yield operand, node, ""
            continue
        if not recursive:
            yield operand, None, os.strerror(errno.EISDIR)
            continue
        if any(_glob(p, n) for p in args.exclude_dir for n in _suffixes(operand)):
            continue
        stack = [(operand, node)]
        while stack:
            path, current = stack.pop()
            assert current.children is not None
            base = path if path.endswith("/") else path + "/"
            for name in reversed(child_names(current)):
                child = current.children[name]
                if child.children is not None:
                    if not any(_glob(p, name) for p in args.exclude_dir):
                        stack.append((base + name, child))
                elif (
                    child.type is EntryType.REG
                    and _selected(file_rules, name, False)
                    and _size_ok(args, child)
                ):
                    stack.append((base + name, child))
            # Files and dirs share the stack so the walk stays in sorted order.
            while stack and stack[-1][1].children is None:
                yield stack[-1][0], stack.pop()[1], ""


def _suffixes(name: str) -> list[str]:
    stripped = name.rstrip("/") or "/"
    return [stripped] + [stripped[i + 1 :] for i, c in enumerate(stripped) if c == "/"]


def _size_ok(args: argparse.Namespace, node: Node) -> bool:
    return args.max_filesize is None or node.size <= args.max_filesize


def _grep_mode(args: argparse.Namespace) -> Mode:
    if args.quiet:
        return Mode.QUIET
    if args.files_with_matches:
        return Mode.FILES_WITH
    if args.files_without_match:
        return Mode.FILES_WITHOUT
    return Mode.COUNT if args.count else Mode.LINES


def _cmd_grep(args: argparse.Namespace) -> int:
    words = list(args.words)
    patterns = [os.fsencode(p) for p in args.regexp]
    if not patterns:
        patterns = [os.fsencode(words.pop(0))]
    if not words:
        error_line("grep: missing image reference (usage: ocifs grep PATTERN REF [PATH...])")
        return 2
    args.ref, args.paths = words[0], words[1:]
    opts = GrepOptions(args.syntax, args.ignore_case, args.word_regexp, args.line_regexp,
                       args.invert_match)  # fmt: skip
    try:
        matcher = Matcher(patterns, opts)
    except PatternError as exc:
        error_line(f"grep: {exc}")
        return 2
    recursive = args.recursive or not args.paths
    mode = _grep_mode(args)

    async def body(image: Image) -> int:
        jobs = list(_grep_jobs(args, image, recursive))
        if args.no_filename:
            names = False
        elif args.with_filename or len(args.paths) > 1:
            names = True
        else:  # one operand: names when it is a directory searched recursively (grep's rule)
            try:
                operand = lookup(image.tree, (args.paths or ["/"])[0])
            except PathError:
                operand = None
            names = recursive and operand is not None and operand.children is not None
        return await _grep_files(image, jobs, matcher, mode, names, args)

    return run_on_image(args, body, failure=2)


async def _grep_files(
    image: Image,
    jobs: list[tuple[str, Node | None, str]],
    matcher: Matcher,
    mode: Mode,
    names: bool,
    args: argparse.Namespace,
) -> int:
    out = Output(sys.stdout.buffer)
    gate = trio.Semaphore(GREP_FILES_AT_ONCE)
    order_send, order_recv = trio.open_memory_channel[
        tuple[str, trio.MemoryReceiveChannel[bytes | FileScan | str]]
    ](GREP_FILES_AT_ONCE)
    found = error = False

    async def scan(path: str, node: Node, send: trio.MemorySendChannel[Any]) -> None:
        async with send:
            try:
                fs = FileScan(matcher, mode, os.fsencode(path) if names else None, args.line_number)
                async for piece in read_pieces(image, node):
                    text = await trio.to_thread.run_sync(fs.feed, piece)
                    if text:
                        await send.send(text)
                    if fs.done:
                        break
                await send.send(fs.finish())
                await send.send(fs)
            except OcifsError as exc:
                await send.send(str(exc))
            finally:
                gate.release()

    async def producer(nursery: trio.Nursery) -> None:
        async with order_send:
            for path, node, problem in jobs:
                send, recv = trio.open_memory_channel[bytes | FileScan | str](GREP_PIECES_QUEUED)
                if node is None:
                    async with send:
                        await order_send.send((path, recv))
                        await send.send(problem)
                    continue
                await gate.acquire()
                nursery.start_soon(scan, path, node, send)
                await order_send.send((path, recv))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer, nursery)
        async with order_recv:
            async for path, recv in order_recv:
                async with recv:
                    async for item in recv:
                        if isinstance(item, bytes):
                            await out.write(item)
                        elif isinstance(item, FileScan):
                            found = found or item.selected > 0
                            if item.binary_matches:
                                await out.flush()
                                error_line(f"grep: {path}: binary file matches")
                        else:
                            error = True
                            if not args.no_messages:
                                await out.flush()
                                error_line(f"grep: {path}: {item}")
                if found and mode is Mode.QUIET:
                    nursery.cancel_scope.cancel()
                    break
    await out.flush()
    if found and (mode is Mode.QUIET or not error):
        return 0
    return 2 if error else 1


def register_grep(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``grep`` command."""
    p = sub.add_parser(
        "grep",
        add_help=False,
        help="search files of an image (GNU grep semantics, C locale)",
        usage="ocifs grep [OPTION]... PATTERN REF [PATH]...",
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("words", metavar="PATTERN REF [PATH]", nargs="+")
    p.add_argument("-e", "--regexp", action="append", default=[], metavar="PATTERN")
    for flag, const in (("-G", Syntax.BASIC), ("-E", Syntax.EXTENDED), ("-F", Syntax.FIXED)):
        p.add_argument(flag, dest="syntax", action="store_const", const=const)
    p.set_defaults(syntax=Syntax.BASIC, file_rules=[])
    flags = (
        ("-r", "--recursive", "search directories recursively (symlinks in them skipped)"),
        ("-i", "--ignore-case", "ignore case (ASCII)"),
        ("-v", "--invert-match", "select non-matching lines"),
        ("-w", "--word-regexp", "match whole words"),
        ("-x", "--line-regexp", "match whole lines"),
        ("-c", "--count", "print a count of selected lines per file"),
        ("-l", "--files-with-matches", "print names of files with selected lines"),
        ("-L", "--files-without-match", "print names of files without selected lines"),
        ("-n", "--line-number", "prefix lines with their line number"),
        ("-h", "--no-filename", "never prefix lines with file names"),
        ("-H", "--with-filename", "always prefix lines with file names"),
        ("-q", "--quiet", "print nothing; exit 0 at the first selected line"),
        ("-s", "--no-messages", "no messages about unreadable or missing files"),
    )
    for short, long, text in flags:
        p.add_argument(short, long, action="store_true", help=text)
    for kind in ("include", "exclude"):
        p.add_argument(
            f"--{kind}",
            metavar="GLOB",
            action=_RuleAction,
            dest="file_rules",
            help=f"{kind} files whose base name matches GLOB",
        )
    p.add_argument("--exclude-dir", metavar="GLOB", action="append", default=[])
    p.add_argument("--max-filesize", metavar="SIZE", type=parse_size, help="skip larger files")
    add_image_options(p, short_verbose=False)
    p.set_defaults(func=_cmd_grep)


class _RuleAction(argparse.Action):
    """Keeps --include and --exclude in one list, in command-line order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        rules = list(getattr(namespace, self.dest, []))
        rules.append(((option_string or "").lstrip("-"), str(values)))
        setattr(namespace, self.dest, rules)
