"""Security, end to end: credentials never logged nor sent to a redirect target on
another host; TLS verified by default (a registry with a trustme CA), ``--cert-dir``,
certs.d and ``--tls-verify=false`` as skopeo spells them; plain HTTP to a non-loopback
name only when asked; a private cache; mount options (default_permissions, nosuid,
nodev, allow_other only when asked)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from faultproxy import FaultProxy, blobs
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, chardev, file, push_layout, write_layout
from mounting import is_mounted, mounted, ocifs, one_line_error
from registry_fixtures import Registry

TLS_NAME = "registry.ocifs.test"  # not a loopback name: ocifs must speak HTTPS to it
HELLO = b"hello over tls\n"


# --- credentials in logs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def private_image(auth_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("private")
    image = Image(layers=[Layer([file("etc/secret-ish", b"payload\n" * 100)])])
    ref = f"{auth_registry.host}/private/app:1"
    creds = f"{auth_registry.user}:{auth_registry.password}"
    push_layout(write_layout(image, tmp / "layout"), ref, creds=creds)
    return ref


def _mount_foreground(ref: str, tmp_path: Path, *extra: str) -> str:
    """``ocifs mount -f -vv`` until the mount is up; read every file; unmount; return
    everything the process wrote to stderr."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    err_path = tmp_path / "stderr.log"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ocifs", "mount", "-f", "-vv", ref, str(mnt),
             "--cache-dir", str(tmp_path / "cache"), *extra],
            stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not is_mounted(mnt):
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        files = [p for p in mnt.rglob("*") if p.is_file() and not p.is_symlink()]
        assert files
        for p in files:
            p.read_bytes()
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        assert proc.wait(timeout=60) == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    return err_path.read_text()


def _secrets_of(user: str, password: str) -> list[str]:
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [password, basic, basic.rstrip("=")]


def test_basic_credentials_never_logged(
    auth_registry: Registry, private_image: str, tmp_path: Path
) -> None:
    assert auth_registry.user and auth_registry.password
    creds = f"{auth_registry.user}:{auth_registry.password}"
    log = _mount_foreground(private_image, tmp_path, "--creds", creds)
    assert "GET" in log and "DEBUG" in log, "expected -vv request logging"
    for secret in _secrets_of(auth_registry.user, auth_registry.password):
        assert secret not in log


def test_bearer_token_never_logged(
    registry: Registry, sample_image: BuiltImage, tmp_path: Path
) -> None:
    """Token auth (the proxy plays the token server in front of the real registry):
    neither the password, nor its Basic form, nor the bearer token are logged."""
    user, password, token = "tok-user", "tok-pa55!", "secret-bearer-token-0123456789"
    with FaultProxy(registry.url, bearer=(user, password, token)) as proxy:
        ref = f"{proxy.host}/{sample_image.repo}:{sample_image.tag}"
        log = _mount_foreground(ref, tmp_path, "--creds", f"{user}:{password}")
        assert any(s.path.startswith("/token") for s in proxy.seen)
        assert any(s.headers.get("authorization") == f"Bearer {token}" for s in proxy.seen)
    for secret in [*_secrets_of(user, password), token]:
        assert secret not in log


# --- credentials never follow a redirect to another host --------------------------------


class _Storage:
    """Blob storage on another loopback host (127.0.0.2): serves the registry's blob
    bytes for ``/v2/.../blobs/DIGEST`` (honouring Range), recording request headers."""

    def __init__(self, registry: Registry) -> None:
        self.seen: list[dict[str, str]] = []
        self.registry = registry
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.seen.append({k.lower(): v for k, v in self.headers.items()})
                path = self.path.split("?")[0]
                headers = {"Range": self.headers["Range"]} if "Range" in self.headers else {}
                resp = httpx.get(owner.registry.url + path, headers=headers,
                                 auth=owner.registry.auth, timeout=30)  # fmt: skip
                self.send_response(resp.status_code)
                for key in ("Content-Range", "Content-Type"):
                    if key in resp.headers:
                        self.send_header(key, resp.headers[key])
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Storage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_credentials_not_sent_to_redirect_target(
    auth_registry: Registry, private_image: str, tmp_path: Path
) -> None:
    """Every blob GET is answered 307 to storage on another host; a mount reads a file
    through it. The storage never sees an Authorization header, the registry does, and
    the signed query never reaches the log, not even at -vv."""
    assert auth_registry.user and auth_registry.password
    creds = f"{auth_registry.user}:{auth_registry.password}"
    with _Storage(auth_registry) as storage, FaultProxy(auth_registry.url) as proxy:
        proxy.set("redirect", match=blobs, target=storage.url)
        repo_tag = private_image.split("/", 1)[1]
        ref = f"{proxy.host}/{repo_tag}"
        log = tmp_path / "daemon.log"
        with mounted(ref, tmp_path / "mnt", tmp_path / "cache", "--creds", creds, "-vv",
                     "--log-file", str(log)) as mnt:  # fmt: skip
            assert (mnt / "etc" / "secret-ish").read_bytes() == b"payload\n" * 100
        assert storage.seen, "the redirect target was never asked"
        assert all("authorization" not in h for h in storage.seen), storage.seen
        assert any("authorization" in s.headers for s in proxy.seen if "/blobs/" in s.path)
    text = log.read_text()
    assert "fault-proxy-signed" not in text
    for secret in _secrets_of(auth_registry.user, auth_registry.password):
        assert secret not in text


# --- TLS -------------------------------------------------------------------------------------


class TlsRegistry(Registry):
    """Debian's docker-registry serving HTTPS with a certificate from a test CA, for
    both ``TLS_NAME`` and 127.0.0.1."""

    def __init__(self, root: Path, ca: trustme.CA) -> None:
        super().__init__(root)
        self.ca = ca
        cert = ca.issue_cert(TLS_NAME, "127.0.0.1")
        self.cert_path = root / "cert.pem"
        self.key_path = root / "key.pem"
        cert.cert_chain_pems[0].write_to_path(str(self.cert_path))
        for pem in cert.cert_chain_pems[1:]:
            with self.cert_path.open("ab") as fh:
                fh.write(pem.bytes())
        cert.private_key_pem.write_to_path(str(self.key_path))
        self.ca_path = root / "ca.crt"
        ca.cert_pem.write_to_path(str(self.ca_path))

    def _write_config(self) -> Path:
        config = super()._write_config()
        text = config.read_text().replace(
            "  secret: ocifs-test-secret\n",
            "  secret: ocifs-test-secret\n  tls:\n"
            f"    certificate: {self.cert_path}\n    key: {self.key_path}\n",
        )
        config.write_text(text)
        return config

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                url = f"https://127.0.0.1:{self.port}/v2/"
                ctx = ssl.create_default_context(cafile=str(self.ca_path))
                if httpx.get(url, verify=ctx, timeout=1).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to resolve a test host name")
    root = tmp_path_factory.mktemp("tls-registry")
    reg = TlsRegistry(root, trustme.CA())
    reg.start()
    try:
        image = Image(layers=[Layer([file("etc/hello", HELLO)])])
        push_layout(write_layout(image, root / "layout"), f"{reg.host}/tls/app:1")
        yield reg
    finally:
        reg.stop()


def _in_namespace(tmp_path: Path, *args: str, certs_d: Path | None = None) -> Any:
    """Run ``ocifs ARGS`` in a private mount namespace whose /etc/hosts maps TLS_NAME to
    127.0.0.1 (and whose /etc/containers holds ``certs_d`` as certs.d): a real name
    lookup of a name ocifs does not treat as loopback, changing nothing on the host."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost {TLS_NAME}\n::1 localhost\n")
    script = 'mount --bind "$1" /etc/hosts || exit 97\n'
    if certs_d is not None:
        script += (
            "mount -t tmpfs ocifs-test /etc/containers || exit 97\n"
            'cp -r "$2" /etc/containers/certs.d || exit 97\n'
        )
    script += 'shift 2\nexec "$@"\n'
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
           str(hosts), str(certs_d or "-"), sys.executable, "-m", "ocifs", *args]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 97, result.stderr
    return result


def _tls_ref(reg: Registry) -> str:
    return f"{TLS_NAME}:{reg.port}/tls/app:1"


def test_tls_verified_by_default(tls_registry: TlsRegistry, tmp_path: Path) -> None:
    started = time.monotonic()
    result = _in_namespace(tmp_path, "cat", _tls_ref(tls_registry), "/etc/hello",
                           "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    line = one_line_error(result)
    assert "certificate" in line and "--cert-dir" in line, line
    assert result.stdout == ""
    assert time.monotonic() - started < 60, "a certificate failure is not worth retrying"


def test_tls_with_cert_dir(tls_registry: TlsRegistry, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(tls_registry.ca_path, certs / "test-ca.crt")
    cache = str(tmp_path / "cache")
    result = _in_namespace(tmp_path, "cat", _tls_ref(tls_registry), "/etc/hello",
                           "--cert-dir", str(certs), "--cache-dir", cache)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == HELLO.decode()
    # A directory that does not exist is a one-line error, not a silent default.
    result = ocifs("cat", _tls_ref(tls_registry), "/etc/hello", "--cert-dir",
                   str(tmp_path / "nope"))  # fmt: skip
    assert "--cert-dir" in one_line_error(result)


def test_tls_with_certs_d(tls_registry: TlsRegistry, tmp_path: Path) -> None:
    """containers-certs.d(5): /etc/containers/certs.d/HOST:PORT/*.crt."""
    certs_d = tmp_path / "certs.d"
    (certs_d / f"{TLS_NAME}:{tls_registry.port}").mkdir(parents=True)
    shutil.copy(tls_registry.ca_path, certs_d / f"{TLS_NAME}:{tls_registry.port}" / "ca.crt")
    result = _in_namespace(tmp_path, "cat", _tls_ref(tls_registry), "/etc/hello",
                           "--cache-dir", str(tmp_path / "cache"), certs_d=certs_d)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == HELLO.decode()


def test_tls_verify_false(tls_registry: TlsRegistry, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    result = _in_namespace(tmp_path, "cat", _tls_ref(tls_registry), "/etc/hello",
                           "--tls-verify=false", "--cache-dir", cache)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == HELLO.decode()


def test_plain_http_to_a_non_loopback_name_only_when_asked(
    registry: Registry, sample_image: BuiltImage, tmp_path: Path
) -> None:
    """The plain-HTTP session registry under a non-loopback name: HTTPS is tried (and
    fails) unless --insecure says plain HTTP is fine."""
    ref = f"{TLS_NAME}:{registry.port}/{sample_image.repo}:{sample_image.tag}"
    result = _in_namespace(tmp_path, "digest", ref, "--cache-dir", str(tmp_path / "c"))
    line = one_line_error(result)
    assert TLS_NAME in line or "SSL" in line or "TLS" in line, line
    result = _in_namespace(tmp_path, "digest", ref, "--insecure", "--cache-dir",
                           str(tmp_path / "c"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == sample_image.digest


# --- the cache is private --------------------------------------------------------------------


def test_cache_dir_0700_files_0600(sample_image: BuiltImage, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with mounted(sample_image.ref, tmp_path / "mnt", cache) as mnt:
        for p in mnt.rglob("*"):
            if p.is_file() and not p.is_symlink():
                p.read_bytes()
    found = 0
    for p in [cache, *cache.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        if p.is_dir():
            assert mode == 0o700, (p, oct(mode))
        else:
            assert mode & 0o077 == 0, (p, oct(mode))
            found += 1
    assert found > 3


def test_cache_dir_of_another_user_is_refused(sample_image: BuiltImage, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = ocifs("mount", sample_image.ref, str(mnt), "--cache-dir", str(cache))
    line = one_line_error(result)
    assert "uid 65534" in line and str(cache) in line
    assert not is_mounted(mnt)
    assert list(cache.iterdir()) == []


# --- mount options -----------------------------------------------------------------------------


def _mountinfo(mnt: Path) -> tuple[set[str], set[str]]:
    """(per-mount options, super options) of ``mnt`` from /proc/self/mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mnt):
            sep = fields.index("-")
            return set(fields[5].split(",")), set(fields[sep + 3].split(","))
    raise AssertionError(f"{mnt} not in mountinfo")


@pytest.fixture(scope="module")
def perm_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Owners and modes to honour: a private file of uid 1234, a world-readable one, a
    setuid-root program, and a device node."""
    entries = [
        file("etc/private", b"only uid 1234\n", mode=0o600, uid=1234, gid=1234),
        file("etc/public", b"anyone\n", mode=0o644),
        file("bin/su-like", b"#!/bin/sh\nid -u\n", mode=0o4755),
        chardev("dev/null-like", 1, 3, mode=0o666),
    ]
    layout = write_layout(Image(layers=[Layer(entries)]), tmp_path_factory.mktemp("perm") / "l")
    ref = f"{registry.host}/security/perms:1"
    push_layout(layout, ref)
    return ref


@contextlib.contextmanager
def _world_dir() -> Iterator[Path]:
    """A mount point another user can reach (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ocifs-sec-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if is_mounted(path / "mnt"):
            subprocess.run(["fusermount3", "-u", "-z", str(path / "mnt")], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_mount_options_and_permissions(perm_image: str, tmp_path: Path) -> None:
    with _world_dir() as world:
        with mounted(perm_image, world / "mnt", tmp_path / "cache") as mnt:
            per_mount, per_super = _mountinfo(mnt)
            assert {"ro", "nosuid", "nodev"} <= per_mount, per_mount
            assert "default_permissions" in per_super, per_super
            assert "allow_other" not in per_super
            # Metadata as in the image: setuid bit and device numbers are shown...
            su = (mnt / "bin" / "su-like").stat()
            assert su.st_mode & stat.S_ISUID
            dev = (mnt / "dev" / "null-like").lstat()
            assert stat.S_ISCHR(dev.st_mode) and os.major(dev.st_rdev) == 1
            # ...but inert: a device node on a nodev mount cannot be opened.
            with pytest.raises(PermissionError):
                (mnt / "dev" / "null-like").open("rb")
            # Without allow_other, another user cannot even look.
            result = _as_nobody("cat", str(mnt / "etc" / "public"))
            assert result.returncode != 0
        with mounted(perm_image, world / "mnt", tmp_path / "cache", "--allow-other") as mnt:
            _, per_super = _mountinfo(mnt)
            assert "allow_other" in per_super
            assert _as_nobody("cat", str(mnt / "etc" / "public")).stdout == "anyone\n"
            # default_permissions: the kernel checks the image's owner and mode.
            result = _as_nobody("cat", str(mnt / "etc" / "private"))
            assert result.returncode != 0 and re.search("denied", result.stderr, re.I)
            assert (mnt / "etc" / "private").read_bytes() == b"only uid 1234\n"  # root may
