"""Offline remounts: mount, read everything, stop the registry, unmount, mount again
by digest and by tag (the tag falls back to the digest it last resolved to, with one
warning): same tree, cached reads work; uncached reads fail with EIO."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_fixtures import BuiltImage, build_and_push
from mounting import is_mounted, ocifs
from registry_fixtures import Registry
from treecompare import assert_same_tree, snapshot

# Fail fast once the registry is gone: connect errors come at once anyway.
TIMEOUT_ARGS = ("--timeout", "5")


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry this test may stop."""
    reg = Registry(tmp_path / "registry")
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


def _mount(ref: str, mnt: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    mnt.mkdir(exist_ok=True)
    result = ocifs("mount", ref, str(mnt), "--cache-dir", str(cache), *TIMEOUT_ARGS)
    assert result.returncode == 0, result.stderr
    assert is_mounted(mnt)
    return result


def _umount(mnt: Path) -> None:
    if is_mounted(mnt):
        assert ocifs("umount", str(mnt)).returncode == 0
    assert not is_mounted(mnt)


def _some_file(tree: dict[str, object], root: Path) -> Path:
    for rel in sorted(tree):
        path = root / rel.lstrip("/")
        if path.is_file() and not path.is_symlink() and path.stat().st_size > 0:
            return path
    raise AssertionError("no non-empty regular file in the image")


def test_offline_remount_by_digest_and_tag(own_registry: Registry, tmp_path: Path) -> None:
    image: BuiltImage = build_and_push("sample", own_registry, tmp_path / "image")
    oracle = image.oracle  # unpacked while the registry is up
    warm, cold = tmp_path / "warm-cache", tmp_path / "cold-cache"
    mnt = tmp_path / "mnt"

    _mount(image.ref, mnt, cold)  # no file read; the index builds keep the chunks:
    _umount(mnt)
    shutil.rmtree(cold / "chunks")  # drop them, leaving metadata and indexes only
    assert ocifs("cache", "prune", "--cache-dir", str(cold)).returncode == 0
    _mount(image.ref, mnt, warm)
    try:
        assert_same_tree(oracle, snapshot(mnt))  # reads every file
    finally:
        _umount(mnt)

    own_registry.stop()

    result = _mount(image.ref_by_digest, mnt, warm)
    try:
        assert_same_tree(oracle, snapshot(mnt))
    finally:
        _umount(mnt)
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and "registry unreachable" in warnings[0], result.stderr

    result = _mount(image.ref, mnt, warm)
    try:
        assert_same_tree(oracle, snapshot(mnt))
        fsname = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE,FSTYPE", str(mnt)], capture_output=True, text=True
        ).stdout.split()
        assert fsname == [f"ocifs:{image.ref}@{image.digest}", "fuse.ocifs"]
    finally:
        _umount(mnt)
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1, result.stderr
    line = warnings[0]
    assert line.startswith("ocifs: warning: ") and "registry unreachable" in line
    assert f"using {image.digest}, which tag {image.tag} resolved to" in line

    # Metadata and indexes cached, file content not: the tree mounts, reads fail (EIO).
    _mount(image.ref, mnt, cold)
    try:
        listed = {"/"} | {
            "/" + str(Path(d, n).relative_to(mnt))
            for d, dirs, files in os.walk(mnt)
            for n in dirs + files
        }
        assert listed == set(oracle)  # the whole tree, without reading a byte
        victim = _some_file(oracle, mnt)
        fd = os.open(victim, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as failed:
                os.read(fd, 4096)
            assert failed.value.errno == errno.EIO
        finally:
            os.close(fd)
    finally:
        _umount(mnt)


def test_never_cached_tag_fails_offline(own_registry: Registry, tmp_path: Path) -> None:
    image: BuiltImage = build_and_push("sample", own_registry, tmp_path / "image")
    own_registry.stop()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = ocifs("mount", image.ref, str(mnt), "--cache-dir", str(tmp_path / "c"), *TIMEOUT_ARGS)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert not is_mounted(mnt)
