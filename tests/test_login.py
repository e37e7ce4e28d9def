"""``ocifs login``/``logout`` against the basic-auth registry, then mounts with no
``--creds``: the daemon finds the credentials in podman's auth file and no secret
shows on its command line. Also ``ocifs mounts`` (pid, reference, digest, status)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from image_fixtures import BuiltImage, build_and_push
from mounting import is_mounted, ocifs, one_line_error
from registry_fixtures import Registry


@pytest.fixture(scope="module")
def auth_image(auth_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The sample image in the basic-auth registry."""
    return build_and_push(
        "sample", auth_registry, tmp_path_factory.mktemp("auth-image"), repo="private/sample"
    )


def _env(tmp_path: Path) -> dict[str, str]:
    """A user environment of our own: no auth file but the one login writes."""
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    env.pop("XDG_STATE_HOME", None)
    env.pop("XDG_CONFIG_HOME", None)
    return env


def _login(reg: Registry, env: dict[str, str], password: str) -> subprocess.CompletedProcess[str]:
    assert reg.user is not None
    return ocifs("login", reg.host, "-u", reg.user, "--password-stdin", input=password, env=env)


def test_wrong_password_one_line_nothing_written(auth_registry: Registry, tmp_path: Path) -> None:
    env = _env(tmp_path)
    line = one_line_error(_login(auth_registry, env, "not-the-password\n"))
    assert "login to" in line and "rejected the credentials" in line
    assert "not-the-password" not in line
    assert not (tmp_path / "run" / "containers").exists()


def test_login_mount_logout(
    auth_registry: Registry, auth_image: BuiltImage, tmp_path: Path
) -> None:
    env = _env(tmp_path)
    assert auth_registry.password is not None
    secret = auth_registry.password
    done = _login(auth_registry, env, secret + "\n")
    assert done.returncode == 0, done.stderr
    assert "Login Succeeded" in done.stdout
    authfile = tmp_path / "run" / "containers" / "auth.json"  # podman's default place
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    entry = json.loads(authfile.read_text())["auths"][auth_registry.host]
    assert base64.b64decode(entry["auth"]).decode() == f"{auth_registry.user}:{secret}"
    # Logging in again keeps one entry and other fields of the file.
    doc = json.loads(authfile.read_text())
    doc["credHelpers"] = {"other.example": "none"}
    authfile.write_text(json.dumps(doc))
    assert _login(auth_registry, env, secret).returncode == 0
    doc = json.loads(authfile.read_text())
    assert list(doc["auths"]) == [auth_registry.host] and "credHelpers" in doc

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = tmp_path / "cache"
    result = ocifs("mount", auth_image.ref, str(mnt), "--cache-dir", str(cache), env=env)
    assert result.returncode == 0, result.stderr
    try:
        assert (mnt / "etc" / "os-release").read_bytes()
        listed = json.loads(ocifs("mounts", "--json", env=env).stdout)
        mine = [m for m in listed if m["mountpoint"] == str(mnt)]
        assert len(mine) == 1, listed
        m = mine[0]
        assert m["reference"] == auth_image.ref and m["digest"] == auth_image.digest
        pid = m["pid"]
        assert isinstance(pid, int) and m["bytes_fetched"] > 0
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"ocifs" in cmdline and secret.encode() not in cmdline
        assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        ps = subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True
        )
        assert "mount" in ps.stdout and secret not in ps.stdout
        human = ocifs("mounts", env=env).stdout
        assert str(mnt) in human and str(pid) in human
    finally:
        assert ocifs("umount", str(mnt), env=env).returncode == 0
    assert not is_mounted(mnt)
    status_dir = tmp_path / "home" / ".local" / "state" / "ocifs" / "mounts"
    for _ in range(50):  # the daemon removes its status file as it exits
        if not list(status_dir.glob("*.json")):
            break
        time.sleep(0.1)
    assert not list(status_dir.glob("*.json"))
    listed = json.loads(ocifs("mounts", "--json", env=env).stdout)
    assert str(mnt) not in [m["mountpoint"] for m in listed]

    out = ocifs("logout", auth_registry.host, env=env)
    assert out.returncode == 0 and auth_registry.host in out.stdout
    assert json.loads(authfile.read_text())["auths"] == {}
    line = one_line_error(ocifs("logout", auth_registry.host, env=env))
    assert "not logged into" in line
    # Logged out, a fresh mount has no credentials to offer.
    line = one_line_error(
        ocifs("mount", auth_image.ref, str(mnt), "--cache-dir", str(tmp_path / "c2"), env=env)
    )
    assert "requires a login" in line or "access denied" in line or "401" in line


def test_authfile_option_and_logout_all(auth_registry: Registry, tmp_path: Path) -> None:
    env = _env(tmp_path)
    authfile = tmp_path / "elsewhere" / "auth.json"
    assert auth_registry.user is not None and auth_registry.password is not None
    done = ocifs(
        "login",
        f"http://{auth_registry.host}/private",
        "-u",
        auth_registry.user,
        "--password-stdin",
        "--authfile",
        str(authfile),
        input=auth_registry.password,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert list(json.loads(authfile.read_text())["auths"]) == [f"{auth_registry.host}/private"]
    assert not (tmp_path / "run").exists()
    out = ocifs("logout", "--all", "--authfile", str(authfile), env=env)
    assert out.returncode == 0
    assert json.loads(authfile.read_text())["auths"] == {}
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600


def test_no_password_without_terminal(auth_registry: Registry, tmp_path: Path) -> None:
    env = _env(tmp_path)
    line = one_line_error(
        ocifs("login", auth_registry.host, "-u", "x", stdin=subprocess.DEVNULL, env=env)
    )
    assert "--password-stdin" in line
