"""Rootless: an unprivileged user mounts an image through the setuid ``fusermount3``,
reads it, sees owners and modes as in the image (and is refused a root-only file as on
disk), and unmounts; cache and state live under that user's XDG directories.

Set-up as DESIGN.md "Known limits and recipes" describes: a user made for the test
session; a venv from Debian's ``/usr/bin/python3`` (the ``python3`` on PATH may be a
build under ``/root`` that others cannot run) in a world-readable place with ocifs
installed editable from this checkout; ``/dev/fuse`` made 0666 (its stock Debian
mode) while the tests run, restored by the last test session that needed it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock
import pytest
from image_fixtures import BuiltImage

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
DEV_FUSE = Path("/dev/fuse")
SHARED_STATE = Path("/run/ocifs-tests")
RUN_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"),
    reason="needs root, useradd and runuser to create and become an unprivileged user",
)

# Run by the unprivileged user with the venv's python: what each path looks like to
# them. Unreadable content and unlistable directories are recorded as EACCES, so the
# mount and a copy of the oracle on disk can be compared as that user sees them.
SNAPSHOT_SCRIPT = r"""
import hashlib, json, os, stat, sys

def record(path):
    try:
        st = os.lstat(path)
    except PermissionError:
        return "EACCES", []
    rec = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
           "uid": st.st_uid, "gid": st.st_gid}
    children = []
    if stat.S_ISREG(st.st_mode):
        rec.update(size=st.st_size, nlink=st.st_nlink)
        try:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            rec["sha256"] = h.hexdigest()
        except PermissionError:
            rec["sha256"] = "EACCES"
    elif stat.S_ISLNK(st.st_mode):
        rec["target"] = os.readlink(path)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        rec["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    elif stat.S_ISDIR(st.st_mode):
        try:
            children = sorted(os.listdir(path))
        except PermissionError:
            rec["listing"] = "EACCES"
    return rec, children

out = {}
pending = [("/", sys.argv[1])]
while pending:
    rel, path = pending.pop()
    rec, children = record(path)
    if rel == "/" and not children:
        children = sys.argv[2:]  # a root others may enter but not list: names given
    out[rel] = rec
    for name in children:
        pending.append((rel.rstrip("/") + "/" + name, os.path.join(path, name)))
json.dump(out, sys.stdout, sort_keys=True)
"""


@dataclass(frozen=True)
class User:
    """The unprivileged user: name, uid, home, and the venv whose ocifs they run."""

    name: str
    uid: int
    gid: int
    home: Path
    venv: Path

    def env(self) -> dict[str, str]:
        """A login-like environment: HOME, a plain PATH, nothing of root's."""
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }

    def run(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` as the user (runuser), capturing text output."""
        return subprocess.run(
            ["runuser", "-u", self.name, "--", "env", "-i", *_kv(self.env()), *cmd],
            capture_output=True,
            text=True,
            check=check,
            timeout=RUN_TIMEOUT_S,
            cwd="/",
        )

    def ocifs(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the venv's ``ocifs`` as the user."""
        return self.run(str(self.venv / "bin" / "ocifs"), *args)


def _kv(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in env.items()]


def _venv_dir() -> Path:
    key = hashlib.sha256(str(REPO).encode() + (REPO / "pyproject.toml").read_bytes())
    return Path("/var/tmp") / f"ocifs-rootless-venv-{key.hexdigest()[:12]}"


def _make_venv() -> Path:
    """A world-readable venv from Debian's python3 with ocifs installed editable from
    this checkout (made once per pyproject.toml; later runs reuse it)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is missing")
    venv = _venv_dir()
    SHARED_STATE.mkdir(mode=0o755, exist_ok=True)
    with filelock.FileLock(SHARED_STATE / "venv.lock"):
        if (venv / ".ready").exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run(
            [SYSTEM_PYTHON, "-m", "venv", str(venv)], capture_output=True, text=True
        )
        if made.returncode != 0:
            pytest.skip(f"cannot make a venv with {SYSTEM_PYTHON} (python3-venv?): {made.stderr}")
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "-e", str(REPO)],
            check=True,
            capture_output=True,
            timeout=900,
        )
        os.chmod(venv, 0o755)
        (venv / ".ready").write_text("ok\n")
    return venv


@contextlib.contextmanager
def _dev_fuse_open_to_all() -> Iterator[None]:
    """/dev/fuse at 0666 while this session needs it; the last session restores the
    mode it found (sessions register by pid, so parallel runs do not race)."""
    state = SHARED_STATE / "devfuse"
    SHARED_STATE.mkdir(mode=0o755, exist_ok=True)
    lock = filelock.FileLock(SHARED_STATE / "devfuse.lock")
    me = state / str(os.getpid())
    with lock:
        state.mkdir(exist_ok=True)
        saved = state / "mode"
        if not saved.exists():
            saved.write_text(f"{stat.S_IMODE(DEV_FUSE.stat().st_mode):o}\n")
        DEV_FUSE.chmod(0o666)
        me.touch()
    try:
        yield
    finally:
        with lock:
            me.unlink(missing_ok=True)
            alive = []
            for f in state.iterdir():
                if f.name.isdigit():
                    try:
                        os.kill(int(f.name), 0)
                        alive.append(f)
                    except ProcessLookupError:
                        f.unlink(missing_ok=True)
            if not alive:
                DEV_FUSE.chmod(int((state / "mode").read_text(), 8))
                (state / "mode").unlink()


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    """A fresh unprivileged user (removed afterwards) who may use FUSE."""
    venv = _make_venv()
    name = f"ocifsrl{os.getpid()}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        with _dev_fuse_open_to_all():
            yield User(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir), venv)
    finally:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


def _snapshot_as(user: User, root: Path, names: list[str]) -> dict[str, object]:
    """What ``root`` looks like to ``user``; ``names`` are the top-level names, for a
    root directory they may enter but not list."""
    script = user.home / "snapshot.py"
    if not script.exists():
        script.write_text(SNAPSHOT_SCRIPT)
        script.chmod(0o644)
    done = user.run(str(user.venv / "bin" / "python"), str(script), str(root), *names)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_rootless_mount_read_umount(user: User, torture_image: BuiltImage) -> None:
    # The oracle, copied where the user can walk it, with owners and modes kept.
    oracle_copy = user.home / "oracle"
    subprocess.run(["cp", "-a", str(torture_image.oracle_root()), str(oracle_copy)], check=True)
    mnt = user.home / "mnt"
    assert user.run("mkdir", str(mnt)).returncode == 0

    mounted = user.ocifs("mount", torture_image.ref, str(mnt))
    assert mounted.returncode == 0, mounted.stderr
    try:
        # The kernel says the user mounted it (fusermount3 did it for them).
        info = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", str(mnt)],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert info[0] == "fuse.ocifs" and info[1].startswith(f"ocifs:{torture_image.ref}@")
        assert f"user_id={user.uid}" in info[2]

        # The torture image's root is 0751: the user may enter it, not list it.
        names = sorted(os.listdir(oracle_copy))
        seen = _snapshot_as(user, mnt, names)
        expected = _snapshot_as(user, oracle_copy, names)
        assert len(seen) > 50
        diff = [p for p in sorted(seen.keys() | expected.keys()) if seen.get(p) != expected.get(p)]
        assert not diff, [(p, expected.get(p), seen.get(p)) for p in diff[:10]]
        # default_permissions: a root-only file is refused to the user, as on disk.
        refused = [
            p for p, rec in seen.items() if isinstance(rec, dict) and rec.get("sha256") == "EACCES"
        ]
        assert refused, "the torture image has files only root may read"
        cat = user.run("cat", str(mnt / refused[0].lstrip("/")))
        assert cat.returncode != 0 and "Permission denied" in cat.stderr
        readable = [
            p
            for p, rec in seen.items()
            if isinstance(rec, dict) and len(str(rec.get("sha256", ""))) == 64
        ]
        assert readable

        # This user's mounts, as the user sees them (root's listing does not show it).
        listed = json.loads(user.ocifs("mounts", "--json").stdout)
        assert [m["mountpoint"] for m in listed] == [str(mnt)]
        assert listed[0]["digest"] == torture_image.digest and listed[0]["pid"]
        root_listed = subprocess.run(
            [sys.executable, "-m", "ocifs", "mounts", "--json"], capture_output=True, text=True
        )
        assert str(mnt) not in [m["mountpoint"] for m in json.loads(root_listed.stdout)]

        # Cache and state under the user's own XDG directories, private to them.
        cache = user.home / ".cache" / "ocifs"
        st = cache.stat()
        assert st.st_uid == user.uid and stat.S_IMODE(st.st_mode) == 0o700
        state = user.home / ".local" / "state" / "ocifs"
        assert state.stat().st_uid == user.uid
        assert list(state.glob("mount-*.log")) and list((state / "mounts").glob("*.json"))
    finally:
        umounted = user.ocifs("umount", str(mnt))
        if umounted.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert umounted.returncode == 0, umounted.stderr
    assert subprocess.run(["mountpoint", "-q", str(mnt)]).returncode != 0
