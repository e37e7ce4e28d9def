"""From a source to a ready image: resolve the reference to a manifest (through an
image index to one platform), fetch and verify the config, open every layer's
index (concurrently), and merge them into one tree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from ocifs.cache import ChunkCache
from ocifs.errors import ManifestError
from ocifs.gzindex import IndexTrust, fetch_published
from ocifs.layers.gzip import SpanCache
from ocifs.layers.index import Layer, layer_kind, open_layer
from ocifs.oci import (
    INDEX_TYPES,
    ImageConfig,
    Manifest,
    Platform,
    host_platform,
    media_type_of,
    parse_config,
    parse_index,
    parse_manifest,
    select_platform,
)
from ocifs.offline import MetadataCachingSource
from ocifs.sources import SourceOptions, open_source
from ocifs.sources.base import ImageSource, RawManifest
from ocifs.tree import Node, Tree, build_tree

__all__ = ["Image", "open_image", "opened_image", "read_node", "resolve", "resolve_manifest"]

log = logging.getLogger(__name__)

MAX_INDEX_DEPTH = 4
LAYER_OPEN_CONCURRENCY = 4


@dataclass(slots=True)
class Image:
    """A resolved image: manifest, config, opened layers (bottom first) and merged tree."""

    source: ImageSource
    manifest: Manifest
    config: ImageConfig
    layers: list[Layer]
    tree: Tree


async def resolve_manifest(
    source: ImageSource, platform: Platform | None = None, top: RawManifest | None = None
) -> Manifest:
    """The image manifest the source's reference names, an image index followed to
    ``platform`` (default: this host's) per image-spec image-index.md; ``top`` is the
    reference's manifest or index when already fetched. Raises as :func:`resolve`."""
    what = source.describe()
    want = platform or host_platform()
    raw = top or await source.get_manifest(source.default_reference())
    for _ in range(MAX_INDEX_DEPTH):
        mt = media_type_of(raw.data, raw.media_type, what)
        if mt not in INDEX_TYPES:
            break
        chosen = select_platform(parse_index(raw.data, what), want, what)
        raw = await source.get_manifest(chosen.digest)
    else:
        raise ManifestError(f"{what}: image indexes nested deeper than {MAX_INDEX_DEPTH}")
    return parse_manifest(raw.data, raw.digest, what)


async def resolve(
    source: ImageSource, platform: Platform | None = None
) -> tuple[Manifest, ImageConfig]:
    """Resolve the source's reference to one image manifest and its config.

    An image index is followed to the manifest for ``platform`` (default: this
    host's), per image-spec image-index.md. Every manifest and the config are
    verified against their digests. Raises :class:`ManifestError`,
    :class:`ocifs.errors.NotFoundError`, :class:`ocifs.errors.DigestMismatchError`.
    """
    what = source.describe()
    manifest = await resolve_manifest(source, platform)
    config_raw = await source.get_blob(manifest.config)
    config = parse_config(config_raw, manifest.config.digest, f"{what} config")
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"{what}: config lists {len(config.diff_ids)} diffIDs for {len(manifest.layers)} layers"
        )
    have = config.platform
    if platform is not None and have is not None and not platform.matches(have):
        # One image, not an index: nothing to choose from. podman warns the same way.
        log.warning("%s: the image is for %s, not the requested %s", what, have, platform)
    return manifest, config


async def open_image(
    source: ImageSource,
    cache: ChunkCache,
    limiter: trio.CapacityLimiter,
    platform: Platform | None = None,
    index_trust: IndexTrust = IndexTrust.ALLOW,
) -> Image:
    """Resolve the image, open each layer's index (from the cache, else a published
    gzip index artifact as ``index_trust`` allows, else built), merge the tree.

    Manifests and configs are kept in the cache for offline mounts
    (:mod:`ocifs.offline`); a layer ocifs cannot read is refused before any is opened."""
    source = MetadataCachingSource(source, cache)
    manifest, config = await resolve(source, platform)
    what = source.describe()
    for i, desc in enumerate(manifest.layers):
        layer_kind(desc, f"{what} layer {i} ({desc.digest})")
    await fetch_published(source, manifest, cache, index_trust, what)
    layers: list[Layer | None] = [None] * len(manifest.layers)
    gate = trio.Semaphore(LAYER_OPEN_CONCURRENCY)
    spans = SpanCache()

    async def one(i: int) -> None:
        async with gate:
            layers[i] = await open_layer(
                source,
                manifest.layers[i],
                config.diff_ids[i],
                cache,
                limiter,
                spans,
                f"{what} layer {i} ({manifest.layers[i].digest})",
            )

    async with trio.open_nursery() as nursery:
        for i in range(len(manifest.layers)):
            nursery.start_soon(one, i)
    opened = [layer for layer in layers if layer is not None]
    tree = await trio.to_thread.run_sync(build_tree, [layer.entries for layer in opened])
    return Image(source, manifest, config, opened, tree)


async def read_node(image: Image, node: Node, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` of a regular file's content (fewer at its end).

    Raises :class:`ocifs.errors.DigestMismatchError` / :class:`ocifs.errors.FetchError`
    when the bytes cannot be fetched and verified.
    """
    size = min(size, node.size - offset)
    if size <= 0 or node.entry is None:
        return b""
    return await image.layers[node.layer].read(node.entry, offset, size)


@asynccontextmanager
async def opened_image(
    ref: str,
    opts: SourceOptions,
    cache_dir: Path,
    platform: Platform | None = None,
    cache_max: int | None = None,
    index_trust: IndexTrust = IndexTrust.ALLOW,
) -> AsyncIterator[Image]:
    """Open the image ``ref`` names (any source ocifs reads) with the cache at
    ``cache_dir`` (bounded to ``cache_max`` bytes); the source is closed on exit."""
    source = open_source(ref, opts)
    try:
        cache = ChunkCache(cache_dir, cache_max)
        limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
        yield await open_image(source, cache, limiter, platform, index_trust)
    finally:
        await source.aclose()
