"""containers-registries.conf(5), version 2 (TOML), as skopeo and podman read it:
where to fetch an image from.

- ``[[registry]]`` entries match a reference by ``prefix`` (longest wins; ``*.host``
  matches subdomains); ``location`` replaces the prefix; ``insecure`` allows plain
  HTTP; ``blocked`` refuses the registry; ``[[registry.mirror]]`` entries are tried
  before the origin (``pull-from-mirror``, ``mirror-by-digest-only`` honoured).
- Short names (no registry written, e.g. ``team/app:1``): an ``[aliases]`` entry, else
  each of ``unqualified-search-registries`` in order, else ``docker.io``. Never prompts
  (``short-name-mode`` is read and ignored).
- Files: ``$CONTAINERS_REGISTRIES_CONF`` alone when set; else
  ``~/.config/containers/registries.conf`` (with its ``registries.conf.d``) when it
  exists, else ``/etc/containers/registries.conf`` with
  ``/etc/containers/registries.conf.d/*.conf`` and then the user's drop-ins, in
  name order (containers-registries.conf.d(5)). A later file's fields override.
  Version 1 tables (``[registries.search]``, ``.insecure``, ``.block``) are read too.
"""

from __future__ import annotations

import errno as _errno
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocifs.errors import BadReferenceError, OcifsError
from ocifs.reference import DOCKER_HUB, Reference, names_registry, parse_reference

__all__ = [
    "BlockedRegistryError",
    "Candidate",
    "Endpoint",
    "Mirror",
    "RegistriesConf",
    "RegistriesConfError",
    "RegistryEntry",
    "config_files",
    "load_registries_conf",
    "parse_registries_conf",
]

ENV_VAR = "CONTAINERS_REGISTRIES_CONF"
SYSTEM_FILE = Path("/etc/containers/registries.conf")
PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


class RegistriesConfError(OcifsError):
    """A registries.conf file that cannot be read or is not valid."""

    errno = _errno.EINVAL


class BlockedRegistryError(OcifsError):
    """The reference's registry is ``blocked = true`` in registries.conf."""

    errno = _errno.EACCES


@dataclass(frozen=True, slots=True)
class Mirror:
    """A ``[[registry.mirror]]``: ``location`` replaces the entry's prefix."""

    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """A ``[[registry]]`` table; ``location`` defaults to ``prefix``."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[Mirror, ...] = ()
    mirror_by_digest_only: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place to try: the reference rewritten for it, whether plain HTTP is allowed
    there, and whether it is a mirror (else the origin)."""

    ref: Reference
    insecure: bool = False
    mirror: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    """One fully-qualified name a user's reference may mean, with its endpoints in
    the order to try them (mirrors first, then the origin)."""

    ref: Reference
    endpoints: tuple[Endpoint, ...]


def _prefix_matches(prefix: str, ref: Reference) -> bool:
    if prefix.startswith("*."):
        return ref.host.endswith(prefix[1:])
    text = str(ref)
    if not text.startswith(prefix):
        return False
    # A prefix ends at a component boundary: "a.io/x" matches "a.io/x/y", not "a.io/xy".
    return len(text) == len(prefix) or text[len(prefix)] in "/:@"


def _rewrite(ref: Reference, prefix: str, location: str) -> Reference:
    """``ref`` with ``prefix`` replaced by ``location``; the result is parsed like any
    name (a first component without a dot or port is a Docker Hub path)."""
    if prefix.startswith("*."):
        return ref  # a wildcard entry names hosts; it cannot relocate them
    name = location + ref.name[len(prefix) :]
    suffix = (f":{ref.tag}" if ref.tag is not None else "") + (
        f"@{ref.digest}" if ref.digest is not None else ""
    )
    try:
        return parse_reference(f"docker://{name}{suffix}")
    except BadReferenceError as exc:
        raise RegistriesConfError(
            f"registries.conf: {ref.name} rewritten for {location!r} is not valid: {exc}"
        ) from None


@dataclass(slots=True)
class RegistriesConf:
    """The merged configuration; ``files`` are the paths it came from, in order."""

    search: tuple[str, ...] = ()
    registries: dict[str, RegistryEntry] = field(default_factory=dict)  # by prefix
    aliases: dict[str, str] = field(default_factory=dict)
    short_name_mode: str = ""
    files: tuple[str, ...] = ()

    def entry_for(self, ref: Reference) -> RegistryEntry | None:
        """The ``[[registry]]`` whose prefix matches ``ref`` (the longest), or None."""
        found = [e for p, e in self.registries.items() if _prefix_matches(p, ref)]
        return max(found, key=lambda e: len(e.prefix), default=None)

    def endpoints(self, ref: Reference) -> tuple[Endpoint, ...]:
        """Where to fetch the fully-qualified ``ref``: usable mirrors in order, then the
        origin (prefix rewritten to ``location``). Raises :class:`BlockedRegistryError`."""
        entry = self.entry_for(ref)
        if entry is None:
            return (Endpoint(ref),)
        if entry.blocked:
            where = f" ({', '.join(self.files)})" if self.files else ""
            raise BlockedRegistryError(
                f"{ref}: registry {entry.prefix} is blocked in registries.conf{where}"
            )
        by_digest = ref.digest is not None
        out = []
        if by_digest or not entry.mirror_by_digest_only:
            for m in entry.mirrors:
                if (m.pull_from_mirror == "digest-only" and not by_digest) or (
                    m.pull_from_mirror == "tag-only" and by_digest
                ):
                    continue
                out.append(Endpoint(_rewrite(ref, entry.prefix, m.location), m.insecure, True))
        out.append(Endpoint(_rewrite(ref, entry.prefix, entry.location), entry.insecure))
        return tuple(out)

    def candidates(self, text: str) -> tuple[Candidate, ...]:
        """The fully-qualified names the user's reference ``text`` may mean, in the
        order to try them, each with its endpoints. A name with a registry is itself;
        a short name goes through ``[aliases]``, then the search registries, then
        ``docker.io``. Blocked candidates are left out; if all are,
        :class:`BlockedRegistryError`. Raises :class:`BadReferenceError`."""
        refs = self._qualify(text)
        out: list[Candidate] = []
        blocked: BlockedRegistryError | None = None
        for ref in refs:
            try:
                out.append(Candidate(ref, self.endpoints(ref)))
            except BlockedRegistryError as exc:
                blocked = exc
        if not out:
            assert blocked is not None
            raise blocked
        return tuple(out)

    def _qualify(self, text: str) -> list[Reference]:
        if names_registry(text):
            return [parse_reference(text)]
        parse_reference(text)  # syntax check of the short name itself
        name, at, digest = text.partition("@")
        tag = ""
        if ":" in name:
            name, _, tag = name.rpartition(":")
        suffix = (f":{tag}" if tag else "") + (f"@{digest}" if at else "")
        alias = self.aliases.get(name)
        if alias is not None:
            return [parse_reference(f"docker://{alias}{suffix}")]
        if not self.search:
            return [parse_reference(text)]
        return [parse_reference(f"docker://{registry}/{text}") for registry in self.search]


def config_files(env: Mapping[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """The registries.conf files to read, in order (see the module docstring); only
    existing files, except that ``$CONTAINERS_REGISTRIES_CONF`` is returned as is."""
    env = os.environ if env is None else env
    override = env.get(ENV_VAR)
    if override:
        return [Path(override)]
    home = Path(env.get("HOME") or os.path.expanduser("~")) if home is None else home
    user = home / ".config" / "containers" / "registries.conf"
    user_dropins = _dropins(user.with_name("registries.conf.d"))
    if user.is_file():
        return [user, *user_dropins]
    main = [SYSTEM_FILE] if SYSTEM_FILE.is_file() else []
    return [*main, *_dropins(SYSTEM_FILE.with_name("registries.conf.d")), *user_dropins]


def _dropins(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".conf" and p.is_file())
    except OSError:
        return []


def load_registries_conf(
    env: Mapping[str, str] | None = None, home: Path | None = None
) -> RegistriesConf:
    """Read and merge the files :func:`config_files` lists (blocking file I/O).
    Raises :class:`RegistriesConfError` naming the file on a read or syntax error."""
    conf = RegistriesConf()
    for path in config_files(env, home):
        try:
            text = path.read_text()
        except OSError as exc:
            raise RegistriesConfError(f"cannot read {path}: {exc.strerror}") from None
        parse_registries_conf(text, str(path), conf)
    return conf


def _get(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if value is not None and not isinstance(value, kind):
        raise RegistriesConfError(f"{where}: {key} must be a {kind.__name__}")
    return value


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistriesConfError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def parse_registries_conf(
    text: str, where: str = "registries.conf", into: RegistriesConf | None = None
) -> RegistriesConf:
    """Parse one file's ``text`` and merge it over ``into`` (a later file's fields
    override; ``[[registry]]`` entries by prefix). Raises :class:`RegistriesConfError`."""
    conf = RegistriesConf() if into is None else into
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistriesConfError(f"{where}: invalid TOML: {exc}") from None
    conf.files = (*conf.files, where)
    v1 = doc.get("registries")
    if isinstance(v1, dict):
        _merge_v1(conf, v1, where)
    if "unqualified-search-registries" in doc:
        conf.search = _strings(doc["unqualified-search-registries"], "search registries", where)
    mode = _get(doc, "short-name-mode", str, where)
    if mode is not None:
        conf.short_name_mode = mode
    aliases = _get(doc, "aliases", dict, where) or {}
    for key, value in aliases.items():
        if not isinstance(value, str):
            raise RegistriesConfError(f"{where}: alias {key!r} must be a string")
        conf.aliases[key] = value
    tables = _get(doc, "registry", list, where) or []
    for i, table in enumerate(tables):
        entry = _entry(table, f"{where} [[registry]] #{i + 1}")
        conf.registries[entry.prefix] = entry
    return conf


def _entry(table: Any, where: str) -> RegistryEntry:
    if not isinstance(table, dict):
        raise RegistriesConfError(f"{where}: not a table")
    location = (_get(table, "location", str, where) or "").rstrip("/")
    prefix = (_get(table, "prefix", str, where) or location).rstrip("/")
    if not prefix:
        raise RegistriesConfError(f"{where}: needs a prefix or a location")
    if not location:
        location = prefix
    prefix = _normalise_prefix(prefix)
    if prefix.startswith("*.") and location != prefix:
        location = prefix
    mirrors = []
    for j, m in enumerate(_get(table, "mirror", list, where) or []):
        mwhere = f"{where} mirror #{j + 1}"
        if not isinstance(m, dict) or not _get(m, "location", str, mwhere):
            raise RegistriesConfError(f"{mwhere}: needs a location")
        pull = _get(m, "pull-from-mirror", str, mwhere) or "all"
        if pull not in PULL_FROM_MIRROR:
            raise RegistriesConfError(
                f"{mwhere}: pull-from-mirror must be one of {PULL_FROM_MIRROR}"
            )
        insecure = bool(_get(m, "insecure", bool, mwhere))
        mirrors.append(Mirror(m["location"].rstrip("/"), insecure, pull))
    return RegistryEntry(
        prefix,
        location,
        insecure=bool(_get(table, "insecure", bool, where)),
        blocked=bool(_get(table, "blocked", bool, where)),
        mirrors=tuple(mirrors),
        mirror_by_digest_only=bool(_get(table, "mirror-by-digest-only", bool, where)),
    )


def _normalise_prefix(prefix: str) -> str:
    # References are matched in normalised form (index.docker.io is docker.io).
    host, sep, rest = prefix.partition("/")
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    return host + sep + rest


def _merge_v1(conf: RegistriesConf, tables: dict[str, Any], where: str) -> None:
    for key, flag in (("search", ""), ("insecure", "insecure"), ("block", "blocked")):
        sub = tables.get(key)
        if not isinstance(sub, dict) or "registries" not in sub:
            continue
        hosts = _strings(sub["registries"], f"registries.{key}", where)
        if not flag:
            conf.search = hosts
            continue
        for host in hosts:
            old = conf.registries.get(host) or RegistryEntry(host, host)
            conf.registries[host] = RegistryEntry(
                old.prefix,
                old.location,
                insecure=old.insecure or flag == "insecure",
                blocked=old.blocked or flag == "blocked",
                mirrors=old.mirrors,
                mirror_by_digest_only=old.mirror_by_digest_only,
            )
