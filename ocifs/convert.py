"""``ocifs convert``: rewrite an image's layers as eStargz and push the result.

Per layer: stream the blob from the source into a temporary *uncompressed* tar file
(checking the blob digest and the config's diffID on the way), write its eStargz form
(:mod:`ocifs.layers.estargz_writer`) to a second temporary file in a worker thread,
check that the eStargz reader accepts it, push it, and delete both files. Memory stays
bounded whatever the layer size; the temporary directory needs about the layer's
uncompressed size plus its compressed size.

Layers that are already eStargz (their descriptor has the TOC digest annotation) are
copied as they are. The output is always OCI (manifest, config, index media types):
Docker schema2 has no layer annotations, and eStargz needs them. The config changes
only in ``rootfs.diff_ids`` (``history`` and everything else stay); an image index is
converted per platform and re-indexed with the platforms as they were, attestation
manifests (``unknown/unknown``, which name the old manifests) left out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from ocifs.errors import BadReferenceError, DigestMismatchError, LayerFormatError, UnsupportedError
from ocifs.image import resolve_manifest
from ocifs.layers.entry import normalize_path
from ocifs.layers.estargz import (
    FOOTER_SIZE_BYTES,
    TOC_DIGEST_ANNOTATION,
    UNCOMPRESSED_SIZE_ANNOTATION,
    check_toc_digest,
    decompress_toc,
    parse_footer,
    parse_toc,
)
from ocifs.layers.estargz_writer import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_COMPRESSION_LEVEL,
    EStargzResult,
    write_estargz,
)
from ocifs.layers.gzip import expansion_limit_bytes
from ocifs.layers.index import KIND_GZIP, layer_kind
from ocifs.oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    Descriptor,
    Manifest,
    Platform,
    media_type_of,
    parse_config,
    parse_index,
    parse_manifest,
)
from ocifs.reference import parse_reference
from ocifs.sources import SourceOptions
from ocifs.sources.base import ImageSource, RawManifest
from ocifs.sources.writer import ImageSink, LayoutSink, RegistrySink, descriptor_json

__all__ = [
    "ConvertOptions",
    "ConvertReport",
    "LayerReport",
    "Progress",
    "convert_image",
    "open_sink",
]

log = logging.getLogger(__name__)

MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# Blob pieces are handed to a worker thread (hash, inflate, write) this many at once.
BATCH_BYTES = 1024 * 1024
# The most uncompressed bytes one inflate call may return (keeps a gzip bomb's
# expansion out of memory).
INFLATE_OUT_BYTES = 4 * 1024 * 1024
# The gzip header's XFL byte says how hard the producer compressed (RFC 1952):
# 2 = slowest (level 9), 4 = fastest (level 1); anything else we read as the default.
_XFL_LEVELS = {2: 9, 4: 1}


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    """How to convert: uncompressed bytes per chunk, the zlib level (0-9; None keeps
    the source's, as far as its gzip header tells), the paths to place before the
    prefetch landmark, one platform only (None: every platform of an index), and the
    directory for temporary files (None: the system's)."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    level: int | None = DEFAULT_COMPRESSION_LEVEL
    prioritize: tuple[str, ...] = ()
    platform: Platform | None = None
    tmp_dir: Path | None = None


class Progress(Protocol):
    """Progress of byte-sized steps; :meth:`advance` may be called from a worker thread."""

    def start(self, label: str, total_bytes: int) -> None:
        """A step of ``total_bytes`` begins."""
        ...

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more are done."""
        ...

    def finish(self) -> None:
        """The step ended."""
        ...


@dataclass(frozen=True, slots=True)
class LayerReport:
    """One layer of one platform: the source descriptor, the written one, and
    whether the blob was kept (already eStargz)."""

    platform: str
    index: int
    source: Descriptor
    result: Descriptor
    kept: bool


@dataclass(slots=True)
class ConvertReport:
    """The pushed top-level manifest or index, and per layer what happened;
    ``unmatched`` lists prioritized paths no layer has."""

    digest: str
    media_type: str
    layers: list[LayerReport] = field(default_factory=list)
    unmatched: tuple[str, ...] = ()


class _Gunzip:
    """Inflates a gzip stream of one or more members fed in pieces, passing the tar
    bytes to ``write``; trailing NUL padding after the last member is allowed."""

    def __init__(self, write: Callable[[bytes], None], limit_bytes: int, what: str) -> None:
        self.write = write
        self.limit_bytes = limit_bytes
        self.what = what
        self.total = 0
        self.head = b""  # the first bytes of the stream: gzip header
        self._inflater: Any = zlib.decompressobj(31)
        self._between = False  # a member ended; the next bytes start one, or are padding
        self._padding = False

    def feed(self, data: bytes) -> None:
        if len(self.head) < 10:
            self.head += data[: 10 - len(self.head)]
        while data:
            if self._padding:
                if data.strip(b"\0"):
                    raise LayerFormatError(f"{self.what}: data after the end of the gzip stream")
                return
            if self._between:
                if data[0] != 0x1F:
                    self._padding = True
                    continue
                self._inflater = zlib.decompressobj(31)
                self._between = False
            try:
                out = self._inflater.decompress(data, INFLATE_OUT_BYTES)
                self._emit(out)
                while self._inflater.unconsumed_tail:
                    tail = self._inflater.unconsumed_tail
                    self._emit(self._inflater.decompress(tail, INFLATE_OUT_BYTES))
            except zlib.error as exc:
                raise LayerFormatError(f"{self.what}: not a valid gzip stream: {exc}") from None
            if self._inflater.eof:
                data = self._inflater.unused_data
                self._between = True
            else:
                data = b""

    def _emit(self, out: bytes) -> None:
        self.total += len(out)
        if self.total > self.limit_bytes:
            raise LayerFormatError(
                f"{self.what}: gzip stream expands to more than {self.limit_bytes} bytes: "
                "refusing a likely gzip bomb"
            )
        self.write(out)

    def close(self) -> int:
        """Check the stream ended with a whole member; return the compression level
        its header suggests."""
        if not self._between:
            raise LayerFormatError(f"{self.what}: gzip stream is truncated")
        return _XFL_LEVELS.get(self.head[8], DEFAULT_COMPRESSION_LEVEL)


def _check_written(path: Path, result: EStargzResult, what: str) -> None:
    """The eStargz reader's own checks on the blob just written (footer, TOC digest,
    every TOC rule): a writer bug must fail here, not at a user's mount."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - FOOTER_SIZE_BYTES))
        found = parse_footer(fh.read(), size)
        if found is None or found.size != FOOTER_SIZE_BYTES:
            raise LayerFormatError(f"{what}: written eStargz blob has no valid footer")
        fh.seek(found.toc_offset)
        member = fh.read(size - FOOTER_SIZE_BYTES - found.toc_offset)
    toc_json = decompress_toc(member, what)
    check_toc_digest(toc_json, result.toc_digest, what)
    parse_toc(toc_json, found.toc_offset, what)


class _Converter:
    """One ``convert`` run: source, sink, options, temporary directory, and the layers
    already done (a layer shared by several platforms is converted once)."""

    def __init__(
        self,
        source: ImageSource,
        sink: ImageSink,
        opts: ConvertOptions,
        tmp: Path,
        progress: Progress | None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.opts = opts
        self.tmp = tmp
        self.progress = progress
        self.limiter = trio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self.done: dict[str, tuple[Descriptor, str, bool]] = {}
        self.found: set[str] = set()
        self.report = ConvertReport("", "")
        self._serial = 0

    def _temp(self, name: str) -> Path:
        self._serial += 1
        return self.tmp / f"{self._serial}-{name}"

    def _start(self, label: str, total: int) -> None:
        if self.progress is not None:
            self.progress.start(label, total)

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        """Finish the progress step begun by :meth:`_start` however the block ends."""
        try:
            yield
        finally:
            if self.progress is not None:
                self.progress.finish()

    async def _fetch(
        self, desc: Descriptor, path: Path, label: str, gunzip_what: str | None
    ) -> tuple[str, int]:
        """Stream blob ``desc`` into ``path`` (inflated when ``gunzip_what`` names the
        layer), checking its digest. Returns the diffID of what was written and the
        compression level the gzip header suggests."""
        blob_hash = hashlib.sha256()
        tar_hash = hashlib.sha256()
        self._start(f"{label} fetch", desc.size)
        with open(path, "wb") as fh, self._step():

            def write(data: bytes) -> None:
                tar_hash.update(data)
                fh.write(data)

            gunzip = None
            if gunzip_what is not None:
                limit = expansion_limit_bytes(desc.size)
                gunzip = _Gunzip(write, limit, gunzip_what)

            def work(pieces: list[bytes]) -> None:
                for piece in pieces:
                    blob_hash.update(piece)
                    (gunzip.feed if gunzip is not None else write)(piece)
                if self.progress is not None:
                    self.progress.advance(sum(map(len, pieces)))

            batch: list[bytes] = []
            held = 0
            async with contextlib.aclosing(self.source.stream_blob(desc)) as stream:
                async for piece in stream:
                    batch.append(piece)
                    held += len(piece)
                    if held >= BATCH_BYTES:
                        await trio.to_thread.run_sync(work, batch, limiter=self.limiter)
                        batch, held = [], 0
            await trio.to_thread.run_sync(work, batch, limiter=self.limiter)
            level = gunzip.close() if gunzip is not None else DEFAULT_COMPRESSION_LEVEL
        got = "sha256:" + blob_hash.hexdigest()
        if got != desc.digest:
            raise DigestMismatchError(f"{label}: blob digest {got}, expected {desc.digest}")
        return "sha256:" + tar_hash.hexdigest(), level

    async def layer(
        self, desc: Descriptor, diff_id: str, what: str
    ) -> tuple[Descriptor, str, bool]:
        """Convert (or keep) one layer and push it; returns its new descriptor, its new
        diffID, and whether it was kept."""
        if desc.digest in self.done:
            return self.done[desc.digest]
        kind = layer_kind(desc, what)
        if kind == KIND_GZIP and TOC_DIGEST_ANNOTATION in desc.annotations:
            if not await self.sink.has_blob(desc.digest):
                blob = self._temp("blob")
                try:
                    await self._fetch(desc, blob, what, None)
                    await self.sink.put_blob_file(blob, desc.digest, desc.size)
                finally:
                    blob.unlink(missing_ok=True)
            kept = Descriptor(MT_OCI_LAYER_GZIP, desc.digest, desc.size, dict(desc.annotations))
            self.done[desc.digest] = (kept, diff_id, True)
            return self.done[desc.digest]
        spool, out = self._temp("layer.tar"), self._temp("layer.esgz")
        try:
            got, level = await self._fetch(desc, spool, what, what if kind == KIND_GZIP else None)
            if got != diff_id:
                raise DigestMismatchError(
                    f"{what}: uncompressed digest {got} does not match the config's {diff_id}"
                )
            total = spool.stat().st_size
            if self.opts.level is not None:
                level = self.opts.level
            self._start(f"{what} eStargz", total)
            with self._step():
                result = await trio.to_thread.run_sync(self._write, spool, out, level, what)
            await trio.to_thread.run_sync(spool.unlink)  # as big as the layer's tar
            await trio.to_thread.run_sync(_check_written, out, result, what)
            await self.sink.put_blob_file(out, result.digest, result.size)
        finally:
            spool.unlink(missing_ok=True)
            out.unlink(missing_ok=True)
        self.found.update(result.prioritized)
        annotations = {
            **desc.annotations,
            TOC_DIGEST_ANNOTATION: result.toc_digest,
            UNCOMPRESSED_SIZE_ANNOTATION: str(result.uncompressed_size),
        }
        new = Descriptor(MT_OCI_LAYER_GZIP, result.digest, result.size, annotations)
        self.done[desc.digest] = (new, result.diff_id, False)
        return self.done[desc.digest]

    def _write(self, spool: Path, out: Path, level: int, what: str) -> EStargzResult:
        with open(spool, "rb") as src, open(out, "wb") as dst:
            return write_estargz(
                src,
                dst,
                what=what,
                chunk_bytes=self.opts.chunk_bytes,
                level=level,
                prioritize=self.opts.prioritize,
                progress=self.progress.advance if self.progress is not None else None,
            )

    async def manifest(self, manifest: Manifest, platform: str) -> bytes:
        """Convert one image manifest's layers, push its config; return the new
        manifest's bytes (not pushed)."""
        what = f"{self.source.describe()}{f' ({platform})' if platform else ''}"
        config_raw = await self.source.get_blob(manifest.config)
        config = parse_config(config_raw, manifest.config.digest, f"{what} config")
        if len(config.diff_ids) != len(manifest.layers):
            raise LayerFormatError(
                f"{what}: config lists {len(config.diff_ids)} diffIDs "
                f"for {len(manifest.layers)} layers"
            )
        layers: list[Descriptor] = []
        diff_ids: list[str] = []
        n = len(manifest.layers)
        for i, desc in enumerate(manifest.layers):
            layer_what = f"{what} layer {i + 1}/{n} ({desc.digest[:19]})"
            new, diff_id, kept = await self.layer(desc, config.diff_ids[i], layer_what)
            layers.append(new)
            diff_ids.append(diff_id)
            self.report.layers.append(LayerReport(platform, i, desc, new, kept))
        if tuple(diff_ids) != config.diff_ids:
            obj = json.loads(config_raw)
            obj["rootfs"]["diff_ids"] = diff_ids
            config_raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        config_desc = await self._put_blob(config_raw, MT_OCI_CONFIG)
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": descriptor_json(config_desc),
            "layers": [descriptor_json(d) for d in layers],
        }
        for key, value in json.loads(manifest.raw).items():
            doc.setdefault(key, value)
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    async def _put_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not await self.sink.has_blob(digest):
            path = self._temp("blob")
            try:
                await trio.to_thread.run_sync(path.write_bytes, data)
                await self.sink.put_blob_file(path, digest, len(data))
            finally:
                path.unlink(missing_ok=True)
        return Descriptor(media_type, digest, len(data))

    async def index(self, raw: RawManifest, tag: str | None) -> None:
        """Convert every platform of an image index, push the manifests, then the new
        index under ``tag``."""
        what = self.source.describe()
        obj = json.loads(raw.data)
        entries: list[dict[str, Any]] = []
        for desc, entry in zip(parse_index(raw.data, what), obj["manifests"], strict=True):
            plat = desc.platform
            if plat is not None and (plat.os, plat.architecture) == ("unknown", "unknown"):
                log.info("%s: leaving out attestation manifest %s", what, desc.digest)
                continue
            if desc.media_type not in MANIFEST_TYPES:
                raise UnsupportedError(
                    f"{what}: index entry {desc.digest} is {desc.media_type}, not an image"
                )
            child = await self.source.get_manifest(desc.digest)
            manifest = parse_manifest(child.data, child.digest, f"{what}@{desc.digest}")
            data = await self.manifest(manifest, str(plat) if plat else desc.digest)
            digest = await self._put_manifest(data, None, child=True)
            entries.append(
                {**entry, "mediaType": MT_OCI_MANIFEST, "digest": digest, "size": len(data)}
            )
        if not entries:
            raise UnsupportedError(f"{what}: the image index lists no image manifest")
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries}
        for key, value in obj.items():
            doc.setdefault(key, value)
        data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        self.report.digest = await self._put_manifest(data, tag, child=False)
        self.report.media_type = MT_OCI_INDEX

    async def _put_manifest(self, data: bytes, tag: str | None, *, child: bool) -> str:
        media_type = json.loads(data)["mediaType"]
        if child and isinstance(self.sink, LayoutSink):
            # In a layout an index's manifests are blobs; index.json lists the top only.
            return (await self._put_blob(data, media_type)).digest
        return await self.sink.put_manifest(data, media_type, tag)


async def convert_image(
    source: ImageSource,
    sink: ImageSink,
    tag: str | None,
    opts: ConvertOptions,
    progress: Progress | None = None,
) -> ConvertReport:
    """Convert the image the source's reference names (every platform of an index,
    or only ``opts.platform``) to eStargz, push it to ``sink`` and tag it ``tag``.

    Raises :class:`DigestMismatchError` when a blob or its uncompressed stream does not
    match its descriptor or diffID, :class:`LayerFormatError` for a layer that is not
    a valid tar, :class:`UnsupportedError` for layers ocifs cannot read, and what the
    source and sink raise.
    """
    what = source.describe()
    top = await source.get_manifest(source.default_reference())
    with tempfile.TemporaryDirectory(prefix="ocifs-convert-", dir=opts.tmp_dir) as tmp:
        conv = _Converter(source, sink, opts, Path(tmp), progress)
        is_index = media_type_of(top.data, top.media_type, what) in INDEX_TYPES
        if is_index and opts.platform is None:
            await conv.index(top, tag)
        else:
            manifest = await resolve_manifest(source, opts.platform, top)
            data = await conv.manifest(manifest, str(opts.platform or ""))
            conv.report.digest = await conv._put_manifest(data, tag, child=False)
            conv.report.media_type = MT_OCI_MANIFEST
    conv.report.unmatched = tuple(p for p in opts.prioritize if normalize_path(p) not in conv.found)
    return conv.report


LOCAL_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:")


def open_sink(dst: str, opts: SourceOptions, src: str) -> tuple[ImageSink, str | None]:
    """Where ``dst`` says to write, and the tag to give the result: ``oci:DIR[:TAG]``
    (no tag: an untagged entry in ``index.json``) or a registry reference (tag
    ``latest`` by default); blobs are mounted from ``src``'s repository when it is
    in the same registry. Does no I/O. Raises :class:`BadReferenceError`."""
    if dst.startswith("oci:"):
        path, _, tag = dst[len("oci:") :].partition(":")
        if not path:
            raise BadReferenceError(f"invalid destination {dst!r}: oci: needs a directory")
        return LayoutSink(Path(path)), tag or None
    if dst.startswith(LOCAL_TRANSPORTS[1:]):
        raise BadReferenceError(
            f"invalid destination {dst!r}: convert writes to a registry or oci:DIR[:TAG]"
        )
    ref = parse_reference(dst)
    if ref.digest is not None:
        raise BadReferenceError(f"invalid destination {dst!r}: it cannot name a digest")
    mount_from = None
    if not src.startswith(LOCAL_TRANSPORTS):
        with contextlib.suppress(BadReferenceError):
            src_ref = parse_reference(src)
            if src_ref.registry == ref.registry:
                mount_from = src_ref.repository
    sink = RegistrySink(
        ref,
        insecure=opts.insecure,
        creds=opts.creds,
        authfile=opts.authfile,
        timeout_s=opts.timeout_s,
        mount_from=mount_from,
    )
    return sink, ref.tag
