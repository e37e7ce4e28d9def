"""The processes a benchmark run starts — registry, throttling proxy, ocifs and
ratarmount mounts — each stopped by the run's ExitStack, whatever happens."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

__all__ = [
    "Meter",
    "MountProc",
    "Proxy",
    "Registry",
    "drop_caches",
    "peak_rss_bytes",
    "unmount",
    "wait_mounted",
]

START_TIMEOUT_S = 20.0
MOUNT_TIMEOUT_S = 300.0
POLL_S = 0.005
TOOLS = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Meter(Protocol):
    """Counts what a server sent: :class:`Registry` (its log) or :class:`Proxy`."""

    def mark(self) -> int: ...

    def bytes_since(self, mark: int) -> tuple[int, int]: ...


def _log_mark(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer at {url}")


class Registry:
    """Debian's ``docker-registry`` on a free loopback port, storage under ``root``;
    its JSON log ("response completed" lines) is counted by :meth:`bytes_since`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = root / "registry.log"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  formatter: json\n"
            "storage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'storage'}\n"
            f"http:\n  addr: {self.host}\n  secret: ocifs-bench\n"
        )
        with self.log_path.open("ab") as err:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        _wait_http(f"http://{self.host}/v2/", self.proc, "docker-registry")

    def mark(self) -> int:
        """A position in the registry's log; pass it to :meth:`bytes_since`."""
        return _log_mark(self.log_path)

    def bytes_since(self, mark: int) -> tuple[int, int]:
        """(responses, body bytes) the registry wrote since ``mark``."""
        time.sleep(0.2)  # the registry logs once the handler returns
        requests = written = 0
        with self.log_path.open("rb") as fh:
            fh.seek(mark)
            for line in fh:
                if b"http.response.written" not in line:
                    continue
                with contextlib.suppress(ValueError):
                    written += int(json.loads(line)["http.response.written"])
                    requests += 1
        return requests, written

    def close(self) -> None:
        """Stop the registry."""
        _stop(self.proc)


class Proxy:
    """``tools/throttle_proxy.py`` in front of ``upstream``; counts bytes per response."""

    def __init__(self, upstream: str, root: Path, delay_ms: float, rate_mbps: float) -> None:
        self.log_path = root / "proxy.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(TOOLS / "throttle_proxy.py"),
                "--upstream",
                upstream,
                "--delay-ms",
                str(delay_ms),
                "--rate-mbps",
                str(rate_mbps),
                "--log",
                str(self.log_path),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "listening":
            _stop(self.proc)
            raise RuntimeError("throttle proxy did not start")
        self.host = line[1]

    def mark(self) -> int:
        """A position in the proxy's log; pass it to :meth:`bytes_since`."""
        return _log_mark(self.log_path)

    def bytes_since(self, mark: int) -> tuple[int, int]:
        """(requests, body bytes) served since ``mark``."""
        time.sleep(0.05)  # the proxy logs after the last byte leaves
        with self.log_path.open("rb") as fh:
            fh.seek(mark)
            records = [json.loads(line) for line in fh if line.strip()]
        return len(records), sum(int(r["bytes"]) for r in records)

    def close(self) -> None:
        """Stop the proxy."""
        _stop(self.proc)


def drop_caches() -> bool:
    """Drop the kernel page cache (root only); False when it cannot."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process (0 when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def wait_mounted(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    """Poll until ``path`` is a mount point; raise if ``proc`` exits first."""
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    while not os.path.ismount(path):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before mounting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not mount {path}")
        time.sleep(POLL_S)


def unmount(path: Path) -> None:
    """Lazy FUSE unmount when mounted; never raises."""
    if os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)


class MountProc:
    """A FUSE daemon run in the foreground (``ocifs mount -f``, ``ratarmount -f``);
    :meth:`close` unmounts, then stops the process."""

    def __init__(self, argv: Sequence[str], mountpoint: Path, log: Path, what: str) -> None:
        self.mountpoint = mountpoint
        self.what = what
        mountpoint.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                list(argv),
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait(self) -> None:
        """Block until the tree is mounted."""
        wait_mounted(self.mountpoint, self.proc, self.what)

    def peak_rss(self) -> int:
        """The daemon's VmHWM so far, bytes."""
        return peak_rss_bytes(self.proc.pid)

    def close(self) -> None:
        """Unmount, then stop the daemon (its process group: SIGTERM, then SIGKILL)."""
        was_mounted = os.path.ismount(self.mountpoint)
        unmount(self.mountpoint)
        try:
            self.proc.wait(timeout=10 if was_mounted else 0.5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            _stop(self.proc)
        unmount(self.mountpoint)  # a daemon stopped while mounting may have mounted

    def __enter__(self) -> MountProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so that every finally block runs."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
