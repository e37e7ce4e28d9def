"""OCI image-spec 1.1 and Docker manifest v2.2 types: descriptors, manifests, image
indexes, configs, platform matching, media types and digest checks.

Follows image-spec descriptor.md, manifest.md, image-index.md and config.md.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Any

from ocifs.errors import DigestMismatchError, ManifestError, UnsupportedError

__all__ = [
    "ACCEPT_MANIFESTS",
    "Descriptor",
    "ImageConfig",
    "Manifest",
    "Platform",
    "check_digest",
    "host_platform",
    "parse_index",
    "parse_manifest",
    "select_platform",
    "sha256_digest",
]

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = frozenset({MT_OCI_MANIFEST, MT_DOCKER_MANIFEST})
INDEX_TYPES = frozenset({MT_OCI_INDEX, MT_DOCKER_LIST})
ACCEPT_MANIFESTS = ", ".join([MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST])

# Layer media types ocifs reads, by compression.
LAYER_TAR = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)
LAYER_GZIP = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
LAYER_ZSTD = frozenset({"application/vnd.oci.image.layer.v1.tar+zstd"})

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def sha256_digest(data: bytes) -> str:
    """Return the ``sha256:<hex>`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(data: bytes, digest: str, what: str) -> None:
    """Raise :class:`DigestMismatchError` unless ``data`` hashes to ``digest``.

    ``what`` names the object in the message (e.g. "manifest of x/y").
    """
    algo, _, hexpart = digest.partition(":")
    if algo not in ("sha256", "sha512") or not _DIGEST_RE.match(digest):
        raise ManifestError(f"{what}: unsupported or malformed digest {digest!r}")
    got = hashlib.new(algo, data).hexdigest()
    if got != hexpart:
        raise DigestMismatchError(f"{what}: digest mismatch: expected {digest}, got {algo}:{got}")


@dataclass(frozen=True, slots=True)
class Platform:
    """An image-index platform: ``os/architecture[/variant]``."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]``; raises :class:`ManifestError` when malformed."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ManifestError(f"malformed platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: Platform) -> bool:
        """Same os and architecture, and same variant where both name one."""
        return (
            self.os == other.os
            and self.architecture == other.architecture
            and (not self.variant or not other.variant or self.variant == other.variant)
        )


def host_platform() -> Platform:
    """The platform of this host in OCI spelling (``linux/amd64``, ``linux/arm64/v8``)."""
    machine = _platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", "v8"),
        "arm64": ("arm64", "v8"),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "i686": ("386", ""),
        "i386": ("386", ""),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
    }.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor (image-spec descriptor.md): media type, digest, size
    in bytes of the blob, annotations, and for index entries the platform."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        """Build from a JSON descriptor object; raises :class:`ManifestError` if invalid."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{what}: descriptor is not an object")
        media_type = obj.get("mediaType")
        digest = obj.get("digest")
        size = obj.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise ManifestError(f"{what}: descriptor without mediaType")
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise ManifestError(f"{what}: descriptor with malformed digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{what}: descriptor {digest} with invalid size {size!r}")
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise ManifestError(f"{what}: descriptor {digest} with invalid annotations")
        plat = None
        pobj = obj.get("platform")
        if isinstance(pobj, dict):
            os_ = pobj.get("os")
            arch = pobj.get("architecture")
            if isinstance(os_, str) and isinstance(arch, str):
                variant = pobj.get("variant")
                plat = Platform(os_, arch, variant if isinstance(variant, str) else "")
        urls = obj.get("urls") or []
        if not isinstance(urls, list):
            raise ManifestError(f"{what}: descriptor {digest} with invalid urls")
        artifact_type = obj.get("artifactType") or ""
        return cls(
            media_type,
            digest,
            size,
            dict(annotations),
            plat,
            tuple(u for u in urls if isinstance(u, str)),
            artifact_type if isinstance(artifact_type, str) else "",
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (image-spec manifest.md) with its own digest."""

    digest: str
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config (image-spec config.md) ocifs uses."""

    digest: str
    diff_ids: tuple[str, ...]
    raw: bytes = field(repr=False, compare=False)
    platform: Platform | None = None


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{what}: {len(raw)} bytes is larger than {MAX_MANIFEST_BYTES}")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: not a JSON object")
    return obj


def media_type_of(raw: bytes, header_type: str, what: str) -> str:
    """The media type of a manifest or index: its ``mediaType`` field, else the
    Content-Type the registry sent, else guessed from its fields."""
    obj = _load_json(raw, what)
    mt = obj.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    ct = header_type.split(";")[0].strip()
    if ct in MANIFEST_TYPES or ct in INDEX_TYPES:
        return ct
    if "manifests" in obj:
        return MT_OCI_INDEX
    if "layers" in obj:
        return MT_OCI_MANIFEST
    raise ManifestError(f"{what}: neither an image manifest nor an image index")


def parse_manifest(raw: bytes, digest: str, what: str) -> Manifest:
    """Parse an image manifest whose bytes were already checked against ``digest``.

    Raises :class:`ManifestError` when fields are missing or of the wrong type.
    """
    obj = _load_json(raw, what)
    mt = obj.get("mediaType") or MT_OCI_MANIFEST
    if obj.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: schemaVersion must be 2")
    if not isinstance(mt, str) or mt not in MANIFEST_TYPES:
        raise UnsupportedError(f"{what}: unsupported manifest media type {mt!r}")
    config = Descriptor.from_json(obj.get("config"), f"{what} config")
    layers_obj = obj.get("layers")
    if not isinstance(layers_obj, list):
        raise ManifestError(f"{what}: manifest without a layers list")
    layers = tuple(
        Descriptor.from_json(layer, f"{what} layer {i}") for i, layer in enumerate(layers_obj)
    )
    return Manifest(digest, mt, config, layers, raw)


def parse_index(raw: bytes, what: str) -> tuple[Descriptor, ...]:
    """Parse an image index / manifest list into its manifest descriptors."""
    obj = _load_json(raw, what)
    manifests = obj.get("manifests")
    if not isinstance(manifests, list):
        raise ManifestError(f"{what}: image index without a manifests list")
    return tuple(Descriptor.from_json(m, f"{what} entry {i}") for i, m in enumerate(manifests))


def select_platform(entries: tuple[Descriptor, ...], want: Platform, what: str) -> Descriptor:
    """Pick the manifest for ``want`` from an image index (image-index.md "platform").

    A missing variant on either side matches; attestation entries (``unknown/unknown``)
    never match. Raises :class:`ManifestError` naming the platforms on offer.
    """
    candidates = [
        d
        for d in entries
        if d.platform is not None
        and d.platform.os == want.os
        and d.platform.architecture == want.architecture
        and d.media_type in MANIFEST_TYPES | INDEX_TYPES
    ]
    exact = [d for d in candidates if d.platform and d.platform.variant == want.variant]
    loose = [d for d in candidates if d.platform and (not d.platform.variant or not want.variant)]
    for group in (exact, loose):
        if group:
            return group[0]
    offered = sorted({str(d.platform) for d in entries if d.platform}) or ["none"]
    raise ManifestError(f"{what}: no manifest for platform {want}; offered: {', '.join(offered)}")


def parse_config(raw: bytes, digest: str, what: str) -> ImageConfig:
    """Parse an image config whose bytes were checked against ``digest``."""
    obj = _load_json(raw, what)
    rootfs = obj.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ManifestError(f"{what}: config without rootfs.diff_ids")
    os_, arch, variant = obj.get("os"), obj.get("architecture"), obj.get("variant")
    plat = None
    if isinstance(os_, str) and isinstance(arch, str) and os_ and arch:
        plat = Platform(os_, arch, variant if isinstance(variant, str) else "")
    return ImageConfig(digest, tuple(diff_ids), raw, plat)
