"""``ocifs login`` and ``ocifs logout``: the auth file podman and skopeo share.

The file is the one ``podman login`` writes (:func:`ocifs.auth.primary_auth_file`:
``--authfile``, ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``/run/containers/<uid>/auth.json``), in containers-auth.json(5) format: ``auths``
keyed by ``registry[/repo]``, each ``{"auth": base64("user:password")}``; other
fields in the file are kept. Credentials are checked against the registry's
``/v2/`` before anything is written; the file is replaced atomically (temp file,
fsync, rename) with mode 0600.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ocifs.auth import (
    auth_file_candidates,
    find_credentials,
    load_auth_file,
    normalize_key,
    primary_auth_file,
)
from ocifs.errors import AuthError, BadReferenceError, OcifsError
from ocifs.reference import parse_reference

__all__ = ["login", "logout", "register"]

FILE_MODE = 0o600
DIR_MODE = 0o700
DEFAULT_TIMEOUT_S = 30.0
# The repository named in the token scope of the check; any name will do.
CHECK_REPOSITORY = "ocifs-login-check"


def _registry_key(text: str) -> str:
    """The auth-file key for the user's REGISTRY argument (``host[:port][/repo]``)."""
    text = text.removeprefix("docker://")
    key = normalize_key(text)
    host = key.partition("/")[0]
    if not host or any(c.isspace() for c in key) or "@" in key:
        raise BadReferenceError(f"invalid registry {text!r}: expected HOST[:PORT][/REPO]")
    return key


def _read_auth_file(path: Path) -> dict[str, Any]:
    obj = load_auth_file(path)
    return {} if obj is None else obj


def _write_auth_file(path: Path, obj: dict[str, Any]) -> None:
    """Replace ``path`` by ``obj`` as JSON: temp file (0600) in the same directory,
    fsync, rename, fsync of the directory."""
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    except OSError as exc:
        raise AuthError(f"cannot write auth file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            json.dump(obj, fh, indent="\t")
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise AuthError(f"cannot write auth file {path}: {exc.strerror}") from None
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _update(path: Path, change: Callable[[dict[str, Any]], bool]) -> bool:
    """Read the auth file, let ``change`` edit its ``auths`` map, write it back if
    ``change`` says it changed something; return that."""
    obj = _read_auth_file(path)
    auths = obj.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    if not change(auths):
        return False
    obj["auths"] = auths
    _write_auth_file(path, obj)
    return True


async def _check(key: str, user: str, password: str, insecure: bool, timeout_s: float) -> None:
    from ocifs.sources.registry import RegistrySource

    host, _, repo = key.partition("/")
    ref = parse_reference(f"{host}/{repo or CHECK_REPOSITORY}")
    source = RegistrySource(ref, insecure=insecure, creds=(user, password), timeout_s=timeout_s)
    try:
        await source.ping()
    finally:
        await source.aclose()


def login(
    registry: str,
    user: str,
    password: str,
    *,
    authfile: str | None = None,
    insecure: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Check ``user``/``password`` against ``registry``'s ``/v2/``, then store them in
    the auth file; returns its path. Raises :class:`AuthError` (nothing written)."""
    key = _registry_key(registry)
    if not user:
        raise AuthError("a user name is needed (-u USER)")
    if not password:
        raise AuthError("an empty password is not accepted")
    if ":" in user:
        raise AuthError("a user name cannot contain ':'")
    try:
        trio.run(_check, key, user, password, insecure, timeout_s)
    except AuthError as exc:
        raise AuthError(f"login to {key} failed: {exc}") from None
    path = primary_auth_file(authfile)
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

    def store(auths: dict[str, Any]) -> bool:
        for other in [k for k in auths if k != key and normalize_key(k) == key]:
            del auths[other]  # a legacy spelling of the same key
        auths[key] = {"auth": token}
        return True

    _update(path, store)
    return path


def logout(registry: str | None, *, authfile: str | None = None) -> tuple[Path, list[str]]:
    """Remove the credentials of ``registry`` (every registry's when None) from the
    auth file; returns its path and the keys removed. Raises :class:`AuthError` when
    there were none for ``registry``."""
    path = primary_auth_file(authfile)
    removed: list[str] = []
    key = _registry_key(registry) if registry is not None else None

    def drop(auths: dict[str, Any]) -> bool:
        for k in list(auths):
            if key is None or normalize_key(k) == key:
                del auths[k]
                removed.append(k)
        return bool(removed)

    _update(path, drop)
    if key is not None and not removed:
        elsewhere = ""
        with contextlib.suppress(OcifsError):
            for other, _docker in auth_file_candidates():
                host, _, repo = key.partition("/")
                if other != path and find_credentials(host, repo or None, authfile=other):
                    elsewhere = f" (credentials for it are in {other}, which ocifs does not change)"
                    break
        raise AuthError(f"not logged into {key} in {path}{elsewhere}")
    return path, removed


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        if args.password is not None:
            raise OcifsError("--password and --password-stdin exclude each other")
        text = sys.stdin.read()
        return text.removesuffix("\n").removesuffix("\r")
    if args.password is not None:
        return str(args.password)
    if not sys.stdin.isatty():
        raise OcifsError("no password: use --password-stdin, or run on a terminal")
    return getpass.getpass("Password: ")


def _cmd_login(args: argparse.Namespace) -> int:
    user = args.username
    if user is None:
        if args.password_stdin or not sys.stdin.isatty():
            raise OcifsError("a user name is needed (-u USER)")
        user = input("Username: ").strip()
    password = _read_password(args)
    login(
        args.registry,
        user,
        password,
        authfile=args.authfile,
        insecure=args.insecure,
        timeout_s=args.timeout,
    )
    print("Login Succeeded!")
    return 0


def _cmd_logout(args: argparse.Namespace) -> int:
    if args.all == (args.registry is not None):
        raise OcifsError("give either REGISTRY or --all")
    path, _removed = logout(args.registry, authfile=args.authfile)
    if args.registry is None:
        print(f"Removed login credentials for all registries in {path}")
    else:
        print(f"Removed login credentials for {_registry_key(args.registry)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``login`` and ``logout`` commands."""
    p = sub.add_parser("login", help="store registry credentials (podman's auth file)")
    p.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT][/REPO]")
    p.add_argument("-u", "--username", metavar="USER")
    p.add_argument(
        "-p", "--password", metavar="PASS", help="password (visible to ps: prefer the others)"
    )
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--authfile", metavar="FILE", help="auth file to write")
    p.add_argument("--insecure", action="store_true", help="allow plain HTTP")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (30)")
    p.set_defaults(func=_cmd_login)

    p = sub.add_parser("logout", help="remove stored registry credentials")
    p.add_argument("registry", metavar="REGISTRY", nargs="?", help="HOST[:PORT][/REPO]")
    p.add_argument("-a", "--all", action="store_true", help="remove the credentials of all")
    p.add_argument("--authfile", metavar="FILE", help="auth file to change")
    p.set_defaults(func=_cmd_logout)
