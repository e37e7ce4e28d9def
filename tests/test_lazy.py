"""Laziness and trust, counted at the registry: a read fetches only the spans it
needs, cached chunks are reused, corrupt bytes are never served."""

from __future__ import annotations

import errno
import random
import shutil
from pathlib import Path

import pytest
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, file, push_layout, write_layout
from mounting import mounted
from registry_fixtures import Registry

WORDS_SEED = 7
BIG_TEXT_WORDS = 3_000_000
SMALL_FILES = 300


def _big_text() -> bytes:
    rnd = random.Random(WORDS_SEED)
    words = [bytes(rnd.choice(b"abcdefghij ") for _ in range(8)) for _ in range(2000)]
    return b"".join(rnd.choice(words) for _ in range(BIG_TEXT_WORDS))


@pytest.fixture(scope="module")
def big_gzip_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """One ~8 MB gzip layer: a 24 MB compressible text file, then small files."""
    rnd = random.Random(WORDS_SEED + 1)
    small = [file(f"small/f{i:04d}", rnd.randbytes(2000)) for i in range(SMALL_FILES)]
    image = Image(layers=[Layer([file("big.txt", _big_text()), *small])])
    workdir = tmp_path_factory.mktemp("big-gzip")
    layout = write_layout(image, workdir / "layout", "latest")
    push_layout(layout, f"{registry.host}/test/big-gzip:latest")
    return BuiltImage("big", image, layout, registry.host, "test/big-gzip", "latest", None,
                      workdir)  # fmt: skip


def _layer_digest(image: BuiltImage) -> str:
    blob = max((image.layout / "blobs").rglob("*"), key=lambda p: p.is_file() and p.stat().st_size)
    return f"sha256:{blob.name}"


def _blob_bytes(registry: Registry, mark: int, digest: str) -> int:
    """Body bytes the registry sent for GETs of blob ``digest`` since ``mark``."""
    return sum(
        r.written for r in registry.since(mark) if r.method == "GET" and r.uri.endswith(digest)
    )


def test_one_small_file_fetches_only_its_span(
    big_gzip_image: BuiltImage, registry: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    layer = _layer_digest(big_gzip_image)
    layer_size = (big_gzip_image.layout / "blobs" / "sha256" / layer[7:]).stat().st_size
    ref = big_gzip_image.ref
    with mounted(ref, tmp_path / "a", cache):
        pass  # builds and caches the layer index (one full stream)
    shutil.rmtree(cache / "chunks", ignore_errors=True)

    mark = registry.mark()
    with mounted(ref, tmp_path / "b", cache) as mnt:
        after_mount = _blob_bytes(registry, mark, layer)
        data = (mnt / "small" / "f0150").read_bytes()
        after_read = _blob_bytes(registry, mark, layer)
    assert len(data) == 2000
    assert after_mount == 0, "mounting with a cached index must not read layers"
    fetched = after_read - after_mount
    assert 0 < fetched <= 2 * 1024 * 1024, fetched
    assert fetched < layer_size / 4

    # The same read from a new mount is served by the chunk cache: no blob request.
    mark = registry.mark()
    with mounted(ref, tmp_path / "c", cache) as mnt:
        assert (mnt / "small" / "f0150").read_bytes() == data
    assert _blob_bytes(registry, mark, layer) == 0


def test_big_file_random_reads_match(big_gzip_image: BuiltImage, tmp_path: Path) -> None:
    want = _big_text()
    rnd = random.Random(3)
    with mounted(big_gzip_image.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        with (mnt / "big.txt").open("rb", buffering=0) as fh:
            for _ in range(200):
                off = rnd.randrange(len(want))
                fh.seek(off)
                assert fh.read(4096) == want[off : off + 4096]
        assert (mnt / "big.txt").read_bytes() == want


def test_corrupt_cached_chunk_is_refetched(sample_image: BuiltImage, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with mounted(sample_image.ref, tmp_path / "a", cache) as mnt:
        files = sorted(p for p in mnt.rglob("*") if p.is_file() and not p.is_symlink())
        contents = {p.relative_to(mnt): p.read_bytes() for p in files}
    chunks = sorted(p for p in (cache / "chunks").rglob("*") if p.is_file())
    assert chunks
    for chunk in chunks:
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk.write_bytes(bytes(raw))
    with mounted(sample_image.ref, tmp_path / "b", cache) as mnt:
        for rel, data in contents.items():
            assert (mnt / rel).read_bytes() == data


def test_blob_changed_under_the_index_gives_eio(tmp_path: Path) -> None:
    """A source whose blob bytes change after the index was built (here: an OCI layout
    edited on disk, the one real source we can make lie) gives EIO, and the mount
    stays up for files whose bytes are intact."""
    rnd = random.Random(11)
    big = rnd.randbytes(3 * 1024 * 1024)
    image = Image(layers=[Layer([file("a.bin", big), file("b.txt", b"hello\n")],
                                compression="none")])  # fmt: skip
    layout = write_layout(image, tmp_path / "layout", "latest")
    blob = max((layout.path / "blobs").rglob("*"), key=lambda p: p.is_file() and p.stat().st_size)
    ref, cache = f"oci:{layout.path}:latest", tmp_path / "cache"
    with mounted(ref, tmp_path / "first", cache):
        pass  # builds the index
    assert not (cache / "chunks").exists()  # a local source's blobs are not copied
    with mounted(ref, tmp_path / "mnt", cache) as mnt:
        raw = bytearray(blob.read_bytes())
        raw[2 * 1024 * 1024] ^= 0xFF  # inside a.bin, past its first chunk
        blob.chmod(0o644)
        blob.write_bytes(bytes(raw))
        with pytest.raises(OSError) as info:
            (mnt / "a.bin").read_bytes()
        assert info.value.errno == errno.EIO
        assert (mnt / "b.txt").read_bytes() == b"hello\n"
        with (mnt / "a.bin").open("rb") as fh:
            assert fh.read(4096) == big[:4096]
