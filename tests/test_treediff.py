"""``ocifs diff``: what it reports between two images agrees with a comparison of
their ``umoci raw unpack`` trees (and with ``diff -r`` on them); identical images
give exit 0 and no output; trouble gives one line and exit 2."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from image_fixtures import BuiltImage
from imagebuild import (
    Image,
    Layer,
    chardev,
    directory,
    file,
    push_layout,
    symlink,
    whiteout,
    write_layout,
)
from mounting import ocifs, one_line_error
from registry_fixtures import Registry
from treecompare import Record

BIG_BYTES = 3 * 1024 * 1024 + 123  # more than two of ocifs's 1 MiB compare chunks


def _big(flip: bool) -> bytes:
    data = bytearray(random.Random(7).randbytes(BIG_BYTES))
    if flip:
        data[-5] ^= 0xFF  # differs only in the last compare chunk
    return bytes(data)


def _base() -> Layer:
    """The layer both images share (same blob: content compared without a read)."""
    return Layer(
        [
            directory("etc"),
            file("etc/a.conf", "alpha=1\n"),
            file("etc/same", "unchanged\n"),
            file("etc/mode", "m\n"),
            file("etc/owner", "o\n"),
            file("etc/xattr", "x\n", xattrs={"user.x": b"1", "user.gone": b"g"}),
            file("etc/gone", "bye\n"),
            directory("bin"),
            file("bin/tool", "#!/bin/sh\n", mode=0o755),
            directory("dev"),
            chardev("dev/c", 1, 3),
            symlink("link", "etc/a.conf"),
            directory("old"),
            file("old/x", "x\n"),
            directory("old/sub"),
            file("old/sub/y", "y\n"),
        ],
        created_by="ADD base /",
    )


def before() -> Image:
    """The first image of the pair."""
    top = Layer(
        [
            directory("data"),
            file("data/big.bin", _big(False)),
            file("data/same-size", "aaaa\n"),
            file("data/identical", "the same bytes in another layer\n"),
        ],
        created_by="ADD data v1",
    )
    return Image([_base(), top])


def after() -> Image:
    """The second: every kind of change ``ocifs diff`` reports."""
    top = Layer(
        [
            directory("data"),
            file("data/big.bin", _big(True)),
            file("data/same-size", "bbbb\n"),
            file("data/identical", "the same bytes in another layer\n", mtime=1),
            whiteout("etc/gone"),
            file("etc/a.conf", "alpha=22\n"),
            file("etc/mode", "m\n", mode=0o755),
            file("etc/owner", "o\n", uid=1000, gid=1001),
            file("etc/xattr", "x\n", xattrs={"user.x": b"2", "user.new": b"n"}),
            symlink("link", "etc/same"),
            chardev("dev/c", 1, 5),
            whiteout("old"),
            directory("new"),
            file("new/file", "new\n"),
            symlink("bin/tool", "/etc/same"),
        ],
        created_by="ADD data v2",
    )
    return Image([_base(), top])


def _push(registry: Registry, workdir: Path, name: str, image: Image) -> BuiltImage:
    layout = write_layout(image, workdir / name / "layout")
    repo = f"test/diff-{name}"
    push_layout(layout, f"{registry.host}/{repo}:latest")
    return BuiltImage(name, image, layout, registry.host, repo, "latest", None, workdir / name)


@pytest.fixture(scope="module")
def pair(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltImage, ...]:
    workdir = tmp_path_factory.mktemp("diff-pair")
    return _push(registry, workdir, "before", before()), _push(registry, workdir, "after", after())


# Record field -> the key ocifs diff reports it under. Hardlink groups and link
# counts are not part of a diff.
_KEYS = {
    "type": "type", "mode": "mode", "uid": "owner", "gid": "owner", "size": "size",
    "sha256": "content", "target": "target", "rdev": "device", "xattrs": "xattrs",
}  # fmt: skip


def expected_changes(old: dict[str, Record], new: dict[str, Record]) -> dict[str, Any]:
    """path -> "A", "D", or the set of keys that changed, from two oracle snapshots."""
    out: dict[str, Any] = {}
    for path in old.keys() | new.keys():
        a, b = old.get(path), new.get(path)
        if a is None or b is None:
            out[path] = "A" if a is None else "D"
            continue
        keys = set()
        for f in fields(Record):
            if f.name in _KEYS and getattr(a, f.name) != getattr(b, f.name):
                keys.add(_KEYS[f.name])
        if a.type != b.type:
            keys -= {"size", "content", "target", "device"}
        if keys:
            out[path] = keys
    return out


def diff_json(ref1: str, ref2: str, cache: Path, *extra: str) -> list[dict[str, Any]]:
    result = ocifs("diff", "--json", "--cache-dir", str(cache), ref1, ref2, *extra)
    assert result.returncode in (0, 1), result.stderr
    got = json.loads(result.stdout)
    assert result.returncode == (1 if got else 0)
    return got  # type: ignore[no-any-return]


def as_expected(got: list[dict[str, Any]]) -> dict[str, Any]:
    return {c["path"]: set(c["changes"]) if c["status"] == "M" else c["status"] for c in got}


def test_diff_agrees_with_the_unpacked_trees(
    pair: tuple[BuiltImage, BuiltImage], tmp_path: Path
) -> None:
    old, new = pair
    got = diff_json(old.ref, new.ref, tmp_path / "cache")
    expected = expected_changes(old.oracle, new.oracle)
    assert as_expected(got) == expected
    assert [c["path"] for c in got] == sorted(expected)
    # What the pair was built to show, spelled out.
    assert expected["/data/big.bin"] == expected["/data/same-size"] == {"content"}
    assert "/data/identical" not in expected and "/etc/same" not in expected
    assert expected["/old/sub/y"] == expected["/etc/gone"] == "D"
    by_path = {c["path"]: c for c in got}
    assert by_path["/etc/mode"]["changes"] == {"mode": [0o644, 0o755]}
    assert by_path["/etc/owner"]["changes"] == {"owner": [[0, 0], [1000, 1001]]}
    assert by_path["/etc/a.conf"]["changes"] == {"size": [8, 9], "content": True}
    assert by_path["/link"]["changes"] == {"target": ["etc/a.conf", "etc/same"]}
    assert by_path["/dev/c"]["changes"] == {"device": [[1, 3], [1, 5]]}
    assert by_path["/bin/tool"]["changes"] == {"type": ["reg", "symlink"], "mode": [0o755, 0o777]}
    assert by_path["/etc/xattr"]["changes"] == {
        "xattrs": {"added": ["user.new"], "removed": ["user.gone"], "changed": ["user.x"]}
    }


def test_diff_r_agrees(pair: tuple[BuiltImage, BuiltImage], tmp_path: Path) -> None:
    """GNU diff -r names the same regular files as differing or present on one side."""
    old, new = pair
    a, b = old.oracle_root(), new.oracle_root()
    proc = subprocess.run(
        ["diff", "-r", "-q", "--no-dereference", str(a), str(b)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    differ, only = set(), set()
    for line in proc.stdout.splitlines():
        if line.startswith("Files "):
            differ.add(line.split()[1].removeprefix(str(a)))
        elif line.startswith("Only in "):
            where, _, name = line.removeprefix("Only in ").partition(": ")
            root = a if where.startswith(str(a)) else b
            only.add(f"{where.removeprefix(str(root))}/{name}".replace("//", "/"))
    got = diff_json(old.ref, new.ref, tmp_path / "cache")
    changed_files = {
        c["path"]
        for c in got
        if c["status"] == "M" and c["type"] == "reg" and "content" in c["changes"]
    }
    assert changed_files <= differ
    one_side = {c["path"] for c in got if c["status"] in ("A", "D")}
    # diff -r names a directory present on one side, not what is inside it.
    assert {p for p in one_side if p.rpartition("/")[0] not in one_side} == only


def test_text_output_and_path(pair: tuple[BuiltImage, BuiltImage], tmp_path: Path) -> None:
    old, new = pair
    cache = str(tmp_path / "cache")
    result = ocifs("diff", "--cache-dir", cache, old.ref, new.ref, "/etc")
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "M /etc/a.conf (size 8→9, content)",
        "D /etc/gone",
        "M /etc/mode (mode 0644→0755)",
        "M /etc/owner (owner 0:0→1000:1001)",
        "M /etc/xattr (xattrs +user.new -user.gone ~user.x)",
    ]
    result = ocifs("diff", "--cache-dir", cache, old.ref, new.ref, "old")
    assert result.stdout.splitlines() == ["D /old", "D /old/sub", "D /old/sub/y", "D /old/x"]
    result = ocifs("diff", "--cache-dir", cache, old.ref, new.ref, "/etc/same")
    assert (result.returncode, result.stdout) == (0, "")


def test_reads_only_what_sizes_cannot_decide(
    pair: tuple[BuiltImage, BuiltImage], registry: Registry, tmp_path: Path
) -> None:
    """With the layer indexes cached, a size change needs no layer bytes; two files of
    one size are read (range GETs of their layer blobs)."""
    old, new = pair
    cache = tmp_path / "cache"
    layers = {d["digest"] for image in pair for d in layout_layers(image)}

    def layer_gets(*path: str) -> list[str]:
        mark = registry.mark()
        diff_json(old.ref, new.ref, cache, *path)
        return [r.uri for r in registry.since(mark) if any(d in r.uri for d in layers)]

    assert layer_gets("/etc/a.conf") != []  # the layer indexes are built and cached
    # Building them kept the streamed chunks: drop those, so reads must fetch.
    shutil.rmtree(cache / "chunks")
    assert ocifs("cache", "prune", "--cache-dir", str(cache)).returncode == 0
    assert layer_gets("/etc/a.conf") == []
    assert layer_gets("/data/same-size") != []


def layout_layers(image: BuiltImage) -> list[dict[str, Any]]:
    blobs = image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / image.digest.removeprefix("sha256:")).read_bytes())
    return manifest["layers"]  # type: ignore[no-any-return]


def test_oci_layouts_and_registry_agree(
    pair: tuple[BuiltImage, BuiltImage], tmp_path: Path
) -> None:
    old, new = pair
    cache = tmp_path / "cache"
    from_registry = diff_json(old.ref, new.ref, cache)
    assert diff_json(old.layout_info.oci_ref, new.layout_info.oci_ref, cache) == from_registry
    assert diff_json(old.layout_info.oci_ref, new.ref, cache) == from_registry


def test_identical_images(
    sample_image: BuiltImage, docker_sample_image: BuiltImage, tmp_path: Path
) -> None:
    cache = str(tmp_path / "cache")
    for other in (sample_image.ref_by_digest, sample_image.layout_info.oci_ref):
        result = ocifs("diff", "--cache-dir", cache, sample_image.ref, other)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # Other manifests (Docker media types), the same layer blobs: the same tree.
    result = ocifs("diff", "--cache-dir", cache, sample_image.ref, docker_sample_image.ref)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_sample_against_torture(
    sample_image: BuiltImage, torture_image: BuiltImage, tmp_path: Path
) -> None:
    got = diff_json(sample_image.ref, torture_image.ref, tmp_path / "cache")
    assert as_expected(got) == expected_changes(sample_image.oracle, torture_image.oracle)


def test_trouble_exits_2(
    pair: tuple[BuiltImage, BuiltImage], multiarch_image: BuiltImage, tmp_path: Path
) -> None:
    old, new = pair
    multi = multiarch_image.ref
    cache = str(tmp_path / "cache")
    cases = [
        (old.ref, "Bad//Ref"),
        (f"{old.host}/test/diff-before:no-such-tag", new.ref),
        (old.ref, f"oci:{tmp_path / 'missing'}:latest"),
        (old.ref, new.ref, "/no/such/path"),
        (multi, multi, "--platform", "linux/s390x"),
    ]
    for args in cases:
        result = ocifs("diff", "--cache-dir", cache, *args)
        one_line_error(result)
        assert result.returncode == 2 and result.stdout == "", args
