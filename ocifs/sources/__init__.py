"""Where blobs come from: a registry, or an OCI image layout (``oci:DIR[:TAG]``).

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


def check_reference(text: str) -> None:
    """Raise :class:`BadReferenceError` unless ``text`` is a reference ocifs reads."""
    if text.startswith("oci:"):
        if not text[len("oci:") :].partition(":")[0]:
            raise BadReferenceError(f"invalid reference {text!r}: oci: needs a directory")
        return
    parse_reference(text)


def open_source(text: str, opts: SourceOptions) -> ImageSource:
    """The source a reference names: ``oci:DIR[:TAG]`` (skopeo's spelling) or a registry
    reference (optionally ``docker://``). Does no I/O. Raises :class:`BadReferenceError`."""
    check_reference(text)
    if text.startswith("oci:"):
        from ocifs.sources.layout import LayoutSource

        path, _, tag = text[len("oci:") :].partition(":")
        return LayoutSource(Path(path), tag)
    from ocifs.sources.registry import RegistrySource

    return RegistrySource(
        parse_reference(text),
        insecure=opts.insecure,
        creds=opts.creds,
        authfile=opts.authfile,
        timeout_s=opts.timeout_s,
    )
