"""Looking at an image without pulling or mounting it: ``manifest``, ``config``,
``digest``, ``platforms`` (manifests and config only), ``layers`` (per-layer facts
from the layer indexes) and ``diff`` (two images' merged trees)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ocifs.cli._common import (
    add_image_options,
    describe_error,
    platform_of,
    setup_logging,
    source_options,
)
from ocifs.image import opened_image, resolve, resolve_manifest
from ocifs.layerstats import ImageStats, image_stats
from ocifs.oci import INDEX_TYPES, Platform, media_type_of, parse_index
from ocifs.sources import SourceOptions, open_source
from ocifs.sources.base import ImageSource
from ocifs.treediff import Change, diff_images

__all__ = ["human_size", "register"]

SI_UNITS = ("kB", "MB", "GB", "TB", "PB", "EB")
# Prefixes left out of the layers table's TYPE column (the rest says the compression).
LAYER_TYPE_PREFIXES = (
    "application/vnd.oci.image.layer.nondistributable.v1.",
    "application/vnd.oci.image.layer.v1.",
    "application/vnd.docker.image.rootfs.foreign.diff.",
    "application/vnd.docker.image.rootfs.diff.",
)
DIFF_SAME, DIFF_DIFFERENT, DIFF_TROUBLE = 0, 1, 2


def human_size(n: int) -> str:
    """``n`` bytes in SI units with one decimal, as dive shows sizes: ``12.3 MB``."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in SI_UNITS:
        value /= 1000
        if value < 999.95 or unit == SI_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _text(text: str) -> None:
    # Paths from tar headers may hold undecodable bytes (kept as surrogates): print
    # them back as the bytes they were.
    _write(text.encode("utf-8", "surrogateescape"))


def _with_source(
    args: argparse.Namespace, work: Callable[[ImageSource, Platform | None], Awaitable[None]]
) -> int:
    setup_logging(args.verbose)
    platform = platform_of(args)
    opts = source_options(args)

    async def run() -> None:
        source = open_source(args.ref, opts)
        try:
            await work(source, platform)
        finally:
            await source.aclose()

    trio.run(run)
    return 0


def _cmd_manifest(args: argparse.Namespace) -> int:
    async def work(source: ImageSource, platform: Platform | None) -> None:
        top = await source.get_manifest(source.default_reference())
        if platform is None:
            _write(top.data)
        else:
            _write((await resolve_manifest(source, platform, top)).raw)

    return _with_source(args, work)


def _cmd_config(args: argparse.Namespace) -> int:
    async def work(source: ImageSource, platform: Platform | None) -> None:
        _write((await resolve(source, platform))[1].raw)

    return _with_source(args, work)


def _cmd_digest(args: argparse.Namespace) -> int:
    async def work(source: ImageSource, platform: Platform | None) -> None:
        top = await source.get_manifest(source.default_reference())
        digest = top.digest
        if platform is not None:
            digest = (await resolve_manifest(source, platform, top)).digest
        _text(digest + "\n")

    return _with_source(args, work)


def _platform_json(obj: dict[str, Any], digest: str) -> dict[str, Any]:
    plat = Platform(str(obj.get("os", "")), str(obj.get("architecture", "")))
    variant = obj.get("variant")
    if isinstance(variant, str):
        plat = Platform(plat.os, plat.architecture, variant)
    return {
        "platform": str(plat),
        "os": plat.os,
        "architecture": plat.architecture,
        "variant": plat.variant or None,
        "digest": digest,
    }


def _cmd_platforms(args: argparse.Namespace) -> int:
    async def work(source: ImageSource, platform: Platform | None) -> None:
        what = source.describe()
        top = await source.get_manifest(source.default_reference())
        found: list[dict[str, Any]] = []
        if media_type_of(top.data, top.media_type, what) in INDEX_TYPES:
            for desc in parse_index(top.data, what):
                p = desc.platform
                if p is None or (p.os, p.architecture) == ("unknown", "unknown"):
                    continue  # attestations and entries that name no platform
                obj = {"os": p.os, "architecture": p.architecture, "variant": p.variant}
                found.append(_platform_json(obj, desc.digest))
        else:
            manifest, config = await resolve(source, None)
            found.append(_platform_json(json.loads(config.raw), manifest.digest))
        if args.json:
            _text(json.dumps(found, indent=2) + "\n")
        else:
            _text("".join(f"{p['platform']}\n" for p in found))

    return _with_source(args, work)


def _layers_table(stats: ImageStats) -> str:
    rows = [["#", "DIGEST", "TYPE", "COMPRESSED", "UNCOMPRESSED", "ADDED", "CHANGED"]]
    rows[0] += ["REMOVED", "WASTED", "CREATED BY"]
    for s in stats.layers:
        kind = s.media_type
        for prefix in LAYER_TYPE_PREFIXES:
            kind = kind.removeprefix(prefix)
        usize = "-" if s.uncompressed_bytes is None else human_size(s.uncompressed_bytes)
        rows.append(
            [
                str(s.index),
                s.digest.partition(":")[2][:12],
                kind,
                human_size(s.compressed_bytes),
                usize,
                str(s.added),
                str(s.changed),
                str(s.removed),
                human_size(s.wasted_bytes),
                " ".join((s.created_by or "-").split()),
            ]
        )
    # Every column padded to its widest cell but the last (free text).
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    usize = "-" if stats.uncompressed_bytes is None else human_size(stats.uncompressed_bytes)
    lines.append(
        f"{len(stats.layers)} layers, {human_size(stats.compressed_bytes)} compressed, "
        f"{usize} uncompressed, {human_size(stats.wasted_bytes)} wasted, "
        f"efficiency {stats.efficiency * 100:.1f} %"
    )
    return "\n".join(lines) + "\n"


def _stats_json(stats: ImageStats) -> dict[str, Any]:
    return {
        "layers": [
            {
                "index": s.index,
                "digest": s.digest,
                "media_type": s.media_type,
                "compressed_bytes": s.compressed_bytes,
                "uncompressed_bytes": s.uncompressed_bytes,
                "created_by": s.created_by,
                "added": s.added,
                "changed": s.changed,
                "removed": s.removed,
                "wasted_bytes": s.wasted_bytes,
            }
            for s in stats.layers
        ],
        "compressed_bytes": stats.compressed_bytes,
        "uncompressed_bytes": stats.uncompressed_bytes,
        "wasted_bytes": stats.wasted_bytes,
        "efficiency": stats.efficiency,
    }


def _cmd_layers(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    platform = platform_of(args)
    opts = source_options(args)

    async def run() -> ImageStats:
        async with opened_image(args.ref, opts, Path(args.cache_dir), platform) as image:
            return await trio.to_thread.run_sync(image_stats, image.layers, image.config.raw)

    stats = trio.run(run)
    if args.json:
        _text(json.dumps(_stats_json(stats), indent=2) + "\n")
    else:
        _text(_layers_table(stats))
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    """``diff``'s exit status: 0 same, 1 different, 2 trouble (like diff(1))."""
    try:
        setup_logging(args.verbose)
        platform = platform_of(args)
        opts = source_options(args)
        changes = trio.run(_diff, args, opts, platform)
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:
        print(f"ocifs: {describe_error(exc)}", file=sys.stderr)
        return DIFF_TROUBLE
    if args.json:
        _text(json.dumps([c.to_json() for c in changes], indent=2) + "\n")
    else:
        _text("".join(c.line() + "\n" for c in changes))
    return DIFF_DIFFERENT if changes else DIFF_SAME


async def _manifest_digest(ref: str, opts: SourceOptions, platform: Platform | None) -> str:
    source = open_source(ref, opts)
    try:
        return (await resolve_manifest(source, platform)).digest
    finally:
        await source.aclose()


async def _diff(args: argparse.Namespace, opts: SourceOptions, pf: Platform | None) -> list[Change]:
    cache_dir = Path(args.cache_dir)
    same = await _manifest_digest(args.ref1, opts, pf) == await _manifest_digest(
        args.ref2, opts, pf
    )
    async with opened_image(args.ref1, opts, cache_dir, pf) as a:
        if same:
            # The same manifest is the same tree: open one image only (the walk
            # still checks PATH, and reads nothing).
            return await diff_images(a, a, args.path)
        async with opened_image(args.ref2, opts, cache_dir, pf) as b:
            return await diff_images(a, b, args.path)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``manifest``, ``config``, ``digest``, ``platforms``, ``layers``, ``diff``."""
    ref_help = "image reference, e.g. localhost:5000/app:1.0 or oci:DIR:TAG"
    simple = [
        ("manifest", _cmd_manifest, "print the manifest (an index by default) as served"),
        ("config", _cmd_config, "print the image config of the platform's manifest"),
        ("digest", _cmd_digest, "print the digest of what REF names"),
        ("platforms", _cmd_platforms, "list the platforms of an image (os/arch[/variant])"),
        ("layers", _cmd_layers, "per layer: sizes, files added/changed/removed, waste"),
    ]
    for name, func, text in simple:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("ref", metavar="REF", help=ref_help)
        if name in ("platforms", "layers"):
            p.add_argument("--json", action="store_true", help="JSON output, exact numbers")
        add_image_options(p)
        p.set_defaults(func=func)

    text = "list paths added (A), removed (D) or changed (M) from REF1 to REF2"
    p = sub.add_parser("diff", help=text, description=f"{text}; exit 0 same, 1 different, 2 error")
    p.add_argument("ref1", metavar="REF1", help=ref_help)
    p.add_argument("ref2", metavar="REF2", help="the image to compare REF1 with")
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="only at and below PATH")
    p.add_argument("--json", action="store_true", help="JSON output")
    add_image_options(p)
    p.set_defaults(func=_cmd_diff)
