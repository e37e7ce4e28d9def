"""Writing images: a registry repository (distribution-spec "Pushing blobs", "Pushing
manifests", "Deleting") or an OCI image layout directory (image-spec
image-layout.md). Used by ``ocifs convert`` and by publishing gzip seek indexes.

Blobs are pushed from files, in pieces of :data:`UPLOAD_PIECE_BYTES` (chunked upload
with PATCH when larger than one piece), so memory stays bounded whatever the blob
size; a blob the repository already has (HEAD) is skipped, and one another
repository of the registry has is mounted across instead of uploaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

import httpx
import trio

from ocifs.errors import FetchError, NotFoundError
from ocifs.fileutil import write_atomic
from ocifs.oci import MT_OCI_INDEX, Descriptor
from ocifs.reference import Reference
from ocifs.sources.registry_transport import RegistryTransport, read_body

__all__ = ["ImageSink", "LayoutSink", "RegistrySink", "descriptor_json"]

UPLOAD_PIECE_BYTES = 8 * 1024 * 1024
MAX_RESPONSE_BYTES = 64 * 1024
REF_NAME = "org.opencontainers.image.ref.name"


class ImageSink(Protocol):
    """Where an image is written: blobs by digest, then manifests by tag or digest."""

    def describe(self) -> str:
        """A short name for messages."""
        ...

    async def has_blob(self, digest: str) -> bool:
        """True if the blob is already there."""
        ...

    async def put_blob_file(self, path: Path, digest: str, size: int) -> None:
        """Store the file at ``path`` (``size`` bytes, ``digest`` its sha256) as a blob."""
        ...

    async def put_manifest(self, data: bytes, media_type: str, tag: str | None) -> str:
        """Store a manifest or image index; tag it when ``tag`` is given. Returns its
        digest."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistrySink:
    """Pushes to the repository ``ref`` names (``pull,push`` token scope).

    ``mount_from`` names a repository of the same registry whose blobs may be
    mounted instead of uploaded. Options as :class:`ocifs.sources.RegistrySource`.
    """

    def __init__(
        self,
        ref: Reference,
        *,
        insecure: bool = False,
        creds: tuple[str, str] | None = None,
        authfile: str | None = None,
        timeout_s: float = 30.0,
        mount_from: str | None = None,
    ) -> None:
        self.ref = ref
        self._http = RegistryTransport(
            ref,
            insecure=insecure,
            creds=creds,
            authfile=authfile,
            timeout_s=timeout_s,
            actions="pull,push",
        )
        self._mount_from = mount_from

    def describe(self) -> str:
        return str(self.ref)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request with retries; the response's body is read (small) and closed."""

        async def attempt() -> httpx.Response:
            resp = await self._http.open(
                method, url, what=what, not_found=f"{what}: not found",
                headers=headers, content=content,
            )  # fmt: skip
            try:
                await read_body(resp, MAX_RESPONSE_BYTES, what)
            finally:
                await resp.aclose()
            return resp

        return await self._http.retrying(attempt, what)

    async def has_blob(self, digest: str) -> bool:
        url = self._http.url(f"/v2/{self.ref.repository}/blobs/{digest}")
        try:
            await self._request("HEAD", url, f"HEAD blob {digest}")
        except NotFoundError:
            return False
        return True

    def _location(self, resp: httpx.Response, what: str) -> str:
        location = resp.headers.get("location")
        if not location:
            raise FetchError(f"{what}: the registry sent no upload Location")
        # Keep the Location's query exactly (its _state must survive): join, never params=.
        return str(resp.url.join(location))

    async def put_blob_file(self, path: Path, digest: str, size: int) -> None:
        if await self.has_blob(digest):
            return
        what = f"push blob {digest} to {self.ref.name}"
        start = self._http.url(f"/v2/{self.ref.repository}/blobs/uploads/")
        if self._mount_from and self._mount_from != self.ref.repository:
            mount = f"{start}?mount={digest}&from={self._mount_from}"
            resp = await self._request("POST", mount, what)
            if resp.status_code == 201:
                return
        else:
            resp = await self._request("POST", start, what)
        location = self._location(resp, what)
        async with await trio.open_file(path, "rb") as fh:
            piece = await fh.read(UPLOAD_PIECE_BYTES)
            if len(piece) < size:
                # Larger than one piece: chunked upload, then a PUT with no body.
                offset = 0
                while piece:
                    headers = {
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                    }
                    resp = await self._request(
                        "PATCH", location, what, headers=headers, content=piece
                    )
                    location = self._location(resp, what)
                    offset += len(piece)
                    piece = await fh.read(UPLOAD_PIECE_BYTES)
        sep = "&" if "?" in location else "?"
        await self._request(
            "PUT",
            f"{location}{sep}digest={digest}",
            what,
            headers={"Content-Type": "application/octet-stream"},
            content=piece,
        )

    async def put_manifest(self, data: bytes, media_type: str, tag: str | None) -> str:
        digest = _digest_of(data)
        what = f"push manifest {digest} to {self.ref.name}"
        for reference in [digest, *([tag] if tag else [])]:
            url = self._http.url(f"/v2/{self.ref.repository}/manifests/{reference}")
            await self._request(
                "PUT", url, what, headers={"Content-Type": media_type}, content=data
            )
        return digest

    async def delete_manifest(self, digest: str) -> None:
        """Delete a manifest by digest (the registry must allow deletes)."""
        url = self._http.url(f"/v2/{self.ref.repository}/manifests/{digest}")
        await self._request("DELETE", url, f"delete manifest {digest} of {self.ref.name}")


class LayoutSink:
    """Writes an OCI image layout at ``root`` (created if missing); ``put_manifest``
    with a tag records it in ``index.json`` with ``org.opencontainers.image.ref.name``,
    replacing an entry of the same tag. Every file is written temp + fsync + rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"oci:{self.root}"

    async def aclose(self) -> None:
        return None

    def _blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.root / "blobs" / algo / hexpart

    async def has_blob(self, digest: str) -> bool:
        return await trio.Path(self._blob_path(digest)).exists()

    async def put_blob_file(self, path: Path, digest: str, size: int) -> None:
        if await self.has_blob(digest):
            return
        target = self._blob_path(digest)

        def copy() -> None:
            with open(path, "rb") as src:
                write_atomic(target, iter(lambda: src.read(UPLOAD_PIECE_BYTES), b""), mode=0o755)

        await trio.to_thread.run_sync(copy)

    async def put_manifest(self, data: bytes, media_type: str, tag: str | None) -> str:
        digest = _digest_of(data)

        def write() -> None:
            self._write(self._blob_path(digest), data)
            self._write(self.root / "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            index_path = self.root / "index.json"
            try:
                index = json.loads(index_path.read_bytes())
            except FileNotFoundError:
                index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []}
            entry: dict[str, object] = {
                "mediaType": media_type,
                "digest": digest,
                "size": len(data),
            }
            manifests = [m for m in index.get("manifests", []) if m.get("digest") != digest]
            if tag:
                entry["annotations"] = {REF_NAME: tag}
                manifests = [
                    m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) != tag
                ]
            index["manifests"] = [*manifests, entry]
            self._write(index_path, json.dumps(index, indent=2).encode())

        await trio.to_thread.run_sync(write)
        return digest

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        write_atomic(path, data, mode=0o755)


def descriptor_json(desc: Descriptor) -> dict[str, object]:
    """A descriptor as image-spec descriptor.md spells it in JSON."""
    obj: dict[str, object] = {"mediaType": desc.media_type, "digest": desc.digest}
    obj["size"] = desc.size
    if desc.annotations:
        obj["annotations"] = dict(desc.annotations)
    if desc.platform is not None:
        plat = {"os": desc.platform.os, "architecture": desc.platform.architecture}
        if desc.platform.variant:
            plat["variant"] = desc.platform.variant
        obj["platform"] = plat
    if desc.artifact_type:
        obj["artifactType"] = desc.artifact_type
    return obj
