"""RegistrySource against Debian's docker-registry, plus a stdlib HTTP server for the
cases a real registry cannot produce (named in each test)."""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from registry_fixtures import FakeServer, Registry, TinyImage, push_tiny_image

from ocifs.errors import AuthError, DigestMismatchError, FetchError, NotFoundError, OcifsError
from ocifs.oci import MT_OCI_INDEX, MT_OCI_MANIFEST, Descriptor
from ocifs.sources import registry_transport
from ocifs.sources.registry import RegistrySource

T = TypeVar("T")
REPO = "ocifs-test/tiny"


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


def desc(image: TinyImage, which: str) -> Descriptor:
    return Descriptor.from_json(image.descriptor(which), "test")


def one_line(exc: pytest.ExceptionInfo[OcifsError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def tiny(registry: Registry) -> TinyImage:
    return push_tiny_image(registry, REPO)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_transport, "BACKOFF_BASE_S", 0.001)


def blob_gets(served: list[Any]) -> list[Any]:
    return [r for r in served if r.method == "GET" and "/blobs/" in r.uri]


# --- against the real registry ----------------------------------------------------


def test_ping_and_describe(registry: Registry) -> None:
    async def main() -> None:
        async with RegistrySource(f"{registry.host}/{REPO}:v1") as src:
            await src.ping()
            assert src.describe() == f"{registry.host}/{REPO}:v1"
            assert src.default_reference() == "v1"

    mark = registry.mark()
    run(main)
    assert [(r.method, r.uri, r.status) for r in registry.since(mark)] == [("GET", "/v2/", 200)]


def test_manifest_by_tag_and_digest(registry: Registry, tiny: TinyImage) -> None:
    async def main() -> None:
        async with RegistrySource(f"docker://{registry.host}/{REPO}") as src:
            by_tag = await src.get_manifest("v1")
            assert by_tag.data == tiny.manifest
            assert by_tag.digest == tiny.manifest_digest
            assert by_tag.media_type == MT_OCI_MANIFEST
            by_digest = await src.get_manifest(tiny.manifest_digest)
            assert by_digest == by_tag
            index = await src.get_manifest(tiny.index_tag)
            assert (index.data, index.digest) == (tiny.index, tiny.index_digest)
            assert index.media_type == MT_OCI_INDEX
            config = await src.get_blob(desc(tiny, "config"))
            assert config == tiny.config

    mark = registry.mark()
    run(main)
    uris = [r.uri for r in registry.since(mark)]
    assert uris == [
        f"/v2/{REPO}/manifests/v1",
        f"/v2/{REPO}/manifests/{tiny.manifest_digest}",
        f"/v2/{REPO}/manifests/{tiny.index_tag}",
        f"/v2/{REPO}/blobs/{tiny.config_digest}",
    ]


def test_range_reads(registry: Registry, tiny: TinyImage) -> None:
    layer = desc(tiny, "layer")
    size = len(tiny.layer)
    spans = [(0, 1), (1000, 4096), (size - 1, 1), (size - 777, 777), (0, size), (12345, 0)]

    async def main() -> None:
        async with RegistrySource(f"{registry.host}/{REPO}:v1") as src:
            for offset, length in spans:
                got = await src.read_blob(layer, offset, length)
                assert got == tiny.layer[offset : offset + length], (offset, length)
            for offset, length in [(size, 1), (size - 1, 2), (-1, 1)]:
                with pytest.raises(FetchError) as info:
                    await src.read_blob(layer, offset, length)
                assert "outside the blob" in one_line(info)

    mark = registry.mark()
    run(main)
    gets = blob_gets(registry.since(mark))
    # One request per non-empty span, each a 206 that wrote exactly the span.
    assert [(r.status, r.written) for r in gets] == [(206, n) for _, n in spans if n]


def test_stream_blob(registry: Registry, tiny: TinyImage) -> None:
    async def main() -> bytes:
        async with RegistrySource(f"{registry.host}/{REPO}:v1") as src:
            return b"".join([chunk async for chunk in src.stream_blob(desc(tiny, "layer"))])

    mark = registry.mark()
    assert run(main) == tiny.layer
    assert [(r.status, r.written) for r in blob_gets(registry.since(mark))] == [
        (200, len(tiny.layer))
    ]


def test_not_found(registry: Registry, tiny: TinyImage) -> None:
    missing = Descriptor("application/octet-stream", "sha256:" + "0" * 64, 10)

    async def main() -> None:
        async with RegistrySource(f"{registry.host}/{REPO}:v1") as src:
            with pytest.raises(NotFoundError) as info:
                await src.get_manifest("nope")
            assert one_line(info) == f"manifest unknown: {registry.host}/{REPO}:nope"
            with pytest.raises(NotFoundError) as info:
                await src.get_manifest(missing.digest)
            assert one_line(info) == f"manifest unknown: {registry.host}/{REPO}@{missing.digest}"
            for call in (
                src.get_blob(missing),
                src.read_blob(missing, 0, 5),
                anext(aiter(src.stream_blob(missing))),
            ):
                with pytest.raises(NotFoundError) as info:
                    await call
                assert one_line(info) == f"blob unknown: {registry.host}/{REPO}@{missing.digest}"
        async with RegistrySource(f"{registry.host}/no/such/repo:v1") as src:
            with pytest.raises(NotFoundError) as info:
                await src.get_manifest("v1")
            assert one_line(info) == f"manifest unknown: {registry.host}/no/such/repo:v1"

    run(main)


# --- basic auth against the real registry ------------------------------------------


@pytest.fixture(scope="module")
def auth_tiny(auth_registry: Registry) -> TinyImage:
    return push_tiny_image(auth_registry, REPO)


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credential file anywhere but where the test writes one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    return home


def _fetch_manifest(reg: Registry, **kw: Any) -> bytes:
    async def main() -> bytes:
        async with RegistrySource(f"{reg.host}/{REPO}:v1", **kw) as src:
            await src.ping()
            return (await src.get_manifest("v1")).data

    return run(main)


def test_basic_auth(
    auth_registry: Registry,
    auth_tiny: TinyImage,
    empty_home: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    assert _fetch_manifest(auth_registry, creds=auth_registry.auth) == auth_tiny.manifest
    with pytest.raises(AuthError) as info:
        _fetch_manifest(auth_registry, creds=("ocifs-user", "wrong-password"))
    assert "rejected the credentials of user 'ocifs-user'" in one_line(info)
    assert "wrong-password" not in str(info.value)
    with pytest.raises(AuthError) as info:
        _fetch_manifest(auth_registry)
    assert f"no credentials found for {auth_registry.host}" in one_line(info)
    assert auth_registry.password is not None
    assert auth_registry.password not in caplog.text
    assert "wrong-password" not in caplog.text


def _auth_entry(reg: Registry) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{reg.user}:{reg.password}".encode()).decode()}


def test_creds_from_docker_config(
    auth_registry: Registry, auth_tiny: TinyImage, empty_home: Path
) -> None:
    cfg = empty_home / ".docker" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"auths": {auth_registry.host: _auth_entry(auth_registry)}}))
    assert _fetch_manifest(auth_registry) == auth_tiny.manifest


def test_creds_from_authfile(
    auth_registry: Registry, auth_tiny: TinyImage, empty_home: Path, tmp_path: Path
) -> None:
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {auth_registry.host: _auth_entry(auth_registry)}}))
    assert _fetch_manifest(auth_registry, authfile=str(authfile)) == auth_tiny.manifest
    # Explicit creds win over the file.
    wrong = {"auths": {auth_registry.host: {"auth": base64.b64encode(b"x:y").decode()}}}
    authfile.write_text(json.dumps(wrong))
    got = _fetch_manifest(auth_registry, authfile=str(authfile), creds=auth_registry.auth)
    assert got == auth_tiny.manifest
    with pytest.raises(AuthError) as info:
        _fetch_manifest(auth_registry, authfile=str(authfile))
    assert str(authfile) in one_line(info)


# --- cases a real registry cannot produce: a stdlib server plays the registry -----


def _manifest_server(body: bytes, sent_digest: str | None) -> FakeServer:
    def handle(req: Any) -> None:
        headers = {"Content-Type": MT_OCI_MANIFEST}
        if sent_digest:
            headers["Docker-Content-Digest"] = sent_digest
        req.reply(200, body, headers)

    return FakeServer(handle)


def test_manifest_digest_mismatch() -> None:
    """A real registry never serves bytes under a digest they do not hash to, so a
    stdlib server plays one that does (a corrupting proxy or a broken mirror)."""
    body = b'{"schemaVersion": 2}'
    good = "sha256:" + hashlib.sha256(body).hexdigest()
    wrong = "sha256:" + "1" * 64

    async def main(server: FakeServer, reference: str) -> str:
        async with RegistrySource(f"{server.host}/r:t") as src:
            return (await src.get_manifest(reference)).digest

    with _manifest_server(body, None) as server:
        with pytest.raises(DigestMismatchError) as info:
            run(lambda: main(server, wrong))
        assert f"expected {wrong}, got {good}" in one_line(info)
        assert run(lambda: main(server, good)) == good
        assert run(lambda: main(server, "t")) == good
    with _manifest_server(body, wrong) as server:
        with pytest.raises(DigestMismatchError) as info:
            run(lambda: main(server, "t"))
        assert "Docker-Content-Digest" in one_line(info)
    with _manifest_server(body, good) as server:
        assert run(lambda: main(server, "t")) == good


BLOB = random.Random(7).randbytes(50_000)
BLOB_DESC = Descriptor(
    "application/octet-stream", "sha256:" + hashlib.sha256(BLOB).hexdigest(), len(BLOB)
)


def serve_blob(req: Any, data: bytes = BLOB, honour_range: bool = True) -> None:
    """Answer a GET like a registry's blob store: 206 for a Range, else 200."""
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("Range", ""))
    if m is None or not honour_range:
        req.reply(200, data, {"Content-Type": "application/octet-stream"})
        return
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else len(data) - 1
    headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}"}
    req.reply(206, data[first : last + 1], headers)


def test_redirect_to_other_host_drops_authorization(caplog: pytest.LogCaptureFixture) -> None:
    """Blob GETs redirect (307) to storage on another port, i.e. another origin,
    which must never see the registry's Authorization header; a redirect within the
    registry keeps it. Docker-registry only redirects to cloud storage, hence the
    stdlib servers."""
    caplog.set_level(logging.DEBUG)
    creds = ("alice", "pa55word")
    expected = "Basic " + base64.b64encode(b"alice:pa55word").decode()

    def storage_handle(req: Any) -> None:
        serve_blob(req)

    with FakeServer(storage_handle) as storage:

        def registry_handle(req: Any) -> None:
            if req.headers.get("Authorization") != expected:
                req.reply(401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
            elif req.path == "/v2/":
                req.reply(200, b"{}")
            elif req.path.startswith("/v2/r/blobs/"):
                req.reply(307, b"", {"Location": f"/internal{req.path}"})
            elif req.path.startswith("/internal/"):
                where = f"{storage.url}/bucket/blob?X-Signature=sekrit"
                req.reply(307, b"", {"Location": where})
            else:
                req.reply(404)

        with FakeServer(registry_handle) as reg:

            async def main() -> None:
                async with RegistrySource(f"{reg.host}/r:t", creds=creds) as src:
                    assert await src.read_blob(BLOB_DESC, 100, 900) == BLOB[100:1000]
                    assert await src.get_blob(BLOB_DESC) == BLOB
                    chunks = [c async for c in src.stream_blob(BLOB_DESC)]
                    assert b"".join(chunks) == BLOB

            run(main)
            internal = [h for _, p, h in reg.seen if p.startswith("/internal/")]
    assert len(internal) == 3
    assert all(h.get("authorization") == expected for h in internal)
    assert len(storage.seen) == 3
    assert all("authorization" not in h for _, _, h in storage.seen)
    assert [h.get("range") for _, _, h in storage.seen] == ["bytes=100-999", None, None]
    assert "pa55word" not in caplog.text
    assert "sekrit" not in caplog.text


class TokenWorld:
    """A token server and a registry that accepts only the tokens it issued.

    Docker-registry's token mode needs JWTs signed with a certificate chain (PyJWT
    plus cryptography, not among our dependencies), so a stdlib registry stands in
    for the bearer flow; the flow on the client side is the same.
    """

    def __init__(
        self,
        creds: tuple[str, str] | None = None,
        expires_in: int = 300,
        field: str = "token",
        revoke_after_use: bool = False,
        reject_all: bool = False,
    ) -> None:
        self.creds = creds
        self.expires_in = expires_in
        self.field = field
        self.revoke_after_use = revoke_after_use
        self.reject_all = reject_all
        self.valid: set[str] = set()
        self.issued = 0
        self.token_server = FakeServer(self.handle_token)
        self.registry = FakeServer(self.handle_registry)

    def __enter__(self) -> TokenWorld:
        self.token_server.__enter__()
        self.registry.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.registry.__exit__()
        self.token_server.__exit__()

    def handle_token(self, req: Any) -> None:
        if self.creds is not None:
            want = "Basic " + base64.b64encode(":".join(self.creds).encode()).decode()
            if req.headers.get("Authorization") != want:
                req.reply(401, b'{"details": "bad creds"}')
                return
        self.issued += 1
        token = f"tok-{self.issued}"
        self.valid.add(token)
        body = json.dumps({self.field: token, "expires_in": self.expires_in}).encode()
        req.reply(200, body, {"Content-Type": "application/json"})

    def handle_registry(self, req: Any) -> None:
        auth = req.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if self.reject_all or token not in self.valid:
            realm = f"{self.token_server.url}/token"
            challenge = f'Bearer realm="{realm}",service="fake-svc",scope="repository:r:pull"'
            req.reply(
                401,
                b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}',
                {"WWW-Authenticate": challenge},
            )
            return
        if self.revoke_after_use:
            self.valid.discard(token)
        if req.path == "/v2/":
            req.reply(200, b"{}")
        else:
            serve_blob(req)

    def token_queries(self) -> list[str]:
        return [p for _, p, _ in self.token_server.seen]


def _read_twice(world: TokenWorld, creds: tuple[str, str] | None = None) -> None:
    async def main() -> None:
        async with RegistrySource(f"{world.registry.host}/r:t", creds=creds) as src:
            await src.ping()
            assert await src.read_blob(BLOB_DESC, 0, 10) == BLOB[:10]
            assert await src.read_blob(BLOB_DESC, 10, 10) == BLOB[10:20]

    run(main)


def test_bearer_anonymous() -> None:
    with TokenWorld() as world:
        _read_twice(world)
    assert world.issued == 1
    assert world.token_queries() == ["/token?service=fake-svc&scope=repository%3Ar%3Apull"]
    assert all("authorization" not in h for _, _, h in world.token_server.seen)
    auths = [h.get("authorization") for _, _, h in world.registry.seen]
    assert auths == [None, "Bearer tok-1", "Bearer tok-1", "Bearer tok-1"]


def test_bearer_with_creds_and_access_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with TokenWorld(creds=("bob", "t0ps3cret"), field="access_token") as world:
        _read_twice(world, creds=("bob", "t0ps3cret"))
        assert world.issued == 1
        with pytest.raises(AuthError) as info:
            _read_twice(world, creds=("bob", "wrong"))
        message = one_line(info)
        assert "token server 127.0.0.1 refused user 'bob'" in message
        assert "wrong" not in message
    assert "t0ps3cret" not in caplog.text
    assert "tok-1" not in caplog.text


def test_bearer_refresh_once_on_401() -> None:
    """Each token is good for one request (as if it expired early): every later 401
    is answered by one refresh, and the request succeeds."""
    with TokenWorld(revoke_after_use=True) as world:
        _read_twice(world)
    assert world.issued == 3


def test_bearer_expires_in_refreshes_before_use() -> None:
    """A token past its expires_in is replaced before use, without a 401 first."""
    with TokenWorld(expires_in=1) as world:

        async def main() -> None:
            async with RegistrySource(f"{world.registry.host}/r:t") as src:
                await src.ping()
                assert await src.read_blob(BLOB_DESC, 0, 10) == BLOB[:10]
                await trio.sleep(1.0)
                assert await src.read_blob(BLOB_DESC, 10, 10) == BLOB[10:20]

        run(main)
        assert world.issued == 2
        auths = [h.get("authorization") for _, _, h in world.registry.seen]
    assert auths == [None, "Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


def test_bearer_still_refused() -> None:
    with TokenWorld(reject_all=True) as world:
        with pytest.raises(AuthError) as info:
            _read_twice(world)
        assert "requires a login; no credentials found" in one_line(info)
        assert world.issued == 1
        assert len(world.registry.seen) == 2
        with pytest.raises(AuthError) as info:
            _read_twice(world, creds=("carol", "pw"))
        assert "access denied by 127.0.0.1" in one_line(info)
        assert "with a token for user 'carol'" in one_line(info)


# --- faults: retries, ranges ignored, short bodies, lost connections -------------


def _blob_source_run(
    handle: Callable[[Any], None], fn: Callable[[RegistrySource], Awaitable[T]]
) -> tuple[T, FakeServer]:
    with FakeServer(handle) as server:

        async def main() -> T:
            async with RegistrySource(f"{server.host}/r:t") as src:
                return await fn(src)

        return run(main), server


def _failing(statuses: list[int], headers: dict[str, str] | None = None) -> Callable[[Any], None]:
    left = list(statuses)

    def handle(req: Any) -> None:
        if left:
            req.reply(left.pop(0), b"oops", headers)
        else:
            serve_blob(req)

    return handle


def test_retry_on_5xx_and_429(fast_retries: None) -> None:
    got, server = _blob_source_run(_failing([503, 502]), lambda s: s.read_blob(BLOB_DESC, 5, 5))
    assert got == BLOB[5:10] and len(server.seen) == 3
    got, server = _blob_source_run(
        _failing([429], {"Retry-After": "0"}), lambda s: s.read_blob(BLOB_DESC, 5, 5)
    )
    assert got == BLOB[5:10] and len(server.seen) == 2


def test_retries_are_bounded(fast_retries: None) -> None:
    with pytest.raises(FetchError) as info:
        _blob_source_run(_failing([500] * 99), lambda s: s.read_blob(BLOB_DESC, 0, 5))
    assert "HTTP 500 from 127.0.0.1" in one_line(info)


def test_4xx_not_retried(fast_retries: None) -> None:
    with FakeServer(_failing([400] * 99)) as server:

        async def main() -> None:
            async with RegistrySource(f"{server.host}/r:t") as src:
                await src.read_blob(BLOB_DESC, 0, 5)

        with pytest.raises(FetchError) as info:
            run(main)
        assert "HTTP 400" in one_line(info)
        assert len(server.seen) == 1


def test_connection_refused_is_fetch_error(fast_retries: None) -> None:
    with FakeServer(serve_blob) as server:
        host = server.host

    async def main() -> None:
        async with RegistrySource(f"{host}/r:t", timeout_s=2) as src:
            await src.ping()

    with pytest.raises(FetchError) as info:
        run(main)
    assert "ConnectError" in one_line(info)


def test_range_ignored_is_sliced() -> None:
    """Some registries and proxies answer a Range GET with 200 and the whole blob."""
    got, _ = _blob_source_run(
        lambda req: serve_blob(req, honour_range=False),
        lambda s: s.read_blob(BLOB_DESC, 30_000, 1234),
    )
    assert got == BLOB[30_000:31_234]


def test_wrong_content_range(fast_retries: None) -> None:
    def handle(req: Any) -> None:
        req.reply(206, BLOB[:5], {"Content-Range": f"bytes 0-4/{len(BLOB)}"})

    with pytest.raises(FetchError) as info:
        _blob_source_run(handle, lambda s: s.read_blob(BLOB_DESC, 10, 5))
    assert "got Content-Range 0-4" in one_line(info)


def test_short_body_retried(fast_retries: None) -> None:
    calls: list[int] = []

    def handle(req: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            req.reply(206, BLOB[10:13], {"Content-Range": f"bytes 10-12/{len(BLOB)}"})
        else:
            serve_blob(req)

    # 10-12 is not the asked 10-14: a wrong span, retried like a short body.
    got, _ = _blob_source_run(handle, lambda s: s.read_blob(BLOB_DESC, 10, 5))
    assert got == BLOB[10:15] and len(calls) == 2
    calls.clear()

    def truncating(req: Any) -> None:
        calls.append(1)
        if len(calls) == 1:  # headers promise 5 bytes, the connection dies after 2
            req.send_response(206)
            req.send_header("Content-Length", "5")
            req.end_headers()
            req.wfile.write(BLOB[10:12])
            req.close_connection = True
        else:
            serve_blob(req)

    got, _ = _blob_source_run(truncating, lambda s: s.read_blob(BLOB_DESC, 10, 5))
    assert got == BLOB[10:15] and len(calls) == 2


def test_stream_resumes_after_lost_connection() -> None:
    """The first answer dies half way; the stream goes on with Range: bytes=N-."""
    calls: list[int] = []

    def handle(req: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            req.send_response(200)
            req.send_header("Content-Length", str(len(BLOB)))
            req.end_headers()
            req.wfile.write(BLOB[:20_000])
            req.wfile.flush()
            req.close_connection = True
        else:
            serve_blob(req)

    async def consume(src: RegistrySource) -> bytes:
        return b"".join([c async for c in src.stream_blob(BLOB_DESC)])

    got, server = _blob_source_run(handle, consume)
    assert got == BLOB
    ranges = [h.get("range") for _, _, h in server.seen]
    assert ranges[0] is None and ranges[1] is not None
    assert re.fullmatch(r"bytes=\d+-", ranges[1])


def test_blob_digest_checked() -> None:
    bad = Descriptor(BLOB_DESC.media_type, "sha256:" + "2" * 64, len(BLOB))
    with pytest.raises(DigestMismatchError) as info:
        _blob_source_run(serve_blob, lambda s: s.get_blob(bad))
    assert "digest mismatch" in one_line(info)


def test_stream_stopped_early_is_clean(registry: Registry, tiny: TinyImage) -> None:
    """Leaving a stream after the first piece closes the connection without an
    abandoned-generator warning (filterwarnings=error would fail the test)."""

    async def main() -> bytes:
        src = RegistrySource(f"{registry.host}/{REPO}:v1")
        async with src, aclosing(src.stream_blob(desc(tiny, "layer"))) as chunks:
            async for chunk in chunks:
                return chunk
        return b""

    first = run(main)
    assert first and tiny.layer.startswith(first)
    gc.collect()


def test_no_credentials_to_plain_http_realm() -> None:
    """A registry on loopback may name a token realm elsewhere over plain HTTP: the
    password must not go there (the check comes before any connection)."""

    def handle(req: Any) -> None:
        challenge = 'Bearer realm="http://token.example.invalid/token",service="s"'
        req.reply(401, b"", {"WWW-Authenticate": challenge})

    async def main(host: str) -> None:
        async with RegistrySource(f"{host}/r:t", creds=("dave", "pw")) as src:
            await src.ping()

    with FakeServer(handle) as server, pytest.raises(AuthError) as info:
        run(lambda: main(server.host))
    assert "refusing to send credentials over plain HTTP to token.example.invalid" in one_line(info)
