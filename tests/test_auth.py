"""Credential lookup in skopeo's order, credential helpers, challenge parsing."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import pytest

from ocifs.auth import (
    Credentials,
    TokenGrant,
    auth_file_candidates,
    find_credentials,
    parse_token_response,
    parse_www_authenticate,
)
from ocifs.errors import AuthError


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose every credential location is under tmp_path."""
    env = {"HOME": str(tmp_path / "home"), "PATH": os.environ.get("PATH", "")}
    (tmp_path / "home").mkdir()
    return env


def _who(registry: str, repository: str | None = None, **kw: object) -> str | None:
    found = find_credentials(registry, repository, **kw)  # type: ignore[arg-type]
    return None if found is None else found.username


def test_order_and_explicit(tmp_path: Path, home: dict[str, str]) -> None:
    docker = _write(
        Path(home["HOME"]) / ".docker/config.json", {"auths": {"r.io": _auth("d", "1")}}
    )
    got = find_credentials("r.io", "x", env=home)
    assert got is not None and (got.username, got.password) == ("d", "1")
    assert got.source.startswith(str(docker))
    containers = Path(home["HOME"]) / ".config/containers/auth.json"
    _write(containers, {"auths": {"r.io": _auth("c", "2")}})
    assert _who("r.io", env=home) == "c"
    runtime = tmp_path / "run"
    _write(runtime / "containers/auth.json", {"auths": {"r.io": _auth("x", "3")}})
    env = {**home, "XDG_RUNTIME_DIR": str(runtime)}
    assert _who("r.io", env=env) == "x"
    explicit = _write(tmp_path / "explicit.json", {"auths": {"r.io": _auth("e", "4")}})
    assert _who("r.io", env={**env, "REGISTRY_AUTH_FILE": str(explicit)}) == "e"
    assert _who("r.io", authfile=explicit, env=env) == "e"
    got = find_credentials("r.io", creds=("u", "p"), authfile=explicit, env=env)
    assert got == Credentials("u", "p", "explicit")
    assert find_credentials("other.io", env=env) is None
    with pytest.raises(AuthError, match="does not exist"):
        find_credentials("r.io", authfile=tmp_path / "missing.json", env=env)


def test_docker_config_env_and_hub_key(tmp_path: Path, home: dict[str, str]) -> None:
    cfg = tmp_path / "dockercfg"
    _write(cfg / "config.json", {"auths": {"https://index.docker.io/v1/": _auth("hub", "pw")}})
    env = {**home, "DOCKER_CONFIG": str(cfg)}
    assert _who("docker.io", "library/alpine", env=env) == "hub"
    assert find_credentials("r.io", env=env) is None


def test_per_repository_keys(tmp_path: Path, home: dict[str, str]) -> None:
    f = _write(
        tmp_path / "a.json",
        {
            "auths": {
                "r.io": _auth("all", "1"),
                "r.io/team": _auth("team", "2"),
                "r.io/team/app": _auth("app", "3"),
                "http://legacy.io/v2/": _auth("leg", "4"),
            }
        },
    )
    assert _who("r.io", "team/app", authfile=f) == "app"
    assert _who("r.io", "team/other", authfile=f) == "team"
    assert _who("r.io", "solo", authfile=f) == "all"
    assert _who("legacy.io", "x", authfile=f) == "leg"


def test_malformed_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"auths": {"r.io": {"auth": "SECRETSECRET')
    with pytest.raises(AuthError) as info:
        find_credentials("r.io", authfile=bad)
    assert "not valid JSON" in str(info.value) and "SECRET" not in str(info.value)
    _write(bad, {"auths": {"r.io": {"auth": "!!notbase64"}}})
    with pytest.raises(AuthError, match="not base64"):
        find_credentials("r.io", authfile=bad)
    _write(bad, {"auths": {"r.io": {"auth": base64.b64encode(b"nocolon").decode()}}})
    with pytest.raises(AuthError, match="user:password"):
        find_credentials("r.io", authfile=bad)


def _helper(bindir: Path, name: str, script: str) -> None:
    bindir.mkdir(exist_ok=True)
    path = bindir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_credential_helpers(tmp_path: Path, home: dict[str, str]) -> None:
    """Real helper processes speaking the docker-credential-helpers protocol."""
    bindir = tmp_path / "bin"
    log = tmp_path / "asked"
    _helper(
        bindir,
        "perreg",
        f'cat > {log}; echo \'{{"ServerURL":"x","Username":"hu","Secret":"hs"}}\'\n',
    )
    _helper(bindir, "store", 'read s; echo \'{"Username":"su","Secret":"ss"}\'\n')
    _helper(bindir, "none", "echo 'credentials not found in native keychain'; exit 1\n")
    _helper(bindir, "broken", "echo oops >&2; exit 3\n")
    env = {**home, "PATH": f"{bindir}:{home['PATH']}"}
    cfg = Path(home["HOME"]) / ".docker/config.json"
    _write(
        cfg,
        {
            "credHelpers": {"r.io": "perreg", "docker.io": "perreg"},
            "credsStore": "store",
            "auths": {"plain.io": _auth("pu", "pp")},
        },
    )
    got = find_credentials("r.io", env=env)
    assert got is not None and (got.username, got.password) == ("hu", "hs")
    assert log.read_text() == "r.io"
    find_credentials("docker.io", "library/alpine", env=env)
    assert log.read_text() == "https://index.docker.io/v1/"
    assert _who("plain.io", env=env) == "pu"
    assert _who("else.io", env=env) == "su"
    _write(cfg, {"credsStore": "none"})
    assert find_credentials("else.io", env=env) is None
    _write(cfg, {"credsStore": "broken"})
    with pytest.raises(AuthError, match="failed"):
        find_credentials("else.io", env=env)
    _write(cfg, {"credsStore": "absent"})
    with pytest.raises(AuthError, match="not found on PATH"):
        find_credentials("else.io", env=env)


def test_candidates(tmp_path: Path) -> None:
    env = {"HOME": "/h", "XDG_RUNTIME_DIR": "/run/u"}
    assert [str(p) for p, _ in auth_file_candidates(env=env)] == [
        "/run/u/containers/auth.json",
        "/h/.config/containers/auth.json",
        "/h/.docker/config.json",
    ]
    assert [str(p) for p, _ in auth_file_candidates("/x.json", env=env)] == ["/x.json"]


def test_secrets_hidden() -> None:
    c = Credentials("u", "hunter2", "f")
    assert "hunter2" not in repr(c) and "hunter2" not in str(c)
    assert "tok123" not in repr(TokenGrant("tok123", 0.0))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/alpine:pull,push"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/alpine:pull,push",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        ("basic realm=simple", [("basic", {"realm": "simple"})]),
        (
            'Bearer realm="a\\"b, c" , error="invalid_token"',
            [("bearer", {"realm": 'a"b, c', "error": "invalid_token"})],
        ),
        (
            'Negotiate abc+/==, Basic realm="x", Bearer realm="y"',
            [
                ("negotiate", {"token68": "abc+/=="}),
                ("basic", {"realm": "x"}),
                ("bearer", {"realm": "y"}),
            ],
        ),
        ("Basic", [("basic", {})]),
        ("", []),
        ('Bearer REALM="r"', [("bearer", {"realm": "r"})]),
    ],
)
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert [(c.scheme, c.params) for c in parse_www_authenticate(header)] == expected


@pytest.mark.parametrize("header", ['Bearer realm="unterminated', "=x", 'realm="x"', "Bearer @"])
def test_parse_challenges_bad(header: str) -> None:
    with pytest.raises(AuthError):
        parse_www_authenticate(header)


def test_token_response() -> None:
    assert parse_token_response(b'{"token": "t1", "expires_in": 300}', "w").token == "t1"
    grant = parse_token_response(b'{"access_token": "t2"}', "w")
    assert grant.token == "t2" and not grant.expired()
    short = parse_token_response(b'{"token": "t", "expires_in": 1}', "w")
    assert not short.expired()  # the margin is a tenth of a short lifetime
    assert TokenGrant("t", time.monotonic() + 4, 300).expired()  # 5 s margin
    assert not TokenGrant("t", time.monotonic() + 10, 300).expired()
    for bad in (b"nope", b"[]", b'{"expires_in": 5}', b'{"token": 3}'):
        with pytest.raises(AuthError):
            parse_token_response(bad, "w")
