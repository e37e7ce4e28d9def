"""Manifests and blobs of one repository of an OCI distribution registry, over HTTP
with :mod:`httpx` under trio.

Follows the distribution-spec "Pulling manifests" and "Pulling blobs" sections
(``Range`` requests answered by ``206`` with ``Content-Range``, RFC 9110 section
14.4); authentication, redirects and retries live in
:mod:`ocifs.sources.registry_transport`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncGenerator
from types import TracebackType

import httpx
import trio

from ocifs.errors import DigestMismatchError, FetchError, NotFoundError
from ocifs.oci import (
    ACCEPT_MANIFESTS,
    MAX_MANIFEST_BYTES,
    MT_OCI_INDEX,
    Descriptor,
    check_digest,
    parse_index,
    sha256_digest,
)
from ocifs.reference import Reference, parse_reference
from ocifs.sources.base import RawManifest
from ocifs.sources.registry_transport import (
    BACKOFF_BASE_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT_S,
    MAX_ATTEMPTS,
    RegistryTransport,
    TransientError,
    body_chunks,
    read_body,
    transport_message,
)

__all__ = ["RegistrySource"]

log = logging.getLogger(__name__)

# get_blob buffers the whole blob: it is meant for configs, not layers.
MAX_SMALL_BLOB_BYTES = 64 * 1024 * 1024
# Hash in a thread above this size, so that the trio loop never stalls.
HASH_IN_THREAD_BYTES = 1024 * 1024
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_BLOB_HEADERS = {"Accept-Encoding": "identity"}  # offsets are into the stored bytes


def _content_range(resp: httpx.Response) -> tuple[int, int, int | None] | None:
    value = resp.headers.get("content-range")
    if value is None:
        return None
    m = _CONTENT_RANGE_RE.match(value.strip())
    if m is None:
        raise FetchError(f"malformed Content-Range {value[:60]!r}")
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


class RegistrySource:
    """An :class:`ocifs.sources.base.ImageSource` for one registry repository.

    ``insecure`` allows plain HTTP to any host (loopback registries always use it);
    otherwise HTTPS is verified. ``creds`` (user, password) win over ``authfile``
    and the usual credential files (:func:`ocifs.auth.find_credentials`).
    ``timeout_s`` bounds each connect/read/write in seconds. ``tls_verify=False``
    skips certificate checks; ``cert_dir`` holds the CA files (``*.crt``) to trust.
    """

    def __init__(
        self,
        ref: Reference | str,
        *,
        insecure: bool = False,
        creds: tuple[str, str] | None = None,
        authfile: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        tls_verify: bool = True,
        cert_dir: str | None = None,
    ) -> None:
        self.ref = parse_reference(ref) if isinstance(ref, str) else ref
        self._http = RegistryTransport(
            self.ref,
            insecure=insecure,
            creds=creds,
            authfile=authfile,
            timeout_s=timeout_s,
            max_connections=max_connections,
            tls_verify=tls_verify,
            cert_dir=cert_dir,
        )
        self._warned_no_ranges = False

    async def __aenter__(self) -> RegistrySource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def describe(self) -> str:
        """The canonical reference, e.g. ``127.0.0.1:5000/x:tag``."""
        return str(self.ref)

    def default_reference(self) -> str:
        """The digest the user's reference names, else its tag."""
        return self.ref.reference

    async def ping(self) -> None:
        """Cheap check that the registry answers and accepts our credentials
        (``GET /v2/``, authenticating if challenged). Raises
        :class:`ocifs.errors.AuthError`, :class:`ocifs.errors.FetchError`."""
        await self._http.ping()

    async def aclose(self) -> None:
        """Close connections; the source is unusable afterwards."""
        await self._http.aclose()

    def _blob_url(self, desc: Descriptor) -> str:
        return self._http.url(f"/v2/{self.ref.repository}/blobs/{desc.digest}")

    def _blob_what(self, desc: Descriptor) -> tuple[str, str]:
        name = f"{self.ref.name}@{desc.digest}"
        return f"blob {name}", f"blob unknown: {name}"

    async def get_manifest(self, reference: str) -> RawManifest:
        """Fetch the manifest or image index at a tag or digest of this repository.

        By digest the bytes are checked against it; by tag their sha256 is computed
        and checked against ``Docker-Content-Digest`` when sent. At most
        :data:`ocifs.oci.MAX_MANIFEST_BYTES` bytes. Raises
        :class:`ocifs.errors.BadReferenceError`, :class:`ocifs.errors.NotFoundError`
        (``manifest unknown: REF``), :class:`ocifs.errors.AuthError`,
        :class:`ocifs.errors.DigestMismatchError`, :class:`ocifs.errors.FetchError`.
        """
        ref = self.ref.with_reference(reference)
        what = f"manifest {ref}"
        url = self._http.url(f"/v2/{ref.repository}/manifests/{reference}")

        async def attempt() -> tuple[bytes, str, str]:
            resp = await self._http.open(
                "GET",
                url,
                what=what,
                not_found=f"manifest unknown: {ref}",
                headers={"Accept": ACCEPT_MANIFESTS},
            )
            try:
                data = await read_body(resp, MAX_MANIFEST_BYTES, what)
            finally:
                await resp.aclose()
            media_type = resp.headers.get("content-type", "").split(";")[0].strip()
            return data, media_type, resp.headers.get("docker-content-digest", "").strip()

        data, media_type, sent_digest = await self._http.retrying(attempt, what)
        if ref.digest is not None:
            check_digest(data, ref.digest, what)
            return RawManifest(data, media_type, ref.digest)
        digest = sha256_digest(data)
        if sent_digest:
            if sent_digest.startswith("sha256:"):
                if sent_digest != digest:
                    raise DigestMismatchError(
                        f"{what}: Docker-Content-Digest {sent_digest} does not match "
                        f"the content ({digest})"
                    )
            else:
                check_digest(data, sent_digest, what)
        return RawManifest(data, media_type, digest)

    async def get_referrers(self, digest: str, artifact_type: str) -> tuple[Descriptor, ...]:
        """Descriptors of the manifests whose ``subject`` is ``digest`` and whose
        ``artifactType`` is ``artifact_type``: from the referrers API
        (distribution-spec "Listing Referrers"), else from the image index tagged
        ``sha256-<hex>`` (the spec's "Referrers Tag Schema" fallback). Empty when there
        are none. Raises :class:`ocifs.errors.FetchError`, :class:`ocifs.errors.AuthError`.
        """
        what = f"referrers of {self.ref.name}@{digest}"
        url = self._http.url(f"/v2/{self.ref.repository}/referrers/{digest}")
        url += f"?artifactType={artifact_type}"

        async def attempt() -> bytes:
            resp = await self._http.open(
                "GET", url, what=what, not_found=f"{what}: no referrers API",
                headers={"Accept": MT_OCI_INDEX},
            )  # fmt: skip
            try:
                return await read_body(resp, MAX_MANIFEST_BYTES, what)
            finally:
                await resp.aclose()

        try:
            raw = await self._http.retrying(attempt, what)
        except NotFoundError:
            algo, _, hexpart = digest.partition(":")
            try:
                raw = (await self.get_manifest(f"{algo}-{hexpart}")).data
            except NotFoundError:
                return ()
        entries = parse_index(raw, what)
        return tuple(e for e in entries if e.artifact_type == artifact_type)

    async def get_blob(self, desc: Descriptor) -> bytes:
        """Fetch a whole small blob (a config; at most 64 MiB) and check it against
        ``desc.digest`` and ``desc.size``. Raises :class:`ocifs.errors.NotFoundError`,
        :class:`ocifs.errors.DigestMismatchError`, :class:`ocifs.errors.FetchError`."""
        what, not_found = self._blob_what(desc)
        if desc.size > MAX_SMALL_BLOB_BYTES:
            raise FetchError(f"{what}: {desc.size} bytes is too large to fetch whole")

        async def attempt() -> bytes:
            resp = await self._http.open(
                "GET", self._blob_url(desc), what=what, not_found=not_found, headers=_BLOB_HEADERS
            )
            try:
                data = await read_body(resp, desc.size, what)
            finally:
                await resp.aclose()
            if len(data) < desc.size:
                raise TransientError(f"{what}: short body ({len(data)} of {desc.size} bytes)")
            return data

        data = await self._http.retrying(attempt, what)
        if len(data) > HASH_IN_THREAD_BYTES:
            await trio.to_thread.run_sync(check_digest, data, desc.digest, what)
        else:
            check_digest(data, desc.digest, what)
        return data

    async def read_blob(self, desc: Descriptor, offset: int, size: int) -> bytes:
        """Return exactly ``size`` bytes at byte ``offset`` of the blob, by one
        ``Range: bytes=a-b`` GET (distribution-spec "Pulling blobs", RFC 9110 14.4).

        A ``206`` must carry a matching ``Content-Range``; a registry that ignores
        ``Range`` and answers ``200`` is read from the start only up to the end of
        the span. Not verified (callers check chunk digests). Raises
        :class:`ocifs.errors.NotFoundError`, :class:`ocifs.errors.FetchError` (also
        for a span outside ``desc.size``, or a short body after retries).
        """
        what, not_found = self._blob_what(desc)
        end = offset + size
        if offset < 0 or size < 0 or end > desc.size:
            raise FetchError(f"{what}: range {offset}+{size} outside the blob's {desc.size} bytes")
        if size == 0:
            return b""
        span = f"bytes={offset}-{end - 1}"

        async def attempt() -> bytes:
            resp = await self._http.open(
                "GET",
                self._blob_url(desc),
                what=what,
                not_found=not_found,
                headers={**_BLOB_HEADERS, "Range": span},
            )
            try:
                if resp.status_code == 206:
                    return await self._read_partial(resp, desc, offset, size, what)
                if resp.status_code == 200:
                    return await self._read_sliced(resp, offset, size, what)
                raise FetchError(f"{what}: unexpected HTTP {resp.status_code} to a range request")
            finally:
                await resp.aclose()

        return await self._http.retrying(attempt, f"{what} {span}")

    async def _read_partial(
        self, resp: httpx.Response, desc: Descriptor, offset: int, size: int, what: str
    ) -> bytes:
        try:
            crange = _content_range(resp)
        except FetchError as exc:
            raise FetchError(f"{what}: {exc}") from None
        if crange is not None:
            first, last, total = crange
            if (first, last) != (offset, offset + size - 1):
                raise TransientError(
                    f"{what}: asked bytes {offset}-{offset + size - 1}, "
                    f"got Content-Range {first}-{last}"
                )
            if total is not None and total != desc.size:
                raise FetchError(f"{what}: blob is {total} bytes, the descriptor says {desc.size}")
        data = bytearray()
        async with body_chunks(resp) as chunks:
            async for chunk in chunks:
                data += chunk
                if len(data) > size:
                    raise FetchError(f"{what}: registry sent more than the {size} bytes asked")
        if len(data) < size:
            raise TransientError(f"{what}: short body ({len(data)} of {size} bytes)")
        return bytes(data)

    async def _read_sliced(self, resp: httpx.Response, offset: int, size: int, what: str) -> bytes:
        if not self._warned_no_ranges:
            self._warned_no_ranges = True
            log.warning("%s: registry ignores Range requests; reading from the blob's start", what)
        skip = offset
        data = bytearray()
        async with body_chunks(resp) as chunks:
            async for chunk in chunks:
                if skip >= len(chunk):
                    skip -= len(chunk)
                    continue
                data += chunk[skip : skip + size - len(data)]
                skip = 0
                if len(data) == size:
                    return bytes(data)  # the caller closes the response mid-body
        raise TransientError(f"{what}: short body ({len(data)} of {size} bytes)")

    async def stream_blob(self, desc: Descriptor) -> AsyncGenerator[bytes, None]:
        """Yield the whole blob in pieces (close it with ``contextlib.aclosing`` when
        stopping early). A connection lost mid-body resumes with ``Range: bytes=N-``
        (up to the retry bound). Not verified here. Raises
        :class:`ocifs.errors.NotFoundError`, :class:`ocifs.errors.FetchError`."""
        what, not_found = self._blob_what(desc)
        pos = 0
        failures = 0
        while pos < desc.size:
            resp = await self._open_from(desc, pos, what, not_found)
            try:
                skip = self._resume_skip(resp, pos, what)
                async with body_chunks(resp) as chunks:
                    async for chunk in chunks:
                        piece, skip = chunk[skip:], max(0, skip - len(chunk))
                        if not piece:
                            continue
                        if pos + len(piece) > desc.size:
                            raise FetchError(
                                f"{what}: longer than the descriptor's {desc.size} bytes"
                            )
                        pos += len(piece)
                        yield piece
                failure = "body ended early"
            except httpx.TransportError as exc:
                failure = transport_message(exc)
            finally:
                await resp.aclose()
            if pos < desc.size:
                failures += 1
                if failures >= MAX_ATTEMPTS:
                    raise FetchError(f"{what}: {failure} at byte {pos} of {desc.size}")
                log.warning("%s: %s at byte %d; resuming", what, failure, pos)
                await trio.sleep(BACKOFF_BASE_S * 2**failures)

    async def _open_from(
        self, desc: Descriptor, pos: int, what: str, not_found: str
    ) -> httpx.Response:
        headers = dict(_BLOB_HEADERS)
        if pos:
            headers["Range"] = f"bytes={pos}-"
        opener = functools.partial(
            self._http.open,
            "GET",
            self._blob_url(desc),
            what=what,
            not_found=not_found,
            headers=headers,
        )
        return await self._http.retrying(opener, what)

    @staticmethod
    def _resume_skip(resp: httpx.Response, pos: int, what: str) -> int:
        """Bytes to drop from a resumed response: none for a 206 starting at ``pos``,
        ``pos`` when the server ignored ``Range`` and sent the blob from its start."""
        if not pos:
            return 0
        if resp.status_code != 206:
            return pos
        try:
            crange = _content_range(resp)
        except FetchError as exc:
            raise FetchError(f"{what}: {exc}") from None
        if crange is not None and crange[0] != pos:
            raise FetchError(f"{what}: resumed at byte {pos}, got a range from {crange[0]}")
        return 0
