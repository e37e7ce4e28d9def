"""Published gzip seek indexes: a host with an empty cache mounts a plain gzip image
without streaming any layer, every span it serves still verified."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, file, push_layout, write_layout
from mounting import mounted, ocifs, one_line_error
from registry_fixtures import Registry
from treecompare import assert_same_tree, snapshot

from ocifs.gzindex import unpack_layer_index
from ocifs.layers.index import LayerIndex
from ocifs.oci import Descriptor


def _text(seed: int, words: int) -> bytes:
    rnd = random.Random(seed)
    vocab = [bytes(rnd.choice(b"tuvwxyz ") for _ in range(6)) for _ in range(2500)]
    return b"".join(rnd.choice(vocab) for _ in range(words))


@pytest.fixture(scope="module")
def plain_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """Two gzip layers: ~12 MB of text and small files, then a few changes."""
    rnd = random.Random(5)
    base = [file("big.txt", _text(2, 2_000_000))]
    base += [file(f"etc/f{i:03d}", rnd.randbytes(1500)) for i in range(200)]
    image = Image(layers=[Layer(base), Layer([file("etc/f007", b"changed\n")])])
    workdir = tmp_path_factory.mktemp("plain")
    layout = write_layout(image, workdir / "layout", "latest")
    push_layout(layout, f"{registry.host}/gzindex/plain:latest")
    return BuiltImage("plain", image, layout, registry.host, "gzindex/plain", "latest", None,
                      workdir)  # fmt: skip


def _layers(image: BuiltImage) -> list[dict[str, object]]:
    blobs = image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / image.digest[7:]).read_bytes())
    return list(manifest["layers"])


def _bytes_of(registry: Registry, mark: int, digests: set[str]) -> int:
    return sum(
        r.written
        for r in registry.since(mark)
        if r.method == "GET" and any(r.uri.endswith(d) for d in digests)
    )


def test_publish_then_mount_without_streaming(
    plain_image: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    built = ocifs("index", "build", plain_image.ref, "--push", "--cache-dir", str(tmp_path / "c1"))
    assert built.returncode == 0, built.stderr
    assert "pushed sha256:" in built.stdout
    listed = json.loads(ocifs("index", "ls", plain_image.ref, "--json").stdout)
    assert len(listed) == 1 and len(listed[0]["layers"]) == 2

    layers = _layers(plain_image)
    digests = {str(d["digest"]) for d in layers}
    total = sum(int(str(d["size"])) for d in layers)
    mark = registry.mark()
    # A new host: an empty cache.
    with mounted(plain_image.ref, tmp_path / "mnt", tmp_path / "c2") as mnt:
        after_mount = _bytes_of(registry, mark, digests)
        assert (mnt / "etc" / "f123").stat().st_size == 1500
        (mnt / "etc" / "f123").read_bytes()
        after_read = _bytes_of(registry, mark, digests)
        assert_same_tree(plain_image.oracle, snapshot(mnt))
    assert after_mount == 0, "no layer may be streamed when an index is published"
    assert 0 < after_read < total / 4


def test_require_and_ignore(plain_image: BuiltImage, registry: Registry, tmp_path: Path) -> None:
    # Nothing published for this other image: require refuses, allow indexes locally.
    image = Image(layers=[Layer([file("x", b"x")])])
    layout = write_layout(image, tmp_path / "layout")
    ref = f"{registry.host}/gzindex/none:latest"
    push_layout(layout, ref)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = ocifs("mount", ref, str(mnt), "--index-trust", "require",
                   "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert "no published gzip index" in one_line_error(result)
    with mounted(ref, mnt, tmp_path / "c2", "--index-trust", "ignore") as m:
        assert (m / "x").read_bytes() == b"x"


def test_tampered_index_is_rejected(plain_image: BuiltImage, tmp_path: Path) -> None:
    """A published index whose content lies about the layer is refused when read."""
    ocifs("index", "build", plain_image.ref, "--cache-dir", str(tmp_path / "c"))
    layer = _layers(plain_image)[0]
    desc = Descriptor(str(layer["mediaType"]), str(layer["digest"]), int(str(layer["size"])))
    from ocifs.cache import ChunkCache
    from ocifs.gzindex import pack_layer_index
    from ocifs.layers.index import load_cached_index

    index = load_cached_index(ChunkCache(tmp_path / "c"), desc.digest)
    assert isinstance(index, LayerIndex)
    good = pack_layer_index(index)
    assert unpack_layer_index(good, desc, "t").entries == index.entries
    from ocifs.errors import LayerFormatError

    index.uncompressed_size = 10
    with pytest.raises(LayerFormatError, match="published index rejected"):
        unpack_layer_index(pack_layer_index(index), desc, "t")
    with pytest.raises(LayerFormatError):
        unpack_layer_index(good[:100], desc, "t")


def test_index_rm(plain_image: BuiltImage, tmp_path: Path) -> None:
    ocifs("index", "build", plain_image.ref, "--push", "--span-size", "512K",
          "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    listed = json.loads(ocifs("index", "ls", plain_image.ref, "--json").stdout)
    assert any(p["span_size"] == 512 * 1024 for p in listed)
    for p in listed:
        result = ocifs("index", "rm", plain_image.ref, p["digest"])
        assert result.returncode == 0, result.stderr
    assert json.loads(ocifs("index", "ls", plain_image.ref, "--json").stdout) == []


def test_span_not_matching_the_index_is_eio(
    plain_image: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    """An index whose chunk digests do not match the layer's bytes (as if the registry
    served tampered spans) makes the reads of those spans fail with EIO."""
    import errno

    import trio

    from ocifs.cache import ChunkCache
    from ocifs.gzindex import publish
    from ocifs.image import resolve
    from ocifs.layers.blob import ChunkMap
    from ocifs.layers.index import gzip_index_for
    from ocifs.reference import parse_reference
    from ocifs.sources import SourceOptions, open_source
    from ocifs.sources.writer import RegistrySink

    ref = f"{registry.host}/gzindex/tampered:latest"
    push_layout(plain_image.layout_info, ref)

    async def tamper_and_publish() -> None:
        source = open_source(ref, SourceOptions())
        manifest, config = await resolve(source)
        cache = ChunkCache(tmp_path / "c1")
        limiter = trio.CapacityLimiter(2)
        desc = manifest.layers[0]
        index = await gzip_index_for(source, desc, config.diff_ids[0], cache, limiter, "t")
        digests = list(index.chunks.digests)
        digests = [bytes(32)] * len(digests)  # every chunk claims other bytes
        index.chunks = ChunkMap(index.chunks.blob_size, index.chunks.chunk_size, digests)
        sink = RegistrySink(parse_reference(ref))
        await publish(source, sink, manifest, [index], index.spacing)
        await sink.aclose()
        await source.aclose()

    trio.run(tamper_and_publish)
    with mounted(ref, tmp_path / "mnt", tmp_path / "c2") as mnt:
        with pytest.raises(OSError) as info:
            (mnt / "etc" / "f042").read_bytes()
        assert info.value.errno == errno.EIO
        assert (mnt / "etc").is_dir()  # the mount stays up
