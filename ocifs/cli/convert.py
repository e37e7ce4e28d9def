"""``ocifs convert SRC DST``: rewrite an image's layers as eStargz and push it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Never

import humanfriendly
import trio
from tqdm import tqdm

from ocifs.cli._common import add_image_options, parse_size, platform_of, source_options
from ocifs.convert import ConvertOptions, ConvertReport, convert_image, open_sink
from ocifs.errors import OcifsError
from ocifs.layers.estargz import MAX_CHUNK_BYTES
from ocifs.layers.estargz_writer import DEFAULT_CHUNK_BYTES, DEFAULT_COMPRESSION_LEVEL
from ocifs.sources import open_source

__all__ = ["register"]

DEFAULT_SIZE = (80, 24)


class _Bar:
    """A tqdm bar per step on stderr (only made when stderr is a terminal)."""

    def __init__(self) -> None:
        self._bar: tqdm[Never] | None = None

    def start(self, label: str, total_bytes: int) -> None:
        cols, rows = _terminal_size()
        self._bar = tqdm(
            total=total_bytes,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            leave=False,
            file=sys.stderr,
            ncols=cols,
            nrows=rows,
        )

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _terminal_size() -> tuple[int, int]:
    """Columns and lines of the terminal on stderr, 80x24 for what it does not say: a
    fresh pty reports 0x0, and tqdm then draws nothing."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        return DEFAULT_SIZE
    return size.columns or DEFAULT_SIZE[0], size.lines or DEFAULT_SIZE[1]


def _size(n: int) -> str:
    return str(humanfriendly.format_size(n, binary=True))


def _level(text: str) -> int | None:
    if text == "keep":
        return None
    if text.isdigit() and 0 <= int(text) <= 9:
        return int(text)
    raise argparse.ArgumentTypeError(f"invalid level {text!r}: 0-9 or keep")


def _chunk_size(text: str) -> int:
    size = parse_size(text)
    if not 0 < size <= MAX_CHUNK_BYTES:
        raise argparse.ArgumentTypeError(f"chunk size must be 1 byte to {_size(MAX_CHUNK_BYTES)}")
    return size


def _read_list(path: str) -> tuple[str, ...]:
    """Paths one per line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise OcifsError(f"--prioritize {path}: {exc.strerror or exc}") from None
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def _print(report: ConvertReport, dst: str) -> None:
    for layer in report.layers:
        where = f"{layer.platform} " if layer.platform else ""
        src, new = layer.source, layer.result
        head = f"{where}layer {layer.index + 1} {src.digest[:19]} {_size(src.size)}"
        if layer.kept:
            print(f"{head}: kept (already eStargz)")
        else:
            ratio = 100.0 * new.size / max(1, src.size)
            print(f"{head} -> {new.digest[:19]} {_size(new.size)} ({ratio:.0f} %)")
    print(f"{dst}@{report.digest}")


def _cmd_convert(args: argparse.Namespace) -> int:
    opts = source_options(args)
    prioritize = _read_list(args.prioritize) if args.prioritize else ()
    sink, tag = open_sink(args.dst, opts, args.src)
    tmp_dir = Path(args.tmp_dir) if args.tmp_dir else None
    if tmp_dir is not None and not tmp_dir.is_dir():
        raise OcifsError(f"--tmp-dir {tmp_dir}: no such directory")
    options = ConvertOptions(
        chunk_bytes=args.chunk_size,
        level=args.compression_level,
        prioritize=prioritize,
        platform=platform_of(args),
        tmp_dir=tmp_dir,
    )
    bar = _Bar() if sys.stderr.isatty() and not args.quiet else None

    async def run() -> ConvertReport:
        source = open_source(args.src, opts)
        try:
            return await convert_image(source, sink, tag, options, bar)
        finally:
            await source.aclose()
            await sink.aclose()

    report = trio.run(run)
    if report.unmatched:
        print(
            f"ocifs: convert: no layer has {', '.join(report.unmatched)} (--prioritize)",
            file=sys.stderr,
        )
    if not args.quiet:
        _print(report, args.dst)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``convert`` command."""
    p = sub.add_parser(
        "convert",
        help="convert an image's layers to eStargz",
        description="Rewrite every gzip/tar layer of SRC as eStargz (layers already eStargz "
        "are kept) and write the image to DST: a registry reference or oci:DIR[:TAG]. "
        "An image index is converted per platform. The output uses OCI media types.",
    )
    p.add_argument("src", metavar="SRC", help="image to convert (any reference ocifs reads)")
    p.add_argument(
        "dst", metavar="DST", help="where to write: REGISTRY/REPO[:TAG] or oci:DIR[:TAG]"
    )
    p.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=DEFAULT_CHUNK_BYTES,
        metavar="SIZE",
        help="uncompressed bytes per chunk of a large file (default 4M)",
    )
    p.add_argument(
        "--compression-level",
        type=_level,
        default=DEFAULT_COMPRESSION_LEVEL,
        metavar="N|keep",
        help=f"gzip level 0-9 (default {DEFAULT_COMPRESSION_LEVEL}, gzip's); keep: the "
        "level each source layer's gzip header suggests (9, 1, else 6)",
    )
    p.add_argument(
        "--prioritize",
        metavar="FILE",
        help="paths (one per line) to place before the prefetch landmark",
    )
    p.add_argument("--tmp-dir", metavar="DIR", help="directory for temporary layer files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    add_image_options(p)
    p.set_defaults(func=_cmd_convert)
