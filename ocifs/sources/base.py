"""The one small interface every blob source implements (after go-containerregistry's
``remote``/``layout``/``tarball`` backings): fetch a manifest, fetch a small blob,
read bytes at an offset of a blob, stream a whole blob.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from ocifs.oci import Descriptor

__all__ = ["ImageSource", "RawManifest"]


@dataclass(frozen=True, slots=True)
class RawManifest:
    """A manifest or image index as fetched: its bytes, the media type the source
    reported (Content-Type; may be empty) and its digest (``sha256:<hex>``).

    ``digest`` is the digest the bytes were checked against: the one asked for when
    fetched by digest, else the sha256 of ``data``.
    """

    data: bytes
    media_type: str
    digest: str


class ImageSource(Protocol):
    """Manifests and blobs of one repository (or one local layout/archive). A source
    whose blobs are files on this host says so with a class attribute ``local = True``
    (the cache then keeps no copies of whole layers)."""

    def describe(self) -> str:
        """A short name for logs and the mount's fsname, e.g. ``localhost:5000/x:tag``."""
        ...

    def default_reference(self) -> str:
        """The tag or ``sha256:`` digest the user's reference names."""
        ...

    async def get_manifest(self, reference: str) -> RawManifest:
        """Fetch the manifest or image index named by a tag or ``sha256:`` digest.

        When ``reference`` is a digest the bytes are verified against it
        (:class:`ocifs.errors.DigestMismatchError`). Raises
        :class:`ocifs.errors.NotFoundError`, :class:`ocifs.errors.AuthError`,
        :class:`ocifs.errors.FetchError`.
        """
        ...

    async def get_blob(self, desc: Descriptor) -> bytes:
        """Fetch a whole small blob (a config) and verify it against ``desc.digest``."""
        ...

    async def read_blob(self, desc: Descriptor, offset: int, size: int) -> bytes:
        """Return exactly ``size`` bytes at ``offset`` (bytes, into the *compressed*
        blob as stored). Not verified here: the caller checks what it reads against a
        chunk digest. Raises :class:`ocifs.errors.FetchError` when the source returns
        fewer bytes than asked after retries."""
        ...

    def stream_blob(self, desc: Descriptor) -> AsyncGenerator[bytes, None]:
        """Yield the whole blob from its first byte in pieces. Not verified here:
        the caller hashes the stream and compares with ``desc.digest``. A caller that
        stops early must close the generator (``contextlib.aclosing``)."""
        ...

    async def aclose(self) -> None:
        """Close connections; the source is unusable afterwards."""
        ...
