"""Measures on the loopback registry with things already in place: the gzip index
build (first mount of one layer) against ``gzip -dc``, and on long-lived mounts
``find`` and reads of the 64 MiB file against the unpacked tree on disk (and
ratarmount for ``find``)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path

from bench_lib.cold import Endpoint, Peaks
from bench_lib.context import Bench, Timer, read_all
from bench_lib.image import BIG_FILE
from bench_lib.rows import Figure, Row, Target, pairwise

__all__ = ["rss_row", "warm_rows"]

RANDOM_READS = 3000
RANDOM_READ_BYTES = 4096
FIND_RUNS_MIN = 5
INDEX_TARGET = Target("<=", 1.25)
FIND_TARGET = Target("<=", 2.0)
READ_TARGET = Target("<=", 1.2)
RSS_TARGET = Target("<=", 150, on_ocifs=True)


def _index_build(b: Bench, ep: Endpoint) -> Row:
    """First mount of a one-layer image (the biggest Debian layer): the daemon streams
    the layer once and builds its seek index before it mounts."""
    layer = b.image.biggest_debian_layer()
    ocifs: list[float] = []
    gunzip: list[float] = []
    for i in range(b.runs):
        cache, mnt = b.ocifs_cache("cache-index", False), b.fresh("mnt-index")
        with Timer() as t, b.ocifs_mount(ep.ref("onelayer"), cache, mnt, "index") as mp:
            mp.wait()
        ocifs.append(t.seconds)
        with Timer() as t, layer.path.open("rb") as src:
            subprocess.run(["gzip", "-dc"], stdin=src, stdout=subprocess.DEVNULL, check=True)
        gunzip.append(t.seconds)
        b.say(f"index build run {i + 1}/{b.runs}: ocifs {ocifs[-1]:.2f} s, gzip {gunzip[-1]:.2f} s")
    o, a = Figure(ocifs), Figure(gunzip)
    row = Row(
        "first mount, loopback",
        f"mount of a 1-layer image ({layer.size / 1e6:.0f} MB gzip; index build)",
        "gzip -dc layer > /dev/null",
        o,
        a,
        pairwise(o, a),
        INDEX_TARGET,
    )
    row.notes.append("page cache warm for both; ocifs time includes start-up and fetch")
    return row


def _time_find(root: Path) -> float:
    with Timer() as t:
        subprocess.run(["find", str(root)], stdout=subprocess.DEVNULL, check=True)
    return t.seconds


def _random_reads(path: Path) -> float:
    """4 KiB preads at seeded random offsets; returns ops/s."""
    size = path.stat().st_size
    rng = random.Random(4096)
    offsets = [rng.randrange(0, size - RANDOM_READ_BYTES) for _ in range(RANDOM_READS)]
    fd = os.open(path, os.O_RDONLY)
    try:
        with Timer() as t:
            for off in offsets:
                os.pread(fd, RANDOM_READ_BYTES, off)
    finally:
        os.close(fd)
    return RANDOM_READS / t.seconds


def _time_read(path: Path) -> float:
    with Timer() as t:
        read_all(path)
    return t.seconds


def warm_rows(b: Bench, ep: Endpoint) -> list[Row]:
    """Index build, then warm find and reads on mounts set up once."""
    rows = [_index_build(b, ep)]
    section = "warm, loopback"
    with ExitStack() as stack:
        b.say("warm: mounting ocifs and ratarmount, unpacking the image to disk")
        cache, mnt = b.ocifs_cache("cache-warm", False), b.fresh("mnt-warm")
        mp = stack.enter_context(b.ocifs_mount(ep.ref(), cache, mnt, "warm"))
        mp.wait()
        layout, disk = b.fresh("warm-layout"), b.work / "warm-rootfs"
        shutil.rmtree(disk, ignore_errors=True)
        b.pull(ep.ref(), layout)
        b.unpack(layout, disk)
        rat_mnt = b.fresh("mnt-rat-warm")
        rat = stack.enter_context(b.ratarmount_mount(b.layer_blobs(layout), rat_mnt, "rat-warm"))
        rat.wait()
        trees = {"ocifs": mnt, "disk": disk, "ratarmount": rat_mnt}
        for root in trees.values():  # warm-up: dentries, ocifs tree, ratarmount index
            _time_find(root)
        finds: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(max(b.runs, FIND_RUNS_MIN)):
            for name, root in trees.items():
                finds[name].append(_time_find(root))
        o = Figure(finds["ocifs"])
        for alt, label in (
            ("disk", "find on the unpacked tree (disk)"),
            ("ratarmount", "find on ratarmount (layers stacked)"),
        ):
            a = Figure(finds[alt])
            rows.append(
                Row(
                    section,
                    f"find over the tree ({b.image.files:,} entries)",
                    label,
                    o,
                    a,
                    pairwise(o, a),
                    FIND_TARGET if alt == "disk" else None,
                )
            )

        files = {"ocifs": mnt / BIG_FILE, "disk": disk / BIG_FILE}
        for path in files.values():
            read_all(path)  # fills the ocifs cache (and the page cache)
        reread: dict[str, list[float]] = {name: [] for name in files}
        rand: dict[str, list[float]] = {name: [] for name in files}
        seq: dict[str, list[float]] = {name: [] for name in files}
        for _ in range(b.runs):  # page cache kept: no drop until these are done
            for name, path in files.items():
                reread[name].append(_time_read(path))
                rand[name].append(_random_reads(path))
        for _ in range(b.runs):
            for name, path in files.items():
                b.cold()
                seq[name].append(_time_read(path))
        b.say("warm reads done")
        disk_label = "same file on disk"
        for label, figs, unit in (
            ("re-read of the 64 MiB file, warm", reread, "s"),
            ("random 4 KiB reads in the 64 MiB file, warm", rand, "ops/s"),
            ("read of the 64 MiB file, ocifs cache warm, page cache dropped", seq, "s"),
        ):
            o = Figure(figs["ocifs"], unit)  # type: ignore[arg-type]
            a = Figure(figs["disk"], unit)  # type: ignore[arg-type]
            rows.append(Row(section, label, disk_label, o, a, pairwise(o, a), READ_TARGET))
        rows[-1].notes.append("the disk file's page cache is dropped too")
        shutil.rmtree(disk)
    return rows


def rss_row(peaks: Peaks) -> Row:
    """Daemon peak RSS during the cold grep -r runs (ocifs mount -f vs ratarmount -f)."""
    o = Figure(peaks.ocifs or [0.0], "MiB")
    a = Figure(peaks.ratarmount or [0.0], "MiB")
    row = Row(
        "memory",
        "daemon peak RSS (VmHWM) after grep -r of the image",
        "ratarmount peak RSS",
        o,
        a,
        pairwise(o, a),
        RSS_TARGET,
    )
    return row
