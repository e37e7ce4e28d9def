#!/usr/bin/env python3
"""A WAN-like HTTP/1.1 reverse proxy on loopback, for benchmarks.

Every request waits ``--delay-ms`` before it goes upstream (a round trip), and all
response bodies share one token bucket of ``--rate-mbps`` MB/s. Bodies are streamed
piece by piece, never buffered whole; request headers (``Range`` included) pass
through unchanged. One JSON line per response goes to ``--log``:
``{"method", "path", "status", "bytes"}`` (body bytes relayed).

    python tools/throttle_proxy.py --upstream 127.0.0.1:5000 [--port 0]

prints ``listening 127.0.0.1:PORT`` on stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import IO

__all__ = ["TokenBucket", "main"]

PIECE_BYTES = 64 * 1024
BUCKET_BYTES = 128 * 1024
MAX_HEADER_BYTES = 64 * 1024
NO_BODY_STATUSES = (204, 304)
TLS_HANDSHAKE = b"\x16"


class TokenBucket:
    """Shared byte budget: ``rate`` bytes/s, bursts of at most ``capacity`` bytes.

    A virtual clock: each piece moves the time the link is busy until by its
    transfer time, and its sender sleeps until then. Oversleeping is not lost (the
    clock may lag real time by up to one burst), so many small pieces still add up
    to ``rate``; asyncio is single-threaded, so no lock is needed.
    """

    def __init__(self, rate: float, capacity: int = BUCKET_BYTES) -> None:
        self.rate = rate
        self.burst_s = capacity / rate
        self.busy_until = time.monotonic()

    async def take(self, n: int) -> None:
        """Wait until ``n`` more bytes may be sent."""
        now = time.monotonic()
        self.busy_until = max(self.busy_until, now - self.burst_s) + n / self.rate
        delay = self.busy_until - now
        if delay > 0:
            await asyncio.sleep(delay)


class HttpError(Exception):
    """A malformed message: the connection is closed."""


async def _read_head(reader: asyncio.StreamReader, prefix: bytes = b"") -> list[bytes] | None:
    """The start line and header lines of one message (``prefix`` already read), or
    None at a clean EOF."""
    try:
        head = prefix + await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise HttpError("truncated header") from None
    except asyncio.LimitOverrunError:
        raise HttpError("header too long") from None
    return head[:-4].split(b"\r\n")


def _headers(lines: list[bytes]) -> dict[str, str]:
    out = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise HttpError("bad header line")
        out[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return out


class Proxy:
    """The proxy's state: upstream address, delay, bucket and the log."""

    def __init__(self, upstream: str, delay_s: float, bucket: TokenBucket | None, log: IO[str]):
        host, _, port = upstream.rpartition(":")
        self.host = host
        self.port = int(port)
        self.delay_s = delay_s
        self.bucket = bucket
        self.log = log

    async def _relay(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, n: int | None
    ) -> int:
        """Copy ``n`` bytes (None: to EOF) through the bucket; returns bytes copied."""
        done = 0
        while n is None or done < n:
            want = PIECE_BYTES if n is None else min(PIECE_BYTES, n - done)
            piece = await src.read(want)
            if not piece:
                if n is not None:
                    raise HttpError("upstream body truncated")
                break
            if self.bucket is not None:
                await self.bucket.take(len(piece))
            dst.write(piece)
            await dst.drain()
            done += len(piece)
        return done

    async def _relay_chunked(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> int:
        """Copy a chunked body as is (chunk framing included); returns data bytes."""
        total = 0
        while True:
            line = await src.readuntil(b"\r\n")
            dst.write(line)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (trailer := await src.readuntil(b"\r\n")) != b"\r\n":
                    dst.write(trailer)
                dst.write(b"\r\n")
                await dst.drain()
                return total
            total += await self._relay(src, dst, size)
            dst.write(await src.readexactly(2))

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        """Serve one client connection (keep-alive) over one upstream connection."""
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            first = await creader.read(1)
            if first in (b"", TLS_HANDSHAKE):
                # A TLS client hello: refuse at once as a plain-HTTP registry does, so
                # that clients trying HTTPS first (skopeo) fall back without a timeout.
                return
            while True:
                lines = await _read_head(creader, first)
                first = b""
                if lines is None:
                    return
                method, path, _ = lines[0].decode("latin-1").split(" ", 2)
                hdrs = _headers(lines)
                if upstream is None:
                    upstream = await asyncio.open_connection(
                        self.host, self.port, limit=MAX_HEADER_BYTES
                    )
                ureader, uwriter = upstream
                await asyncio.sleep(self.delay_s)
                uwriter.write(b"\r\n".join(lines) + b"\r\n\r\n")
                if "content-length" in hdrs:
                    await self._relay(creader, uwriter, int(hdrs["content-length"]))
                elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                    await self._relay_chunked(creader, uwriter)
                await uwriter.drain()
                rlines = await _read_head(ureader)
                if rlines is None:
                    raise HttpError("upstream closed")
                status = int(rlines[0].split(b" ", 2)[1])
                rhdrs = _headers(rlines)
                cwriter.write(b"\r\n".join(rlines) + b"\r\n\r\n")
                close = False
                if method == "HEAD" or status in NO_BODY_STATUSES or 100 <= status < 200:
                    sent = 0
                elif "content-length" in rhdrs:
                    sent = await self._relay(ureader, cwriter, int(rhdrs["content-length"]))
                elif rhdrs.get("transfer-encoding", "").lower() == "chunked":
                    sent = await self._relay_chunked(ureader, cwriter)
                else:
                    sent = await self._relay(ureader, cwriter, None)
                    close = True
                await cwriter.drain()
                entry = {"method": method, "path": path, "status": status, "bytes": sent}
                self.log.write(json.dumps(entry) + "\n")
                self.log.flush()
                if close or "close" in (
                    hdrs.get("connection", "").lower(),
                    rhdrs.get("connection", "").lower(),
                ):
                    return
        except (HttpError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            for writer in (cwriter, upstream[1] if upstream else None):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()


async def serve(args: argparse.Namespace) -> None:
    """Listen on loopback and proxy until cancelled."""
    log: IO[str] = open(args.log, "a") if args.log else open("/dev/null", "w")  # noqa: SIM115
    bucket = TokenBucket(args.rate_mbps * 1e6) if args.rate_mbps > 0 else None
    proxy = Proxy(args.upstream, args.delay_ms / 1000, bucket, log)
    server = await asyncio.start_server(
        proxy.handle, "127.0.0.1", args.port, limit=MAX_HEADER_BYTES
    )
    port = server.sockets[0].getsockname()[1]
    print(f"listening 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the proxy until interrupted."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--upstream", required=True, help="HOST:PORT of the plain-HTTP origin")
    p.add_argument("--port", type=int, default=0, help="loopback port to listen on (0: any)")
    p.add_argument("--delay-ms", type=float, default=20.0, help="added per request")
    p.add_argument("--rate-mbps", type=float, default=25.0, help="shared MB/s (0: unlimited)")
    p.add_argument("--log", help="append one JSON line per response here")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
