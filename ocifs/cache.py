"""The persistent chunk cache: content-addressed, private (0700), crash-safe, bounded,
and shared by every ocifs process on the host that uses the same directory.

Layout under the cache directory (default ``$XDG_CACHE_HOME/ocifs``)::

    chunks/<algo>/<hex[:2]>/<hex>/<chunk-index>   verified compressed blob chunks
    indexes/<algo>/<hex>.<suffix>                 layer indexes, manifests, configs, by digest
    records/<sha256 of key>.json                  small records: what each tag resolved to
    locks/...                                     lock files (cross-process single-flight)
    tmp/                                          scratch files of index builds
    cache.db                                      sizes and last use of every entry (SQLite)

Every write goes to a temp file in the entry's directory, is fsync'ed, then renamed,
so a crash never leaves a half-written entry under its final name. A chunk read
back is checked against the digest the caller expects (see ``ocifs.layers.blob``),
so a corrupt entry is dropped and refetched, never served.

The size bound covers chunks and indexes. SQLite (WAL mode) keeps the byte count and
last-use time of every entry, so several processes see one total and evict least
recently used entries first; an entry evicted while a read is using it costs that
read nothing (its bytes are in memory) and a later read a refetch.

All methods do blocking file I/O: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock

from ocifs.errors import OcifsError
from ocifs.fileutil import make_dirs, pid_alive, write_atomic

__all__ = ["CacheEntry", "ChunkCache", "default_cache_dir", "default_cache_max"]

DIR_MODE = 0o700
DEFAULT_MAX_BYTES = 10 * 1024**3
DEFAULT_DISK_FRACTION = 0.10
# Last-use times are written in batches: at most this many pending, or this old.
TOUCH_BATCH = 256
TOUCH_FLUSH_S = 5.0
KIND_CHUNK = "chunk"
KIND_INDEX = "index"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ocifs``, else ``~/.cache/ocifs``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ocifs"


def default_cache_max(root: Path) -> int:
    """The default bound in bytes: 10 GiB or 10 % of the cache's disk, whichever is less."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        total = shutil.disk_usage(probe).total
    except OSError:
        return DEFAULT_MAX_BYTES
    return min(DEFAULT_MAX_BYTES, int(total * DEFAULT_DISK_FRACTION))


def _split(digest: str) -> tuple[str, str]:
    algo, _, hexpart = digest.partition(":")
    if not algo or not hexpart or not hexpart.isalnum() or not algo.isalnum():
        raise ValueError(f"malformed digest {digest!r}")
    return algo, hexpart


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What the cache holds for one blob: its chunks and index parts, in bytes,
    and when it was last used (seconds since the epoch)."""

    digest: str
    chunks: int
    chunk_bytes: int
    index_bytes: int
    last_used: float


class ChunkCache:
    """A directory of verified blob chunks and layer indexes (see module docstring).

    ``max_bytes`` bounds chunks + indexes (default :func:`default_cache_max`).
    Raises :class:`OcifsError` when the directory cannot be used.
    """

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes if max_bytes is not None else default_cache_max(root)
        try:
            root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            owner = root.stat().st_uid
            if owner != os.geteuid():
                # Another user's cache could feed us chunks it planted, or read ours.
                raise OcifsError(
                    f"cache directory {root} belongs to uid {owner}, not to this user "
                    f"(uid {os.geteuid()}): refusing to use it"
                )
            os.chmod(root, DIR_MODE)
            fresh = not (root / "cache.db").exists()
            if fresh:
                # SQLite creates its -wal and -shm files with the database's mode.
                os.close(os.open(root / "cache.db", os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(
                root / "cache.db", timeout=60.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (path TEXT PRIMARY KEY, digest TEXT NOT NULL,"
                " kind TEXT NOT NULL, size INTEGER NOT NULL, used REAL NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS entries_used ON entries (used)")
            self._db.execute("CREATE INDEX IF NOT EXISTS entries_digest ON entries (digest)")
            # The running total of entries.size, kept in the same transactions.
            self._db.execute("CREATE TABLE IF NOT EXISTS total (bytes INTEGER NOT NULL)")
            self._db.execute("INSERT INTO total SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM total)")
        except (OSError, sqlite3.Error) as exc:
            raise OcifsError(f"cannot use cache directory {root}: {exc}") from None
        self._lock = threading.Lock()
        # Lookups of this process, for ``ocifs mounts`` (approximate: not locked).
        self.chunk_hits = 0
        self.chunk_misses = 0
        self._touched: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self._remove_stale_temp_files()
        if fresh:
            self.reconcile()

    def close(self) -> None:
        """Write pending last-use times and close the database."""
        with self._lock:
            self._flush_touches()
            self._db.close()

    # -- chunks ---------------------------------------------------------------

    def _chunk_path(self, digest: str, index: int) -> Path:
        algo, hexpart = _split(digest)
        return self.root / "chunks" / algo / hexpart[:2] / hexpart / str(index)

    def get_chunk(self, digest: str, index: int) -> bytes | None:
        """The bytes stored for chunk ``index`` of blob ``digest``, or None if absent."""
        path = self._chunk_path(digest, index)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.chunk_misses += 1
            return None
        self.chunk_hits += 1
        self._touch(path)
        return data

    def put_chunk(self, digest: str, index: int, data: bytes) -> bool:
        """Store chunk ``index`` of blob ``digest`` atomically (temp + rename),
        evicting least recently used entries to stay within the bound. Returns False
        (storing nothing) when the chunk alone is larger than the bound."""
        return self.put_chunks(digest, [(index, data)])

    def put_chunks(self, digest: str, chunks: Iterable[tuple[int, bytes]]) -> bool:
        """Store several chunks of blob ``digest`` in one database transaction.

        Chunk files are not fsync'ed: every read checks a chunk against its digest, so a
        chunk torn by a crash is dropped and refetched then, and bulk fills (a layer's
        whole stream) cost no disk flush per chunk."""
        items = [(self._chunk_path(digest, i), data) for i, data in chunks]
        return self._store_many(items, digest, KIND_CHUNK, durable=False)

    def drop_chunk(self, digest: str, index: int) -> None:
        """Remove a chunk found corrupt; absent is fine."""
        self._remove(self._chunk_path(digest, index))

    def chunk_lock(self, digest: str, index: int) -> filelock.BaseFileLock:
        """The lock that makes one process on the host fetch chunk ``index`` of
        ``digest`` while the others wait for it (cross-process single-flight)."""
        algo, hexpart = _split(digest)
        return self._lock_file(Path(algo) / hexpart[:2] / hexpart / str(index))

    def blob_lock(self, digest: str) -> filelock.BaseFileLock:
        """The lock held while one process builds the index of blob ``digest``."""
        algo, hexpart = _split(digest)
        return self._lock_file(Path(algo) / hexpart[:2] / f"{hexpart}.index")

    def _lock_file(self, rel: Path) -> filelock.BaseFileLock:
        path = self.root / "locks" / rel
        make_dirs(path.parent, DIR_MODE)
        return filelock.FileLock(path, mode=0o600, thread_local=False, is_singleton=False)

    # -- layer indexes --------------------------------------------------------

    def index_path(self, digest: str, suffix: str) -> Path:
        """Where the layer index part ``suffix`` of blob ``digest`` lives."""
        algo, hexpart = _split(digest)
        return self.root / "indexes" / algo / f"{hexpart}.{suffix}"

    def get_index(self, digest: str, suffix: str) -> bytes | None:
        """The stored index part, or None if absent."""
        path = self.index_path(digest, suffix)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        self._touch(path)
        return data

    def put_index(self, digest: str, suffix: str, data: bytes) -> bool:
        """Store an index part atomically; counts against the bound like chunks."""
        return self._store(self.index_path(digest, suffix), digest, KIND_INDEX, data)

    # -- small records (what a tag last resolved to) -----------------------------

    def _record_path(self, key: str) -> Path:
        return self.root / "records" / (hashlib.sha256(key.encode()).hexdigest() + ".json")

    def get_record(self, key: str) -> bytes | None:
        """The small record stored under ``key``, or None. Records are not
        content-addressed and not counted against the bound; :meth:`clear` drops them."""
        try:
            return self._record_path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put_record(self, key: str, data: bytes) -> None:
        """Store a small record atomically (temp + fsync + rename)."""
        self._write_atomic(self._record_path(key), data)

    def record_lock(self, key: str) -> filelock.BaseFileLock:
        """The lock held around a read-modify-write of the record ``key``."""
        return self._lock_file(Path("records") / hashlib.sha256(key.encode()).hexdigest())

    def scratch_dir(self) -> Path:
        """A private directory for temporary files (layer downloads during index builds);
        name them with :meth:`scratch_prefix` so stale ones can be recognised."""
        path = self.root / "tmp"
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        return path

    @staticmethod
    def scratch_prefix(kind: str) -> str:
        """A temp-file prefix naming this process, e.g. ``blob-1234-``."""
        return f"{kind}-{os.getpid()}-"

    # -- accounting -----------------------------------------------------------

    def usage(self) -> int:
        """Bytes held in chunks and indexes, as the database records them."""
        with self._lock:
            row = self._db.execute("SELECT bytes FROM total").fetchone()
        return int(row[0])

    def free_bytes(self) -> int:
        """Bytes that can still be stored before eviction starts."""
        return max(0, self.max_bytes - self.usage())

    def entries(self) -> list[CacheEntry]:
        """Per blob digest: what the cache holds, most recently used first."""
        with self._lock:
            self._flush_touches()
            rows = self._db.execute(
                "SELECT digest, SUM(kind = ?), SUM(CASE WHEN kind = ? THEN size ELSE 0 END),"
                " SUM(CASE WHEN kind = ? THEN size ELSE 0 END), MAX(used)"
                " FROM entries GROUP BY digest ORDER BY MAX(used) DESC",
                (KIND_CHUNK, KIND_CHUNK, KIND_INDEX),
            ).fetchall()
        return [CacheEntry(d, int(n), int(cb), int(ib), float(u)) for d, n, cb, ib, u in rows]

    def prune(self, max_bytes: int | None = None) -> int:
        """Evict least recently used entries until at most ``max_bytes`` (default: the
        bound) are held; returns the bytes freed."""
        with self._lock:
            self._flush_touches()
            return self._evict_to(self.max_bytes if max_bytes is None else max_bytes)

    def clear(self) -> int:
        """Remove every chunk and index; returns the bytes freed."""
        freed = self.prune(0)
        for sub in ("chunks", "indexes", "locks", "records"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        return freed

    def reconcile(self) -> None:
        """Make the database agree with the files: forget rows whose file is gone and
        record files no row knows (after a crash between rename and insert)."""
        now = time.time()
        found: dict[str, tuple[str, str, int]] = {}
        for kind, entry, digest in self._walk_entries():
            with contextlib.suppress(FileNotFoundError):
                found[str(entry)] = (digest, kind, entry.stat().st_size)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                known = {row[0] for row in self._db.execute("SELECT path FROM entries")}
                for gone in known - found.keys():
                    self._db.execute("DELETE FROM entries WHERE path = ?", (gone,))
                for new in found.keys() - known:
                    digest, kind, size = found[new]
                    self._db.execute(
                        "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                        (new, digest, kind, size, now),
                    )
                self._db.execute(
                    "UPDATE total SET bytes = (SELECT COALESCE(SUM(size), 0) FROM entries)"
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- internals ------------------------------------------------------------

    def _walk_entries(self) -> Iterator[tuple[str, Path, str]]:
        for chunk in (self.root / "chunks").glob("*/*/*/*"):
            if chunk.is_file() and not chunk.name.startswith(".tmp-"):
                algo, hexpart = chunk.parts[-4], chunk.parts[-2]
                yield KIND_CHUNK, chunk, f"{algo}:{hexpart}"
        for index in (self.root / "indexes").glob("*/*"):
            if index.is_file() and not index.name.startswith(".tmp-"):
                yield KIND_INDEX, index, f"{index.parts[-2]}:{index.name.split('.')[0]}"

    def _store(self, path: Path, digest: str, kind: str, data: bytes) -> bool:
        return self._store_many([(path, data)], digest, kind, durable=True)

    def _store_many(
        self, items: list[tuple[Path, bytes]], digest: str, kind: str, durable: bool
    ) -> bool:
        if sum(len(data) for _, data in items) > self.max_bytes:
            return False
        for path, data in items:
            write_atomic(
                path, data, prefix=self.scratch_prefix(".tmp"), mode=DIR_MODE, durable=durable
            )
        now = time.time()
        paths = [str(path) for path, _ in items]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._forget(paths)
                self._db.executemany(
                    "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                    [(str(p), digest, kind, len(d), now) for p, d in items],
                )
                added = sum(len(data) for _, data in items)
                self._db.execute("UPDATE total SET bytes = bytes + ?", (added,))
                victims = self._evict_rows(self.max_bytes, keep=paths)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._unlink_all(victims)
        return True

    def _forget(self, paths: list[str]) -> int:
        """Delete the rows of ``paths`` and their bytes from the total (in a transaction)."""
        freed = 0
        for path in paths:
            row = self._db.execute("SELECT size FROM entries WHERE path = ?", (path,)).fetchone()
            if row is not None:
                freed += int(row[0])
                self._db.execute("DELETE FROM entries WHERE path = ?", (path,))
        self._db.execute("UPDATE total SET bytes = bytes - ?", (freed,))
        return freed

    def _evict_rows(self, limit: int, keep: list[str]) -> list[str]:
        """Forget least recently used rows (but ``keep``) until the total is at most
        ``limit`` bytes; return their paths, to unlink once the transaction commits."""
        excess = int(self._db.execute("SELECT bytes FROM total").fetchone()[0]) - limit
        if excess <= 0:
            return []
        kept = set(keep)
        victims: list[str] = []
        for path, size in self._db.execute("SELECT path, size FROM entries ORDER BY used"):
            if path in kept:
                continue
            victims.append(path)
            excess -= size
            if excess <= 0:
                break
        self._forget(victims)
        return victims

    def _evict_to(self, limit: int) -> int:
        before = self.usage_locked()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            victims = self._evict_rows(limit, keep=[])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._unlink_all(victims)
        return before - self.usage_locked()

    def usage_locked(self) -> int:
        """Like :meth:`usage`, for a caller already holding the lock."""
        return int(self._db.execute("SELECT bytes FROM total").fetchone()[0])

    def _remove(self, path: Path) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._forget([str(path)])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._touched.pop(str(path), None)
        self._unlink_all([str(path)])

    @staticmethod
    def _unlink_all(paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _touch(self, path: Path) -> None:
        with self._lock:
            self._touched[str(path)] = time.time()
            if (
                len(self._touched) >= TOUCH_BATCH
                or time.monotonic() - self._last_flush > TOUCH_FLUSH_S
            ):
                self._flush_touches()

    def _flush_touches(self) -> None:
        if self._touched:
            self._db.executemany(
                "UPDATE entries SET used = ? WHERE path = ?",
                [(when, path) for path, when in self._touched.items()],
            )
            self._touched.clear()
        self._last_flush = time.monotonic()

    def _remove_stale_temp_files(self) -> None:
        """Remove temp files left by processes that died (their pid is in the name)."""
        candidates = list((self.root / "tmp").glob("*-*-*"))
        candidates += (self.root / "chunks").glob("*/*/*/.tmp-*")
        candidates += (self.root / "indexes").glob("*/.tmp-*")
        candidates += (self.root / "records").glob(".tmp-*")
        for path in candidates:
            parts = path.name.lstrip(".").split("-")
            if len(parts) < 3 or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid != os.getpid() and not pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _write_atomic(self, path: Path, data: bytes) -> None:
        write_atomic(path, data, prefix=self.scratch_prefix(".tmp"), mode=DIR_MODE)
