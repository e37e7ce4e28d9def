"""``ocifs convert``: ocifs-written eStargz passes the stargz-snapshotter Go package's
own checks, lists with ``tar tzf``, unpacks with umoci to the original image's tree
(plus exactly the eStargz bookkeeping files at the root), mounts to the original tree,
reads lazily, honours ``--prioritize``, converts indexes per platform, keeps layers
that are eStargz already; and the writer's format details, unit by unit."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pty
import random
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from estargz_build import TOC_DIGEST, UNCOMPRESSED_SIZE, EStargzTool, estargz_tool, read_toc
from image_catalog import big_file_content
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, file, skopeo, write_layout
from mounting import mounted, ocifs, one_line_error
from registry_fixtures import Registry, Served
from treecompare import Record, assert_same_tree, snapshot

from ocifs.layers.estargz import parse_footer, parse_toc
from ocifs.layers.estargz_reader import GROUP_WINDOW_BYTES
from ocifs.layers.estargz_writer import write_estargz

__all__ = ["estargz_tool"]  # the session fixture, imported for pytest

BOOKKEEPING = ("/stargz.index.json", "/.prefetch.landmark", "/.no.prefetch.landmark")
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK_BYTES = 4 * 1024 * 1024


# --- helpers ------------------------------------------------------------------------


def _convert(*args: str) -> subprocess.CompletedProcess[str]:
    result = ocifs("convert", *args, "-q")
    assert result.returncode == 0, result.stderr
    return result


def _pull(ref: str, dest: Path) -> Path:
    """skopeo copy of a registry image (all platforms) into an OCI layout, byte for byte."""
    skopeo("copy", "--quiet", "--all", "--src-tls-verify=false", "--preserve-digests",
           f"docker://{ref}", f"oci:{dest}:t")  # fmt: skip
    return dest


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _json(layout: Path, digest: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_blob(layout, digest).read_bytes())
    return doc


def _top(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    return _json(layout, index["manifests"][-1]["digest"])


def _unpack(layout: Path, tag: str, dest: Path) -> dict[str, Record]:
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(dest)],
                   check=True, capture_output=True)  # fmt: skip
    return snapshot(dest)


def _without_bookkeeping(tree: dict[str, Record], landmark: str) -> dict[str, Record]:
    """The tree with the root's eStargz files removed, after checking they are there."""
    assert "/stargz.index.json" in tree and landmark in tree, sorted(tree)[:5]
    return {k: v for k, v in tree.items() if k not in BOOKKEEPING}


def _check_layers(
    layout: Path, manifest: dict[str, Any], tool: EStargzTool, skip_verify: frozenset[int]
) -> None:
    """Every layer: annotations, the Go package's verify, ``tar tzf``, diffID and size."""
    config = _json(layout, manifest["config"]["digest"])
    assert manifest["mediaType"] == MT_OCI_MANIFEST
    for i, desc in enumerate(manifest["layers"]):
        blob = _blob(layout, desc["digest"])
        assert desc["mediaType"] == MT_OCI_LAYER_GZIP
        if i not in skip_verify:
            tool.verify(blob, desc["annotations"][TOC_DIGEST])
        listing = subprocess.run(["tar", "tzf", str(blob)], capture_output=True, check=True)
        names = listing.stdout.decode("utf-8", "surrogateescape").splitlines()
        assert names[-1] == "stargz.index.json", names[-3:]
        raw = gzip.decompress(blob.read_bytes())
        assert config["rootfs"]["diff_ids"][i] == "sha256:" + hashlib.sha256(raw).hexdigest()
        assert desc["annotations"][UNCOMPRESSED_SIZE] == str(len(raw))


def _blob_gets(registry: Registry, mark: int, digest: str) -> list[Served]:
    return [r for r in registry.since(mark) if r.method == "GET" and r.uri.endswith(digest)]


# --- registry to registry, registry to layout ----------------------------------------


@pytest.fixture(scope="module")
def converted_torture(torture_image: BuiltImage, registry: Registry) -> str:
    dst = f"{registry.host}/converted/torture:esgz"
    _convert(torture_image.ref, dst)
    return dst


def test_torture_registry_to_registry(
    converted_torture: str,
    torture_image: BuiltImage,
    estargz_tool: EStargzTool,
    tmp_path: Path,
) -> None:
    layout = _pull(converted_torture, tmp_path / "layout")
    manifest = _top(layout)
    # The Go reader resolves hardlinks inside one layer only; layer 2 (index 1) links
    # to a lower layer's file (valid OCI), which estargz.Open refuses.
    _check_layers(layout, manifest, estargz_tool, frozenset({1}))
    original = _json(torture_image.layout, torture_image.digest)
    config, before = (
        _json(layout, manifest["config"]["digest"]),
        _json(torture_image.layout, original["config"]["digest"]),
    )
    assert config["history"] == before["history"]
    assert {k: v for k, v in config.items() if k != "rootfs"} == {
        k: v for k, v in before.items() if k != "rootfs"
    }
    tree = _unpack(layout, "t", tmp_path / "root")
    assert_same_tree(torture_image.oracle, _without_bookkeeping(tree, "/.no.prefetch.landmark"))
    with mounted(converted_torture, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(torture_image.oracle, snapshot(mnt))


def test_one_chunk_read_fetches_about_the_chunk(
    converted_torture: str, registry: Registry, tmp_path: Path
) -> None:
    layout = _pull(converted_torture, tmp_path / "layout")
    big = max(_top(layout)["layers"], key=lambda d: d["size"])
    want = big_file_content()
    with mounted(converted_torture, tmp_path / "mnt", tmp_path / "c", "--prefetch", "none") as mnt:
        mark = registry.mark()
        offset = 20 * 1024 * 1024 + 777
        with (mnt / "big" / "random.bin").open("rb", buffering=0) as fh:
            fh.seek(offset)
            assert fh.read(8192) == want[offset : offset + 8192]
        gets = _blob_gets(registry, mark, big["digest"])
    fetched = sum(r.written for r in gets)
    assert len(gets) == 1 and CHUNK_BYTES < fetched < CHUNK_BYTES * 1.01, gets


@pytest.mark.parametrize("name", ["sample", "docker_sample"])
def test_registry_to_layout(
    name: str, request: pytest.FixtureRequest, estargz_tool: EStargzTool, tmp_path: Path
) -> None:
    image: BuiltImage = request.getfixturevalue(f"{name}_image")
    out = tmp_path / "out"
    _convert(image.ref, f"oci:{out}:v1")
    manifest = _top(out)
    _check_layers(out, manifest, estargz_tool, frozenset())
    tree = _unpack(out, "v1", tmp_path / "root")
    assert_same_tree(image.oracle, _without_bookkeeping(tree, "/.no.prefetch.landmark"))
    with mounted(f"oci:{out}:v1", tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(image.oracle, snapshot(mnt))
    # The same input gives the same bytes.
    again = tmp_path / "again"
    _convert(image.ref, f"oci:{again}:v1")
    assert _top(again) == manifest
    assert (again / "index.json").read_bytes() == (out / "index.json").read_bytes()


def test_reconverting_keeps_the_layers(
    converted_torture: str, registry: Registry, tmp_path: Path
) -> None:
    dst = f"{registry.host}/converted/torture-twice:esgz"
    mark = registry.mark()
    _convert(converted_torture, dst)
    # Nothing was uploaded: every blob was mounted across (or already there).
    assert not [
        r for r in registry.since(mark) if r.method in ("PATCH", "PUT") and "/blobs/" in r.uri
    ]
    first = _top(_pull(converted_torture, tmp_path / "a"))
    second = _top(_pull(dst, tmp_path / "b"))
    assert first == second


def test_multiarch_is_converted_per_platform(
    multiarch_image: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    dst = f"{registry.host}/converted/multiarch:esgz"
    _convert(multiarch_image.ref, dst)
    layout = _pull(dst, tmp_path / "layout")
    index = _top(layout)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    original = _json(multiarch_image.layout, multiarch_image.digest)
    assert [m["platform"] for m in index["manifests"]] == [
        m["platform"] for m in original["manifests"]
    ]
    for entry in index["manifests"]:
        manifest = _json(layout, entry["digest"])
        assert all(TOC_DIGEST in d["annotations"] for d in manifest["layers"])
        plat = entry["platform"]
        key = "/".join(filter(None, (plat["os"], plat["architecture"], plat.get("variant"))))
        cat = ocifs("cat", "--platform", key, "--cache-dir", str(tmp_path / "c"), dst, "/etc/arch")
        assert cat.stdout == plat["architecture"] + "\n", cat.stderr
        mnt = tmp_path / f"mnt-{plat['architecture']}"
        with mounted(dst, mnt, tmp_path / "c", "--platform", key) as root:
            assert_same_tree(multiarch_image.oracle_for(key), snapshot(root))


# --- lazy reads and --prioritize -------------------------------------------------------


@pytest.fixture(scope="module")
def filler_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One layer: 2 MiB of random data, 300 small files, app/start.sh, 2 MiB more."""
    rnd = random.Random(21)
    small = [file(f"small/f{i:03}", rnd.randbytes(1500)) for i in range(300)]
    layer = Layer(
        [
            file("a/big1.bin", rnd.randbytes(2 * 1024 * 1024)),
            *small,
            file("app/start.sh", "#!/bin/sh\necho started\n", mode=0o755),
            file("z/big2.bin", rnd.randbytes(2 * 1024 * 1024)),
        ]
    )
    work = tmp_path_factory.mktemp("filler")
    write_layout(Image(layers=[layer]), work / "src", "latest")
    return work / "src"


def test_one_small_file_fetches_about_its_window(
    filler_image: Path, registry: Registry, tmp_path: Path
) -> None:
    dst = f"{registry.host}/converted/filler:esgz"
    _convert(f"oci:{filler_image}:latest", dst)
    ((desc),) = _top(_pull(dst, tmp_path / "layout"))["layers"]
    with mounted(dst, tmp_path / "mnt", tmp_path / "cache", "--prefetch", "none") as mnt:
        mark = registry.mark()
        data = (mnt / "small" / "f150").read_bytes()
        gets = _blob_gets(registry, mark, desc["digest"])
    assert len(data) == 1500
    fetched = sum(r.written for r in gets)
    assert len(gets) == 1 and 1500 < fetched <= GROUP_WINDOW_BYTES, gets


def test_prioritize_puts_files_first_and_they_are_prefetched(
    filler_image: Path, registry: Registry, tmp_path: Path
) -> None:
    listing = tmp_path / "prioritize.txt"
    listing.write_text("# start-up files\n/app/start.sh\n\nnot/in/any/layer\n")
    dst = f"{registry.host}/converted/filler:prio"
    result = ocifs("convert", f"oci:{filler_image}:latest", dst, "--prioritize", str(listing))
    assert result.returncode == 0, result.stderr
    # No progress bar off a terminal: the warning is all there is.
    assert result.stderr.splitlines() == [
        "ocifs: convert: no layer has not/in/any/layer (--prioritize)"
    ], result.stderr
    layout = _pull(dst, tmp_path / "layout")
    ((desc),) = _top(layout)["layers"]
    toc_offset, doc = read_toc(_blob(layout, desc["digest"]).read_bytes())
    names = [e["name"] for e in doc["entries"] if e["type"] != "chunk"]
    assert names[:3] == ["app/start.sh", ".prefetch.landmark", "a/big1.bin"], names[:4]
    start = next(e for e in doc["entries"] if e["name"] == "app/start.sh")
    assert start["offset"] < 4096  # at the front, far from the tail read with the TOC
    mark = registry.mark()
    with mounted(dst, tmp_path / "mnt", tmp_path / "cache") as mnt:
        deadline = time.monotonic() + 20
        while len(_blob_gets(registry, mark, desc["digest"])) < 2:
            assert time.monotonic() < deadline, registry.since(mark)
            time.sleep(0.1)
        gets = _blob_gets(registry, mark, desc["digest"])
        # The TOC read, then the landmark prefetch: a window at the front of the blob.
        assert sum(r.written for r in gets[1:]) <= GROUP_WINDOW_BYTES, gets
        mark = registry.mark()
        assert (mnt / "app" / "start.sh").read_text() == "#!/bin/sh\necho started\n"
        assert _blob_gets(registry, mark, desc["digest"]) == []
    parsed = parse_toc(json.dumps(doc).encode(), toc_offset, "L")
    assert [e.path for e in parsed.prefetch if e.type.value == "reg"] == ["app/start.sh"]


def test_progress_bar_only_on_a_terminal(sample_image: BuiltImage, tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocifs", "convert", sample_image.ref, f"oci:{tmp_path / 'o'}"],
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    try:
        with contextlib.suppress(OSError):  # EIO once the child has closed the pty
            while chunk := os.read(primary, 65536):
                seen += chunk
    finally:
        os.close(primary)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, seen
    assert b"eStargz" in seen and b"\r" in seen, seen[:300]
    assert b"sha256:" in stdout


def test_prioritize_takes_parents_and_hardlink_targets() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind in [("a", tarfile.REGTYPE), ("d", tarfile.DIRTYPE),
                           ("./d/e", tarfile.DIRTYPE), ("d/e/f", tarfile.REGTYPE),
                           ("x", tarfile.REGTYPE), ("z", tarfile.REGTYPE),
                           ("h", tarfile.LNKTYPE)]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "x" if kind == tarfile.LNKTYPE else ""
            tar.addfile(info, io.BytesIO(b""))
    blob, result = _write(buf.getvalue(), prioritize=["/d/e/f", "h", "missing"])
    assert result.prioritized == ("d/e/f", "h")
    _, doc = read_toc(blob)
    names = [e["name"] for e in doc["entries"]]
    assert names == ["d", "./d/e", "d/e/f", "x", "h", ".prefetch.landmark", "a", "z"]


# --- errors ------------------------------------------------------------------------------


def test_bad_src_and_dst_are_one_line(
    sample_image: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    dst = f"{registry.host}/converted/bad:x"
    cases = [
        ((f"{registry.host}/no/such:image", dst), "manifest unknown"),
        ((f"oci:{tmp_path}/missing:latest", dst), "missing"),
        ((sample_image.ref, f"{registry.host}/x/y@sha256:{'0' * 64}"), "digest"),
        ((sample_image.ref, f"docker-archive:{tmp_path}/x.tar"), "oci:DIR"),
        ((sample_image.ref, "Bad Name!"), "invalid"),
        ((sample_image.ref, dst, "--prioritize", str(tmp_path / "none.txt")), "--prioritize"),
        ((sample_image.ref, dst, "--chunk-size", "0"), "chunk size"),
    ]
    for args, words in cases:
        result = ocifs("convert", *args)
        if "--chunk-size" in args:
            assert result.returncode == 2 and words in result.stderr, result.stderr
            continue
        line = one_line_error(result)
        assert words in line, (args, line)


# --- the writer, unit by unit ------------------------------------------------------


def _tar(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write(tar: bytes, **kw: Any) -> tuple[bytes, Any]:
    out = io.BytesIO()
    result = write_estargz(io.BytesIO(tar), out, what="L", **kw)
    return out.getvalue(), result


def _members(blob: bytes) -> Iterator[tuple[int, bytes]]:
    """(compressed offset, header bytes) of each gzip member of ``blob``."""
    pos = 0
    while pos < len(blob):
        inflater = zlib.decompressobj(31)
        inflater.decompress(blob[pos:])
        assert inflater.eof
        yield pos, blob[pos : pos + 10]
        pos = len(blob) - len(inflater.unused_data)


def test_chunks_members_and_toc_fields(estargz_tool: EStargzTool, tmp_path: Path) -> None:
    rnd = random.Random(3)
    content = rnd.randbytes(5 * 1024 * 1024 + 123)
    tar = _tar([("dir/big.bin", content), ("small.txt", b"hi\n"), ("empty", b"")])
    blob, result = _write(tar, chunk_bytes=1024 * 1024)
    again, _ = _write(tar, chunk_bytes=1024 * 1024)
    assert blob == again, "the same input must give the same bytes"
    assert result.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    path = tmp_path / "blob"
    path.write_bytes(blob)
    estargz_tool.verify(path, result.toc_digest)
    starts = dict(_members(blob))
    # mtime 0 (bytes 4-8) in every gzip header; the footer is the last member.
    assert all(h[4:8] == bytes(4) for h in starts.values())
    footer = parse_footer(blob[-51:], len(blob))
    assert footer is not None and len(blob) - 51 in starts
    toc_offset, doc = read_toc(blob)
    assert toc_offset == footer.toc_offset and toc_offset in starts
    entries = doc["entries"]
    assert entries[0]["name"] == ".no.prefetch.landmark"
    chunks = [e for e in entries if e["name"] == "dir/big.bin" or e["type"] == "chunk"]
    assert [e.get("chunkOffset", 0) for e in chunks] == [i * 1024 * 1024 for i in range(6)]
    assert [e.get("chunkSize") for e in chunks] == [1024 * 1024] * 5 + [None]
    assert chunks[0]["digest"] == "sha256:" + hashlib.sha256(content).hexdigest()
    assert chunks[0]["size"] == len(content) and chunks[0]["modtime"] == "2023-11-14T22:13:20Z"
    for e in chunks:
        # Each chunk starts its own member, its data at uncompressed offset 0 of it.
        assert e["offset"] in starts and "innerOffset" not in e
        first = e.get("chunkOffset", 0)
        size = e.get("chunkSize", len(content) - first)
        part = zlib.decompressobj(31).decompress(blob[e["offset"] :], size)
        assert part == content[first : first + size]
        assert e["chunkDigest"] == "sha256:" + hashlib.sha256(part).hexdigest()
    empty = next(e for e in entries if e["name"] == "empty")
    assert "offset" not in empty and empty["digest"] == "sha256:" + hashlib.sha256().hexdigest()
    # The tar stream: the landmark, the input's entries byte for byte, the TOC, the end.
    raw = gzip.decompress(blob)
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    toc_at = raw.rindex(b"stargz.index.json\0")
    assert raw[1024:toc_at] == tar[: toc_at - 1024] and not tar[toc_at - 1024 :].strip(b"\0")


def test_levels_and_bookkeeping_entries_dropped() -> None:
    tar = _tar([("stargz.index.json", b"{}"), (".prefetch.landmark", b"\x0f"), ("a", b"x" * 9999)])
    fast, _ = _write(tar, level=1)
    best, _ = _write(tar, level=9)
    assert fast[8] == 4 and best[8] == 2  # XFL: fastest, slowest (RFC 1952)
    _, doc = read_toc(best)
    assert [e["name"] for e in doc["entries"]] == [".no.prefetch.landmark", "a"]


def test_malformed_tar_is_one_error() -> None:
    tar = bytearray(_tar([("a", b"abc")]))
    tar[148:156] = b"0000000\0"  # a wrong header checksum
    with pytest.raises(Exception, match="L: invalid tar header at byte 0"):
        _write(bytes(tar))
    with pytest.raises(Exception, match="ends inside"):
        _write(_tar([("a", b"x" * 5000)])[:2048])


def _gzip_layout(tmp_path: Path, blob: bytes, diff_id: str) -> str:
    layer = tmp_path / "layer.gz"
    layer.write_bytes(blob)
    return f"oci:{_layout_with(tmp_path / 'src', layer, diff_id)}:latest"


def test_keep_level_multi_member_input_and_digest_checks(tmp_path: Path) -> None:
    tar = _tar([("a.txt", b"hello " * 5000), ("b.txt", b"world\n")])
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    # Two gzip members (level 1) and NUL padding: one valid gzip stream.
    half = len(tar) // 2
    blob = gzip.compress(tar[:half], 1) + gzip.compress(tar[half:], 1) + bytes(100)
    src = _gzip_layout(tmp_path, blob, diff_id)
    out = tmp_path / "out"
    _convert(src, f"oci:{out}:t", "--compression-level", "keep")
    (desc,) = _top(out)["layers"]
    esgz = _blob(out, desc["digest"]).read_bytes()
    assert esgz[8] == 4  # XFL "fastest": level 1 kept
    _, doc = read_toc(esgz)
    assert [e["name"] for e in doc["entries"]] == [".no.prefetch.landmark", "a.txt", "b.txt"]
    # A config diffID that does not match, and bytes after the gzip stream: one line each.
    bad = tmp_path / "bad"
    bad.mkdir()
    src = _gzip_layout(bad, gzip.compress(tar), "sha256:" + "0" * 64)
    line = one_line_error(ocifs("convert", src, f"oci:{tmp_path / 'x'}"))
    assert "does not match the config's sha256:000" in line, line
    junk = tmp_path / "junk"
    junk.mkdir()
    src = _gzip_layout(junk, gzip.compress(tar) + b"junk", diff_id)
    line = one_line_error(ocifs("convert", src, f"oci:{tmp_path / 'y'}"))
    assert "data after the end of the gzip stream" in line, line


# --- a 1 GiB layer -------------------------------------------------------------------


@pytest.mark.slow
def test_one_gib_layer_converts_in_bounded_memory(tmp_path: Path) -> None:
    """1 GiB of content (zeros with random stretches, cheap to compress) in a gzip
    layer of an OCI layout; the converter's peak RSS stays far below it."""
    size = 1024**3
    layer = tmp_path / "layer.tar.gz"
    diff_id = _big_gzip_layer(layer, size)
    layout = _layout_with(tmp_path / "src", layer, diff_id)
    # The converting process's own peak RSS: VmHWM is per address space, while
    # ru_maxrss keeps the (forking) parent's peak across exec.
    measure = (
        "import re, sys\n"
        "from ocifs.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "with open('/proc/self/status') as fh:\n"
        "    print(re.search(r'VmHWM:\\s+(\\d+) kB', fh.read())[1], file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    out = f"oci:{tmp_path / 'out'}:latest"
    args = ["convert", "-q", f"oci:{layout}:latest", out, "--tmp-dir", str(tmp_path)]
    proc = subprocess.run([sys.executable, "-c", measure, *args],
                          capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stderr.split()[-1])
    print(f"peak RSS {peak_kib} KiB")
    assert peak_kib < 200 * 1024, peak_kib
    (desc,) = _top(tmp_path / "out")["layers"]
    assert int(desc["annotations"][UNCOMPRESSED_SIZE]) > size
    assert not list(tmp_path.glob("ocifs-convert-*")), "temporary files left behind"


class _Zeros(io.RawIOBase):
    """``size`` bytes: zeros, with 1 MiB of random data every 64 MiB."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.rnd = random.Random(9)

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, 1024 * 1024 if n < 0 else n)
        self.left -= n
        if self.left % (64 * 1024 * 1024) < n:
            return self.rnd.randbytes(n)
        return bytes(n)


class _Hashing(io.RawIOBase):
    """Writes through to ``raw``, hashing what passes."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.hash.update(data)
        return int(self.raw.write(data))


def _big_gzip_layer(path: Path, size: int) -> str:
    """Write a gzip layer holding one ``size``-byte file, streamed; return its diffID."""
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1) as gz:
        tee = _Hashing(gz)
        with tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("huge.bin")
            info.size = size
            tar.addfile(info, _Zeros(size))  # type: ignore[arg-type]
    return "sha256:" + tee.hash.hexdigest()


def _layout_with(dest: Path, layer: Path, diff_id: str) -> Path:
    """An OCI layout of one image whose only layer is the gzip file ``layer``."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    h = hashlib.sha256()
    with open(layer, "rb") as fh:
        while piece := fh.read(1 << 20):
            h.update(piece)
    layer.rename(blobs / h.hexdigest())
    layer_desc = {"mediaType": MT_OCI_LAYER_GZIP, "digest": f"sha256:{h.hexdigest()}",
                  "size": (blobs / h.hexdigest()).stat().st_size}  # fmt: skip
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()  # fmt: skip
    (blobs / hashlib.sha256(config).hexdigest()).write_bytes(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        "layers": [layer_desc],
    }).encode()  # fmt: skip
    (blobs / hashlib.sha256(manifest).hexdigest()).write_bytes(manifest)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MT_OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }]}))  # fmt: skip
    return dest
