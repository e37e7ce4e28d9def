"""Registry credentials and authentication challenges.

Credentials are looked up in skopeo's order (containers-auth.json(5)): an explicit
``--authfile`` or ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``
(without ``$XDG_RUNTIME_DIR``: ``/run/containers/<uid>/auth.json``),
``~/.config/containers/auth.json``, then Docker's ``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json`` (``auths``, ``credHelpers``, ``credsStore``). Explicit
``creds`` win over all files. Challenges are parsed per RFC 7235 section 4.1; the token
response per the distribution token authentication specification ("Token Response
Fields"). Secrets are never logged: :class:`Credentials` hides them in ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocifs.errors import AuthError

__all__ = [
    "Challenge",
    "Credentials",
    "TokenGrant",
    "auth_file_candidates",
    "basic_authorization",
    "find_credentials",
    "load_auth_file",
    "normalize_key",
    "parse_token_response",
    "parse_www_authenticate",
    "primary_auth_file",
]

log = logging.getLogger(__name__)

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
HELPER_TIMEOUT_S = 30.0
DEFAULT_TOKEN_LIFETIME_S = 60.0
MAX_AUTH_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and secret (password or token) for one registry.

    ``source`` says where they came from (a file path, a helper name, ``"explicit"``)
    for messages; ``repr`` never shows the secret.
    """

    username: str
    password: str = field(repr=False)
    source: str = "explicit"

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>, source={self.source!r})"


def basic_authorization(creds: Credentials) -> str:
    """The ``Authorization`` header value for HTTP Basic auth (RFC 7617)."""
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


# --- credential files ------------------------------------------------------------


def auth_file_candidates(
    authfile: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> list[tuple[Path, bool]]:
    """The auth files to consult, in order, as ``(path, is_docker_config)`` pairs.

    An explicit ``authfile`` (or ``$REGISTRY_AUTH_FILE``) is the only file consulted,
    as with skopeo's ``--authfile``.
    """
    env = os.environ if env is None else env
    explicit = authfile if authfile is not None else env.get("REGISTRY_AUTH_FILE")
    if explicit:
        return [(Path(explicit), False)]
    home = Path(env.get("HOME") or Path.home())
    files: list[tuple[Path, bool]] = []
    primary = primary_auth_file(None, env)
    # podman's per-uid file under /run only when its directory is there (and ours).
    if env.get("XDG_RUNTIME_DIR") or primary.parent.is_dir():
        files.append((primary, False))
    config_home = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    files.append((Path(config_home) / "containers" / "auth.json", False))
    docker_dir = env.get("DOCKER_CONFIG")
    files.append(((Path(docker_dir) if docker_dir else home / ".docker") / "config.json", True))
    return files


def primary_auth_file(
    authfile: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """The file ``ocifs login`` writes, as podman chooses it: ``authfile``, else
    ``$REGISTRY_AUTH_FILE``, else ``$XDG_RUNTIME_DIR/containers/auth.json``, else
    ``/run/containers/<uid>/auth.json``."""
    env = os.environ if env is None else env
    explicit = authfile if authfile is not None else env.get("REGISTRY_AUTH_FILE")
    if explicit:
        return Path(explicit)
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "containers" / "auth.json"
    return Path(f"/run/containers/{os.getuid()}/auth.json")


def normalize_key(key: str) -> str:
    """An auth-file key in podman's form: ``registry[/repo]``, Docker Hub as
    ``docker.io``, without scheme or ``/v1/``-style suffix."""
    return _normalize_key(key)


def _normalize_key(key: str) -> str:
    # Docker's legacy keys are URLs ("https://index.docker.io/v1/"); podman's are
    # "registry[/repo]". Compare them in podman's form.
    for prefix in ("https://", "http://"):
        key = key.removeprefix(prefix)
    for suffix in ("/v1/", "/v2/", "/v1", "/v2"):
        key = key.removesuffix(suffix)
    key = key.rstrip("/")
    host, sep, path = key.partition("/")
    if host in _DOCKER_HUB_NAMES:
        host = "docker.io"
    return host + sep + path


def _lookup_keys(registry: str, repository: str | None) -> list[str]:
    # Most specific first: registry/ns/repo, registry/ns, registry (containers-auth.json(5)).
    host = "docker.io" if registry in _DOCKER_HUB_NAMES else registry
    keys: list[str] = []
    if repository:
        parts = repository.split("/")
        for i in range(len(parts), 0, -1):
            keys.append(f"{host}/{'/'.join(parts[:i])}")
    keys.append(host)
    return keys


def load_auth_file(path: Path) -> dict[str, Any] | None:
    """The JSON object of an auth file, None if it does not exist. Raises
    :class:`AuthError` (never quoting the file's content) when it cannot be used."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_AUTH_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthError(f"cannot read auth file {path}: {exc.strerror}") from None
    if len(raw) > MAX_AUTH_FILE_BYTES:
        raise AuthError(f"auth file {path} is larger than {MAX_AUTH_FILE_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        # The parser's message may quote file content, i.e. a secret: keep it out.
        raise AuthError(f"auth file {path} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise AuthError(f"auth file {path} is not a JSON object")
    return obj


def _decode_entry(entry: Any, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(f"{where}: 'auth' is not base64 of user:password") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError(f"{where}: 'auth' is not base64 of user:password")
        return Credentials(user, password, where)
    name = entry.get("username")
    secret = entry.get("password")
    if isinstance(name, str) and name and isinstance(secret, str):
        return Credentials(name, secret, where)
    return None


def _run_helper(helper: str, server: str, env: Mapping[str, str] | None) -> Credentials | None:
    """Ask ``docker-credential-<helper> get`` (the docker-credential-helpers protocol)."""
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT_S,
            check=False,
            env=None if env is None else dict(env),
        )
    except FileNotFoundError:
        raise AuthError(f"credential helper {program} not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise AuthError(
            f"credential helper {program} timed out after {HELPER_TIMEOUT_S} s"
        ) from None
    if proc.returncode != 0:
        # The protocol's "not found" answer is a non-zero exit with that message.
        if b"credentials not found" in proc.stdout.lower() + proc.stderr.lower():
            return None
        raise AuthError(f"credential helper {program} failed (exit {proc.returncode})")
    try:
        obj = json.loads(proc.stdout)
        user, secret = obj["Username"], obj["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"credential helper {program} gave malformed output") from None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise AuthError(f"credential helper {program} gave malformed output")
    if not user and not secret:
        return None
    return Credentials(user, secret, program)


def _helper_server_name(registry: str) -> str:
    return DOCKER_HUB_KEY if registry in _DOCKER_HUB_NAMES else registry


def _from_file(
    obj: dict[str, Any],
    path: Path,
    registry: str,
    repository: str | None,
    env: Mapping[str, str] | None,
) -> Credentials | None:
    keys = _lookup_keys(registry, repository)
    helpers = obj.get("credHelpers")
    if isinstance(helpers, dict):
        norm_helpers = {_normalize_key(k): v for k, v in helpers.items() if isinstance(k, str)}
        helper = norm_helpers.get(keys[-1])
        if isinstance(helper, str) and helper:
            return _run_helper(helper, _helper_server_name(registry), env)
    auths = obj.get("auths")
    if isinstance(auths, dict):
        by_key: dict[str, Any] = {}
        for key, entry in auths.items():
            if isinstance(key, str):
                by_key.setdefault(_normalize_key(key), entry)
        for key in keys:
            found = _decode_entry(by_key.get(key), f"{path} ({key})")
            if found is not None:
                return found
    store = obj.get("credsStore")
    if isinstance(store, str) and store:
        return _run_helper(store, _helper_server_name(registry), env)
    return None


def find_credentials(
    registry: str,
    repository: str | None = None,
    *,
    creds: tuple[str, str] | None = None,
    authfile: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials | None:
    """Credentials for ``registry`` (``host[:port]``, ``docker.io`` for Docker Hub).

    Explicit ``creds`` win; then the files of :func:`auth_file_candidates` in order,
    the first with an entry deciding; ``env`` replaces ``os.environ`` for paths and
    helpers. Returns ``None`` when nothing matches. Blocking
    (reads files, may run a credential helper): call it from a thread. Raises
    :class:`AuthError` for an unreadable or malformed file or a failing helper.
    """
    if creds is not None:
        return Credentials(creds[0], creds[1], "explicit")
    for path, _is_docker in auth_file_candidates(authfile, env):
        obj = load_auth_file(path)
        if obj is None:
            if authfile is not None:
                raise AuthError(f"auth file {path} does not exist")
            continue
        found = _from_file(obj, path, registry, repository, env)
        if found is not None:
            log.debug("credentials for %s from %s", registry, found.source)
            return found
    return None


# --- challenges and tokens -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: lower-cased scheme and auth-params
    (lower-cased names, unquoted values)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        """The ``realm`` parameter, or ``""``."""
        return self.params.get("realm", "")


_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _TCHARS:
            self.pos += 1
        return self.text[start : self.pos]

    def token68(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] in "-._~+/"
        ):
            self.pos += 1
        while self.pos < len(self.text) and self.text[self.pos] == "=":
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        self.pos += 1  # opening quote
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            self.pos += 1
            if c == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif c == '"':
                return "".join(out)
            else:
                out.append(c)
        raise ValueError("unterminated quoted string")


def _iter_challenges(text: str) -> Iterator[Challenge]:
    s = _Scanner(text)
    current: Challenge | None = None
    while True:
        s.skip_ws()
        if s.peek() == ",":
            s.pos += 1
            continue
        if not s.peek():
            break
        name = s.token()
        if not name:
            raise ValueError(f"unexpected character {s.peek()!r}")
        s.skip_ws()
        if s.peek() == "=":
            if current is None:
                raise ValueError("auth-param before any auth-scheme")
            s.pos += 1
            s.skip_ws()
            value = s.quoted() if s.peek() == '"' else s.token()
            current.params.setdefault(name.lower(), value)
            continue
        if current is not None:
            yield current
        current = Challenge(name.lower(), {})
        # token68 (e.g. "Negotiate abc+/=="): a lone word that is not "name=value".
        after = s.pos
        t68 = s.token68()
        s.skip_ws()
        if t68 and s.peek() in ("", ","):
            current.params["token68"] = t68
        else:
            s.pos = after
    if current is not None:
        yield current


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges (RFC 7235 section 4.1).

    Handles several challenges in one header and quoted values holding commas
    (``scope="repository:a:pull,push"``). Raises :class:`AuthError` when malformed.
    """
    try:
        return list(_iter_challenges(header))
    except ValueError as exc:
        raise AuthError(f"malformed WWW-Authenticate header from registry: {exc}") from None


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A bearer token and when it stops being valid (``time.monotonic()`` seconds)."""

    token: str = field(repr=False)
    expires_at: float
    lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S

    def __repr__(self) -> str:
        return f"TokenGrant(token=<hidden>, expires_at={self.expires_at:.1f})"

    def expired(self, margin_s: float = 5.0) -> bool:
        """True when the token expires within ``margin_s`` seconds (at most a tenth
        of its lifetime, so that a short-lived token is still used once)."""
        margin = min(margin_s, self.lifetime_s / 10)
        return time.monotonic() + margin >= self.expires_at


def parse_token_response(body: bytes, what: str) -> TokenGrant:
    """Parse a token server's JSON answer (token auth spec "Token Response Fields"):
    ``token`` or ``access_token``, ``expires_in`` seconds (default 60).

    Raises :class:`AuthError` (naming ``what``, never the body) when malformed.
    """
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AuthError(f"{what}: token server answer is not JSON") from None
    if not isinstance(obj, dict):
        raise AuthError(f"{what}: token server answer is not a JSON object")
    token = obj.get("token") or obj.get("access_token")
    if not isinstance(token, str) or not token:
        raise AuthError(f"{what}: token server answer has no token")
    expires_in = obj.get("expires_in")
    lifetime = DEFAULT_TOKEN_LIFETIME_S
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetime = float(expires_in)
    return TokenGrant(token, time.monotonic() + lifetime, lifetime)
