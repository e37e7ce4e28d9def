"""Authenticated HTTP to one registry repository: the ``/v2/`` ping, the
``WWW-Authenticate`` challenge, bearer tokens (distribution token authentication
specification) and Basic auth, manual redirects, bounded retries and the mapping of
HTTP failures to :mod:`ocifs.errors`.

Shared by the reader (:mod:`ocifs.sources.registry`) and, later, the writer. Secrets
(passwords, tokens, signed redirect URLs' queries) never reach a log line or an
exception message.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import TypeVar

import httpx
import trio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from ocifs.auth import (
    Challenge,
    Credentials,
    TokenGrant,
    basic_authorization,
    find_credentials,
    parse_token_response,
    parse_www_authenticate,
)
from ocifs.errors import AuthError, FetchError, NotFoundError
from ocifs.reference import Reference, is_loopback_host

__all__ = [
    "RegistryTransport",
    "TransientError",
    "body_chunks",
    "read_body",
    "safe_url",
    "transport_message",
]

log = logging.getLogger(__name__)
# httpx logs every URL at INFO and httpcore every response header at DEBUG: signed
# redirect URLs and tokens would land in a daemon's log. Quiet them unless an
# application configured them on purpose.
for _name in ("httpx", "httpcore"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 8
MAX_ATTEMPTS = 5
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 8.0
MAX_RETRY_AFTER_S = 10.0
MAX_REDIRECTS = 10
MAX_ERROR_BODY_BYTES = 16 * 1024
MAX_TOKEN_BODY_BYTES = 1024 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CERT_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


class TransientError(FetchError):
    """A failure worth retrying (5xx, 429, a short body); ``retry_after_s`` is the
    server's ``Retry-After`` in seconds when it sent one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def safe_url(url: httpx.URL | str) -> str:
    """``scheme://host[:port]/path`` without query or user info, fit for logs."""
    u = httpx.URL(url)
    port = f":{u.port}" if u.port is not None else ""
    return f"{u.scheme}://{u.host}{port}{u.path}"


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, url.port if url.port is not None else default)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _registry_error(body: bytes) -> str:
    """The first ``code: message`` of a distribution-spec error body ("Error Codes")."""
    try:
        obj = json.loads(body)
        first = obj["errors"][0]
        code, message = first.get("code", ""), first.get("message", "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""
    if not isinstance(code, str) or not isinstance(message, str):
        return ""
    return _one_line(f"{code}: {message}" if message else code, 120)


def _retry_after_s(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def transport_message(exc: httpx.HTTPError) -> str:
    """One line naming a transport failure, without the URL (it may carry a signed query)."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    tls = _tls_verify_failure(exc)
    if tls is not None:
        return (
            f"TLS certificate not trusted ({tls.verify_message}); give its CA with "
            "--cert-dir DIR or in certs.d, or skip the check with --tls-verify=false"
        )
    detail = _one_line(str(exc), 120)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _tls_verify_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind a transport failure, if that is what
    it was (retrying cannot help then)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _is_retryable(exc: BaseException) -> bool:
    if _tls_verify_failure(exc) is not None:
        return False
    return isinstance(exc, TransientError | httpx.TransportError)


def _wait_s(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome is not None else None
    if (
        isinstance(exc, TransientError)
        and exc.retry_after_s is not None
        and exc.retry_after_s <= MAX_RETRY_AFTER_S
    ):
        return exc.retry_after_s
    backoff: float = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (state.attempt_number - 1))
    return backoff * random.uniform(0.5, 1.0)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    # INFO: a retry that works is no news for the terminal; the final failure is.
    log.info("attempt %d failed (%s); retrying", state.attempt_number, exc)


def _ssl_context(registry: str, cert_dir: str | None = None) -> ssl.SSLContext:
    """System trust store plus ``certs.d/<registry>/`` CAs and client certs, as
    containers-certs.d(5) and Docker read them; ``cert_dir`` (skopeo's ``--cert-dir``)
    replaces the certs.d lookup."""
    ctx = ssl.create_default_context()
    folders = [Path(cert_dir)] if cert_dir else [base / registry for base in CERT_DIRS]
    for folder in folders:
        if not folder.is_dir():
            continue
        for ca in sorted(folder.glob("*.crt")):
            ctx.load_verify_locations(cafile=str(ca))
        for cert in sorted(folder.glob("*.cert")):
            key = cert.with_suffix(".key")
            if key.exists():
                ctx.load_cert_chain(str(cert), str(key))
    return ctx


@asynccontextmanager
async def body_chunks(resp: httpx.Response) -> AsyncIterator[AsyncIterator[bytes]]:
    """Iterate a streamed response body; leaving early closes the response.

    httpx's body iterators are a chain of async generators that trio reports as
    abandoned (a ResourceWarning, encode/httpx#3686) when iteration stops early:
    after closing the response, one more step makes each of them raise and finish.
    """
    chunks = resp.aiter_bytes()
    try:
        yield chunks
    finally:
        with trio.CancelScope(shield=True):
            await resp.aclose()
            with suppress(StopAsyncIteration, httpx.HTTPError, httpx.StreamError):
                await chunks.__anext__()


async def read_body(resp: httpx.Response, limit: int, what: str) -> bytes:
    """Read a response body of at most ``limit`` bytes; raises :class:`FetchError`
    when it is longer (a registry must not make us buffer without bound)."""
    body = bytearray()
    async with body_chunks(resp) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise FetchError(f"{what}: longer than {limit} bytes")
    return bytes(body)


class RegistryTransport:
    """HTTP to the repository ``ref`` names, with authentication, redirects and retries.

    ``actions`` is the token scope's action list (``pull`` or ``pull,push``). One
    :class:`httpx.AsyncClient` (HTTP/1.1 keep-alive, at most ``max_connections``).
    """

    def __init__(
        self,
        ref: Reference,
        *,
        insecure: bool = False,
        creds: tuple[str, str] | None = None,
        authfile: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        actions: str = "pull",
        tls_verify: bool = True,
        cert_dir: str | None = None,
    ) -> None:
        self.ref = ref
        self.insecure = insecure
        self.base_url = ref.api_base(insecure)
        self._origin = _origin(httpx.URL(self.base_url))
        self._explicit_creds = creds
        self._authfile = authfile
        self._scope = f"repository:{ref.repository}:{actions}"
        self.timeout_s = timeout_s
        verify: ssl.SSLContext | bool = True
        if self.base_url.startswith("https:"):
            verify = _ssl_context(ref.api_host, cert_dir) if tls_verify else False
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            verify=verify,
            # Loopback is never proxied; elsewhere honour HTTPS_PROXY / NO_PROXY.
            trust_env=not ref.is_loopback,
        )
        self._auth_lock = trio.Lock()
        self._auth_header: str | None = None
        self._auth_generation = 0
        self._bearer: Challenge | None = None
        self._grant: TokenGrant | None = None
        self._creds: Credentials | None = None
        self._creds_loaded = False

    def url(self, path: str) -> str:
        """The absolute URL of an API ``path`` such as ``/v2/<name>/blobs/<digest>``."""
        return self.base_url + path

    async def aclose(self) -> None:
        """Close all connections."""
        await self._client.aclose()

    async def retrying(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``fn`` with bounded exponential backoff on 5xx, 429 (``Retry-After``
        when at most :data:`MAX_RETRY_AFTER_S`), connection errors, timeouts and
        short bodies. Transport failures come out as :class:`FetchError`."""
        retryer = AsyncRetrying(
            sleep=trio.sleep,
            stop=stop_after_attempt(MAX_ATTEMPTS),
            wait=_wait_s,
            retry=retry_if_exception(_is_retryable),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            return await retryer(fn)
        except httpx.HTTPError as exc:
            attempts = retryer.statistics.get("attempt_number", MAX_ATTEMPTS)
            suffix = f" after {attempts} attempts" if attempts > 1 else ""
            raise FetchError(f"{what}: {transport_message(exc)}{suffix}") from None

    async def ping(self) -> None:
        """``GET /v2/`` and authenticate if challenged, so that bad credentials show
        up now. Raises :class:`AuthError`, :class:`FetchError`."""
        what = "registry API check (GET /v2/)"

        async def attempt() -> None:
            resp = await self.open(
                "GET",
                self.url("/v2/"),
                what=what,
                not_found=f"{what} does not serve the registry API (/v2/)",
            )
            await resp.aclose()

        await self.retrying(attempt, what)

    async def open(
        self,
        method: str,
        url: str,
        *,
        what: str,
        not_found: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send one request and return the final response (status < 300) with its
        body not yet read; the caller must ``aclose()`` it. ``content`` is the request
        body (sent again after a redirect or re-authentication).

        Follows redirects by hand, sending ``Authorization`` only to the registry's
        own scheme+host+port; answers one 401 from the registry by authenticating
        (or refreshing the token) and resending. Raises :class:`NotFoundError`
        (``not_found`` as message), :class:`AuthError`, :class:`TransientError`,
        :class:`FetchError`, or an :class:`httpx.TransportError` (retryable).
        """
        target = httpx.URL(url)
        reauthenticated = False
        redirects = 0
        while True:
            send_headers = dict(headers or {})
            ours = _origin(target) == self._origin
            generation = self._auth_generation
            if ours:
                auth = await self._current_authorization(what)
                if auth is not None:
                    send_headers["Authorization"] = auth
            request = self._client.build_request(
                method, target, headers=send_headers, content=content
            )
            resp = await self._client.send(request, stream=True)
            log.debug("%s %s -> %d", method, safe_url(target), resp.status_code)
            status = resp.status_code
            if status in REDIRECT_STATUSES:
                location = resp.headers.get("location")
                await resp.aclose()
                redirects += 1
                if not location or redirects > MAX_REDIRECTS:
                    raise FetchError(f"{what}: bad or too many redirects (HTTP {status})")
                try:
                    target = target.join(location)
                except httpx.InvalidURL:
                    raise FetchError(f"{what}: redirect to a malformed URL") from None
                if target.scheme not in ("http", "https"):
                    raise FetchError(f"{what}: redirect to unsupported scheme {target.scheme!r}")
                continue
            if status == 401 and ours and not reauthenticated:
                challenges = resp.headers.get_list("www-authenticate")
                await resp.aclose()
                await self._authenticate(challenges, generation, what)
                reauthenticated = True
                continue
            if status >= 300:
                body = b""
                try:
                    async with body_chunks(resp) as chunks:
                        async for chunk in chunks:
                            body += chunk
                            if len(body) >= MAX_ERROR_BODY_BYTES:
                                break
                finally:
                    await resp.aclose()
                raise self._error(resp, body, what, not_found, ours)
            return resp

    def _error(
        self, resp: httpx.Response, body: bytes, what: str, not_found: str, ours: bool
    ) -> FetchError | NotFoundError | AuthError:
        status = resp.status_code
        host = self.ref.registry if ours else (resp.url.host or "?")
        detail = _registry_error(body)
        suffix = f" ({detail})" if detail else ""
        if status == 404:
            return NotFoundError(not_found)
        if status == 401 and ours and self._creds_loaded:
            creds = self._creds
            if creds is None:
                return AuthError(f"{what}: {host} requires a login; no credentials found for it")
            if self._bearer is None:
                return AuthError(
                    f"{what}: {host} rejected the credentials of user "
                    f"{creds.username!r} ({creds.source}) (HTTP 401)"
                )
            return AuthError(
                f"{what}: access denied by {host} with a token for user "
                f"{creds.username!r} ({creds.source}) (HTTP 401){suffix}"
            )
        if status in (401, 403):
            return AuthError(f"{what}: access denied by {host} (HTTP {status}){suffix}")
        if status == 429 or status >= 500:
            return TransientError(
                f"{what}: HTTP {status} from {host}{suffix}", _retry_after_s(resp)
            )
        return FetchError(f"{what}: HTTP {status} from {host}{suffix}")

    # --- authentication --------------------------------------------------------

    async def _credentials(self) -> Credentials | None:
        if not self._creds_loaded:
            lookup = functools.partial(
                find_credentials,
                self.ref.registry,
                self.ref.repository,
                creds=self._explicit_creds,
                authfile=self._authfile,
            )
            self._creds = await trio.to_thread.run_sync(lookup)
            self._creds_loaded = True
        return self._creds

    async def _current_authorization(self, what: str) -> str | None:
        grant = self._grant
        if grant is not None and grant.expired() and self._bearer is not None:
            async with self._auth_lock:
                # Another task may have refreshed it while we waited for the lock.
                if self._grant is grant:
                    await self._fetch_token(self._bearer, what)
        return self._auth_header

    async def _authenticate(self, headers: list[str], generation: int, what: str) -> None:
        async with self._auth_lock:
            if generation != self._auth_generation:
                return  # another task authenticated since our request went out
            challenges = [c for h in headers for c in parse_www_authenticate(h)]
            bearer = next((c for c in challenges if c.scheme == "bearer"), None)
            basic = next((c for c in challenges if c.scheme == "basic"), None)
            if bearer is not None:
                if not bearer.realm:
                    raise AuthError(
                        f"{what}: bearer challenge from {self.ref.registry} has no realm"
                    )
                self._bearer = bearer
                await self._fetch_token(bearer, what)
            elif basic is not None:
                creds = await self._credentials()
                if creds is None:
                    raise AuthError(
                        f"{what}: {self.ref.registry} requires a login; "
                        f"no credentials found for {self.ref.registry}"
                    )
                header = basic_authorization(creds)
                if header == self._auth_header:
                    raise AuthError(
                        f"{what}: {self.ref.registry} rejected the credentials "
                        f"of user {creds.username!r} ({creds.source})"
                    )
                self._auth_header = header
                self._auth_generation += 1
            else:
                schemes = ", ".join(sorted({c.scheme for c in challenges})) or "none"
                raise AuthError(
                    f"{what}: {self.ref.registry} asks for unsupported authentication ({schemes})"
                )

    def _check_plain_http(self, url: httpx.URL, what: str) -> None:
        if url.scheme != "https" and not (self.insecure or is_loopback_host(url.host)):
            raise AuthError(f"{what}: refusing to send credentials over plain HTTP to {url.host}")

    async def _fetch_token(self, challenge: Challenge, what: str) -> None:
        """GET the realm for a bearer token (token auth spec "Requesting a Token")."""
        creds = await self._credentials()
        realm = httpx.URL(challenge.realm)
        if realm.scheme not in ("http", "https"):
            raise AuthError(f"{what}: token realm with unsupported scheme {realm.scheme!r}")
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in challenge.params:
            params.append(("service", challenge.params["service"]))
        scopes = [self._scope]
        extra = challenge.params.get("scope")
        if extra and extra not in scopes:
            scopes.append(extra)
        params += [("scope", s) for s in scopes]
        headers: dict[str, str] = {}
        if creds is not None:
            self._check_plain_http(realm, what)
            headers["Authorization"] = basic_authorization(creds)
        url = realm.copy_merge_params(params)
        request = self._client.build_request("GET", url, headers=headers)
        resp = await self._client.send(request, stream=True)
        log.debug("GET %s -> %d (token)", safe_url(url), resp.status_code)
        try:
            body = await read_body(resp, MAX_TOKEN_BODY_BYTES, f"{what}: token server answer")
        finally:
            await resp.aclose()
        if resp.status_code in (401, 403):
            who = f"user {creds.username!r} ({creds.source})" if creds else "anonymous access"
            raise AuthError(
                f"{what}: token server {realm.host} refused {who} (HTTP {resp.status_code})"
            )
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientError(
                f"{what}: token server {realm.host} answered HTTP {resp.status_code}",
                _retry_after_s(resp),
            )
        if resp.status_code != 200:
            raise AuthError(f"{what}: token server {realm.host} answered HTTP {resp.status_code}")
        grant = parse_token_response(body, what)
        self._grant = grant
        self._auth_header = f"Bearer {grant.token}"
        self._auth_generation += 1
