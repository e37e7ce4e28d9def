"""A loopback HTTP reverse proxy that injects faults between ocifs and a real registry.

``FaultProxy(upstream_url)`` listens on ``127.0.0.1:PORT`` (a real socket, a thread per
connection) and forwards every request to the upstream registry. :meth:`FaultProxy.set`
switches the fault mode at run time (the test process and the proxy share the object;
the mount daemon reaches the proxy over TCP), for the next ``times`` matching requests
or until :meth:`FaultProxy.clear`. Modes:

``delay``     wait ``seconds`` (default 0.5), then answer normally
``hang``      accept the request and answer nothing for ``seconds`` (default 3600) or
              until the fault is cleared, then close the connection
``reset``     close the connection with a TCP RST before answering
``truncate``  send the headers (full ``Content-Length``) and half the body, then close
``flip``      flip one bit in the middle of the body
``status``    answer ``status`` (500, 502, 503, 429...) with a registry error body;
              ``retry_after`` adds a ``Retry-After`` header (seconds)
``no_range``  drop the ``Range`` header upstream: 200 with the whole blob
``bad_range`` shift the ``Content-Range`` header of a 206 by one byte
``redirect``  answer ``307`` to ``target + path + '?X-Signature=...'`` (another origin)

Optionally the proxy fronts the upstream with bearer-token authentication
(``bearer=(user, password, token)``): ``/v2/...`` needs ``Authorization: Bearer TOKEN``
and ``/token`` hands the token out for Basic ``user:password``, as the distribution
token-auth specification describes (Debian's registry has no token server).
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = ["MODES", "Fault", "FaultProxy", "Seen", "blob_ranges", "blobs"]

MODES = frozenset(
    {"delay", "hang", "reset", "truncate", "flip", "status", "no_range", "bad_range", "redirect"}
)
UPSTREAM_TIMEOUT_S = 60.0
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
}


class Seen(NamedTuple):
    """One request the proxy got: method, path (with query), headers (lower-case
    names), and the fault mode applied to it ("" for none)."""

    method: str
    path: str
    headers: dict[str, str]
    fault: str


Match = Callable[[str, str, dict[str, str]], bool]


def blobs(method: str, path: str, headers: dict[str, str]) -> bool:
    """Every blob GET (index builds stream whole blobs; reads ask for ranges)."""
    return method == "GET" and "/blobs/" in path


def blob_ranges(method: str, path: str, headers: dict[str, str]) -> bool:
    """Blob GETs with a ``Range`` header: the lazy reads of a mounted image."""
    return blobs(method, path, headers) and "range" in headers


@dataclass
class Fault:
    """A fault mode with its parameters, for ``times`` matching requests (None: until
    cleared)."""

    mode: str
    times: int | None = None
    match: Match = blob_ranges
    params: dict[str, Any] = field(default_factory=dict)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.proxy._handle(self)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_all(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def reset(self) -> None:
        """Abort the connection with a RST (SO_LINGER 0), answering nothing."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hang up early and faults break connections on purpose


class FaultProxy:
    """See the module docstring. Use as a context manager; ``url``/``host`` name it."""

    def __init__(
        self,
        upstream: str,
        *,
        bind: str = "127.0.0.1",
        bearer: tuple[str, str, str] | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.bearer = bearer
        self.seen: list[Seen] = []
        self.faulted = 0
        self._fault: Fault | None = None
        self._lock = threading.Lock()
        self._cleared = threading.Event()
        self._server = _Server((bind, 0), _Handler)
        self._server.proxy = self
        self.port = int(self._server.server_address[1])
        self.host = f"{bind}:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- control ------------------------------------------------------------------

    def set(
        self, mode: str, *, times: int | None = None, match: Match = blob_ranges, **params: Any
    ) -> None:
        """Apply ``mode`` to the next ``times`` requests ``match`` accepts (None: all
        until :meth:`clear`)."""
        if mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        with self._lock:
            self._fault = Fault(mode, times, match, params)
            self._cleared = threading.Event()

    def clear(self) -> None:
        """Stop injecting faults; requests hanging on ``hang`` are released."""
        with self._lock:
            self._fault = None
            self._cleared.set()

    def mark(self) -> int:
        """A position in :attr:`seen`."""
        with self._lock:
            return len(self.seen)

    def since(self, mark: int) -> list[Seen]:
        """The requests seen after :meth:`mark` returned ``mark``."""
        with self._lock:
            return self.seen[mark:]

    def _take(self, method: str, path: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            fault = self._fault
            chosen = None
            if fault is not None and fault.match(method, path, headers):
                chosen = fault
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._fault = None
                self.faulted += 1
            self.seen.append(Seen(method, path, headers, chosen.mode if chosen else ""))
            return chosen

    # -- serving ------------------------------------------------------------------

    def _handle(self, req: _Handler) -> None:
        headers = {k.lower(): v for k, v in req.headers.items()}
        length = int(headers.get("content-length", "0") or 0)
        body = req.rfile.read(length) if length else b""
        if self.bearer is not None and self._gate(req, headers):
            return
        fault = self._take(req.command, req.path, headers)
        mode = fault.mode if fault else ""
        params = fault.params if fault else {}
        if mode == "reset":
            req.reset()
            return
        if mode == "hang":
            self._cleared.wait(params.get("seconds", 3600.0))
            req.reset()
            return
        if mode == "delay":
            self._cleared.wait(params.get("seconds", 0.5))
        if mode == "status":
            status = int(params.get("status", 503))
            extra = []
            if "retry_after" in params:
                extra.append(("Retry-After", str(params["retry_after"])))
            error = {"errors": [{"code": "UNAVAILABLE", "message": "fault injected"}]}
            req.send_all(status, [("Content-Type", "application/json"), *extra],
                         json.dumps(error).encode())  # fmt: skip
            return
        if mode == "redirect":
            location = f"{params['target']}{req.path}?X-Signature=fault-proxy-signed"
            req.send_all(307, [("Location", location)], b"")
            return
        forward = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        forward.pop("Host", None)
        if mode == "no_range":
            forward = {k: v for k, v in forward.items() if k.lower() != "range"}
        try:
            status, out_headers, out_body = self._upstream(req.command, req.path, forward, body)
        except OSError:
            # What a gateway says when the registry behind it is gone.
            req.send_all(502, [("Content-Type", "text/plain")], b"upstream unreachable")
            return
        if mode == "bad_range":
            out_headers = [
                (k, _shift_range(v)) if k.lower() == "content-range" else (k, v)
                for k, v in out_headers
            ]
        if mode == "flip" and out_body:
            flipped = bytearray(out_body)
            flipped[len(flipped) // 2] ^= 0x10
            out_body = bytes(flipped)
        if mode == "truncate" and len(out_body) > 1:
            req.send_response(status)
            for key, value in out_headers:
                req.send_header(key, value)
            req.send_header("Content-Length", str(len(out_body)))
            req.end_headers()
            req.wfile.write(out_body[: len(out_body) // 2])
            req.wfile.flush()
            req.close_connection = True
            return
        req.send_all(status, out_headers, out_body)

    def _upstream(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=UPSTREAM_TIMEOUT_S
        )
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            return resp.status, kept, data
        finally:
            conn.close()

    def _gate(self, req: _Handler, headers: dict[str, str]) -> bool:
        """Bearer authentication in front of the upstream; True if it answered."""
        assert self.bearer is not None
        user, password, token = self.bearer
        if req.path.startswith("/token"):
            with self._lock:
                self.seen.append(Seen(req.command, req.path, headers, ""))
            want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if headers.get("authorization") != want:
                req.send_all(401, [("Content-Type", "application/json")], b"{}")
            else:
                answer = json.dumps({"token": token, "expires_in": 300}).encode()
                req.send_all(200, [("Content-Type", "application/json")], answer)
            return True
        if headers.get("authorization") == f"Bearer {token}":
            return False
        with self._lock:
            self.seen.append(Seen(req.command, req.path, headers, ""))
        challenge = f'Bearer realm="{self.url}/token",service="fault-proxy"'
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}'
        req.send_all(401, [("WWW-Authenticate", challenge), ("Content-Type", "application/json")],
                     body)  # fmt: skip
        return True


def _shift_range(value: str) -> str:
    """``bytes A-B/T`` -> ``bytes A+1-B+1/T``: a registry answering the wrong span."""
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    try:
        return f"{unit} {int(first) + 1}-{int(last) + 1}/{total}"
    except ValueError:
        return value
