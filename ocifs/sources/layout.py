"""An OCI image layout on disk (image-spec image-layout.md) as an image source:
``oci:DIR[:TAG]``, as skopeo spells it. Blobs are read in place by offset.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from pathlib import Path

import trio

from ocifs.errors import FetchError, ManifestError, NotFoundError
from ocifs.oci import MT_OCI_INDEX, Descriptor, check_digest, parse_index, sha256_digest
from ocifs.sources.base import RawManifest

__all__ = ["LayoutSource"]

REF_NAME = "org.opencontainers.image.ref.name"
STREAM_PIECE_BYTES = 1024 * 1024


class LayoutSource:
    """Manifests and blobs of one OCI image layout directory; ``tag`` picks the
    ``index.json`` entry whose ``org.opencontainers.image.ref.name`` matches (or the
    only entry when ``tag`` is empty)."""

    # Blobs are already on this host: the cache need not keep copies of them.
    local = True

    def __init__(self, root: Path, tag: str = "") -> None:
        self.root = root
        self.tag = tag

    def describe(self) -> str:
        return f"oci:{self.root}" + (f":{self.tag}" if self.tag else "")

    def default_reference(self) -> str:
        return self.tag

    def _blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if not hexpart.isalnum():
            raise ManifestError(f"{self.describe()}: malformed digest {digest!r}")
        return self.root / "blobs" / algo / hexpart

    async def get_manifest(self, reference: str) -> RawManifest:
        if reference.startswith("sha256:"):
            data = await self._read_whole(reference)
            check_digest(data, reference, f"{self.describe()} manifest")
            return RawManifest(data, "", reference)
        index_path = self.root / "index.json"
        try:
            raw = await trio.Path(index_path).read_bytes()
        except OSError as exc:
            raise NotFoundError(f"{self.describe()}: no index.json ({exc.strerror})") from None
        entries = parse_index(raw, f"{self.describe()} index.json")
        if reference:
            entries = tuple(e for e in entries if e.annotations.get(REF_NAME) == reference)
        if not entries:
            raise NotFoundError(f"{self.describe()}: no manifest tagged {reference!r}")
        if len(entries) > 1:
            # Several untagged entries: the layout itself is the image index.
            return RawManifest(raw, MT_OCI_INDEX, sha256_digest(raw))
        desc = entries[0]
        data = await self._read_whole(desc.digest)
        check_digest(data, desc.digest, f"{self.describe()} manifest")
        return RawManifest(data, desc.media_type, desc.digest)

    async def _read_whole(self, digest: str) -> bytes:
        try:
            return await trio.Path(self._blob_path(digest)).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.describe()}: blob {digest} not found") from None
        except OSError as exc:
            raise FetchError(f"{self.describe()}: blob {digest}: {exc.strerror}") from None

    async def get_blob(self, desc: Descriptor) -> bytes:
        data = await self._read_whole(desc.digest)
        check_digest(data, desc.digest, f"{self.describe()} blob")
        return data

    async def read_blob(self, desc: Descriptor, offset: int, size: int) -> bytes:
        path = self._blob_path(desc.digest)

        def pread() -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)

        try:
            data = await trio.to_thread.run_sync(pread)
        except OSError as exc:
            raise FetchError(f"{self.describe()}: blob {desc.digest}: {exc.strerror}") from None
        if len(data) != size:
            raise FetchError(f"{self.describe()}: blob {desc.digest} is shorter than expected")
        return data

    async def stream_blob(self, desc: Descriptor) -> AsyncGenerator[bytes, None]:
        try:
            async with await trio.open_file(self._blob_path(desc.digest), "rb") as fh:
                while piece := await fh.read(STREAM_PIECE_BYTES):
                    yield piece
        except FileNotFoundError:
            raise NotFoundError(f"{self.describe()}: blob {desc.digest} not found") from None

    async def aclose(self) -> None:
        return None
