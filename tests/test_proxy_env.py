"""``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` are honoured, loopback is never proxied.

The proxied case needs a registry that is not on loopback; without a second host, a
name under ``.invalid`` (RFC 6761: never resolves) stands for a remote registry, and
a real forward proxy written here with the stdlib (an HTTP server that reads the
absolute-form request target, RFC 9112 section 3.2.2) sends every request it gets to
the loopback registry. Reaching the registry through that name proves the proxy was
used; with ``NO_PROXY`` naming it, the client resolves the name itself and fails.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from image_fixtures import BuiltImage
from mounting import is_mounted, ocifs, one_line_error
from registry_fixtures import FakeServer, Registry

REMOTE_NAME = "registry.ocifs-test.invalid"
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te"}


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed on return: nothing listens there


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(extra)
    return env


@pytest.fixture
def forward_proxy(registry: Registry) -> Iterator[FakeServer]:
    """A forward proxy that sends every request to the session registry."""
    upstream = httpx.Client(base_url=registry.url, trust_env=False, timeout=30)

    def forward(req: Any) -> None:
        target = httpx.URL(req.path)  # absolute form: http://HOST:PORT/v2/...
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Host", None)
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        resp = upstream.request(
            req.command, target.raw_path.decode(), headers=headers, content=body
        )
        out = {
            k: v
            for k, v in resp.headers.items()
            if k.lower() not in _HOP_BY_HOP
            and k.lower() not in ("content-length", "content-encoding")
        }
        req.reply(resp.status_code, resp.content, out)

    with FakeServer(forward) as proxy:
        yield proxy
    upstream.close()


def test_loopback_never_proxied(sample_image: BuiltImage, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_dead_port()}"
    env = _env(HTTP_PROXY=dead, HTTPS_PROXY=dead, ALL_PROXY=dead, http_proxy=dead)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = ocifs("mount", sample_image.ref, str(mnt), "--cache-dir", str(tmp_path / "c"), env=env)
    assert result.returncode == 0, result.stderr
    try:
        assert (mnt / "etc" / "os-release").read_bytes()
    finally:
        assert ocifs("umount", str(mnt)).returncode == 0
    assert not is_mounted(mnt)


def test_remote_name_goes_through_the_proxy(
    sample_image: BuiltImage, registry: Registry, forward_proxy: FakeServer, tmp_path: Path
) -> None:
    ref = f"{REMOTE_NAME}:{registry.port}/{sample_image.repo}:{sample_image.tag}"
    env = _env(HTTP_PROXY=forward_proxy.url)
    result = ocifs("digest", "--insecure", ref, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == sample_image.digest
    hosts = {headers.get("host") for _method, _path, headers in forward_proxy.seen}
    assert hosts == {f"{REMOTE_NAME}:{registry.port}"}
    assert all(path.startswith(f"http://{REMOTE_NAME}:") for _m, path, _h in forward_proxy.seen)


@pytest.mark.parametrize("no_proxy", [REMOTE_NAME, ".ocifs-test.invalid", "*"])
def test_no_proxy_bypasses_the_proxy(
    sample_image: BuiltImage,
    registry: Registry,
    forward_proxy: FakeServer,
    no_proxy: str,
) -> None:
    ref = f"{REMOTE_NAME}:{registry.port}/{sample_image.repo}:{sample_image.tag}"
    env = _env(HTTP_PROXY=forward_proxy.url, NO_PROXY=no_proxy)
    line = one_line_error(ocifs("digest", "--insecure", "--timeout", "5", ref, env=env))
    assert "ConnectError" in line or "resolve" in line.lower() or "Name" in line, line
    assert forward_proxy.seen == []
