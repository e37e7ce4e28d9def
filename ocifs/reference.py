"""Image references as crane and skopeo spell them: ``[docker://]registry[:port]/repo[:tag][@digest]``.

Follows the grammar of the distribution project's reference package (domain, path
components, tag, digest) and Docker's normalisation: a name without a registry is on
``docker.io``, a single-component Docker Hub name gets ``library/``, and
``index.docker.io`` is ``docker.io``. Registries.conf aliases and search registries are
the CLI's business, not this module's.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ocifs.errors import BadReferenceError

__all__ = ["DOCKER_HUB", "Reference", "is_loopback_host", "names_registry", "parse_reference"]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
MAX_NAME_CHARS = 255
MAX_TAG_CHARS = 128

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?$"
)
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]*$", re.ASCII)
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_DIGEST_HEX_CHARS = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalised image reference.

    ``registry`` is ``host[:port]`` as written (``docker.io`` for Docker Hub),
    ``repository`` the path (``library/alpine``); ``tag`` is ``None`` only when a
    digest is given; ``digest`` is ``algo:hex`` or ``None``.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the manifests endpoint for: the digest if set, else the tag."""
        if self.digest is not None:
            return self.digest
        assert self.tag is not None  # parse_reference guarantees one of the two
        return self.tag

    @property
    def host(self) -> str:
        """The registry's host name or IP address, without port or IPv6 brackets."""
        host, _ = _split_port(self.registry)
        return host

    @property
    def api_host(self) -> str:
        """``host[:port]`` that serves the registry API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def is_loopback(self) -> bool:
        """True for ``localhost``, ``127.0.0.0/8`` and ``::1``."""
        return is_loopback_host(self.host)

    def scheme(self, insecure: bool = False) -> str:
        """``http`` for loopback registries or when ``insecure``, else ``https``."""
        return "http" if insecure or self.is_loopback else "https"

    def api_base(self, insecure: bool = False) -> str:
        """The registry's base URL, e.g. ``https://registry-1.docker.io`` (no ``/v2/``)."""
        return f"{self.scheme(insecure)}://{self.api_host}"

    def with_reference(self, reference: str) -> Reference:
        """The same repository at another tag or ``algo:hex`` digest.

        Raises :class:`BadReferenceError` if ``reference`` is neither.
        """
        if ":" in reference:
            return Reference(self.registry, self.repository, None, _check_digest(reference))
        return Reference(self.registry, self.repository, _check_tag(reference), None)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` (and ``*.localhost``), ``127.0.0.0/8`` and ``::1``;
    ``host`` has no port and no IPv6 brackets."""
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_port(registry: str) -> tuple[str, str]:
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = registry.partition(":")
    return host, port


def _bad(text: str, why: str) -> BadReferenceError:
    return BadReferenceError(f"invalid image reference {text!r}: {why}")


def _check_tag(tag: str, text: str | None = None) -> str:
    shown = tag if text is None else text
    if not tag:
        raise _bad(shown, "empty tag")
    if len(tag) > MAX_TAG_CHARS:
        raise _bad(shown, f"tag longer than {MAX_TAG_CHARS} characters")
    if not _TAG_RE.match(tag):
        raise _bad(
            shown, f"tag {tag!r} has characters outside [A-Za-z0-9_.-] or starts with . or -"
        )
    return tag


def _check_digest(digest: str, text: str | None = None) -> str:
    shown = digest if text is None else text
    if not _DIGEST_RE.match(digest):
        raise _bad(shown, f"malformed digest {digest!r}")
    algo, _, hexpart = digest.partition(":")
    want = _DIGEST_HEX_CHARS.get(algo)
    if want is None:
        raise _bad(shown, f"unsupported digest algorithm {algo!r} (sha256 or sha512)")
    if len(hexpart) != want or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise _bad(shown, f"{algo} digest must be {want} lowercase hex characters")
    return digest


def _looks_like_registry(component: str) -> bool:
    # Docker's rule: the first component is a registry when it has a dot or a port,
    # is "localhost", or has uppercase letters (repositories cannot).
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component.startswith("[")
        or component != component.lower()
    )


def names_registry(text: str) -> bool:
    """True when ``text`` says which registry it is on (``host[:port]/repo...``, or any
    ``docker://`` name, which like skopeo means Docker Hub when no registry is given);
    False for a short name such as ``alpine`` or ``team/app:1``, which registries.conf
    may resolve (:mod:`ocifs.registries_conf`). Does not validate ``text``."""
    if text.startswith("docker://"):
        return True
    first, sep, _ = text.partition("@")[0].partition("/")
    return bool(sep) and _looks_like_registry(first)


def parse_reference(text: str) -> Reference:
    """Parse ``[docker://]registry[:port]/repo[:tag][@algo:hex]`` into a :class:`Reference`.

    A name without a registry is on ``docker.io`` (``library/`` added to one-component
    names); the tag defaults to ``latest`` only when no digest is given. Raises
    :class:`BadReferenceError` (one line) on any malformed part.
    """
    if not isinstance(text, str) or not text:
        raise BadReferenceError("invalid image reference '': empty")
    rest = text.removeprefix("docker://")
    if not rest:
        raise _bad(text, "empty name")
    if any(c.isspace() for c in rest):
        raise _bad(text, "contains whitespace")
    if "://" in rest:
        raise _bad(text, "unsupported transport (only docker:// names a registry)")

    name, at, digest = rest.partition("@")
    if at:
        _check_digest(digest, text)
    # A tag's colon comes after the last slash; a colon before it is a registry port.
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag: str | None = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        _check_tag(tag, text)

    first, sep, remainder = name.partition("/")
    if sep and _looks_like_registry(first):
        registry, path = first, remainder
        if not _DOMAIN_RE.match(registry):
            raise _bad(text, f"malformed registry host {registry!r}")
        host, port = _split_port(registry)
        if port and not 0 < int(port) < 65536:
            raise _bad(text, f"port {port} out of range")
        if host.lower() in ("index.docker.io", "registry-1.docker.io"):
            registry = DOCKER_HUB
    else:
        registry, path = DOCKER_HUB, name
    if not path:
        raise _bad(text, "empty repository")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"

    for component in path.split("/"):
        if not component:
            raise _bad(text, "empty path component")
        if component != component.lower():
            raise _bad(text, "repository name must be lowercase")
        if not _PATH_COMPONENT_RE.match(component):
            raise _bad(text, f"invalid repository component {component!r}")
    if len(registry) + 1 + len(path) > MAX_NAME_CHARS:
        raise _bad(text, f"name longer than {MAX_NAME_CHARS} characters")

    if tag is None and not at:
        tag = "latest"
    return Reference(registry, path, tag, digest if at else None)
