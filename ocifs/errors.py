"""The one exception tree of ocifs.

Every failure a user must read is an :class:`OcifsError`; its ``str()`` is one line.
At the CLI edge it becomes that line on stderr and a non-zero exit; at the FUSE edge
it becomes an errno (:attr:`OcifsError.errno`) and one log line.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "AuthError",
    "BadReferenceError",
    "DigestMismatchError",
    "FetchError",
    "LayerFormatError",
    "ManifestError",
    "MountError",
    "NotFoundError",
    "OcifsError",
    "UnsupportedError",
]


class OcifsError(Exception):
    """Base of all ocifs errors; the message is one line meant for the user."""

    errno: int = _errno.EIO


class BadReferenceError(OcifsError):
    """A malformed image reference (``registry/repo[:tag][@digest]`` or a transport)."""

    errno = _errno.EINVAL


class AuthError(OcifsError):
    """The registry refused our credentials, or none could be found for it."""

    errno = _errno.EACCES


class NotFoundError(OcifsError):
    """The registry or local source has no such repository, tag, manifest or blob."""

    errno = _errno.ENOENT


class FetchError(OcifsError):
    """A network or HTTP failure that outlived the bounded retries."""


class DigestMismatchError(OcifsError):
    """Bytes did not hash to the digest that named them (manifest, blob, chunk)."""


class ManifestError(OcifsError):
    """A manifest, image index or config that is not valid for ocifs to use."""


class LayerFormatError(OcifsError):
    """A layer whose bytes are not a valid (compressed) tar, or an entry that breaks rules."""


class UnsupportedError(OcifsError):
    """Something valid that ocifs cannot read yet (encrypted layers, zstd, foreign URLs)."""

    errno = _errno.ENOTSUP


class MountError(OcifsError):
    """The mount point is missing, not empty, or FUSE refused to mount."""
