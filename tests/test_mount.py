"""End to end: the real CLI mounts images from the real registry through FUSE, and
the mounted tree equals what ``skopeo copy`` + ``umoci raw unpack`` give."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultproxy import FaultProxy, blobs
from image_catalog import SAMPLE_WORD
from image_fixtures import BuiltImage
from mounting import is_mounted, mounted, ocifs
from registry_fixtures import Registry
from treecompare import assert_same_tree, snapshot


def test_torture_image_equals_umoci(torture_image: BuiltImage, tmp_path: Path) -> None:
    with mounted(torture_image.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(torture_image.oracle, snapshot(mnt))


def test_second_mount_uses_cached_indexes(torture_image: BuiltImage, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with mounted(torture_image.ref, tmp_path / "a", cache):
        pass
    assert (cache / "indexes").is_dir()
    assert oct(cache.stat().st_mode & 0o777) == oct(0o700)
    # Mounted by digest this time, from the same cache: the same tree.
    with mounted(torture_image.ref_by_digest, tmp_path / "b", cache) as mnt:
        assert_same_tree(torture_image.oracle, snapshot(mnt))


def test_sample_image_docker_media_types(docker_sample_image: BuiltImage, tmp_path: Path) -> None:
    with mounted(docker_sample_image.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(docker_sample_image.oracle, snapshot(mnt))
        grep = subprocess.run(["grep", "-rl", SAMPLE_WORD, str(mnt)], capture_output=True)
        assert grep.returncode == 0 and grep.stdout


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64/v8"])
def test_multiarch_platform(multiarch_image: BuiltImage, tmp_path: Path, platform: str) -> None:
    args = ("--platform", platform)
    with mounted(multiarch_image.ref, tmp_path / "mnt", tmp_path / "cache", *args) as mnt:
        assert_same_tree(multiarch_image.oracle_for(platform), snapshot(mnt))


def test_umount_command(sample_image: BuiltImage, tmp_path: Path) -> None:
    with mounted(sample_image.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        result = ocifs("umount", str(mnt))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mnt)


def test_sigterm_unmounts(sample_image: BuiltImage, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ocifs", "mount", "-f", sample_image.ref, str(mnt),
             "--cache-dir", str(tmp_path / "cache")],
            stderr=err,
        )  # fmt: skip
    try:
        for _ in range(300):
            if is_mounted(mnt):
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert is_mounted(mnt)
        proc.terminate()
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert not is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_read_only(sample_image: BuiltImage, tmp_path: Path) -> None:
    with mounted(sample_image.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        target = next(p for p in mnt.rglob("*") if p.is_file() and not p.is_symlink())
        with pytest.raises(OSError) as info:
            target.open("ab")
        assert info.value.errno in (errno.EROFS, errno.EACCES)
        with pytest.raises(OSError):
            (mnt / "new-file").write_bytes(b"x")
        assert os.statvfs(mnt).f_files > 0


def test_daemon_gives_up_when_its_starter_dies(
    sample_image: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    """A daemon still opening the image when the `ocifs mount` that started it is killed
    (a timeout, Ctrl-C) stops instead of working on for nobody. The layer streams hang
    behind a fault proxy (nothing real hangs on cue)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with FaultProxy(registry.url) as proxy:
        proxy.set("hang", match=blobs, seconds=120)
        ref = f"{proxy.host}/{sample_image.repo}:{sample_image.tag}"
        starter = subprocess.Popen(
            [sys.executable, "-m", "ocifs", "mount", ref, str(mnt),
             "--cache-dir", str(tmp_path / "cache")],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        daemon = None
        for _ in range(100):
            found = [
                int(p.name)
                for p in Path("/proc").iterdir()
                if p.name.isdigit() and _ppid(p) == starter.pid
            ]
            if found:
                daemon = found[0]
                break
            time.sleep(0.1)
        assert daemon is not None, "no daemon was forked"
        starter.kill()
        starter.wait()
        for _ in range(100):
            if not Path(f"/proc/{daemon}").exists() or _state(daemon) == "Z":
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the daemon kept running after its starter died")
        proxy.clear()
    assert not is_mounted(mnt)


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
