"""The persistent chunk cache: content-addressed, private (0700), crash-safe.

Layout under the cache directory (default ``$XDG_CACHE_HOME/ocifs``)::

    chunks/<algo>/<hex[:2]>/<hex>/<chunk-index>   verified compressed blob chunks
    indexes/<algo>/<hex>.<suffix>                 layer indexes, keyed by blob digest

Every write goes to a temp file in the same directory, is fsync'ed, then renamed,
so a crash never leaves a half-written entry under its final name. A chunk read
back is checked against the digest the caller expects (see ``ocifs.layers.blob``),
so a corrupt entry is dropped and refetched, never served.

All methods do blocking file I/O: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from ocifs.errors import OcifsError

__all__ = ["ChunkCache", "default_cache_dir"]

DIR_MODE = 0o700


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ocifs``, else ``~/.cache/ocifs``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ocifs"


def _split(digest: str) -> tuple[str, str]:
    algo, _, hexpart = digest.partition(":")
    if not algo or not hexpart or not hexpart.isalnum():
        raise ValueError(f"malformed digest {digest!r}")
    return algo, hexpart


class ChunkCache:
    """A directory of verified blob chunks and layer indexes (see module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(root, DIR_MODE)
        except OSError as exc:
            raise OcifsError(f"cannot use cache directory {root}: {exc.strerror}") from None

    # -- chunks ---------------------------------------------------------------

    def _chunk_path(self, digest: str, index: int) -> Path:
        algo, hexpart = _split(digest)
        return self.root / "chunks" / algo / hexpart[:2] / hexpart / str(index)

    def get_chunk(self, digest: str, index: int) -> bytes | None:
        """The bytes stored for chunk ``index`` of blob ``digest``, or None if absent."""
        try:
            return self._chunk_path(digest, index).read_bytes()
        except FileNotFoundError:
            return None

    def put_chunk(self, digest: str, index: int, data: bytes) -> None:
        """Store chunk ``index`` of blob ``digest`` atomically (temp + fsync + rename)."""
        self._write_atomic(self._chunk_path(digest, index), data)

    def drop_chunk(self, digest: str, index: int) -> None:
        """Remove a chunk found corrupt; absent is fine."""
        with contextlib.suppress(FileNotFoundError):
            self._chunk_path(digest, index).unlink()

    # -- layer indexes --------------------------------------------------------

    def index_path(self, digest: str, suffix: str) -> Path:
        """Where the layer index part ``suffix`` of blob ``digest`` lives."""
        algo, hexpart = _split(digest)
        return self.root / "indexes" / algo / f"{hexpart}.{suffix}"

    def get_index(self, digest: str, suffix: str) -> bytes | None:
        """The stored index part, or None if absent."""
        try:
            return self.index_path(digest, suffix).read_bytes()
        except FileNotFoundError:
            return None

    def put_index(self, digest: str, suffix: str, data: bytes) -> None:
        """Store an index part atomically (temp + fsync + rename)."""
        self._write_atomic(self.index_path(digest, suffix), data)

    def scratch_dir(self) -> Path:
        """A private directory for temporary files (layer downloads during index builds)."""
        path = self.root / "tmp"
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        return path

    # -- helpers --------------------------------------------------------------

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
