"""What the inspecting commands share: buffered output written from a worker thread,
one-line errors, and running a command's body on an opened image."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import trio

from ocifs.cli._common import first_error, platform_of, setup_logging, source_options
from ocifs.errors import OcifsError
from ocifs.image import Image, opened_image

__all__ = ["FLUSH_BYTES", "Output", "error_line", "run_on_image"]

FLUSH_BYTES = 64 * 1024


class Output:
    """Buffered binary output written from a worker thread (never blocks the loop)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.parts: list[bytes] = []
        self.size = 0

    async def write(self, data: bytes) -> None:
        """Queue ``data``; write out once :data:`FLUSH_BYTES` are queued."""
        self.parts.append(data)
        self.size += len(data)
        if self.size >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Write out whatever is queued and flush the file."""
        data = b"".join(self.parts)
        self.parts, self.size = [], 0

        def put() -> None:
            if data:
                self.raw.write(data)
            self.raw.flush()

        await trio.to_thread.run_sync(put)


def error_line(text: str) -> None:
    """Print ``ocifs: TEXT`` on stderr (names in it keep their raw bytes)."""
    sys.stderr.buffer.write(os.fsencode(f"ocifs: {text}\n"))
    sys.stderr.buffer.flush()


def run_on_image(
    args: argparse.Namespace, body: Callable[[Image], Awaitable[int]], failure: int = 1
) -> int:
    """Open the image and run ``body``. An :class:`OcifsError` is one line and exit
    ``failure`` (grep's and ls's 2, cat's 1); a broken pipe ends quietly as in coreutils."""
    setup_logging(args.verbose)

    async def main() -> int:
        opts = source_options(args)
        cache_dir, cache_max = Path(args.cache_dir), getattr(args, "cache_max", None)
        async with opened_image(args.ref, opts, cache_dir, platform_of(args), cache_max) as image:
            return await body(image)

    try:
        return trio.run(main)
    except Exception as exc:
        leaf = first_error(exc)
        if isinstance(leaf, OcifsError):
            error_line(f"{args.command}: {leaf}")
            return failure
        if isinstance(leaf, BrokenPipeError):
            # Later flushes of the closed pipe would print a second error.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise BrokenPipeError from None
        raise
