"""Published gzip seek indexes: OCI artifacts that let any host mount a plain gzip
image lazily at once, without streaming each layer to index it.

One artifact per image manifest (image-spec 1.1 manifest.md "artifactType",
"subject"): its ``subject`` is the image manifest, each of its layers is the index
of one gzip layer of the image — an uncompressed tar holding ocifs's layer index
(entries, uncompressed size, checkpoints, the sha256 of every compressed chunk of
the blob) and the indexed_gzip seek index, zlib-compressed — annotated with the
digest of the layer it describes. It is found through the referrers API, else the
``sha256-<hex>`` tag schema (distribution-spec "Listing Referrers").

Trust: the artifact manifest and its blobs are fetched by digest from a referrer of
the verified image manifest; each index is checked against the layer it claims to
describe; every chunk later read is checked against the index's digests (so a
tampered span is EIO). ``--index-trust`` chooses whether a published index is
required, allowed (the default, as SOCI trusts its zTOC) or ignored.
"""

from __future__ import annotations

import enum
import io
import json
import logging
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import trio

from ocifs.cache import ChunkCache
from ocifs.errors import LayerFormatError, ManifestError, NotFoundError, OcifsError
from ocifs.layers.index import LayerIndex, load_cached_index, store_index
from ocifs.oci import (
    LAYER_GZIP,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    Descriptor,
    Manifest,
    parse_index,
    sha256_digest,
)
from ocifs.sources.base import ImageSource
from ocifs.sources.writer import ImageSink, descriptor_json

__all__ = [
    "ARTIFACT_TYPE",
    "IndexTrust",
    "PublishedIndex",
    "fetch_published",
    "list_published",
    "pack_layer_index",
    "publish",
    "unpack_layer_index",
]

log = logging.getLogger(__name__)

ARTIFACT_TYPE = "application/vnd.ocifs.gzip-index.v1"
BLOB_MEDIA_TYPE = "application/vnd.ocifs.gzip-index.v1.tar"
ANN_LAYER = "io.ocifs.gzip-index.layer.digest"
ANN_VERSION = "io.ocifs.gzip-index.version"
ANN_SPACING = "io.ocifs.gzip-index.span-size"
FORMAT_VERSION = "1"
MEMBER_INDEX = "layer-index.json.gz"
MEMBER_SEEK = "gzip-index.z"
# image-spec manifest.md "Guidance for an Empty Descriptor".
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DATA = b"{}"
MAX_SEEK_INDEX_BYTES = 1024 * 1024 * 1024


class IndexTrust(enum.Enum):
    """Whether a published index must be used (``require``), may be (``allow``), or is
    never looked for (``ignore``)."""

    REQUIRE = "require"
    ALLOW = "allow"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class PublishedIndex:
    """One artifact found for an image: its manifest descriptor and the layers it has
    indexes for."""

    digest: str
    size: int
    span_size: int
    layers: tuple[str, ...]
    index_bytes: int


def pack_layer_index(index: LayerIndex) -> bytes:
    """The artifact blob of one layer's index (see the module docstring)."""
    parts = {
        MEMBER_INDEX: index.to_bytes(),
        MEMBER_SEEK: zlib.compress(index.gzip_index, 9),
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in parts.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def unpack_layer_index(blob: bytes, layer: Descriptor, what: str) -> LayerIndex:
    """Parse and check an artifact blob for ``layer``; raises :class:`LayerFormatError`."""
    parts: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            for info in tar:
                if info.name in (MEMBER_INDEX, MEMBER_SEEK) and info.isfile():
                    fh = tar.extractfile(info)
                    if fh is not None:
                        parts[info.name] = fh.read()
        seek = zlib.decompressobj().decompress(parts[MEMBER_SEEK], MAX_SEEK_INDEX_BYTES)
        index = LayerIndex.from_bytes(parts[MEMBER_INDEX], layer.digest, seek)
    except (tarfile.TarError, KeyError, ValueError, TypeError, IndexError, OSError) as exc:
        raise LayerFormatError(f"{what}: unreadable published index ({exc})") from None
    except (zlib.error, EOFError) as exc:
        raise LayerFormatError(f"{what}: unreadable published index ({exc})") from None
    index.validate(layer.size, what)
    return index


def _artifact_manifest(
    subject: Manifest, blobs: list[tuple[Descriptor, str]], spacing: int
) -> bytes:
    layers = []
    for desc, layer_digest in blobs:
        obj = descriptor_json(desc)
        obj["annotations"] = {ANN_LAYER: layer_digest}
        layers.append(obj)
    doc = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": sha256_digest(EMPTY_DATA),
            "size": len(EMPTY_DATA),
        },
        "layers": layers,
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": len(subject.raw),
        },
        "annotations": {ANN_VERSION: FORMAT_VERSION, ANN_SPACING: str(spacing)},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


async def publish(
    source: ImageSource,
    sink: ImageSink,
    subject: Manifest,
    indexes: list[LayerIndex],
    spacing: int,
) -> tuple[str, int]:
    """Push the artifact for ``subject`` holding ``indexes`` to ``sink`` (the image's
    own repository), and add it to the ``sha256-<hex>`` referrers tag's image index
    (read, modify, write). Returns the artifact's digest and its total blob bytes."""
    blobs: list[tuple[Descriptor, str]] = []
    total = 0
    with tempfile.TemporaryDirectory(prefix="ocifs-index-") as tmp:
        for index in indexes:
            data = await trio.to_thread.run_sync(pack_layer_index, index)
            path = Path(tmp) / index.digest.replace(":", "-")
            await trio.Path(path).write_bytes(data)
            desc = Descriptor(BLOB_MEDIA_TYPE, sha256_digest(data), len(data))
            await sink.put_blob_file(path, desc.digest, desc.size)
            blobs.append((desc, index.digest))
            total += len(data)
        empty = Path(tmp) / "empty"
        await trio.Path(empty).write_bytes(EMPTY_DATA)
        await sink.put_blob_file(empty, sha256_digest(EMPTY_DATA), len(EMPTY_DATA))
    raw = _artifact_manifest(subject, blobs, spacing)
    digest = await sink.put_manifest(raw, MT_OCI_MANIFEST, None)
    await _update_referrers_tag(source, sink, subject.digest, digest, len(raw), spacing)
    return digest, total


def _referrers_tag(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}-{hexpart}"


async def _update_referrers_tag(
    source: ImageSource,
    sink: ImageSink,
    subject: str,
    digest: str | None,
    size: int,
    spacing: int,
    remove: str | None = None,
) -> None:
    tag = _referrers_tag(subject)
    try:
        current = json.loads((await source.get_manifest(tag)).data)
    except NotFoundError:
        current = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []}
    keep = [m for m in current.get("manifests", []) if m.get("digest") not in (digest, remove)]
    if digest is not None:
        keep.append(
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "artifactType": ARTIFACT_TYPE,
                "annotations": {ANN_VERSION: FORMAT_VERSION, ANN_SPACING: str(spacing)},
            }
        )
    current["manifests"] = keep
    data = json.dumps(current, separators=(",", ":")).encode()
    await sink.put_manifest(data, MT_OCI_INDEX, tag)


async def _referrers(source: ImageSource, subject: str) -> tuple[Descriptor, ...]:
    lookup = getattr(source, "get_referrers", None)
    if lookup is None:
        return ()
    found: tuple[Descriptor, ...] = await lookup(subject, ARTIFACT_TYPE)
    return found


async def _artifact(source: ImageSource, desc: Descriptor, subject: str) -> dict[str, object]:
    raw = await source.get_manifest(desc.digest)  # verified against desc.digest
    doc = json.loads(raw.data)
    subj = doc.get("subject") if isinstance(doc, dict) else None
    if not isinstance(subj, dict) or subj.get("digest") != subject:
        raise ManifestError(f"artifact {desc.digest} does not refer to {subject}")
    if doc.get("artifactType") != ARTIFACT_TYPE:
        raise ManifestError(f"artifact {desc.digest} is not an ocifs gzip index")
    return dict(doc)


async def list_published(source: ImageSource, subject: Manifest) -> list[PublishedIndex]:
    """The gzip index artifacts published for ``subject``, oldest first."""
    out = []
    for desc in await _referrers(source, subject.digest):
        doc = await _artifact(source, desc, subject.digest)
        layers = parse_index(json.dumps({"manifests": doc.get("layers")}).encode(), desc.digest)
        annotations = doc.get("annotations")
        spacing = annotations.get(ANN_SPACING, "0") if isinstance(annotations, dict) else "0"
        out.append(
            PublishedIndex(
                desc.digest,
                desc.size,
                int(spacing) if str(spacing).isdigit() else 0,
                tuple(d.annotations.get(ANN_LAYER, "") for d in layers),
                sum(d.size for d in layers),
            )
        )
    return out


async def remove_published(
    source: ImageSource, sink: ImageSink, subject: Manifest, digest: str
) -> None:
    """Delete artifact ``digest`` (where the registry allows) and drop it from the
    referrers tag. Raises :class:`NotFoundError` if it is not a referrer of ``subject``."""
    if digest not in {d.digest for d in await _referrers(source, subject.digest)}:
        raise NotFoundError(f"{digest} is not a published index of {subject.digest}")
    delete = getattr(sink, "delete_manifest", None)
    if delete is not None:
        await delete(digest)
    await _update_referrers_tag(source, sink, subject.digest, None, 0, 0, remove=digest)


async def fetch_published(
    source: ImageSource,
    manifest: Manifest,
    cache: ChunkCache,
    trust: IndexTrust,
    what: str,
) -> int:
    """Bring the published indexes of the image's gzip layers that have none cached
    into the cache; returns how many were imported. With ``require``, a gzip layer
    left without an index is a :class:`ManifestError`; with ``allow``, a bad or
    missing artifact only means the layer is indexed locally (logged)."""
    if trust is IndexTrust.IGNORE:
        return 0

    def missing() -> list[Descriptor]:
        return [
            d
            for d in manifest.layers
            if d.media_type in LAYER_GZIP
            and "containerd.io/snapshot/stargz/toc.digest" not in d.annotations
            and load_cached_index(cache, d.digest) is None
        ]

    need = await trio.to_thread.run_sync(missing)
    if not need:
        return 0
    imported = 0
    try:
        candidates = await _referrers(source, manifest.digest)
        for desc in reversed(candidates):  # the newest first
            doc = await _artifact(source, desc, manifest.digest)
            layers = parse_index(
                json.dumps({"manifests": doc.get("layers")}).encode(), f"{what} artifact"
            )
            by_layer = {d.annotations.get(ANN_LAYER): d for d in layers}
            for layer in list(need):
                blob_desc = by_layer.get(layer.digest)
                if blob_desc is None:
                    continue
                blob = await source.get_blob(blob_desc)  # verified against its digest
                index = unpack_layer_index(blob, layer, f"{what} layer {layer.digest}")
                await trio.to_thread.run_sync(store_index, cache, index)
                need.remove(layer)
                imported += 1
            if not need:
                break
    except OcifsError as exc:
        if trust is IndexTrust.REQUIRE:
            raise
        log.warning("%s: published gzip index not used: %s", what, exc)
    if need and trust is IndexTrust.REQUIRE:
        raise ManifestError(
            f"{what}: no published gzip index for layer {need[0].digest} (--index-trust require)"
        )
    if imported:
        log.info("%s: imported %d published gzip index(es)", what, imported)
    return imported
