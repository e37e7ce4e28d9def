"""A real registry for tests: Debian's ``docker-registry`` (CNCF distribution 2.8) on a
free loopback port, with plain HTTP, optionally htpasswd basic auth; helpers to push
blobs and manifests with plain httpx; and a tiny stdlib HTTP server for the cases a
real registry cannot produce (wrong digests, redirects to another host, faults).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import bcrypt
import httpx
import pytest

__all__ = [
    "FakeServer",
    "Registry",
    "Served",
    "TinyImage",
    "auth_registry",
    "push_blob",
    "push_manifest",
    "push_tiny_image",
    "registry",
]

REGISTRY_BIN = "/usr/bin/docker-registry"
START_TIMEOUT_S = 15.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class Served(NamedTuple):
    """One response the registry logged: method, URI (path and query), status, body
    bytes written."""

    method: str
    uri: str
    status: int
    written: int


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """A ``docker-registry serve`` process with storage under ``root``.

    ``host`` is ``127.0.0.1:PORT``, ``url`` ``http://host``; ``user``/``password``
    are set (and required by the registry) when ``basic_auth`` is true, else None.
    :meth:`requests` parses the registry's own "response completed" log records.
    """

    def __init__(self, root: Path, *, basic_auth: bool = False) -> None:
        self.root = root
        self.user: str | None = "ocifs-user" if basic_auth else None
        self.password: str | None = "s3cret-pw!" if basic_auth else None
        self.port = 0
        self.host = ""
        self.url = ""
        self.log_path = root / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def auth(self) -> tuple[str, str] | None:
        """``(user, password)`` for httpx/RegistrySource, or None without auth."""
        if self.user is None or self.password is None:
            return None
        return (self.user, self.password)

    def _write_config(self) -> Path:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: json",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: ocifs-test-secret",
        ]
        if self.user is not None and self.password is not None:
            htpasswd = self.root / "htpasswd"
            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4))
            htpasswd.write_text(f"{self.user}:{hashed.decode()}\n")
            lines += ["auth:", "  htpasswd:", "    realm: ocifs-test", f"    path: {htpasswd}"]
        config = self.root / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> None:
        """Start on a free port and wait until ``/v2/`` answers (200 or 401)."""
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            self.host = f"127.0.0.1:{self.port}"
            self.url = f"http://{self.host}"
            config = self._write_config()
            with self.log_path.open("ab") as err, (self.root / "access.log").open("ab") as out:
                self._proc = subprocess.Popen(
                    [REGISTRY_BIN, "serve", str(config)],
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"docker-registry did not start; see {self.log_path}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1.0).status_code in (200, 401):
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def requests(self) -> list[Served]:
        """Every response the registry has logged so far, oldest first."""
        # The registry logs just before the last bytes leave; wait for a quiet file.
        size = -1
        for _ in range(50):
            now = self.log_path.stat().st_size
            if now == size:
                break
            size = now
            time.sleep(0.02)
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not str(obj.get("msg", "")).startswith("response completed"):
                continue
            records.append(
                Served(
                    obj.get("http.request.method", ""),
                    obj.get("http.request.uri", ""),
                    int(obj.get("http.response.status", 0)),
                    int(obj.get("http.response.written", 0)),
                )
            )
        return records

    def mark(self) -> int:
        """A position in the log; pass it to :meth:`since`."""
        return len(self.requests())

    def since(self, mark: int) -> list[Served]:
        """The responses logged after :meth:`mark` returned ``mark``."""
        return self.requests()[mark:]


def _start(root: Path, basic_auth: bool) -> Iterator[Registry]:
    if not shutil.which(REGISTRY_BIN):
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    reg = Registry(root, basic_auth=basic_auth)
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry without authentication, for the whole test session."""
    yield from _start(tmp_path_factory.mktemp("registry"), basic_auth=False)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with htpasswd basic auth (``.user``/``.password``)."""
    yield from _start(tmp_path_factory.mktemp("auth-registry"), basic_auth=True)


# --- pushing with plain httpx (distribution-spec "Pushing blobs", monolithic) -----


def push_blob(reg: Registry, repo: str, data: bytes) -> str:
    """Upload ``data`` as a blob of ``repo`` (POST then PUT ?digest=); returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=reg.url, auth=reg.auth, timeout=30) as client:
        resp = client.post(f"/v2/{repo}/blobs/uploads/")
        assert resp.status_code == 202, resp.text
        location = resp.headers["location"]
        # Keep the upload URL's query (_state) as is: httpx's params= would replace it.
        sep = "&" if "?" in location else "?"
        resp = client.put(
            f"{location}{sep}digest={digest}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status_code == 201, resp.text
    return digest


def push_manifest(reg: Registry, repo: str, reference: str, data: bytes, media_type: str) -> str:
    """PUT a manifest or image index at a tag or digest; returns its digest."""
    with httpx.Client(base_url=reg.url, auth=reg.auth, timeout=30) as client:
        resp = client.put(
            f"/v2/{repo}/manifests/{reference}",
            content=data,
            headers={"Content-Type": media_type},
        )
        assert resp.status_code == 201, resp.text
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TinyImage:
    """A one-layer image pushed by :func:`push_tiny_image`; the layer is random bytes
    (sources do not parse layers), ``layer_size`` bytes long."""

    repo: str
    tag: str
    manifest: bytes
    manifest_digest: str
    index: bytes
    index_digest: str
    index_tag: str
    config: bytes
    config_digest: str
    layer: bytes
    layer_digest: str

    def descriptor(self, which: str) -> dict[str, Any]:
        """The JSON descriptor of ``"config"`` or ``"layer"``."""
        if which == "config":
            return {"mediaType": OCI_CONFIG, "digest": self.config_digest, "size": len(self.config)}
        return {"mediaType": OCI_LAYER_GZIP, "digest": self.layer_digest, "size": len(self.layer)}


def push_tiny_image(
    reg: Registry, repo: str, tag: str = "v1", layer_size: int = 300_000, seed: int = 1
) -> TinyImage:
    """Push a config, one layer blob, its manifest at ``tag`` and an image index at
    ``tag-index``."""
    layer = random.Random(seed).randbytes(layer_size)
    layer_digest = push_blob(reg, repo, layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    ).encode()
    config_digest = push_blob(reg, repo, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    manifest_digest = push_manifest(reg, repo, tag, manifest, OCI_MANIFEST)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
            ],
        }
    ).encode()
    index_tag = f"{tag}-index"
    index_digest = push_manifest(reg, repo, index_tag, index, OCI_INDEX)
    return TinyImage(
        repo,
        tag,
        manifest,
        manifest_digest,
        index,
        index_digest,
        index_tag,
        config,
        config_digest,
        layer,
        layer_digest,
    )


# --- a stdlib HTTP server for what a real registry cannot do ----------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _dispatch(self) -> None:
        self.server.owner.record(self)
        self.server.owner.handler(self)

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Send a complete response with Content-Length."""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up early (a sliced 200 read) are expected here


class FakeServer:
    """A threaded HTTP/1.1 server on ``127.0.0.1:PORT`` calling ``handler(req)`` for
    every request; ``req.reply(status, body, headers)`` answers. ``seen`` records
    ``(method, path, headers)`` of every request."""

    def __init__(self, handler: Callable[[Any], None]) -> None:
        self.handler = handler
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = int(self._server.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def record(self, req: http.server.BaseHTTPRequestHandler) -> None:
        """Remember one request (called by the handler before dispatch)."""
        with self._lock:
            self.seen.append(
                (req.command, req.path, {k.lower(): v for k, v in req.headers.items()})
            )

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
