"""Cold measures (page cache dropped, empty directories): one small file and
``grep -r`` over the whole image, ocifs against a full pull + unpack and against
ratarmount; run once straight to the loopback registry and once through the
WAN-like proxy. Alternatives are timed in turn with ocifs, run by run."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from bench_lib.context import Bench, Timer, grep_r, read_all
from bench_lib.image import GREP_PATTERN, SMALL_FILE
from bench_lib.rows import Figure, Row, Target, pairwise
from bench_lib.services import Proxy

__all__ = ["FORMATS", "Endpoint", "Peaks", "cold_rows"]

# Layer formats the cold measures run for; eStargz rows print "n/a" until ocifs
# converts images (then build an eStargz copy of the image and set it True).
FORMATS: dict[str, bool] = {"gzip": True, "estargz": False}
ESTARGZ_NA = "n/a (eStargz not yet supported)"
ONE_FILE_TARGET = Target("<=", 0.05)
GREP_TARGET = Target("<=", 0.5)


@dataclass
class Endpoint:
    """Where the cold runs fetch from: ``host`` (registry or proxy), the proxy if any."""

    label: str
    host: str
    proxy: Proxy | None = None

    def ref(self, tag: str = "full") -> str:
        return f"{self.host}/bench/debian:{tag}"


@dataclass
class Peaks:
    """Daemon peak RSS seen during the cold grep runs, MiB."""

    ocifs: list[float] = field(default_factory=list)
    ratarmount: list[float] = field(default_factory=list)


def _ocifs_cat(b: Bench, ep: Endpoint, seeded: bool) -> tuple[float, int]:
    """Mount with an empty (or index-only) cache and read one small file: seconds and
    bytes the proxy served (0 straight to the registry)."""
    cache = b.ocifs_cache("cache-cold", seeded)
    mnt = b.fresh("mnt-cold")
    mark = ep.proxy.mark() if ep.proxy else 0
    b.cold()
    with Timer() as t, b.ocifs_mount(ep.ref(), cache, mnt, "cold-cat") as mp:
        mp.wait()
        read_all(mnt / SMALL_FILE)
    fetched = ep.proxy.bytes_since(mark)[1] if ep.proxy else 0
    if b.index_seed is None:
        b.seed_indexes(cache)
    return t.seconds, fetched


def _pull_cat(b: Bench, ep: Endpoint) -> tuple[float, int]:
    layout, rootfs = b.fresh("pull"), b.work / "pull-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    mark = ep.proxy.mark() if ep.proxy else 0
    b.cold()
    with Timer() as t:
        b.pull(ep.ref(), layout)
        b.unpack(layout, rootfs)
        read_all(rootfs / SMALL_FILE)
    fetched = ep.proxy.bytes_since(mark)[1] if ep.proxy else 0
    shutil.rmtree(rootfs)
    return t.seconds, fetched


def _ocifs_grep_mounted(b: Bench, ep: Endpoint, peaks: Peaks) -> tuple[float, int]:
    cache, mnt = b.ocifs_cache("cache-cold", False), b.fresh("mnt-cold")
    b.cold()
    with Timer() as t, b.ocifs_mount(ep.ref(), cache, mnt, "cold-grep") as mp:
        mp.wait()
        hits = grep_r(GREP_PATTERN, mnt)
        peaks.ocifs.append(mp.peak_rss() / 2**20)
    return t.seconds, hits


def _ocifs_grep_command(b: Bench, ep: Endpoint) -> tuple[float, int]:
    cache = b.ocifs_cache("cache-cold", False)
    b.cold()
    argv = [b.ocifs, "grep", "-r", "--cache-dir", str(cache), GREP_PATTERN, ep.ref()]
    with Timer() as t:
        proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode > 1:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode(errors='replace')[-2000:]}")
    return t.seconds, proc.stdout.count(b"\n")


def _pull_grep(b: Bench, ep: Endpoint) -> tuple[float, int]:
    layout, rootfs = b.fresh("pull"), b.work / "pull-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    b.cold()
    with Timer() as t:
        b.pull(ep.ref(), layout)
        b.unpack(layout, rootfs)
        hits = grep_r(GREP_PATTERN, rootfs)
    shutil.rmtree(rootfs)
    return t.seconds, hits


def _ratarmount_grep(b: Bench, ep: Endpoint, peaks: Peaks) -> tuple[float, int]:
    layout, mnt = b.fresh("pull"), b.fresh("mnt-rat-cold")
    b.cold()
    with Timer() as t:
        b.pull(ep.ref(), layout)
        with b.ratarmount_mount(b.layer_blobs(layout), mnt, "rat-cold") as mp:
            mp.wait()
            hits = grep_r(GREP_PATTERN, mnt)
            peaks.ratarmount.append(mp.peak_rss() / 2**20)
    return t.seconds, hits


Step = Callable[[], tuple[float, int]]


def _series(b: Bench, steps: dict[str, Step], what: str) -> dict[str, list[tuple[float, int]]]:
    """Run every step once per repetition, in turn; returns each one's results."""
    out: dict[str, list[tuple[float, int]]] = {name: [] for name in steps}
    for i in range(b.runs):
        for name, step in steps.items():
            out[name].append(step())
            b.say(f"{what} run {i + 1}/{b.runs}: {name} {out[name][-1][0]:.2f} s")
    return out


def _row(
    section: str,
    measure: str,
    alt_name: str,
    ocifs: list[float],
    alt: list[float],
    target: Target | None,
) -> Row:
    o, a = Figure(ocifs), Figure(alt)
    return Row(section, measure, alt_name, o, a, pairwise(o, a), target)


def _na(section: str, measure: str, alt_name: str) -> Row:
    return Row(section, measure, alt_name, skipped=ESTARGZ_NA)


def cold_rows(b: Bench, ep: Endpoint, peaks: Peaks) -> list[Row]:
    """Every cold row for one endpoint (loopback or WAN model)."""
    section = f"cold, {ep.label}"
    # Seed the index-only cache from this endpoint's first run: the checkout may be
    # newer than an earlier seed's index format.
    b.index_seed = None
    pull = "skopeo copy + umoci raw unpack + cat"
    rows: list[Row] = []
    res = _series(
        b,
        {
            "ocifs": lambda: _ocifs_cat(b, ep, False),
            "ocifs-indexed": lambda: _ocifs_cat(b, ep, True),
            "pull": lambda: _pull_cat(b, ep),
        },
        f"{section}: one file",
    )
    secs = {name: [r[0] for r in results] for name, results in res.items()}
    rows.append(
        _row(
            section,
            "one small file: mount + cat (empty cache)",
            pull,
            secs["ocifs"],
            secs["pull"],
            ONE_FILE_TARGET,
        )
    )
    rows.append(
        _row(
            section,
            "one small file: mount + cat (gzip indexes cached)",
            pull,
            secs["ocifs-indexed"],
            secs["pull"],
            ONE_FILE_TARGET,
        )
    )
    rows.append(_na(section, "one small file, eStargz", pull))
    if ep.proxy is not None:
        image_bytes = [float(r[1]) for r in res["pull"]]
        for name, label in (("ocifs", "empty cache"), ("ocifs-indexed", "gzip index cached")):
            got = Figure([float(r[1]) for r in res[name]], "bytes")
            whole = Figure(image_bytes, "bytes")
            rows.append(
                Row(
                    f"bytes, {ep.label}",
                    f"fetched for one small file ({label})",
                    "full pull (skopeo copy)",
                    got,
                    whole,
                    pairwise(got, whole),
                )
            )
        rows.append(
            Row(
                f"bytes, {ep.label}",
                "fetched for one small file (eStargz)",
                "full pull (skopeo copy)",
                skipped=ESTARGZ_NA,
                target=Target("<=", 0.01),
            )
        )

    steps: dict[str, Step] = {
        "ocifs-mounted": lambda: _ocifs_grep_mounted(b, ep, peaks),
        "pull": lambda: _pull_grep(b, ep),
        "ratarmount": lambda: _ratarmount_grep(b, ep, peaks),
    }
    if b.ocifs_grep:
        steps["ocifs-grep"] = lambda: _ocifs_grep_command(b, ep)
    res = _series(b, steps, f"{section}: grep -r")
    hits = {name: sorted({r[1] for r in results}) for name, results in res.items()}
    secs = {name: [r[0] for r in results] for name, results in res.items()}
    pull_grep = "skopeo copy + umoci raw unpack + grep -r"
    rat = "skopeo copy + ratarmount (layers stacked) + grep -r"
    g = f"grep -r {GREP_PATTERN}"
    rows.append(
        _row(section, f"{g}, mounted", pull_grep, secs["ocifs-mounted"], secs["pull"], GREP_TARGET)
    )
    rows.append(
        _row(section, f"{g}, mounted", rat, secs["ocifs-mounted"], secs["ratarmount"], GREP_TARGET)
    )
    if b.ocifs_grep:
        rows.append(
            _row(
                section,
                f"ocifs grep -r {GREP_PATTERN}",
                pull_grep,
                secs["ocifs-grep"],
                secs["pull"],
                GREP_TARGET,
            )
        )
        rows.append(
            _row(
                section,
                f"ocifs grep -r {GREP_PATTERN}",
                rat,
                secs["ocifs-grep"],
                secs["ratarmount"],
                GREP_TARGET,
            )
        )
    else:
        rows.append(
            Row(section, "ocifs grep -r", pull_grep, skipped="n/a (no `ocifs grep` command yet)")
        )
    rows.append(_na(section, f"{g}, eStargz", pull_grep))
    if len({tuple(h) for h in hits.values()}) != 1:
        first_grep = next(r for r in rows if r.measure.startswith(g))
        first_grep.notes.append(f"matching lines differ between tools: {hits}")
    return rows
