"""``ocifs mounts``: this user's active ocifs mounts.

The kernel's mount table (``/proc/self/mountinfo``: type ``fuse.ocifs``, source
``ocifs:REF@DIGEST``, super option ``user_id``) says what is mounted and by whom;
each daemon's status file (:mod:`ocifs.status`) adds its pid, the bytes it received
and its chunk-cache hit ratio.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import humanfriendly

from ocifs.fileutil import pid_alive
from ocifs.mount import FSTYPE, unescape_mountinfo
from ocifs.status import MountStatus, read_status_files

__all__ = ["OcifsMount", "list_mounts", "register"]

MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True, slots=True)
class OcifsMount:
    """One ocifs mount of the kernel's table, with its daemon's status if published."""

    mountpoint: str
    reference: str
    digest: str
    uid: int
    status: MountStatus | None

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``ocifs mounts --json`` prints for this mount."""
        st = self.status
        return {
            "mountpoint": self.mountpoint,
            "reference": self.reference,
            "digest": self.digest,
            "pid": st.pid if st else None,
            "bytes_fetched": st.bytes_fetched if st else None,
            "cache_hits": st.cache_hits if st else None,
            "cache_misses": st.cache_misses if st else None,
            "cache_hit_ratio": st.hit_ratio if st else None,
            "started": st.started if st else None,
        }


def list_mounts(uid: int | None = None, mountinfo: Path = MOUNTINFO) -> list[OcifsMount]:
    """The ocifs mounts of user ``uid`` (default: this process's), in table order."""
    uid = os.getuid() if uid is None else uid
    statuses = read_status_files()
    found: list[OcifsMount] = []
    with mountinfo.open("rb") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index(b"-")
            fstype, source, options = fields[sep + 1], fields[sep + 2], fields[sep + 3]
            if os.fsdecode(fstype) != FSTYPE:
                continue
            opts = dict(o.partition("=")[::2] for o in os.fsdecode(options).split(","))
            owner = int(opts.get("user_id") or "-1")
            if owner != uid:
                continue
            point = unescape_mountinfo(fields[4])
            name = unescape_mountinfo(source).removeprefix("ocifs:")
            reference, _, digest = name.rpartition("@")
            if not reference:
                reference, digest = name, ""
            status = statuses.get(point)
            if status is not None and not pid_alive(status.pid):
                status = None
            found.append(OcifsMount(point, reference, digest, owner, status))
    return found


def _ratio(st: MountStatus | None) -> str:
    if st is None or st.hit_ratio is None:
        return "-"
    return f"{100 * st.hit_ratio:.0f}%"


def _cmd_mounts(args: argparse.Namespace) -> int:
    mounts = list_mounts()
    if args.json:
        print(json.dumps([m.to_json() for m in mounts], indent=2))
        return 0
    rows = [("DIRECTORY", "REFERENCE", "PID", "FETCHED", "CACHE HITS")]
    for m in mounts:
        st = m.status
        fetched = humanfriendly.format_size(st.bytes_fetched, binary=True) if st else "-"
        rows.append((m.mountpoint, m.reference, str(st.pid) if st else "-", fetched, _ratio(st)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows if mounts else []:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``mounts`` command."""
    p = sub.add_parser("mounts", help="list this user's active ocifs mounts")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=_cmd_mounts)
