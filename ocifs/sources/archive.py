"""Image archives as sources, read in place by offset, never extracted:
``oci-archive:FILE[:TAG]`` (a tar of an OCI image layout, image-spec image-layout.md)
and ``docker-archive:FILE[:NAME:TAG | :@INDEX]`` (``docker save`` output: a
``manifest.json`` naming config JSON files and layer tars), as skopeo spells them.

The archive's tar headers are scanned once (member name -> offset and size of its
data); every blob read is then a ``pread`` at that offset. For a docker archive a
Docker schema2 manifest is synthesized: the config's digest is the sha256 of its
file, each layer's the sha256 of its member (hashed once by streaming it) with a
media type sniffed from its first bytes (tar, or tar+gzip).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tarfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ocifs.errors import (
    BadReferenceError,
    FetchError,
    ManifestError,
    NotFoundError,
    UnsupportedError,
)
from ocifs.oci import (
    MT_DOCKER_CONFIG,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    Descriptor,
    check_digest,
    parse_index,
    sha256_digest,
)
from ocifs.reference import Reference, parse_reference
from ocifs.sources.base import RawManifest
from ocifs.sources.layout import REF_NAME

__all__ = [
    "DOCKER_ARCHIVE",
    "OCI_ARCHIVE",
    "ArchiveReference",
    "DockerArchiveSource",
    "OciArchiveSource",
    "parse_archive_reference",
]

OCI_ARCHIVE = "oci-archive"
DOCKER_ARCHIVE = "docker-archive"
STREAM_PIECE_BYTES = 1024 * 1024
MAX_JSON_MEMBER_BYTES = 4 * 1024 * 1024  # manifest.json, index.json, configs
MAX_LINK_HOPS = 16
MT_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MT_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# Whole-archive compressions that cannot be read by offset (magic bytes -> name).
_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
}
_INDEX_RE = re.compile(r"^@(\d+)$")


@dataclass(frozen=True, slots=True)
class ArchiveReference:
    """A parsed archive reference: transport (``oci-archive``/``docker-archive``),
    absolute ``path``, and what picks the image: ``tag`` (oci-archive's ref.name),
    ``name`` (docker-archive's NAME:TAG, normalised) or ``index`` (``@N``, 0-based)."""

    transport: str
    path: Path
    text: str = ""
    tag: str = ""
    name: Reference | None = None
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}" + (f":{self.text}" if self.text else "")


def parse_archive_reference(text: str) -> ArchiveReference:
    """Parse ``oci-archive:FILE[:TAG]`` or ``docker-archive:FILE[:NAME[:TAG]|:@INDEX]``.

    As in skopeo, FILE ends at the first colon. A docker-archive NAME without a tag
    means ``:latest``; a digest is refused. Does no I/O. Raises
    :class:`BadReferenceError`.
    """
    transport, _, rest = text.partition(":")
    if transport not in (OCI_ARCHIVE, DOCKER_ARCHIVE):
        raise BadReferenceError(f"invalid reference {text!r}: not an archive transport")
    path, sep, pick = rest.partition(":")
    if not path:
        raise BadReferenceError(f"invalid reference {text!r}: {transport}: needs a file")
    if sep and not pick:
        raise BadReferenceError(f"invalid reference {text!r}: empty image name after the file")
    absolute = Path(os.path.abspath(path))
    if transport == OCI_ARCHIVE:
        return ArchiveReference(transport, absolute, pick, tag=pick)
    if not pick:
        return ArchiveReference(transport, absolute)
    m = _INDEX_RE.match(pick)
    if m:
        return ArchiveReference(transport, absolute, pick, index=int(m.group(1)))
    if pick.startswith("@"):
        raise BadReferenceError(f"invalid reference {text!r}: @INDEX must be a number")
    if "@" in pick:
        raise BadReferenceError(f"invalid reference {text!r}: docker-archive names take no digest")
    return ArchiveReference(transport, absolute, pick, name=parse_reference(pick))


@dataclass(frozen=True, slots=True)
class _Member:
    offset: int  # of the member's data in the archive file, bytes
    size: int  # bytes
    link: str = ""  # target path for symlinks and hardlinks (archive-relative)


def _norm(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def _scan(path: Path, what: str) -> tuple[int, dict[str, _Member]]:
    """Open ``path`` and list its members (blocking; run in a thread). Returns an open
    descriptor and the member map. Raises one-line errors for every bad archive."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"{what}: no such file") from None
    except OSError as exc:
        raise FetchError(f"{what}: cannot open: {exc.strerror}") from None
    try:
        members = _scan_fd(fd, what)
    except BaseException:
        os.close(fd)
        raise
    return fd, members


def _scan_fd(fd: int, what: str) -> dict[str, _Member]:
    head = os.pread(fd, 8, 0)
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise UnsupportedError(
                f"{what}: the archive is {kind}-compressed and cannot be read in place; "
                f"decompress it first (e.g. {'gunzip' if kind == 'gzip' else kind + ' -d'})"
            )
    file_size = os.fstat(fd).st_size
    members: dict[str, _Member] = {}
    # closefd=False: the descriptor stays open for the source's reads.
    with os.fdopen(fd, "rb", closefd=False) as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                for info in tar:
                    name = _norm(info.name)
                    if info.issym():
                        target = posixpath.join(posixpath.dirname(name), info.linkname)
                        members[name] = _Member(0, 0, _norm(target))
                    elif info.islnk():
                        members[name] = _Member(0, 0, _norm(info.linkname))
                    elif info.isreg() and not info.issparse():
                        if info.offset_data + info.size > file_size:
                            raise ManifestError(f"{what}: truncated archive (member {name})")
                        members[name] = _Member(info.offset_data, info.size)
        except tarfile.TarError as exc:
            reason = "truncated archive" if "unexpected end" in str(exc) else "not a tar archive"
            raise ManifestError(f"{what}: {reason} ({exc})") from None
    return members


class _Archive:
    """The scanned archive: an open descriptor and its members; reads by offset."""

    def __init__(self, ref: ArchiveReference) -> None:
        self.ref = ref
        self.what = str(ref)
        self._fd = -1
        self._members: dict[str, _Member] = {}
        self._lock = trio.Lock()

    async def open(self) -> None:
        async with self._lock:
            if self._fd < 0:
                self._fd, self._members = await trio.to_thread.run_sync(
                    _scan, self.ref.path, self.what
                )

    def stat_key(self) -> tuple[str, int, int, int]:
        st = os.fstat(self._fd)
        return (str(self.ref.path), st.st_ino, st.st_size, st.st_mtime_ns)

    def member(self, name: str) -> _Member | None:
        name = _norm(name)
        for _ in range(MAX_LINK_HOPS):
            m = self._members.get(name)
            if m is None or not m.link:
                return m
            name = m.link
        raise ManifestError(f"{self.what}: link loop at member {name}")

    def need(self, name: str) -> _Member:
        m = self.member(name)
        if m is None:
            raise NotFoundError(f"{self.what}: no {name} in the archive")
        return m

    def pread(self, m: _Member, offset: int, size: int) -> bytes:
        """Blocking read of ``size`` bytes at ``offset`` of member ``m``."""
        if offset < 0 or size < 0 or offset + size > m.size:
            raise FetchError(f"{self.what}: range {offset}+{size} outside a {m.size}-byte member")
        data = os.pread(self._fd, size, m.offset + offset)
        if len(data) != size:
            raise FetchError(f"{self.what}: archive changed or shrank while in use")
        return data

    async def read(self, m: _Member, offset: int, size: int) -> bytes:
        try:
            return await trio.to_thread.run_sync(self.pread, m, offset, size)
        except OSError as exc:
            raise FetchError(f"{self.what}: read failed: {exc.strerror}") from None

    async def read_json(self, name: str) -> bytes:
        m = self.need(name)
        if m.size > MAX_JSON_MEMBER_BYTES:
            raise ManifestError(f"{self.what}: {name} is larger than {MAX_JSON_MEMBER_BYTES} bytes")
        return await self.read(m, 0, m.size)

    async def stream(self, m: _Member) -> AsyncGenerator[bytes, None]:
        pos = 0
        while pos < m.size:
            piece = await self.read(m, pos, min(STREAM_PIECE_BYTES, m.size - pos))
            pos += len(piece)
            yield piece

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _ArchiveSource:
    """What both archive sources share: blob reads from members found by digest."""

    # Blobs are already on this host: the cache need not keep copies of them.
    local = True

    def __init__(self, ref: ArchiveReference) -> None:
        self.ref = ref
        self._archive = _Archive(ref)

    def describe(self) -> str:
        """The reference as skopeo spells it, e.g. ``docker-archive:/x.tar:app:v1``."""
        return str(self.ref)

    def _blob_member(self, desc: Descriptor) -> _Member:
        raise NotImplementedError

    def _sized_member(self, desc: Descriptor) -> _Member:
        m = self._blob_member(desc)
        if m.size != desc.size:
            raise FetchError(
                f"{self.describe()}: blob {desc.digest} is {m.size} bytes, "
                f"the descriptor says {desc.size}"
            )
        return m

    async def get_blob(self, desc: Descriptor) -> bytes:
        """The whole blob (a config), checked against ``desc.digest``. Raises
        :class:`NotFoundError`, :class:`ocifs.errors.DigestMismatchError`."""
        await self._archive.open()
        m = self._sized_member(desc)
        if m.size > MAX_JSON_MEMBER_BYTES:
            raise FetchError(f"{self.describe()}: blob {desc.digest} is too large to read whole")
        data = await self._archive.read(m, 0, m.size)
        check_digest(data, desc.digest, f"{self.describe()} blob")
        return data

    async def read_blob(self, desc: Descriptor, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the blob, by one ``pread`` of the archive;
        not verified here. Raises :class:`NotFoundError`, :class:`FetchError`."""
        await self._archive.open()
        return await self._archive.read(self._sized_member(desc), offset, size)

    async def stream_blob(self, desc: Descriptor) -> AsyncGenerator[bytes, None]:
        """The whole blob in 1 MiB pieces, read in place; not verified here."""
        await self._archive.open()
        async for piece in self._archive.stream(self._sized_member(desc)):
            yield piece

    async def aclose(self) -> None:
        """Close the archive file."""
        self._archive.close()


class OciArchiveSource(_ArchiveSource):
    """``oci-archive:FILE[:TAG]``: an OCI image layout inside a tar; ``TAG`` picks the
    ``index.json`` entry by ``org.opencontainers.image.ref.name`` (default: the only
    one, or the whole index when there are several)."""

    def default_reference(self) -> str:
        return self.ref.tag

    def _blob_member(self, desc: Descriptor) -> _Member:
        algo, _, hexpart = desc.digest.partition(":")
        if not hexpart.isalnum() or not algo.isalnum():
            raise ManifestError(f"{self.describe()}: malformed digest {desc.digest!r}")
        m = self._archive.member(f"blobs/{algo}/{hexpart}")
        if m is None:
            raise NotFoundError(f"{self.describe()}: blob {desc.digest} not found")
        return m

    async def get_manifest(self, reference: str) -> RawManifest:
        """The manifest or index tagged ``reference`` in ``index.json`` (or by digest),
        verified. Raises :class:`NotFoundError`, :class:`ManifestError`."""
        await self._archive.open()
        what = self.describe()
        if reference.startswith("sha256:"):
            m = self._blob_member(Descriptor("", reference, 0))
            if m.size > MAX_JSON_MEMBER_BYTES:
                raise ManifestError(f"{what}: manifest {reference} is too large")
            data = await self._archive.read(m, 0, m.size)
            check_digest(data, reference, f"{what} manifest")
            return RawManifest(data, "", reference)
        raw = await self._archive.read_json("index.json")
        entries = parse_index(raw, f"{what} index.json")
        if reference:
            entries = tuple(e for e in entries if e.annotations.get(REF_NAME) == reference)
        if not entries:
            raise NotFoundError(f"{what}: no manifest tagged {reference!r}")
        if len(entries) > 1:
            # Several untagged entries: the layout itself is the image index.
            return RawManifest(raw, MT_OCI_INDEX, sha256_digest(raw))
        desc = entries[0]
        data = await self._archive.read(self._sized_member(desc), 0, desc.size)
        check_digest(data, desc.digest, f"{what} manifest")
        return RawManifest(data, desc.media_type, desc.digest)


# Layer digests of docker archives, computed once per process: (archive path, inode,
# size, mtime_ns, member offset) -> (digest, media type).
_LAYER_DIGESTS: dict[tuple[str, int, int, int, int], tuple[str, str]] = {}


def _hash_member(archive: _Archive, m: _Member) -> tuple[str, str]:
    """sha256 and sniffed media type of a layer member (blocking: streams it once)."""
    h = hashlib.sha256()
    head = b""
    pos = 0
    while pos < m.size:
        piece = archive.pread(m, pos, min(STREAM_PIECE_BYTES, m.size - pos))
        if not head:
            head = piece[:4]
        h.update(piece)
        pos += len(piece)
    if head.startswith(b"\x1f\x8b"):
        media_type = MT_LAYER_GZIP
    elif head.startswith(b"\x28\xb5\x2f\xfd"):
        media_type = MT_LAYER_ZSTD
    else:
        media_type = MT_LAYER_TAR
    return f"sha256:{h.hexdigest()}", media_type


@dataclass(frozen=True, slots=True)
class _DockerImage:
    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def _parse_docker_manifest(raw: bytes, what: str) -> list[_DockerImage]:
    try:
        obj: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(obj, list) or not obj:
        raise ManifestError(f"{what}: manifest.json is not a non-empty list of images")
    images = []
    for i, item in enumerate(obj):
        config = item.get("Config") if isinstance(item, dict) else None
        layers = item.get("Layers") if isinstance(item, dict) else None
        tags = (item.get("RepoTags") if isinstance(item, dict) else None) or []
        if (
            not isinstance(config, str)
            or not isinstance(layers, list)
            or not all(isinstance(x, str) for x in layers)
            or not isinstance(tags, list)
            or not all(isinstance(x, str) for x in tags)
        ):
            raise ManifestError(f"{what}: manifest.json entry {i} lacks Config or Layers")
        images.append(_DockerImage(config, tuple(tags), tuple(layers)))
    return images


def _same_name(tag: str, want: Reference) -> bool:
    try:
        got = parse_reference(tag)
    except BadReferenceError:
        return False
    return got.name == want.name and got.tag == want.tag


class DockerArchiveSource(_ArchiveSource):
    """``docker-archive:FILE[:NAME:TAG|:@INDEX]`` (``docker save``): one image of
    ``manifest.json``, picked by a ``RepoTags`` name, by 0-based index, or the only one;
    its manifest is synthesized (Docker schema2, digest = sha256 of its bytes)."""

    def __init__(self, ref: ArchiveReference) -> None:
        super().__init__(ref)
        self._manifest: RawManifest | None = None
        self._blobs: dict[str, _Member] = {}
        self._lock = trio.Lock()

    def default_reference(self) -> str:
        return ""

    def _blob_member(self, desc: Descriptor) -> _Member:
        m = self._blobs.get(desc.digest)
        if m is None:
            raise NotFoundError(f"{self.describe()}: blob {desc.digest} not found")
        return m

    def _pick(self, images: list[_DockerImage]) -> _DockerImage:
        what = self.describe()
        if self.ref.index is not None:
            if self.ref.index >= len(images):
                raise NotFoundError(
                    f"{what}: no image @{self.ref.index}; the archive holds {len(images)}"
                )
            return images[self.ref.index]
        want = self.ref.name
        if want is not None:
            for image in images:
                if any(_same_name(t, want) for t in image.repo_tags):
                    return image
            raise NotFoundError(f"{what}: no image named {want}; {_listing(images)}")
        if len(images) > 1:
            raise NotFoundError(
                f"{what}: the archive holds {len(images)} images, pick one with "
                f":NAME:TAG or :@INDEX; {_listing(images)}"
            )
        return images[0]

    async def get_manifest(self, reference: str) -> RawManifest:
        """The synthesized manifest of the picked image; ``reference`` may be empty or
        its digest. The first call hashes every layer member once. Raises
        :class:`NotFoundError`, :class:`ManifestError`."""
        async with self._lock:
            if self._manifest is None:
                await self._archive.open()
                self._manifest = await self._synthesize()
        if reference.startswith("sha256:") and reference != self._manifest.digest:
            raise NotFoundError(f"{self.describe()}: no manifest {reference}")
        return self._manifest

    async def _synthesize(self) -> RawManifest:
        what = self.describe()
        archive = self._archive
        images = _parse_docker_manifest(await archive.read_json("manifest.json"), what)
        image = self._pick(images)
        config = await archive.read_json(image.config)
        config_digest = sha256_digest(config)
        self._blobs[config_digest] = archive.need(image.config)
        stat_key = archive.stat_key()
        layers = []
        for name in image.layers:
            m = archive.need(name)
            key = (*stat_key, m.offset)
            found = _LAYER_DIGESTS.get(key)
            if found is None:
                try:
                    found = await trio.to_thread.run_sync(_hash_member, archive, m)
                except OSError as exc:
                    raise FetchError(f"{what}: reading {name}: {exc.strerror}") from None
                _LAYER_DIGESTS[key] = found
            digest, media_type = found
            self._blobs[digest] = m
            layers.append({"mediaType": media_type, "size": m.size, "digest": digest})
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": {"mediaType": MT_DOCKER_CONFIG, "size": len(config), "digest": config_digest},
            "layers": layers,
        }
        data = json.dumps(manifest, indent=3).encode()
        return RawManifest(data, MT_DOCKER_MANIFEST, sha256_digest(data))


def _listing(images: list[_DockerImage]) -> str:
    names = [f"@{i} ({', '.join(image.repo_tags) or 'untagged'})" for i, image in enumerate(images)]
    return "images: " + "; ".join(names)
