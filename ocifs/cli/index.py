"""``ocifs index build|ls|rm``: gzip seek indexes published as OCI artifacts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import humanfriendly
import trio

from ocifs.cache import ChunkCache
from ocifs.cli._common import add_image_options, parse_size, platform_of, source_options
from ocifs.errors import OcifsError
from ocifs.gzindex import list_published, pack_layer_index, publish, remove_published
from ocifs.image import resolve, resolve_manifest
from ocifs.layers.gzip import SPACING_BYTES
from ocifs.layers.index import LayerIndex, gzip_index_for
from ocifs.oci import LAYER_GZIP
from ocifs.reference import parse_reference
from ocifs.sources import SourceOptions, open_source
from ocifs.sources.writer import RegistrySink

__all__ = ["register"]

LOCAL_TRANSPORTS = ("oci", "oci-archive", "docker-archive")


def _sink(ref: str, opts: SourceOptions) -> RegistrySink:
    if ":" in ref.split("/")[0] and ref.split(":", 1)[0] in (
        "oci",
        "oci-archive",
        "docker-archive",
    ):
        raise OcifsError(f"{ref}: publishing needs a registry reference")
    return RegistrySink(
        parse_reference(ref),
        insecure=opts.insecure,
        creds=opts.creds,
        authfile=opts.authfile,
        timeout_s=opts.timeout_s,
    )


def _size(n: int) -> str:
    return str(humanfriendly.format_size(n, binary=True))


def _cmd_build(args: argparse.Namespace) -> int:
    opts = source_options(args)
    spacing = args.span_size or SPACING_BYTES
    sink = _sink(args.ref, opts) if args.push else None

    async def run() -> None:
        source = open_source(args.ref, opts)
        try:
            manifest, config = await resolve(source, platform_of(args))
            cache = ChunkCache(Path(args.cache_dir), args.cache_max)
            limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
            indexes: list[LayerIndex] = []
            for i, desc in enumerate(manifest.layers):
                if desc.media_type not in LAYER_GZIP:
                    continue
                what = f"{source.describe()} layer {i} ({desc.digest})"
                index = await gzip_index_for(
                    source, desc, config.diff_ids[i], cache, limiter, what, spacing
                )
                indexes.append(index)
                packed = len(await trio.to_thread.run_sync(pack_layer_index, index))
                share = 100.0 * packed / max(1, index.uncompressed_size)
                print(
                    f"layer {i} {desc.digest}: {len(index.points)} checkpoints, index "
                    f"{_size(packed)} for {_size(index.uncompressed_size)} ({share:.2f} %)"
                )
            if sink is not None:
                if not indexes:
                    raise OcifsError(f"{source.describe()}: no gzip layer to index")
                digest, total = await publish(source, sink, manifest, indexes, spacing)
                print(f"pushed {digest} ({_size(total)}) referring to {manifest.digest}")
        finally:
            await source.aclose()
            if sink is not None:
                await sink.aclose()

    trio.run(run)
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    opts = source_options(args)

    async def run() -> None:
        source = open_source(args.ref, opts)
        try:
            manifest = await resolve_manifest(source, platform_of(args))
            found = await list_published(source, manifest)
        finally:
            await source.aclose()
        if args.json:
            print(json.dumps([
                {"digest": p.digest, "span_size": p.span_size, "layers": list(p.layers),
                 "index_bytes": p.index_bytes}
                for p in found
            ]))  # fmt: skip
            return
        for p in found:
            print(
                f"{p.digest}  {len(p.layers)} layers  {_size(p.index_bytes)}  "
                f"span {_size(p.span_size)}"
            )

    trio.run(run)
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    opts = source_options(args)
    sink = _sink(args.ref, opts)

    async def run() -> None:
        source = open_source(args.ref, opts)
        try:
            manifest = await resolve_manifest(source, platform_of(args))
            await remove_published(source, sink, manifest, args.digest)
        finally:
            await source.aclose()
            await sink.aclose()

    trio.run(run)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``index`` command and its subcommands."""
    p = sub.add_parser("index", help="gzip seek indexes published beside an image")
    verbs = p.add_subparsers(dest="verb", required=True)
    q = verbs.add_parser("build", help="build the seek indexes of REF's gzip layers")
    q.add_argument("ref", metavar="REF")
    q.add_argument("--push", action="store_true", help="publish them as an OCI artifact")
    q.add_argument(
        "--span-size", type=parse_size, metavar="SIZE", help="checkpoint spacing (default 1M)"
    )
    add_image_options(q)
    q.set_defaults(func=_cmd_build)
    q = verbs.add_parser("ls", help="list the indexes published for REF")
    q.add_argument("ref", metavar="REF")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    add_image_options(q)
    q.set_defaults(func=_cmd_ls)
    q = verbs.add_parser("rm", help="delete a published index by digest")
    q.add_argument("ref", metavar="REF")
    q.add_argument("digest", metavar="DIGEST")
    add_image_options(q)
    q.set_defaults(func=_cmd_rm)
