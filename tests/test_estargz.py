"""eStargz read side: images converted by the stargz-snapshotter Go package mount and
equal the original image's umoci oracle; mounting reads only footer and TOC; a read
fetches about its chunks (counted at the registry); bad chunks are EIO; bad footers
and TOCs are one-line errors naming the layer."""

from __future__ import annotations

import errno
import hashlib
import json
import random
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
from estargz_build import (
    TOC_DIGEST,
    EStargzTool,
    blob_path,
    convert_layout,
    estargz_tool,
    layer_descs,
    read_toc,
    rewrite_toc,
)
from image_catalog import big_file_content
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, file, push_layout, write_layout
from mounting import is_mounted, mounted, ocifs, one_line_error
from registry_fixtures import Registry, Served
from treecompare import assert_same_tree, snapshot

from ocifs.errors import LayerFormatError
from ocifs.layers.estargz import parse_footer, parse_toc
from ocifs.layers.estargz_reader import GROUP_WINDOW_BYTES, TAIL_GUESS_BYTES

__all__ = ["estargz_tool"]  # the session fixture, imported for pytest

CHUNK_BYTES = 4 * 1024 * 1024  # the Go package's default chunk size


def _built(name: str, base: BuiltImage, layout: Any, registry: Registry, work: Path) -> BuiltImage:
    repo = f"test/{name}"
    push_layout(layout, f"{registry.host}/{repo}:latest")
    return BuiltImage(name, base.description, layout, registry.host, repo, "latest", None, work)


@pytest.fixture(scope="module")
def esgz_torture(
    estargz_tool: EStargzTool,
    torture_image: BuiltImage,
    registry: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> BuiltImage:
    """The torture image with every layer (gzip and tar) converted to eStargz."""
    work = tmp_path_factory.mktemp("esgz-torture")
    layout = convert_layout(estargz_tool, torture_image.layout, work / "layout")
    return _built("torture-estargz", torture_image, layout, registry, work)


def _blob_gets(registry: Registry, mark: int, digest: str) -> list[Served]:
    return [r for r in registry.since(mark) if r.method == "GET" and r.uri.endswith(digest)]


def _layer_digests(image: BuiltImage) -> list[tuple[str, int]]:
    return [(d["digest"], d["size"]) for d in layer_descs(image.layout)]


def test_third_party_estargz_equals_original_oracle(
    esgz_torture: BuiltImage, torture_image: BuiltImage, estargz_tool: EStargzTool, tmp_path: Path
) -> None:
    for i, desc in enumerate(layer_descs(esgz_torture.layout)):
        # The Go reader resolves hardlinks inside one layer only: layer 1 links to a
        # lower layer's file (valid OCI), which estargz.Open refuses.
        if i != 1:
            toc_digest = desc["annotations"][TOC_DIGEST]
            estargz_tool.verify(blob_path(esgz_torture.layout, desc["digest"]), toc_digest)
    with mounted(esgz_torture.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(torture_image.oracle, snapshot(mnt))
        assert not (mnt / ".no.prefetch.landmark").exists()
        assert not (mnt / "stargz.index.json").exists()


def test_mount_reads_only_footer_and_toc(
    esgz_torture: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    mark = registry.mark()
    with mounted(esgz_torture.ref, tmp_path / "a", cache, "--prefetch", "none"):
        for digest, size in _layer_digests(esgz_torture):
            gets = _blob_gets(registry, mark, digest)
            assert 1 <= len(gets) <= 2, (digest, gets)
            fetched = sum(r.written for r in gets)
            if size > TAIL_GUESS_BYTES:
                # The big layer: its tail guess covers the TOC, nothing else is read.
                assert len(gets) == 1 and fetched == TAIL_GUESS_BYTES, (size, gets)
            else:
                assert fetched <= size
    mark = registry.mark()
    with mounted(esgz_torture.ref, tmp_path / "b", cache, "--prefetch", "none"):
        pass
    for digest, _ in _layer_digests(esgz_torture):
        assert _blob_gets(registry, mark, digest) == [], "a remount must need no blob request"


def test_one_file_read_fetches_about_its_chunks(
    esgz_torture: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    big_layer, big_size = max(_layer_digests(esgz_torture), key=lambda d: d[1])
    want = big_file_content()
    cache = tmp_path / "cache"
    with mounted(esgz_torture.ref, tmp_path / "mnt", cache, "--prefetch", "none") as mnt:
        mark = registry.mark()
        assert (mnt / "big" / "small").read_bytes() == b"a small file in the uncompressed layer\n"
        # big/small lies in the blob's last 512 KiB, read with the TOC: verified then.
        assert _blob_gets(registry, mark, big_layer) == []

        mark = registry.mark()
        offset = 10 * 1024 * 1024 + 12345
        with (mnt / "big" / "random.bin").open("rb", buffering=0) as fh:
            fh.seek(offset)
            assert fh.read(4096) == want[offset : offset + 4096]
        gets = _blob_gets(registry, mark, big_layer)
        fetched = sum(r.written for r in gets)
        # One 4 MiB chunk of incompressible data, gzip framing included.
        assert len(gets) == 1 and CHUNK_BYTES < fetched < CHUNK_BYTES * 1.01, gets
        assert fetched < big_size / 10

        # Concurrent readers of one chunk share one request.
        mark = registry.mark()
        offset = 30 * 1024 * 1024
        results: list[bytes] = []

        def read() -> None:
            with (mnt / "big" / "random.bin").open("rb", buffering=0) as fh:
                fh.seek(offset)
                results.append(fh.read(4096))

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [want[offset : offset + 4096]] * 8
        assert len(_blob_gets(registry, mark, big_layer)) == 1

        rnd = random.Random(5)
        with (mnt / "big" / "random.bin").open("rb", buffering=0) as fh:
            for _ in range(50):
                off = rnd.randrange(len(want))
                fh.seek(off)
                assert fh.read(70_000) == want[off : off + 70_000]


def test_one_small_file_fetches_about_its_window(
    estargz_tool: EStargzTool, sample_image: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    # 300 small files first, then 2 MiB of random data: the tail read at mount covers
    # only the latter.
    rnd = random.Random(8)
    small = [file(f"small/f{i:04d}", rnd.randbytes(2000)) for i in range(300)]
    image = Image(layers=[Layer([*small, file("tail.bin", rnd.randbytes(2 * 1024 * 1024))])])
    src = write_layout(image, tmp_path / "src", "latest")
    layout = convert_layout(estargz_tool, src.path, tmp_path / "layout")
    built = _built("small-files-estargz", sample_image, layout, registry, tmp_path)
    ((digest, size),) = _layer_digests(built)
    with mounted(built.ref, tmp_path / "mnt", tmp_path / "cache", "--prefetch", "none") as mnt:
        mark = registry.mark()
        assert (mnt / "small" / "f0150").read_bytes() == small[150].content
        gets = _blob_gets(registry, mark, digest)
    fetched = sum(r.written for r in gets)
    # Small files are fetched a 256 KiB window of the blob at a time.
    assert len(gets) == 1 and 2000 < fetched <= GROUP_WINDOW_BYTES, gets
    assert fetched < size / 8


def test_mixed_estargz_gzip_and_tar_layers(
    estargz_tool: EStargzTool,
    torture_image: BuiltImage,
    registry: Registry,
    tmp_path: Path,
) -> None:
    # Layers 0 and 2 become eStargz; 1 stays gzip, 3 stays an uncompressed tar.
    layout = convert_layout(estargz_tool, torture_image.layout, tmp_path / "layout", layers=[0, 2])
    image = _built("torture-mixed", torture_image, layout, registry, tmp_path)
    kinds = [(d["mediaType"], "annotations" in d) for d in layer_descs(image.layout)]
    assert [k[1] for k in kinds] == [True, False, True, False]
    with mounted(image.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(torture_image.oracle, snapshot(mnt))


def test_estargz_without_annotation_is_verified_as_plain_gzip(
    estargz_tool: EStargzTool, sample_image: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    """Nothing names the TOC digest of an unannotated layer, so its chunk digests cannot
    be trusted: the layer is streamed once and checked against its blob digest, as a
    plain gzip layer is (stargz-snapshotter refuses such lazy pulls too)."""
    layout = convert_layout(estargz_tool, sample_image.layout, tmp_path / "layout", annotate=False)
    image = _built("sample-estargz-bare", sample_image, layout, registry, tmp_path)
    cache = tmp_path / "cache"
    mark = registry.mark()
    with mounted(image.ref, tmp_path / "a", cache) as mnt:
        assert_same_tree(sample_image.oracle, snapshot(mnt))
    for digest, size in _layer_digests(image):
        gets = _blob_gets(registry, mark, digest)
        assert gets[0].written == size and gets[0].status == 200, gets
    mark = registry.mark()
    with mounted(image.ref, tmp_path / "b", cache):
        pass
    for digest, _ in _layer_digests(image):
        assert _blob_gets(registry, mark, digest) == []


# --- faults ------------------------------------------------------------------------


@pytest.fixture
def small_esgz(estargz_tool: EStargzTool, tmp_path: Path) -> tuple[Path, bytes]:
    """An OCI layout of one eStargz layer (1 MiB chunks): a.bin (3 MiB random), b.txt."""
    big = random.Random(11).randbytes(3 * 1024 * 1024)
    image = Image(layers=[Layer([file("a.bin", big), file("b.txt", b"hello\n")])])
    src = write_layout(image, tmp_path / "src", "latest")
    convert_layout(estargz_tool, src.path, tmp_path / "layout", chunk_size=1024 * 1024)
    return tmp_path / "layout", big


def test_flipped_byte_in_a_chunk_gives_eio(small_esgz: tuple[Path, bytes], tmp_path: Path) -> None:
    """An OCI layout source whose blob is edited after mounting (the one real source we
    can make lie) serves a corrupt chunk: EIO, and the mount stays up."""
    layout, big = small_esgz
    blob = blob_path(layout, layer_descs(layout)[0]["digest"])
    _, doc = read_toc(blob.read_bytes())
    third = next(e for e in doc["entries"] if e.get("chunkOffset") == 2 * 1024 * 1024)
    with mounted(f"oci:{layout}:latest", tmp_path / "mnt", tmp_path / "cache") as mnt:
        raw = bytearray(blob.read_bytes())
        raw[third["offset"] + 100_000] ^= 0xFF
        blob.write_bytes(bytes(raw))
        with pytest.raises(OSError) as info:
            (mnt / "a.bin").read_bytes()
        assert info.value.errno == errno.EIO
        assert (mnt / "b.txt").read_bytes() == b"hello\n"
        with (mnt / "a.bin").open("rb") as fh:
            assert fh.read(4096) == big[:4096]


def _entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(e for e in doc["entries"] if e.get("name") == name)
    return found


def _escape(doc: dict[str, Any]) -> None:
    _entry(doc, "b.txt")["name"] = "../../etc/b.txt"


def _beyond(doc: dict[str, Any]) -> None:
    _entry(doc, "b.txt")["offset"] = 10**9


def _backwards(doc: dict[str, Any]) -> None:
    _entry(doc, "b.txt")["offset"] = 1


BAD_TOCS: dict[str, tuple[Any, Any, str]] = {
    "footer": (None, lambda b: b[:-19] + b"STARGX" + b[-13:], "no valid eStargz footer"),
    "toc-offset": (None, lambda b: b[:-35] + b"ffffffffffffff00" + b[-19:], "footer"),
    "json": (lambda d: b"{not json", None, "not valid JSON"),
    "no-entries": (lambda d: b'{"version": 1}', None, "no entries"),
    "beyond-blob": (_beyond, None, "is not before the TOC"),
    "backwards": (_backwards, None, "goes back"),
    "escape": (_escape, None, "escapes the root"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOCS))
def test_bad_footer_or_toc_is_one_line(
    case: str, small_esgz: tuple[Path, bytes], tmp_path: Path
) -> None:
    layout, _ = small_esgz
    edit, tail, words = BAD_TOCS[case]
    digest = rewrite_toc(layout, 0, edit, tail=tail)
    assert digest
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = ocifs("mount", f"oci:{layout}:latest", str(mnt), "--cache-dir", str(tmp_path / "c"))
    line = one_line_error(result)
    assert not is_mounted(mnt)
    assert "layer 0" in line and words in line, line


def test_toc_not_matching_its_annotation(small_esgz: tuple[Path, bytes], tmp_path: Path) -> None:
    layout, _ = small_esgz
    manifest_layers = layer_descs(layout)
    good = manifest_layers[0]["annotations"][TOC_DIGEST]
    rewrite_toc(layout, 0, lambda d: None)  # the same TOC re-serialized: another digest
    index = json.loads((layout / "index.json").read_text())
    mpath = blob_path(layout, index["manifests"][0]["digest"])
    manifest = json.loads(mpath.read_bytes())
    manifest["layers"][0]["annotations"][TOC_DIGEST] = good
    data = json.dumps(manifest).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = ocifs("mount", f"oci:{layout}:latest", str(mnt), "--cache-dir", str(tmp_path / "c"))
    assert "does not match the annotation" in one_line_error(result)


# --- format units (no FUSE) --------------------------------------------------------


def _gzip_member(extra: bytes) -> bytes:
    header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + len(extra).to_bytes(2, "little")
    return (
        header + extra + b"\x01\x00\x00\xff\xff" + zlib.crc32(b"").to_bytes(4, "little") + bytes(4)
    )


def test_legacy_47_byte_footer() -> None:
    footer = _gzip_member(b"%016xSTARGZ" % 0x1234)
    assert len(footer) == 47
    found = parse_footer(b"x" * 0x2000 + footer, 0x2000 + 47)
    assert found is not None and (found.toc_offset, found.size) == (0x1234, 47)
    assert parse_footer(b"\x00" * 51, 1000) is None
    # A TOC offset at or past the footer is no footer.
    assert parse_footer(footer, 47) is None


def test_chunks_must_tile_their_file() -> None:
    def toc(*entries: dict[str, Any]) -> bytes:
        return json.dumps({"version": 1, "entries": list(entries)}).encode()

    d = "sha256:" + "0" * 64
    reg = {"name": "f", "type": "reg", "size": 10, "offset": 100, "chunkSize": 4, "chunkDigest": d}
    second = {"type": "chunk", "offset": 200, "chunkOffset": 5, "chunkDigest": d}
    ok = parse_toc(toc(reg, {"type": "chunk", "offset": 200, "chunkOffset": 4, "chunkDigest": d}),
                   1000, "L")  # fmt: skip
    assert [(c.file_offset, c.size, c.comp_offset, c.comp_end) for c in ok.chunks] == [
        (0, 4, 100, 200),
        (4, 6, 200, 1000),
    ]
    for bad, words in [
        (toc(reg), "chunks cover 4 of 10"),
        (toc(reg, second), "chunkOffset 5"),
        (toc({"type": "chunk", "offset": 2}), "chunk without a regular file"),
        (toc({"name": "x", "type": "socket"}), "unknown type"),
        (toc({"name": "h", "type": "hardlink", "linkName": "../x"}), "escapes the root"),
        (toc({**reg, "chunkSize": 0, "size": 10**12}), "exceeds"),
        (toc({**reg, "uid": -1}), "invalid uid"),
    ]:  # fmt: skip
        with pytest.raises(LayerFormatError, match="L: eStargz TOC entry") as info:
            parse_toc(bad, 1000, "L")
        assert words in str(info.value)
