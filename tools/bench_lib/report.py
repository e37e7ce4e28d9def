"""Host facts, the printed table, and the JSON file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_lib.image import BenchImage
from bench_lib.rows import Row

__all__ = ["host_facts", "print_table", "write_json"]


def _cmd_version(*argv: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "missing"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def _pkg(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def _zlib_backend() -> str:
    """Which zlib indexed_gzip's extension links (system zlib, zlib-ng, ...)."""
    try:
        import indexed_gzip

        libdir = Path(indexed_gzip.__file__).parent
        ext = next(libdir.glob("indexed_gzip*.so"))
        out = subprocess.run(["ldd", str(ext)], capture_output=True, text=True, check=False)
        for line in out.stdout.splitlines():
            m = re.search(r"(libz\S*)\s+=>\s+(\S+)", line)
            if m:
                return f"{m.group(1)} -> {os.path.realpath(m.group(2))}"
        return "zlib linked statically"
    except (ImportError, StopIteration, OSError):
        return "unknown"


def host_facts(image: BenchImage) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "loadavg_1m": round(os.getloadavg()[0], 1),
        "python": sys.version.split()[0],
        "pyfuse3": _pkg("pyfuse3"),
        "libfuse": _cmd_version("fusermount3", "-V"),
        "indexed_gzip": _pkg("indexed_gzip"),
        "zlib": f"python zlib {zlib.ZLIB_RUNTIME_VERSION}; indexed_gzip: {_zlib_backend()}",
        "ratarmount": _pkg("ratarmount"),
        "skopeo": _cmd_version("skopeo", "--version"),
        "umoci": _cmd_version("umoci", "--version"),
        "image": {
            "layers": [
                {"what": layer.what, "gzip_bytes": layer.size, "tar_bytes": layer.tar_bytes}
                for layer in image.layers
            ],
            "blob_bytes": image.blob_bytes,
            "tar_bytes": image.tar_bytes,
            "entries": image.files,
        },
    }


def _met(row: Row) -> str:
    if row.met is None:
        return ""
    return "yes" if row.met else "NO"


def print_table(rows: list[Row], facts: dict[str, Any], notes: list[str]) -> None:
    """One table: ocifs figure, alternative, its figure, the ratio, the target."""
    header = ("measure", "ocifs", "alternative", "alt", "ocifs/alt", "target", "met")
    lines: list[tuple[str, ...]] = []
    section = ""
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append((f"[{section}]",))
        if row.skipped:
            lines.append((row.measure, row.skipped, row.alt_name, "", "", "", ""))
            continue
        ratio = row.ratio.text() if row.ratio else ""
        target = row.target.text() if row.target else ""
        lines.append(
            (
                row.measure,
                row.ocifs.text() if row.ocifs else "",
                row.alt_name,
                row.alt.text() if row.alt else "",
                ratio,
                target,
                _met(row),
            )
        )
    widths = [
        max(len(line[i]) for line in [header, *lines] if len(line) > i) for i in range(len(header))
    ]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip())
    print()
    print(
        "ratio = ocifs cost / alternative cost (time, bytes, memory; ops/s rows: alt ops / "
        "ocifs ops): below 1 ocifs is better. Figures: median (min-max) of the runs."
    )
    img = facts["image"]
    print(
        f"image: {len(img['layers'])} gzip layers, {img['blob_bytes'] / 1e6:.1f} MB compressed,"
        f" {img['tar_bytes'] / 1e6:.1f} MB of tar, {img['entries']:,} entries"
    )
    print("host: " + ", ".join(f"{k} {v}" for k, v in facts.items() if k != "image"))
    for row in rows:
        for note in row.notes:
            print(f"note ({row.measure}): {note}")
    for note in notes:
        print(f"note: {note}")


def write_json(
    path: Path, rows: list[Row], facts: dict[str, Any], notes: list[str], settings: dict[str, Any]
) -> None:
    """The whole result as JSON at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "host": facts,
        "settings": settings,
        "notes": notes,
        "rows": [row.as_json() for row in rows],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
