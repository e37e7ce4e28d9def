"""Tests of the image-building and tree-comparison helpers themselves (no ocifs code):
images round-trip through a real registry, and umoci's unpack shows each special case
of the torture image as the OCI layer spec says it should be."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from image_catalog import (
    BIG_FILE_BYTES,
    BIG_GID,
    BIG_UID,
    BINARY_XATTR,
    CAPABILITY_XATTR,
    DEEP_DIRS,
    LONG_NAME,
    MANY_FILES,
    SAMPLE_WORD,
    UTF8_NAME,
    big_file_content,
    sample,
)
from image_fixtures import BuiltImage, build_and_push
from imagebuild import skopeo, write_layout
from treecompare import Record, assert_same_tree, diff_trees, snapshot


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def blob_json(layout: Path, digest: str) -> dict:  # type: ignore[type-arg]
    return json.loads(blob(layout, digest))  # type: ignore[no-any-return]


# --- building ---------------------------------------------------------------------


def test_layers_match_digests_and_diff_ids(torture_image: BuiltImage) -> None:
    manifest = blob_json(torture_image.layout, torture_image.digest)
    config = blob_json(torture_image.layout, manifest["config"]["digest"])
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == 4
    assert len([h for h in config["history"] if not h.get("empty_layer")]) == 4
    types = []
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        data = blob(torture_image.layout, desc["digest"])
        assert "sha256:" + sha(data) == desc["digest"] and len(data) == desc["size"]
        tar = gzip.decompress(data) if desc["mediaType"].endswith("+gzip") else data
        assert "sha256:" + sha(tar) == diff_id
        types.append(desc["mediaType"].rpartition(".")[2])
    assert types == ["tar+gzip", "tar+gzip", "tar+gzip", "tar"]


def test_build_is_reproducible(tmp_path: Path) -> None:
    first = write_layout(sample(), tmp_path / "a")
    second = write_layout(sample(), tmp_path / "b", tag="other")
    assert first.digest == second.digest


def test_cli_build_prints_the_digest(tmp_path: Path) -> None:
    script = Path(__file__).with_name("imagebuild.py")
    out = subprocess.run(
        [sys.executable, str(script), "build", "sample", str(tmp_path / "l")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == write_layout(sample(), tmp_path / "again").digest
    index = json.loads((tmp_path / "l" / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"


def test_torture_round_trips_through_registry(torture_image: BuiltImage, tmp_path: Path) -> None:
    args = [
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--preserve-digests",
        "--dest-oci-accept-uncompressed-layers",
    ]
    if torture_image.creds:
        args += ["--src-creds", torture_image.creds]
    skopeo(*args, f"docker://{torture_image.ref}", f"oci:{tmp_path}:back")
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["manifests"][0]["digest"] == torture_image.digest
    ours = sorted(p.name for p in (torture_image.layout / "blobs" / "sha256").iterdir())
    theirs = sorted(p.name for p in (tmp_path / "blobs" / "sha256").iterdir())
    assert theirs == ours
    for name in ours:
        assert sha((tmp_path / "blobs" / "sha256" / name).read_bytes()) == name


def test_push_and_oracle_with_basic_auth(auth_registry: Any, tmp_path: Path) -> None:
    built = build_and_push("multiarch", auth_registry, tmp_path, repo="auth/multi")
    assert built.creds == f"{auth_registry.user}:{auth_registry.password}"
    assert built.oracle_for("linux/arm64/v8")["/etc/arch"].sha256 == sha("arm64\n")


def test_multiarch_index_in_registry(multiarch_image: BuiltImage) -> None:
    inspect = ["inspect", "--raw", "--tls-verify=false"]
    if multiarch_image.creds:
        inspect += ["--creds", multiarch_image.creds]
    raw = skopeo(*inspect, f"docker://{multiarch_image.ref}").encode()
    assert "sha256:" + sha(raw) == multiarch_image.digest
    platforms = {
        "/".join(
            filter(
                None,
                (m["platform"]["os"], m["platform"]["architecture"], m["platform"].get("variant")),
            )
        ): m["digest"]
        for m in json.loads(raw)["manifests"]
    }
    assert platforms == multiarch_image.manifests
    assert set(platforms) == {"linux/amd64", "linux/arm64/v8"}


def test_multiarch_oracles_differ(multiarch_image: BuiltImage) -> None:
    amd = multiarch_image.oracle_for("linux/amd64")
    arm = multiarch_image.oracle_for("linux/arm64/v8")
    assert amd["/etc/arch"].sha256 == sha("amd64\n")
    assert arm["/etc/arch"].sha256 == sha("arm64\n")
    assert "/opt/only-on-arm64" in arm and "/opt/only-on-arm64" not in amd


def test_docker_media_types_push_and_unpack(docker_sample_image: BuiltImage) -> None:
    manifest = blob_json(docker_sample_image.layout, docker_sample_image.digest)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert docker_sample_image.oracle["/etc/motd"].type == "reg"


# --- the oracle on the sample and torture images ----------------------------------


def test_sample_oracle(sample_image: BuiltImage) -> None:
    tree = sample_image.oracle
    root = sample_image.oracle_root()
    assert "/etc/secret.txt" not in tree
    assert (root / "etc/os-release").read_text().startswith('PRETTY_NAME="ocifs demo')
    with_word = sorted(
        p for p, r in tree.items() if r.type == "reg" and SAMPLE_WORD in (root / p[1:]).read_text()
    )
    assert with_word == [
        "/srv/notes/monday.txt",
        "/srv/notes/wednesday.txt",
        "/usr/share/doc/README",
    ]


@pytest.fixture(scope="module")
def torture(torture_image: BuiltImage) -> dict[str, Record]:
    return torture_image.oracle


def test_oracle_whiteouts(torture: dict[str, Record]) -> None:
    for gone in (
        "/wh/gone",
        "/wh/dir",
        "/wh/dir/sub/deep",
        "/wh/redo/old",
        "/wh/same/old",
        "/rootgone",
        "/usr/lib/gone-via-link",
        "/spell/plain",
    ):
        assert gone not in torture, gone
    assert not [p for p in torture if ".wh." in p]
    assert torture["/wh/kept"].type == "reg"
    assert torture["/wh/redo/new"].sha256 == sha("recreated after the whiteout\n")
    same = torture["/wh/same"]
    assert (same.type, same.mode, same.uid) == ("dir", 0o700, 3)
    assert "/wh/same/new" in torture


def test_oracle_opaque_dir(torture: dict[str, Record]) -> None:
    under = sorted(p for p in torture if p.startswith("/opq/"))
    assert under == ["/opq/upper1", "/opq/upperdir", "/opq/upperdir/y"]
    assert torture["/opq"].mode == 0o750


def test_oracle_type_changes(torture: dict[str, Record]) -> None:
    assert torture["/tc/f2d2f"].sha256 == sha("file again in layer 3\n")
    assert "/tc/f2d2f/inner" not in torture
    assert (torture["/tc/d2s"].type, torture["/tc/d2s"].target) == ("symlink", "../etc")
    assert "/tc/d2s/child" not in torture
    assert torture["/tc/s2f"].type == "reg"


def test_oracle_hardlinks(torture: dict[str, Record]) -> None:
    a = torture["/hl/a"]
    assert a.hardlinks == ("/hl/a", "/hl/b", "/hl/c") and a.nlink == 3
    assert torture["/hl/b"] == torture["/hl/c"] == a
    assert (a.mode, a.uid, a.gid) == (0o640, 1000, 1000)
    link = torture["/hl/link-to-lower"]
    assert "/hl/orig" not in torture
    assert (link.nlink, link.hardlinks, link.mode, link.uid, link.gid) == (1, None, 0o600, 7, 8)
    assert link.sha256 == sha("original name whited out in layer 3\n")


def test_oracle_devices(torture: dict[str, Record]) -> None:
    assert (torture["/dev/null"].type, torture["/dev/null"].rdev) == ("char", (1, 3))
    assert torture["/dev/null"].mode == 0o666
    loop = torture["/dev/loop0"]
    assert (loop.type, loop.rdev, loop.mode, loop.gid) == ("block", (7, 0), 0o660, 6)
    assert torture["/dev/bigdev"].rdev == (259, 300_000)
    assert (torture["/dev/pipe"].type, torture["/dev/pipe"].mode) == ("fifo", 0o620)


def test_oracle_xattrs(torture: dict[str, Record]) -> None:
    assert torture["/xattr"].xattrs == (("user.dir", b"on a directory"),)
    assert torture["/xattr/plain"].xattrs == (("user.foo", b"bar"),)
    assert torture["/xattr/cap"].xattrs == (("security.capability", CAPABILITY_XATTR),)
    # An empty PAX value deletes the record: user.empty is not there.
    assert torture["/xattr/binary"].xattrs == (("user.binary", BINARY_XATTR), ("user.two", b"2"))


def test_oracle_modes_and_owners(torture: dict[str, Record]) -> None:
    expect = {
        "/": ("dir", 0o751, 0, 0),
        "/modes/setuid": ("reg", 0o4755, 0, 0),
        "/modes/setgid": ("reg", 0o2711, 0, 50),
        "/modes/all": ("reg", 0o7777, 0, 0),
        "/modes/sticky": ("dir", 0o1777, 0, 0),
        "/modes/setgiddir": ("dir", 0o2775, 0, 100),
        "/modes/zero": ("reg", 0o000, 0, 0),
        "/modes/zerodir": ("dir", 0o000, 0, 0),
        "/modes/bigids": ("reg", 0o644, BIG_UID, BIG_GID),
        "/modes/nobody": ("reg", 0o644, 65534, 65534),
        "/implicit": ("dir", 0o755, 0, 0),
        "/implicit/parent": ("dir", 0o755, 0, 0),
    }
    got = {p: (torture[p].type, torture[p].mode, torture[p].uid, torture[p].gid) for p in expect}
    assert got == expect
    assert torture["/modes/zerodir/inside"].type == "reg"
    assert torture["/etc/empty"].size == 0 and torture["/big/empty"].size == 0


def test_oracle_mtimes(torture_image: BuiltImage) -> None:
    root = torture_image.oracle_root()
    assert os.lstat(root / "modes/mtime").st_mtime_ns == 1_234_567_890 * 10**9
    assert os.lstat(root / "modes/mtime-frac").st_mtime_ns == 1_600_000_000_250_000_000
    # Not checked: dir mtimes, which umoci leaves at the unpack time where a later
    # layer adds children (the root here, whose ./ entry says 1_500_000_000).


def test_oracle_symlinks_and_usrmerge(torture: dict[str, Record]) -> None:
    targets = {
        p: torture[p].target
        for p in ("/links/rel", "/links/abs", "/links/dangling", "/links/dir", "/lib", "/lib64")
    }
    assert targets == {
        "/links/rel": "../etc/os-release",
        "/links/abs": "/etc/os-release",
        "/links/dangling": "/nonexistent/target",
        "/links/dir": "../usr",
        "/lib": "usr/lib",
        "/lib64": "/usr/lib64",
    }
    assert len(torture["/links/long"].target or "") > 100
    # Entries under lib/ and lib64/ went through the lower layer's symlinks.
    assert torture["/usr/lib/x"].sha256 == sha("written through lib -> usr/lib\n")
    assert torture["/usr/lib64/y"].type == "reg"


def test_oracle_names(torture: dict[str, Record]) -> None:
    assert f"/long/{LONG_NAME}" in torture
    longest = max(torture, key=len)
    assert len(longest.encode()) > 255 and longest.endswith(LONG_NAME)
    assert f"/utf8/{UTF8_NAME}" in torture and torture["/utf8/リンク"].target == UTF8_NAME
    deep = "/" + "/".join(f"d{i:02}" for i in range(1, DEEP_DIRS + 1)) + "/leaf"
    assert torture[deep].sha256 == sha("deep\n")
    assert (
        len([p for p in torture if p.startswith("/many/") and torture[p].type == "reg"])
        == MANY_FILES
    )
    assert torture["/spell/dot"].sha256 == sha("v2 of dot\n")
    assert torture["/spell/abs"].sha256 == sha("v2 of abs\n")


def test_oracle_big_file(torture: dict[str, Record]) -> None:
    big = torture["/big/random.bin"]
    assert big.size == BIG_FILE_BYTES and big.sha256 == sha(big_file_content())


# --- snapshot and compare ---------------------------------------------------------


def _make_tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"content")
    os.link(root / "d" / "f", root / "g")
    os.symlink("d/f", root / "s")
    os.symlink("/nowhere", root / "dangling")
    os.mkfifo(root / "p")
    os.setxattr(root / "d" / "f", "user.k", b"v")
    os.chmod(root / "d", 0o2750)


def test_snapshot_records(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    tree = snapshot(tmp_path)
    assert sorted(tree) == ["/", "/d", "/d/f", "/dangling", "/g", "/p", "/s"]
    f = tree["/d/f"]
    assert (f.type, f.size, f.sha256, f.nlink) == ("reg", 7, sha("content"), 2)
    assert f.hardlinks == ("/d/f", "/g") and f.xattrs == (("user.k", b"v"),)
    assert tree["/d"].mode == 0o2750 and tree["/p"].type == "fifo"
    assert tree["/dangling"].target == "/nowhere" and tree["/s"].target == "d/f"
    assert tree["/d/f"].mtime_ns is None and snapshot(tmp_path, mtime=True)["/s"].mtime_ns


def test_snapshot_equals_itself(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    assert_same_tree(snapshot(tmp_path), snapshot(tmp_path))
    # mtime is compared only when both sides recorded it.
    assert_same_tree(snapshot(tmp_path, mtime=True), snapshot(tmp_path))


@pytest.mark.parametrize("change", ["mode", "content", "xattr", "owner", "link", "gone"])
def test_snapshot_detects_changes(tmp_path: Path, change: str) -> None:
    _make_tree(tmp_path)
    before = snapshot(tmp_path)
    f = tmp_path / "d" / "f"
    if change == "mode":
        os.chmod(f, 0o4644)
        want = "differs    /d/f: mode: expected 0644, got 4644"
    elif change == "content":
        f.write_bytes(b"CONTENT")
        want = "differs    /d/f: sha256"
    elif change == "xattr":
        os.setxattr(f, "user.k", b"w")
        want = "differs    /d/f: xattrs"
    elif change == "owner":
        os.lchown(tmp_path / "s", 5, 6)
        want = "differs    /s: uid: expected 0, got 5"
    elif change == "link":
        (tmp_path / "g").unlink()
        (tmp_path / "g").write_bytes(b"content")
        want = "differs    /d/f: hardlinks"
    else:
        (tmp_path / "p").unlink()
        want = "missing    /p: expected fifo"
    lines = diff_trees(before, snapshot(tmp_path))
    assert any(line.startswith(want) for line in lines), lines
    with pytest.raises(AssertionError, match="trees differ"):
        assert_same_tree(before, snapshot(tmp_path))


def test_assert_same_tree_limits_output() -> None:
    expected = {f"/f{i}": Record("reg", 0o644, 0, 0, size=1) for i in range(30)}
    with pytest.raises(AssertionError) as info:
        assert_same_tree(expected, {}, limit=20)
    message = str(info.value)
    assert "trees differ in 30 places" in message and "... and 10 more" in message
    assert message.count("missing") == 20
