"""``ocifs cache du|ls|prune|clear``: what the chunk cache holds, and trimming it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import humanfriendly

from ocifs.cache import ChunkCache, default_cache_dir
from ocifs.cli._common import parse_size

__all__ = ["register"]


def _size(n: int) -> str:
    return str(humanfriendly.format_size(n, binary=True))


def _open(args: argparse.Namespace) -> ChunkCache:
    return ChunkCache(Path(args.cache_dir), args.cache_max)


def _cmd_du(args: argparse.Namespace) -> int:
    cache = _open(args)
    entries = cache.entries()
    used = cache.usage()
    index_bytes = sum(e.index_bytes for e in entries)
    chunks = sum(e.chunks for e in entries)
    doc = {
        "path": str(cache.root),
        "bytes": used,
        "max_bytes": cache.max_bytes,
        "blobs": len(entries),
        "chunks": chunks,
        "index_bytes": index_bytes,
    }
    if args.json:
        print(json.dumps(doc))
    else:
        print(
            f"{_size(used)} of {_size(cache.max_bytes)} in {cache.root} "
            f"({chunks} chunks and {_size(index_bytes)} of indexes "
            f"for {len(entries)} blobs)"
        )
    cache.close()
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    cache = _open(args)
    entries = cache.entries()
    cache.close()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "digest": e.digest,
                        "chunks": e.chunks,
                        "chunk_bytes": e.chunk_bytes,
                        "index_bytes": e.index_bytes,
                        "last_used": e.last_used,
                    }
                    for e in entries
                ]
            )
        )
        return 0
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        print(
            f"{e.digest}  {e.chunks:>6} chunks {_size(e.chunk_bytes):>10}  "
            f"index {_size(e.index_bytes):>10}  used {when}"
        )
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    cache = _open(args)
    cache.reconcile()
    freed = cache.prune(args.max)
    left = cache.usage()
    cache.close()
    if args.json:
        print(json.dumps({"freed_bytes": freed, "bytes": left}))
    else:
        print(f"freed {_size(freed)}; {_size(left)} left")
    return 0


def _cmd_clear(args: argparse.Namespace) -> int:
    cache = _open(args)
    freed = cache.clear()
    cache.close()
    if args.json:
        print(json.dumps({"freed_bytes": freed}))
    else:
        print(f"freed {_size(freed)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``cache`` command and its subcommands."""
    p = sub.add_parser("cache", help="show or trim the chunk cache")
    verbs = p.add_subparsers(dest="verb", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--cache-dir", default=str(default_cache_dir()), help="cache directory")
        q.add_argument("--cache-max", metavar="SIZE", type=parse_size, help="cache bound")
        q.add_argument("--json", action="store_true", help="machine-readable output")

    q = verbs.add_parser("du", help="bytes held, and the bound")
    common(q)
    q.set_defaults(func=_cmd_du)
    q = verbs.add_parser("ls", help="what is cached, per blob")
    common(q)
    q.set_defaults(func=_cmd_ls)
    q = verbs.add_parser("prune", help="evict least recently used entries")
    q.add_argument("--max", metavar="SIZE", type=parse_size, help="prune down to SIZE")
    common(q)
    q.set_defaults(func=_cmd_prune)
    q = verbs.add_parser("clear", help="remove everything")
    common(q)
    q.set_defaults(func=_cmd_clear)
