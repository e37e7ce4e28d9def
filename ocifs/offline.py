"""Offline mounts: an :class:`~ocifs.sources.base.ImageSource` that keeps the small,
digest-addressed metadata of every image it resolves (manifests, image indexes,
configs) in the chunk cache, and what each tag last resolved to.

Online nothing changes: every request goes to the source first, and what it returns
is stored. When the source cannot be reached (:class:`~ocifs.errors.FetchError`:
connection refused, timeouts, 5xx after the retries), a manifest or config asked
for by digest comes from the cache (verified against its digest again), and a tag
falls back to the digest it last resolved to, with one warning. After the first
such failure the source is taken to be offline and cached metadata is served at
once; layer bytes still go to the source (and through the chunk cache above it),
so reads of uncached data fail with EIO after the transport's retries.

Cache layout (see :mod:`ocifs.cache`): ``indexes/sha256/<hex>.manifest`` holds the
media type, a newline and the manifest bytes; ``<hex>.config`` the config bytes;
one record per repository (:meth:`ocifs.cache.ChunkCache.put_record`) maps its tags
to ``{"digest", "media_type", "resolved_at"}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import trio

from ocifs.cache import ChunkCache
from ocifs.errors import DigestMismatchError, FetchError, ManifestError
from ocifs.oci import Descriptor, check_digest
from ocifs.sources.base import ImageSource, RawManifest

__all__ = ["MetadataCachingSource", "NetworkStats"]

log = logging.getLogger(__name__)

SUFFIX_MANIFEST = "manifest"
SUFFIX_CONFIG = "config"
TAGS_RECORD_VERSION = 1
MAX_CACHED_CONFIG_BYTES = 4 * 1024 * 1024


def _is_digest(reference: str) -> bool:
    return reference.startswith(("sha256:", "sha512:"))


class NetworkStats:
    """Bytes this process received from its image source (manifests, configs and
    layer bytes), for ``ocifs mounts``."""

    def __init__(self) -> None:
        self.bytes_fetched = 0


class MetadataCachingSource:
    """Wraps ``source``: stores manifests, configs and tag resolutions in ``cache``,
    and serves them from there when ``source`` is unreachable (module docstring)."""

    def __init__(self, source: ImageSource, cache: ChunkCache) -> None:
        self._source = source
        self._cache = cache
        # Named before any fetch: a short name's describe() changes once resolved.
        self._name = source.describe()
        self._offline_because: str | None = None
        self.stats = NetworkStats()

    # -- pass-through -----------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Optional capabilities of the wrapped source (get_referrers, ping) pass through.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._source, name)

    def describe(self) -> str:
        """The wrapped source's name."""
        return self._source.describe()

    def default_reference(self) -> str:
        """The wrapped source's tag or digest."""
        return self._source.default_reference()

    async def read_blob(self, desc: Descriptor, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of a blob, from the source (never cached here:
        the chunk cache above keeps verified chunks)."""
        data = await self._source.read_blob(desc, offset, size)
        self.stats.bytes_fetched += len(data)
        return data

    async def stream_blob(self, desc: Descriptor) -> AsyncGenerator[bytes, None]:
        """The whole blob from the source."""
        stream = self._source.stream_blob(desc)
        try:
            async for piece in stream:
                self.stats.bytes_fetched += len(piece)
                yield piece
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        """Close the wrapped source."""
        await self._source.aclose()

    # -- manifests ---------------------------------------------------------------

    async def get_manifest(self, reference: str) -> RawManifest:
        """The manifest at a tag or digest: from the source (and stored), else from
        the cache when the source is unreachable. Raises what the source raises
        when the cache cannot answer."""
        if self._offline_because is not None:
            cached = await self._cached_manifest_for(reference)
            if cached is not None:
                return cached
        try:
            raw = await self._source.get_manifest(reference)
        except FetchError as exc:
            cached = await self._cached_manifest_for(reference, exc)
            if cached is None:
                raise
            return cached
        self.stats.bytes_fetched += len(raw.data)
        await trio.to_thread.run_sync(self._store_manifest, reference, raw)
        return raw

    async def _cached_manifest_for(
        self, reference: str, exc: FetchError | None = None
    ) -> RawManifest | None:
        name = self._name
        if _is_digest(reference):
            raw = await trio.to_thread.run_sync(self._load_manifest, reference)
            if raw is not None and exc is not None:
                self._went_offline(
                    exc, f"{name}: registry unreachable ({exc}); using cached metadata"
                )
            return raw
        tags = await trio.to_thread.run_sync(self._load_tags)
        entry = tags.get(reference)
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            return None
        digest = entry["digest"]
        raw = await trio.to_thread.run_sync(self._load_manifest, digest)
        if raw is None:
            return None
        when = entry.get("resolved_at")
        since = (
            time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when))
            if isinstance(when, int | float)
            else "an earlier run"
        )
        reason = f" ({exc})" if exc is not None else ""
        message = (
            f"{name}: registry unreachable{reason}; using {digest}, "
            f"which tag {reference} resolved to at {since}"
        )
        if exc is not None:
            self._went_offline(exc, message)
        else:
            log.warning("%s", message)
        return raw

    def _went_offline(self, exc: FetchError, message: str) -> None:
        """Remember that the source is unreachable; warn once."""
        if self._offline_because is None:
            self._offline_because = str(exc)
            log.warning("%s", message)

    def _store_manifest(self, reference: str, raw: RawManifest) -> None:
        self._cache.put_index(
            raw.digest, SUFFIX_MANIFEST, raw.media_type.encode() + b"\n" + raw.data
        )
        if _is_digest(reference):
            return
        key = self._tags_key()
        with self._cache.record_lock(key):
            tags = self._load_tags()
            tags[reference] = {
                "digest": raw.digest,
                "media_type": raw.media_type,
                "resolved_at": time.time(),
            }
            doc = {"version": TAGS_RECORD_VERSION, "name": self._repository(), "tags": tags}
            self._cache.put_record(key, json.dumps(doc, sort_keys=True).encode())

    def _load_manifest(self, digest: str) -> RawManifest | None:
        stored = self._cache.get_index(digest, SUFFIX_MANIFEST)
        if stored is None:
            return None
        media_type, _, data = stored.partition(b"\n")
        try:
            check_digest(data, digest, f"cached manifest {digest}")
        except (DigestMismatchError, ManifestError):
            log.warning("cache: ignoring corrupt cached manifest %s", digest)
            return None
        return RawManifest(data, media_type.decode("utf-8", "replace"), digest)

    def _repository(self) -> str:
        # The name without tag or digest: one record per repository.
        name = self._name
        name = name.partition("@")[0]
        head, sep, tail = name.rpartition(":")
        return head if sep and "/" not in tail else name

    def _tags_key(self) -> str:
        return f"tags:{self._repository()}"

    def _load_tags(self) -> dict[str, Any]:
        data = self._cache.get_record(self._tags_key())
        if data is None:
            return {}
        try:
            doc = json.loads(data)
        except ValueError:
            return {}
        tags = doc.get("tags") if isinstance(doc, dict) else None
        return tags if isinstance(tags, dict) else {}

    # -- configs -------------------------------------------------------------------

    async def get_blob(self, desc: Descriptor) -> bytes:
        """A small blob (a config): from the source (and stored when small), else from
        the cache when the source is unreachable."""
        if self._offline_because is not None:
            data = await trio.to_thread.run_sync(self._load_blob, desc)
            if data is not None:
                return data
        try:
            data = await self._source.get_blob(desc)
        except FetchError as exc:
            cached = await trio.to_thread.run_sync(self._load_blob, desc)
            if cached is None:
                raise
            self._went_offline(
                exc, f"{self.describe()}: registry unreachable ({exc}); using cached metadata"
            )
            return cached
        self.stats.bytes_fetched += len(data)
        if len(data) <= MAX_CACHED_CONFIG_BYTES:
            await trio.to_thread.run_sync(self._cache.put_index, desc.digest, SUFFIX_CONFIG, data)
        return data

    def _load_blob(self, desc: Descriptor) -> bytes | None:
        data = self._cache.get_index(desc.digest, SUFFIX_CONFIG)
        if data is None:
            return None
        try:
            check_digest(data, desc.digest, f"cached blob {desc.digest}")
        except (DigestMismatchError, ManifestError):
            log.warning("cache: ignoring corrupt cached blob %s", desc.digest)
            return None
        return data
