"""Snapshot a directory tree without following symlinks, compare two snapshots, and
unpack an image with skopeo + umoci as the reference ("oracle") tree.

Oracle limits, measured with umoci 0.4.7 as root on ext4 (see also test_images.py):

- mtimes: umoci restores them for files and symlinks (to the ns, PAX fractions
  too), but not reliably for dirs: one whose children a later layer adds or
  removes, one re-added in the layer that whites it out, implicit parents and the
  root get the unpack time. Hence ``snapshot(..., mtime=False)`` by default.
- Implicit parent dirs (no entry in any layer) come out 0755 0:0; the root too,
  unless a layer has a ``./`` entry, whose mode and owner umoci applies.
- An xattr whose PAX value is empty is absent (POSIX pax: an empty value deletes).
- Owners, modes (setuid/setgid/sticky kept after chown), device numbers, fifos,
  hardlinks, ``security.capability`` and ``user.*`` xattrs: kept as in the tar.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from imagebuild import skopeo

__all__ = ["Record", "assert_same_tree", "diff_trees", "oracle_unpack", "snapshot"]

_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Record:
    """What a tree comparison looks at for one path (None where it does not apply)."""

    type: str  # reg, dir, symlink, char, block, fifo, socket
    mode: int  # permission bits, 0o7777
    uid: int
    gid: int
    size: int | None = None  # regular files
    sha256: str | None = None  # regular files
    target: str | None = None  # symlinks
    rdev: tuple[int, int] | None = None  # devices: (major, minor)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    hardlinks: tuple[str, ...] | None = None  # regular files with nlink > 1: the group
    nlink: int | None = None  # regular files
    mtime_ns: int | None = field(default=None)  # only with snapshot(mtime=True)

    def __str__(self) -> str:
        parts = [f"{self.type} {self.mode:04o} {self.uid}:{self.gid}"]
        for f in fields(self)[4:]:
            value = getattr(self, f.name)
            if value not in (None, ()):
                parts.append(f"{f.name}={value!r}")
        return " ".join(parts)


def _type_of(st_mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "reg"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(st_mode):
            return name
    raise ValueError(f"unknown file type {st_mode:o}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _xattrs(path: Path, ignore: Iterable[str]) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
        items = [(n, os.getxattr(path, n, follow_symlinks=False)) for n in names if n not in ignore]
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    return tuple(sorted(items))


def snapshot(
    root: Path, *, mtime: bool = False, ignore_xattrs: Iterable[str] = ()
) -> dict[str, Record]:
    """Walk ``root`` with lstat and return a Record per path ("/" is the root itself,
    others "/a/b"). ``mtime`` adds mtime_ns; ``ignore_xattrs`` names xattrs to skip."""
    ignore = frozenset(ignore_xattrs)
    out: dict[str, Record] = {}
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)
    pending: list[tuple[str, Path]] = [("/", root)]
    while pending:
        rel, path = pending.pop()
        st = os.lstat(path)
        kind = _type_of(st.st_mode)
        rec: dict[str, object] = {
            "type": kind,
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "xattrs": _xattrs(path, ignore),
            "mtime_ns": st.st_mtime_ns if mtime else None,
        }
        if kind == "reg":
            rec.update(size=st.st_size, sha256=_sha256(path), nlink=st.st_nlink)
            if st.st_nlink > 1:
                inodes[(st.st_dev, st.st_ino)].append(rel)
        elif kind == "symlink":
            rec["target"] = os.readlink(path)
        elif kind in ("char", "block"):
            rec["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif kind == "dir":
            with os.scandir(path) as it:
                for d in it:
                    pending.append((f"{rel.rstrip('/')}/{d.name}", Path(d.path)))
        out[rel] = Record(**rec)  # type: ignore[arg-type]
    for group in inodes.values():
        names = tuple(sorted(group))
        for name in names:
            out[name] = replace(out[name], hardlinks=names)
    return dict(sorted(out.items()))


def diff_trees(expected: dict[str, Record], actual: dict[str, Record]) -> list[str]:
    """Return one line per difference, in path order. A field that is None in either
    record (e.g. mtime_ns when one side was snapshotted without it) is not compared."""
    lines: list[str] = []
    for path in sorted(expected.keys() | actual.keys()):
        exp, act = expected.get(path), actual.get(path)
        if act is None:
            lines.append(f"missing    {path}: expected {exp}")
        elif exp is None:
            lines.append(f"unexpected {path}: {act}")
        else:
            for f in fields(Record):
                ev, av = getattr(exp, f.name), getattr(act, f.name)
                if ev != av and not (f.name == "mtime_ns" and None in (ev, av)):
                    fmt = (lambda v: f"{v:04o}") if f.name == "mode" else repr
                    lines.append(f"differs    {path}: {f.name}: expected {fmt(ev)}, got {fmt(av)}")
    return lines


def assert_same_tree(
    expected: dict[str, Record], actual: dict[str, Record], limit: int = 20
) -> None:
    """Fail with a readable list of the first ``limit`` differences, if any."""
    lines = diff_trees(expected, actual)
    if lines:
        shown = "\n  ".join(lines[:limit])
        more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
        raise AssertionError(f"trees differ in {len(lines)} places:\n  {shown}{more}")


def oracle_unpack(
    registry_host: str,
    repo: str,
    tag: str,
    workdir: Path,
    *,
    creds: str | None = None,
    platform: str | None = None,
) -> Path:
    """Pull HOST/REPO:TAG with skopeo into ``workdir/layout`` and unpack it with
    ``umoci raw unpack`` (as root) into ``workdir/rootfs``; return that path.

    ``platform`` ("os/arch[/variant]") picks a manifest of an index; default: the host's.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = workdir / "rootfs"
    if rootfs.exists():
        raise FileExistsError(rootfs)
    args: list[str] = []
    if platform:
        os_, arch, *variant = platform.split("/")
        args += ["--override-os", os_, "--override-arch", arch]
        if variant:
            args += ["--override-variant", variant[0]]
    # --format oci: umoci reads only OCI manifests (a Docker schema2 image is converted).
    args += [
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--format",
        "oci",
        "--dest-oci-accept-uncompressed-layers",
    ]
    if creds:
        args += ["--src-creds", creds]
    skopeo(*args, f"docker://{registry_host}/{repo}:{tag}", f"oci:{workdir / 'layout'}:{tag}")
    proc = subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{workdir / 'layout'}:{tag}", str(rootfs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"umoci raw unpack failed ({proc.returncode}):\n{proc.stderr}")
    return rootfs
