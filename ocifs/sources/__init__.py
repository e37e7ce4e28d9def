"""Where blobs come from: a registry (through registries.conf mirrors and search
registries), an OCI image layout (``oci:DIR[:TAG]``), or an archive
(``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:NAME:TAG|:@INDEX]``).

Every source implements :class:`ocifs.sources.base.ImageSource`;
:func:`open_source` picks one from the user's reference text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ocifs.errors import BadReferenceError
from ocifs.reference import parse_reference
from ocifs.sources.base import ImageSource

__all__ = ["SourceOptions", "check_reference", "open_source"]


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """How to reach a registry: plain HTTP allowed (``insecure``), explicit
    credentials (user, password), an auth file, and the network timeout in seconds."""

    insecure: bool = False
    creds: tuple[str, str] | None = None
    authfile: str | None = None
    timeout_s: float = 30.0
    tls_verify: bool = True  # False: HTTPS without certificate checks (--tls-verify=false)
    cert_dir: str | None = None  # CA certificates (*.crt) to trust, as skopeo's --cert-dir


def check_reference(text: str) -> None:
    """Raise :class:`BadReferenceError` unless ``text`` is a reference ocifs reads."""
    if text.startswith("oci:"):
        if not text[len("oci:") :].partition(":")[0]:
            raise BadReferenceError(f"invalid reference {text!r}: oci: needs a directory")
        return
    if text.startswith(("oci-archive:", "docker-archive:")):
        from ocifs.sources.archive import parse_archive_reference

        parse_archive_reference(text)
        return
    parse_reference(text)


def open_source(text: str, opts: SourceOptions) -> ImageSource:
    """The source a reference names, in skopeo's spellings: ``oci:DIR[:TAG]``,
    ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:NAME:TAG|:@INDEX]``, or a
    registry reference (optionally ``docker://``) resolved through registries.conf
    (:mod:`ocifs.registries_conf`, read on first use). Does no I/O. Raises
    :class:`BadReferenceError`."""
    check_reference(text)
    if text.startswith("oci:"):
        from ocifs.sources.layout import LayoutSource

        path, _, tag = text[len("oci:") :].partition(":")
        return LayoutSource(Path(path), tag)
    if text.startswith(("oci-archive:", "docker-archive:")):
        from ocifs.sources.archive import (
            DockerArchiveSource,
            OciArchiveSource,
            parse_archive_reference,
        )

        aref = parse_archive_reference(text)
        if text.startswith("oci-archive:"):
            return OciArchiveSource(aref)
        return DockerArchiveSource(aref)
    from ocifs.registries_conf import Endpoint, load_registries_conf
    from ocifs.sources.mirrors import MirroredSource
    from ocifs.sources.registry import RegistrySource

    def make(endpoint: Endpoint) -> ImageSource:
        return RegistrySource(
            endpoint.ref,
            insecure=opts.insecure or endpoint.insecure,
            creds=opts.creds,
            authfile=opts.authfile,
            timeout_s=opts.timeout_s,
            tls_verify=opts.tls_verify,
            cert_dir=opts.cert_dir,
        )

    return MirroredSource(text, load_registries_conf, make)
