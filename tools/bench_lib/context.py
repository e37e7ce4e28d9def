"""What every measure needs: the work directory, the image, the tools' paths, and
the single steps the measures time (mount, pull, unpack, grep, read)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench_lib.image import BenchImage
from bench_lib.services import MountProc, drop_caches

__all__ = ["Bench", "Timer"]

READ_BUFFER_BYTES = 1024 * 1024


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


@dataclass
class Bench:
    """One benchmark run's state; temporary paths live under ``work``."""

    work: Path
    image: BenchImage
    ocifs: str
    ratarmount: str
    policy: str
    runs: int
    log: IO[str]
    stack: ExitStack
    can_drop: bool = True
    ocifs_grep: bool = False
    index_seed: Path | None = None
    notes: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        """A progress line on the log stream."""
        print(f"bench: {text}", file=self.log, flush=True)

    def fresh(self, name: str) -> Path:
        """An empty directory ``work/name`` (removed first when it exists)."""
        path = self.work / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def cold(self) -> None:
        """Drop the page cache before a cold run (remembered when it cannot)."""
        if self.can_drop and not drop_caches():
            self.can_drop = False
            self.notes.append("page cache NOT dropped (not root?): cold figures are warm")

    # -- ocifs --------------------------------------------------------------

    def ocifs_mount(self, ref: str, cache: Path, mnt: Path, name: str) -> MountProc:
        """Start ``ocifs mount -f`` (not waited for); closed by the caller."""
        argv = [self.ocifs, "mount", "-f", "--cache-dir", str(cache), ref, str(mnt)]
        return MountProc(argv, mnt, self.work / f"{name}.log", f"ocifs mount ({name})")

    def ocifs_cache(self, name: str, seeded: bool) -> Path:
        """A fresh cache directory; ``seeded``: holding the layer indexes only."""
        path = self.work / name
        if path.exists():
            shutil.rmtree(path)
        if seeded:
            assert self.index_seed is not None
            shutil.copytree(self.index_seed, path)
        else:
            path.mkdir()
        return path

    def seed_indexes(self, cache: Path) -> None:
        """Keep what ``cache`` holds but blob chunks: the state of a host that has
        (or was handed) the layer indexes and has read nothing yet."""
        seed = self.work / "index-seed"
        if seed.exists():
            shutil.rmtree(seed)
        shutil.copytree(cache, seed, ignore=shutil.ignore_patterns("chunks", "tmp"))
        self.index_seed = seed

    # -- the full-pull alternative -------------------------------------------

    def pull(self, ref: str, dest: Path) -> None:
        """``skopeo copy docker://REF oci:DEST:bench`` (plain HTTP)."""
        run(
            "skopeo",
            "--policy",
            self.policy,
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{dest}:bench",
        )

    def unpack(self, layout: Path, rootfs: Path) -> None:
        """``umoci raw unpack`` of the pulled layout."""
        run("umoci", "raw", "unpack", "--image", f"{layout}:bench", str(rootfs))

    def layer_blobs(self, layout: Path) -> list[str]:
        """The image's layer blob files inside a pulled layout, bottom first."""
        blobs = layout / "blobs"
        return [
            str(blobs / "sha256" / layer.digest.removeprefix("sha256:"))
            for layer in self.image.layers
        ]

    def ratarmount_mount(self, blobs: list[str], mnt: Path, name: str) -> MountProc:
        """``ratarmount -f`` union-mounting the layer blobs (not waited for)."""
        index = self.fresh(f"{name}-index")
        argv = [self.ratarmount, "-f", "--index-folders", str(index), *blobs, str(mnt)]
        return MountProc(argv, mnt, self.work / f"{name}.log", f"ratarmount ({name})")


def run(*argv: str) -> None:
    """Run a command, output discarded; raise with its stderr on failure."""
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err[-2000:]}")


def grep_r(pattern: str, root: Path) -> int:
    """``grep -r PATTERN ROOT``; returns the number of matching lines (GNU grep's
    exit 1, no match, is a count of 0; 2 is an error)."""
    proc = subprocess.run(["grep", "-r", pattern, str(root)], capture_output=True, check=False)
    if proc.returncode > 1:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"grep -r {pattern} {root} failed: {err[-2000:]}")
    return proc.stdout.count(b"\n")


def read_all(path: Path) -> int:
    """Read a file to its end in 1 MiB pieces; returns the byte count."""
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while piece := os.read(fd, READ_BUFFER_BYTES):
            total += len(piece)
    finally:
        os.close(fd)
    return total


def first_byte(path: Path) -> bytes:
    """The first byte of a file (what a user waits for)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1)
    finally:
        os.close(fd)
