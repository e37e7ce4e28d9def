"""The chunk cache: bounded, shared by processes, crash-safe, single-flight.

Requests are counted at the registry (its access log), never in ocifs's own log."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, file, push_layout, write_layout
from mounting import is_mounted, mounted, ocifs
from registry_fixtures import Registry
from treecompare import assert_same_tree, snapshot

from ocifs.cache import ChunkCache

SHARED_TEXT_WORDS = 2_000_000


def _text(seed: int, words: int) -> bytes:
    rnd = random.Random(seed)
    vocab = [bytes(rnd.choice(b"klmnopqrs ") for _ in range(7)) for _ in range(3000)]
    return b"".join(rnd.choice(vocab) for _ in range(words))


@pytest.fixture(scope="module")
def two_images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> list[BuiltImage]:
    """Two images whose bottom layer (a ~7 MB gzip layer holding shared.txt) is the same
    blob, each with a small top layer of its own."""
    shared = Layer([file("shared.txt", _text(1, SHARED_TEXT_WORDS))])
    built = []
    for name in ("one", "two"):
        image = Image(layers=[shared, Layer([file(f"{name}.txt", name.encode())])])
        workdir = tmp_path_factory.mktemp(f"image-{name}")
        layout = write_layout(image, workdir / "layout", "latest")
        push_layout(layout, f"{registry.host}/cache/{name}:latest")
        built.append(
            BuiltImage(name, image, layout, registry.host, f"cache/{name}", "latest", None, workdir)
        )
    return built


def _layer_blob(image: BuiltImage, index: int) -> tuple[str, int]:
    blobs = image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / image.digest[7:]).read_bytes())
    layer = manifest["layers"][index]
    return layer["digest"], layer["size"]


def _gets(registry: Registry, mark: int, digest: str) -> list[int]:
    """Body bytes of each GET of blob ``digest`` since ``mark``."""
    return [r.written for r in registry.since(mark) if r.method == "GET" and r.uri.endswith(digest)]


def test_two_mounts_share_one_fetch(
    two_images: list[BuiltImage], registry: Registry, tmp_path: Path
) -> None:
    digest, size = _layer_blob(two_images[0], 0)
    assert _layer_blob(two_images[1], 0)[0] == digest
    cache = tmp_path / "cache"
    mnts = [tmp_path / "a", tmp_path / "b"]
    mark = registry.mark()
    # Both mounts start at once: the index of the shared layer is built once.
    procs = []
    for image, mnt in zip(two_images, mnts, strict=True):
        mnt.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ocifs", "mount", image.ref, str(mnt),
             "--cache-dir", str(cache)],
        ))  # fmt: skip
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        a, b = mnts
        full = [n for n in _gets(registry, mark, digest) if n == size]
        assert full == [size], "the shared layer was streamed more than once"
        # The index build kept the streamed chunks; drop them so that both mounts
        # must fetch what they read.
        shutil.rmtree(cache / "chunks")
        mark = registry.mark()
        results: dict[str, bytes] = {}

        def read(path: Path) -> None:
            results[str(path)] = path.read_bytes()

        threads = [threading.Thread(target=read, args=(m / "shared.txt",)) for m in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        want = _text(1, SHARED_TEXT_WORDS)
        assert len(results) == 2 and all(data == want for data in results.values())
        fetched = sum(_gets(registry, mark, digest))
    finally:
        for mnt in mnts:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    # Both read the whole file, yet each byte of the layer was requested once at most.
    assert 0 < fetched <= size, (fetched, size)


def test_cache_bound_holds(torture_image: BuiltImage, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    bound = 3 * 1024 * 1024
    with mounted(torture_image.ref, tmp_path / "mnt", cache, "--cache-max", "3M") as mnt:
        # The 64 MiB file streams through a 3 MiB cache; every byte must still be right.
        assert_same_tree(torture_image.oracle, snapshot(mnt))
        du = json.loads(ocifs("cache", "du", "--json", "--cache-dir", str(cache)).stdout)
        assert du["bytes"] <= bound
    on_disk = sum(
        p.stat().st_size
        for sub in ("chunks", "indexes")
        for p in (cache / sub).rglob("*")
        if p.is_file()
    )
    assert 0 < on_disk <= bound


def test_chunk_cache_lru_and_reconcile(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "c", max_bytes=10 * 1000)
    digest = "sha256:" + "ab" * 32
    for i in range(10):
        assert cache.put_chunk(digest, i, bytes([i]) * 1000)
    assert cache.get_chunk(digest, 0) is not None  # 0 is now the most recently used
    cache.close()
    cache = ChunkCache(tmp_path / "c", max_bytes=10 * 1000)
    cache.put_chunk(digest, 10, b"x" * 1000)
    assert cache.get_chunk(digest, 1) is None  # least recently used: evicted
    assert cache.get_chunk(digest, 0) == bytes([0]) * 1000
    assert cache.usage() == 10 * 1000
    assert not cache.put_chunk(digest, 11, b"y" * 20_000)  # larger than the bound
    cache.close()
    # The database is lost: the files are found again and counted.
    (tmp_path / "c" / "cache.db").unlink()
    cache = ChunkCache(tmp_path / "c", max_bytes=10 * 1000)
    assert cache.usage() == 10 * 1000
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == oct(0o700)
    cache.close()


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = ChunkCache(root)
    cache.scratch_dir()
    cache.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = root / "tmp" / f"blob-{dead.stdout.strip()}-abc"
    stale.write_bytes(b"half a layer")
    ours = root / "tmp" / f"blob-{os.getpid()}-abc"
    ours.write_bytes(b"in use")
    ChunkCache(root).close()
    assert not stale.exists() and ours.exists()


def _daemon_pid(mnt: Path) -> int:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in cmd and str(mnt).encode() in cmd:
            return int(proc.name)
    raise AssertionError(f"no daemon for {mnt}")


def test_sigkill_during_reads_then_remount(torture_image: BuiltImage, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mnt = tmp_path / "mnt"
    with mounted(torture_image.ref, mnt, cache):
        reader = subprocess.Popen(
            ["sh", "-c", f"find {mnt} -type f -exec cat {{}} + >/dev/null 2>&1"]
        )
        time.sleep(1.0)
        os.kill(_daemon_pid(mnt), signal.SIGKILL)
        reader.wait(timeout=60)
        # The dead daemon leaves a stale mount: mounting again on it cleans it up.
        assert is_mounted(mnt)
        result = ocifs("mount", torture_image.ref, str(mnt), "--cache-dir", str(cache))
        assert result.returncode == 0, result.stderr
        assert_same_tree(torture_image.oracle, snapshot(mnt))


def test_prefetch_all_fills_the_cache(
    two_images: list[BuiltImage], registry: Registry, tmp_path: Path
) -> None:
    digest, size = _layer_blob(two_images[0], 0)
    cache = tmp_path / "cache"
    with mounted(two_images[0].ref, tmp_path / "first", cache, "--prefetch", "none"):
        pass  # indexes the layers (and keeps the streamed chunks) ...
    shutil.rmtree(cache / "chunks")  # ... which are dropped here:
    assert ocifs("cache", "prune", "--cache-dir", str(cache)).returncode == 0
    args = ("--prefetch", "all")
    with mounted(two_images[0].ref, tmp_path / "mnt", cache, *args) as mnt:
        for _ in range(300):
            du = json.loads(ocifs("cache", "du", "--json", "--cache-dir", str(cache)).stdout)
            if du["bytes"] - du["index_bytes"] >= size:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"prefetch did not fill the cache: {du}")
        mark = registry.mark()
        assert (mnt / "shared.txt").read_bytes() == _text(1, SHARED_TEXT_WORDS)
        assert _gets(registry, mark, digest) == []


def test_cache_commands(torture_image: BuiltImage, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with mounted(torture_image.ref, tmp_path / "mnt", cache) as mnt:
        (mnt / "etc").is_dir()
        for p in sorted((mnt / "many").rglob("*"))[:50]:
            if p.is_file():
                p.read_bytes()
    listed = json.loads(ocifs("cache", "ls", "--json", "--cache-dir", str(cache)).stdout)
    assert listed and all(e["digest"].startswith("sha256:") for e in listed)
    human = ocifs("cache", "du", "--cache-dir", str(cache))
    assert human.returncode == 0 and "of" in human.stdout
    pruned = json.loads(
        ocifs("cache", "prune", "--max", "1K", "--json", "--cache-dir", str(cache)).stdout
    )
    assert pruned["bytes"] <= 1024 and pruned["freed_bytes"] > 0
    cleared = ocifs("cache", "clear", "--cache-dir", str(cache))
    assert cleared.returncode == 0
    du = json.loads(ocifs("cache", "du", "--json", "--cache-dir", str(cache)).stdout)
    assert du["bytes"] == 0
