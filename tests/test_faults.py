"""Network faults between a mounted image and its real registry, injected by a loopback
proxy (tests/faultproxy.py): bounded retries, then EIO for the read hit (or success
after a transient fault); the mount stays up and later reads work once the fault
clears. Every byte read is checked against the image's known content: bytes served
wrong must be 0. Also: the registry process stopped and killed under readers, and 100
concurrent readers with the daemon's memory bounded."""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from faultproxy import FaultProxy, blobs
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, file, push_layout, write_layout
from mounting import is_mounted, mounted, ocifs, one_line_error
from registry_fixtures import Registry

READ_PIECE_BYTES = 128 * 1024
TAR_FILES = 24
TAR_FILE_BYTES = 600 * 1024  # > 2 chunks: each file owns at least one chunk
GZIP_FILES = 22
GZIP_FILE_BYTES = 2200 * 1024  # > 2 seek-index spans: each file owns a whole span
TIMEOUT_S = "2"
# "Did not hang": 5 attempts of at most TIMEOUT_S each plus backoff take ~15 s.
READ_BOUND_S = 90.0


def _content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def fault_image_description() -> tuple[Image, dict[str, bytes]]:
    """Two layers of incompressible files: a plain tar layer and a gzip layer."""
    want: dict[str, bytes] = {}
    tar_entries, gz_entries = [], []
    for i in range(TAR_FILES):
        want[f"tar/f{i:03d}"] = _content(i, TAR_FILE_BYTES)
        tar_entries.append(file(f"tar/f{i:03d}", want[f"tar/f{i:03d}"]))
    for i in range(GZIP_FILES):
        want[f"gz/g{i:03d}"] = _content(1000 + i, GZIP_FILE_BYTES)
        gz_entries.append(file(f"gz/g{i:03d}", want[f"gz/g{i:03d}"]))
    image = Image(layers=[Layer(tar_entries, compression="none"), Layer(gz_entries)])
    return image, want


@dataclass
class FaultImage:
    built: BuiltImage
    want: dict[str, bytes]


@pytest.fixture(scope="module")
def fault_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> FaultImage:
    image, want = fault_image_description()
    workdir = tmp_path_factory.mktemp("fault-image")
    layout = write_layout(image, workdir / "layout", "latest")
    push_layout(layout, f"{registry.host}/faults/files:latest")
    built = BuiltImage("faults", image, layout, registry.host, "faults/files", "latest", None,
                       workdir)  # fmt: skip
    return FaultImage(built, want)


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as p:
        yield p


@dataclass
class Tally:
    """What the reads saw: bytes right, bytes wrong (must stay 0), errors by errno."""

    right: int = 0
    wrong: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, right: int, wrong: int, err: int | None) -> None:
        with self.lock:
            self.right += right
            self.wrong += wrong
            if err is not None:
                self.errors[err] = self.errors.get(err, 0) + 1


def read_checked(
    path: Path, want: bytes, tally: Tally, offset: int = 0, size: int | None = None
) -> int | None:
    """Read ``path`` (or ``size`` bytes at ``offset``) in pieces, checking every byte
    against ``want``; return the errno that stopped it, or None. The file's pages are
    dropped from the kernel's cache first, so that the read reaches the daemon."""
    end = len(want) if size is None else min(len(want), offset + size)
    fd = os.open(path, os.O_RDONLY)
    right = wrong = 0
    err = None
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        pos = offset
        while pos < end:
            try:
                piece = os.pread(fd, min(READ_PIECE_BYTES, end - pos), pos)
            except OSError as exc:
                err = exc.errno
                break
            if not piece:
                wrong += end - pos  # a short file is as wrong as wrong bytes
                break
            expected = want[pos : pos + len(piece)]
            if piece == expected:
                right += len(piece)
            else:
                bad = sum(a != b for a, b in zip(piece, expected, strict=False))
                bad += max(0, len(piece) - len(expected))
                wrong += bad
                right += len(piece) - bad
            pos += len(piece)
    finally:
        os.close(fd)
    tally.add(right, wrong, err)
    return err


@dataclass(frozen=True)
class Case:
    mode: str
    params: dict[str, object]
    times: int | None  # None: until cleared (persistent)
    expect: str  # "ok" or "eio"
    # Where the read path differs (chunk runs vs seek-index spans) both layer kinds
    # are tried; a status code's handling is the transport's, the same for both.
    layers: tuple[str, ...] = ("tar/", "gz/")


CASES = [
    Case("delay", {"seconds": 0.5}, None, "ok"),
    Case("hang", {}, None, "eio"),
    Case("reset", {}, 2, "ok"),
    Case("reset", {}, None, "eio"),
    Case("truncate", {}, 2, "ok"),
    Case("truncate", {}, None, "eio"),
    Case("flip", {}, 1, "ok"),
    Case("flip", {}, None, "eio"),
    Case("status", {"status": 500}, 2, "ok"),
    Case("status", {"status": 500}, None, "eio"),
    Case("status", {"status": 502}, None, "eio", ("tar/",)),
    Case("status", {"status": 503}, 3, "ok"),
    Case("status", {"status": 503}, None, "eio", ("gz/",)),
    Case("status", {"status": 429, "retry_after": 1}, 2, "ok"),
    Case("status", {"status": 429, "retry_after": 1}, None, "eio", ("tar/",)),
    Case("no_range", {}, None, "ok"),
    Case("bad_range", {}, 1, "ok"),
    Case("bad_range", {}, None, "eio", ("gz/",)),
]


def _case_id(case: Case) -> str:
    extra = "-".join(str(v) for v in case.params.values())
    times = f"x{case.times}" if case.times else "all"
    return f"{case.mode}{'-' + extra if extra else ''}-{times}"


def prime_index_only(ref: str, workdir: Path, cache: Path) -> None:
    """Build the layer indexes into ``cache`` with one mount, then drop every chunk the
    build kept (and the cache's database, rebuilt from the files on next use), so that
    each read of a later mount goes to the network."""
    with mounted(ref, workdir / "prime-mnt", cache, "--prefetch", "none"):
        pass
    shutil.rmtree(cache / "chunks", ignore_errors=True)
    for db in cache.glob("cache.db*"):
        db.unlink()


@pytest.fixture(scope="module")
def proxied_mount(
    fault_image: FaultImage, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FaultProxy, Path, Path]]:
    """One mount through one proxy for all the read-fault cases (the mount must
    survive them all). Yields the proxy, the mount point and the daemon's log."""
    tmp = tmp_path_factory.mktemp("proxied")
    log = tmp / "daemon.log"
    with FaultProxy(registry.url) as proxy:
        ref = f"{proxy.host}/{fault_image.built.repo}:latest"
        prime_index_only(ref, tmp, tmp / "cache")
        with mounted(ref, tmp / "mnt", tmp / "cache", "--timeout", TIMEOUT_S,
                     "--prefetch", "none", "--log-file", str(log)) as mnt:  # fmt: skip
            yield proxy, mnt, log


_used: set[str] = set()


def _fresh(want: dict[str, bytes], prefix: str) -> str:
    """A file no earlier case has read (its chunks and spans are not cached)."""
    name = next(n for n in sorted(want) if n.startswith(prefix) and n not in _used)
    _used.add(name)
    return name


@pytest.mark.parametrize(
    ("case", "layer"),
    [pytest.param(c, layer, id=f"{_case_id(c)}-{layer[:-1]}") for c in CASES for layer in c.layers],
)
def test_read_fault(
    case: Case, layer: str, proxied_mount: tuple[FaultProxy, Path, Path], fault_image: FaultImage
) -> None:
    proxy, mnt, _ = proxied_mount
    want = fault_image.want
    name = _fresh(want, layer)
    tally = Tally()
    mark = proxy.mark()
    proxy.set(case.mode, times=case.times, **case.params)
    started = time.monotonic()
    try:
        err = read_checked(mnt / name, want[name], tally)
    finally:
        proxy.clear()
    elapsed = time.monotonic() - started
    faulted = sum(1 for s in proxy.since(mark) if s.fault)
    print(f"{_case_id(case)} {layer}: errno={err} {elapsed:.1f}s faulted={faulted} "
          f"right={tally.right} wrong={tally.wrong}")  # fmt: skip
    assert tally.wrong == 0
    assert faulted >= 1, "the fault never hit a request"
    assert elapsed < READ_BOUND_S
    if case.expect == "ok":
        assert err is None, f"expected success after a transient {case.mode}, got errno {err}"
        assert tally.right == len(want[name])
    else:
        assert err == errno.EIO
        # Bounded retries: a handful of requests per chunk run, not a storm.
        assert faulted <= 60, faulted
    # The fault cleared: the same file reads right (a failed read cached nothing).
    assert read_checked(mnt / name, want[name], tally) is None
    assert tally.wrong == 0
    assert is_mounted(mnt)


def test_read_error_is_logged_in_one_line(
    proxied_mount: tuple[FaultProxy, Path, Path], fault_image: FaultImage
) -> None:
    """The daemon's log names the failure of an EIO read (fs.py: "read: <error>"),
    with no traceback."""
    proxy, mnt, log = proxied_mount
    name = _fresh(fault_image.want, "gz/")
    before = log.stat().st_size
    proxy.set("status", status=500)
    try:
        assert read_checked(mnt / name, fault_image.want[name], Tally()) == errno.EIO
    finally:
        proxy.clear()
    assert "Traceback" not in log.read_text()
    with log.open("rb") as fh:
        fh.seek(before)
        text = fh.read().decode()
    failures = [line for line in text.splitlines() if " read: " in line]
    assert failures and all("HTTP 500" in line for line in failures), failures


# --- faults while mounting (index builds stream whole blobs) -------------------------


@pytest.mark.parametrize(
    ("mode", "params", "times", "ok"),
    [
        ("status", {"status": 503}, 2, True),
        ("reset", {}, 2, True),
        ("truncate", {}, 1, True),
        ("no_range", {}, None, True),
        ("flip", {}, None, False),
        ("status", {"status": 500}, None, False),
    ],
)
def test_fault_while_mounting(
    mode: str,
    params: dict[str, object],
    times: int | None,
    ok: bool,
    sample_image: BuiltImage,
    registry: Registry,
    tmp_path: Path,
) -> None:
    with FaultProxy(registry.url) as proxy:
        ref = f"{proxy.host}/{sample_image.repo}:{sample_image.tag}"
        proxy.set(mode, times=times, match=blobs, **params)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        args = ["mount", ref, str(mnt), "--cache-dir", str(tmp_path / "cache"),
                "--timeout", TIMEOUT_S, "--log-file", str(tmp_path / "log")]  # fmt: skip
        result = ocifs(*args)
        try:
            if ok:
                assert result.returncode == 0, result.stderr
                proxy.clear()
                from treecompare import assert_same_tree, snapshot

                assert_same_tree(sample_image.oracle, snapshot(mnt))
            else:
                line = one_line_error(result)
                assert "layer" in line or "blob" in line, line
                assert not is_mounted(mnt)
                # Nothing half-written: no index for the bad blob, no scratch files.
                scratch = tmp_path / "cache" / "tmp"
                assert not scratch.exists() or not any(scratch.iterdir())
                assert not list((tmp_path / "cache").rglob(".tmp-*"))
        finally:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


# --- the registry process stopped, killed and restarted under readers ----------------


class RestartableRegistry(Registry):
    """A private registry that can be restarted on the same port."""

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def restart_same_port(self) -> None:
        proc = self._proc
        if proc is not None:
            proc.wait(timeout=10)
        config = self._write_config()
        with self.log_path.open("ab") as err, (self.root / "access.log").open("ab") as out:
            self._proc = subprocess.Popen(
                ["/usr/bin/docker-registry", "serve", str(config)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        assert self._wait_ready(), "registry did not restart on its port"


def _readers(
    mnt: Path, want: dict[str, bytes], names: list[str], tally: Tally, threads: int
) -> tuple[list[threading.Thread], list[float]]:
    """Threads reading ``names`` (each once, shared queue); returns them and the
    durations of their reads."""
    queue = list(names)
    lock = threading.Lock()
    durations: list[float] = []

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    return
                name = queue.pop()
            started = time.monotonic()
            read_checked(mnt / name, want[name], tally)
            with lock:
                durations.append(time.monotonic() - started)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    return workers, durations


def test_registry_stopped_killed_restarted(fault_image: FaultImage, tmp_path: Path) -> None:
    """SIGSTOP the registry under readers (their requests hang: each read fails within
    the --timeout bound), SIGKILL it while requests are in flight, restart it on the
    same port: every later read succeeds, and no byte read was wrong."""
    reg = RestartableRegistry(tmp_path / "reg")
    (tmp_path / "reg").mkdir()
    reg.start()
    try:
        push_layout(fault_image.built.layout_info, f"{reg.host}/faults/files:latest")
        want = fault_image.want
        tally = Tally()
        ref = f"{reg.host}/faults/files:latest"
        prime_index_only(ref, tmp_path, tmp_path / "cache")
        with mounted(ref, tmp_path / "mnt", tmp_path / "cache", "--timeout", TIMEOUT_S,
                     "--prefetch", "none", "--log-file", str(tmp_path / "log")) as mnt:  # fmt: skip
            names = sorted(want)
            first = names[: len(names) // 2]
            os.kill(reg.pid, signal.SIGSTOP)
            workers, durations = _readers(mnt, want, first, tally, threads=6)
            # Requests are now in flight to a frozen registry: attempts time out.
            time.sleep(5.0)
            os.kill(reg.pid, signal.SIGKILL)
            for w in workers:
                w.join(timeout=240)
                assert not w.is_alive(), "a read hung after the registry died"
            assert tally.wrong == 0
            assert tally.errors.get(errno.EIO, 0) >= 1, tally
            assert set(tally.errors) <= {errno.EIO}, tally
            assert max(durations) < READ_BOUND_S, durations
            failed = dict(tally.errors)

            reg.restart_same_port()
            after = Tally()
            workers, _ = _readers(mnt, want, names, after, threads=6)
            for w in workers:
                w.join(timeout=240)
                assert not w.is_alive()
            print(f"while dead: {failed} right={tally.right}; after restart: {after}")
            assert after.wrong == 0 and not after.errors, after
            assert after.right == sum(len(want[n]) for n in names)
    finally:
        reg.stop()


# --- 100 concurrent readers ----------------------------------------------------------


def _daemon_pid(mnt: Path) -> int:
    """The ocifs daemon serving ``mnt``: the process whose command line names it."""
    target = os.fsencode(str(mnt))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if target in args and any(b"ocifs" in a for a in args):
            return int(proc.name)
    raise AssertionError(f"no daemon serves {mnt}")


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(field_name)


READERS = 100
STRESS_S = 15.0
MAX_DAEMON_HWM_KIB = 600 * 1024


def test_hundred_concurrent_readers(fault_image: FaultImage, tmp_path: Path) -> None:
    """100 threads read random spans of random files for a bounded time, with a cache
    bound far below the image (chunks are evicted and fetched again under the
    readers): no deadlock, every byte right, the daemon's peak RSS bounded."""
    want = fault_image.want
    names = sorted(want)
    tally = Tally()
    with mounted(fault_image.built.ref, tmp_path / "mnt", tmp_path / "cache",
                 "--cache-max", "8M", "--prefetch", "none",
                 "--log-file", str(tmp_path / "log")) as mnt:  # fmt: skip
        pid = _daemon_pid(mnt)
        deadline = time.monotonic() + STRESS_S
        counts = [0] * READERS

        def work(k: int) -> None:
            rnd = random.Random(k)
            while time.monotonic() < deadline:
                name = rnd.choice(names)
                size = len(want[name])
                if rnd.random() < 0.2:
                    read_checked(mnt / name, want[name], tally)
                else:
                    off = rnd.randrange(size)
                    read_checked(mnt / name, want[name], tally, off, rnd.randrange(1, 300_000))
                counts[k] += 1

        workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(READERS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=STRESS_S + 180)
        hung = sum(w.is_alive() for w in workers)
        hwm = _status_kib(pid, "VmHWM")
        rss = _status_kib(pid, "VmRSS")
        print(f"reads={sum(counts)} right={tally.right} wrong={tally.wrong} "
              f"errors={tally.errors} VmHWM={hwm} KiB VmRSS={rss} KiB")  # fmt: skip
        assert hung == 0, f"{hung} readers hung"
        assert tally.wrong == 0
        assert not tally.errors, tally.errors
        assert min(counts) >= 1
        assert hwm < MAX_DAEMON_HWM_KIB, hwm
