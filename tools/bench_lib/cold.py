"""Cold measures (page cache dropped, empty directories): first mount + one small
file (plain gzip, gzip with a published index, eStargz) and ``grep -r`` over the whole
image, ocifs against a full pull + unpack and against ratarmount; run once straight to
the loopback registry and once through the WAN-like proxy. Alternatives are timed in
turn with ocifs, run by run."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from bench_lib.context import Bench, Timer, grep_r, read_all, run
from bench_lib.image import GREP_PATTERN, SMALL_FILE
from bench_lib.rows import Figure, Row, Target, pairwise
from bench_lib.services import Meter

__all__ = ["FORMATS", "Endpoint", "Peaks", "cold_rows", "prepare_variants"]

# Image variants the one-file measures run for, besides plain gzip: "published", the
# same image in its own repository with `ocifs index build --push` done once (so
# the referrers of the plain repository stay empty); "estargz", `ocifs convert`
# of it into the ESTARGZ_TAG of the plain repository.
FORMATS: dict[str, bool] = {"gzip": True, "published": True, "estargz": True}
REPO = "bench/debian"
PUBLISHED_REPO = "bench/debian-indexed"
ESTARGZ_TAG = "esgz"
ESTARGZ_NA = "n/a (eStargz not measured: FORMATS)"
ESTARGZ_GREP_NA = "not measured (eStargz: one-file and bytes rows only)"
ONE_FILE_TARGET = Target("<=", 0.05)
GREP_TARGET = Target("<=", 0.5)


@dataclass
class Endpoint:
    """Where the cold runs fetch from: ``host`` (registry or proxy) and what counts the
    bytes it serves (the registry's log, or the proxy's)."""

    label: str
    host: str
    meter: Meter | None = None

    def ref(self, tag: str = "full", repo: str = REPO) -> str:
        return f"{self.host}/{repo}:{tag}"


@dataclass
class Peaks:
    """Daemon peak RSS seen during the cold grep runs, MiB."""

    ocifs: list[float] = field(default_factory=list)
    ratarmount: list[float] = field(default_factory=list)


def prepare_variants(b: Bench, host: str) -> None:
    """On the registry ``host``: the published-index copy and the eStargz tag of the
    plain image (per FORMATS), each made once; their durations go into the notes."""
    if FORMATS["published"]:
        src, dst = f"{host}/{REPO}:full", f"{host}/{PUBLISHED_REPO}:full"
        skopeo = ["skopeo", "--policy", b.policy, "copy", "--quiet", "--preserve-digests"]
        tls = ["--src-tls-verify=false", "--dest-tls-verify=false"]
        run(*skopeo, *tls, f"docker://{src}", f"docker://{dst}")
        b.say(f"publishing gzip indexes: ocifs index build {dst} --push")
        cache = b.ocifs_cache("cache-publish", False)
        with Timer() as t:
            run(b.ocifs, "index", "build", "--cache-dir", str(cache), dst, "--push")
        b.notes.append(f"`ocifs index build --push` (once, loopback): {t.seconds:.1f} s")
    if FORMATS["estargz"]:
        dst = f"{host}/{REPO}:{ESTARGZ_TAG}"
        b.say(f"converting: ocifs convert {host}/{REPO}:full {dst}")
        cache = b.ocifs_cache("cache-convert", False)
        with Timer() as t:
            run(b.ocifs, "convert", "-q", "--cache-dir", str(cache), f"{host}/{REPO}:full", dst)
        b.notes.append(f"`ocifs convert` to eStargz (once, loopback): {t.seconds:.1f} s")


def _ocifs_cat(b: Bench, ep: Endpoint, ref: str, seeded: bool = False) -> tuple[float, int]:
    """Mount ``ref`` with an empty (or index-only) cache and read one small file:
    seconds and bytes the endpoint served. The first plain run's cache, chunks left
    out, seeds the index-only runs."""
    cache = b.ocifs_cache("cache-cold", seeded)
    mnt = b.fresh("mnt-cold")
    mark = ep.meter.mark() if ep.meter else 0
    b.cold()
    with Timer() as t, b.ocifs_mount(ref, cache, mnt, "cold-cat") as mp:
        mp.wait()
        read_all(mnt / SMALL_FILE)
    fetched = ep.meter.bytes_since(mark)[1] if ep.meter else 0
    if b.index_seed is None and ref == ep.ref():
        b.seed_indexes(cache)
    return t.seconds, fetched


def _pull_cat(b: Bench, ep: Endpoint) -> tuple[float, int]:
    layout, rootfs = b.fresh("pull"), b.work / "pull-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    mark = ep.meter.mark() if ep.meter else 0
    b.cold()
    with Timer() as t:
        b.pull(ep.ref(), layout)
        b.unpack(layout, rootfs)
        read_all(rootfs / SMALL_FILE)
    fetched = ep.meter.bytes_since(mark)[1] if ep.meter else 0
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
    # (step, what the mount starts from, target of the bytes ratio)
    cases: list[tuple[str, str, Target | None]] = [
        ("ocifs", "gzip, empty cache: index built by streaming", None),
        ("ocifs-indexed", "gzip, seek indexes cached", None),
    ]
    steps: dict[str, Step] = {
        "ocifs": lambda: _ocifs_cat(b, ep, ep.ref()),
        "ocifs-indexed": lambda: _ocifs_cat(b, ep, ep.ref(), seeded=True),
    }
    if FORMATS["published"]:
        cases.append(("ocifs-published", "gzip, published index, empty cache", None))
        steps["ocifs-published"] = lambda: _ocifs_cat(b, ep, ep.ref(repo=PUBLISHED_REPO))
    if FORMATS["estargz"]:
        cases.append(("ocifs-estargz", "eStargz, empty cache", Target("<=", 0.01)))
        steps["ocifs-estargz"] = lambda: _ocifs_cat(b, ep, ep.ref(ESTARGZ_TAG))
    steps["pull"] = lambda: _pull_cat(b, ep)
    res = _series(b, steps, f"{section}: one file")
    secs = {name: [r[0] for r in results] for name, results in res.items()}
    measure = "first mount + one small file"
    for name, label, _ in cases:
        row = _row(section, f"{measure} ({label})", pull, secs[name], secs["pull"], ONE_FILE_TARGET)
        rows.append(row)
    if not FORMATS["estargz"]:
        rows.append(_na(section, f"{measure} (eStargz)", pull))
    if ep.meter is not None:
        whole = Figure([float(r[1]) for r in res["pull"]], "bytes")
        for name, label, target in cases:
            got = Figure([float(r[1]) for r in res[name]], "bytes")
            row = Row(
                f"bytes, {ep.label}",
                f"fetched for {measure} ({label})",
                "full pull of the gzip image (skopeo copy)",
                got,
                whole,
                pairwise(got, whole),
                target,
            )
            rows.append(row)
        if not FORMATS["estargz"]:
            rows.append(
                Row(
                    f"bytes, {ep.label}",
                    f"fetched for {measure} (eStargz)",
                    "full pull (skopeo copy)",
                    skipped=ESTARGZ_NA,
                    target=Target("<=", 0.01),
                )
            )

    steps = {
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
    rows.append(Row(section, f"{g}, eStargz", pull_grep, skipped=ESTARGZ_GREP_NA))
    if len({tuple(h) for h in hits.values()}) != 1:
        first_grep = next(r for r in rows if r.measure.startswith(g))
        first_grep.notes.append(f"matching lines differ between tools: {hits}")
    return rows
