"""Archives as sources: ``oci-archive:`` and ``docker-archive:`` files written by the
real ``skopeo copy`` from the test images, mounted with the real CLI and compared with
the umoci oracle; layers are read in place, never extracted; bad archives fail in one
line."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, file, skopeo, write_layout
from mounting import mounted, ocifs, one_line_error
from treecompare import assert_same_tree, snapshot

from ocifs.sources.archive import DockerArchiveSource, parse_archive_reference

T = TypeVar("T")

BIG_FILE_BYTES = 24 * 1024 * 1024
MT_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MT_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


def to_archive(src: str, dest: str, *extra: str) -> None:
    """``skopeo copy`` ``src`` (a transport reference) to the archive ``dest``."""
    skopeo("copy", "--quiet", "--src-tls-verify=false", *extra, src, dest)


def unpack(archive: Path, dest: Path) -> Path:
    """The archive's members as files (only to build variants of it in tests)."""
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    return dest


def pack(folder: Path, archive: Path) -> Path:
    """Write ``folder``'s contents as an uncompressed tar, members sorted by name."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return archive


@pytest.fixture(scope="module")
def torture_archives(torture_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """oci-archive and docker-archive files of the torture image, made by skopeo."""
    out = tmp_path_factory.mktemp("torture-archives")
    src = f"oci:{torture_image.layout}:latest"
    to_archive(src, f"oci-archive:{out / 'oci.tar'}:latest")
    to_archive(src, f"docker-archive:{out / 'docker.tar'}:test/torture:latest")
    return out


def test_oci_archive_equals_umoci(
    torture_image: BuiltImage, torture_archives: Path, tmp_path: Path
) -> None:
    ref = f"oci-archive:{torture_archives / 'oci.tar'}:latest"
    with mounted(ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(torture_image.oracle, snapshot(mnt))


@pytest.mark.parametrize("pick", ["", ":test/torture:latest", ":docker.io/test/torture", ":@0"])
def test_docker_archive_equals_umoci(
    torture_image: BuiltImage, torture_archives: Path, tmp_path: Path, pick: str
) -> None:
    ref = f"docker-archive:{torture_archives / 'docker.tar'}{pick}"
    with mounted(ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(torture_image.oracle, snapshot(mnt))


def test_docker_archive_of_docker_image(docker_sample_image: BuiltImage, tmp_path: Path) -> None:
    archive = tmp_path / "sample.tar"
    to_archive(f"docker://{docker_sample_image.ref}", f"docker-archive:{archive}:x/sample:1")
    with mounted(f"docker-archive:{archive}", tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(docker_sample_image.oracle, snapshot(mnt))


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64/v8"])
def test_oci_archive_of_an_index(
    multiarch_image: BuiltImage, tmp_path: Path, platform: str
) -> None:
    archive = tmp_path / "multi.tar"
    to_archive(f"oci:{multiarch_image.layout}:latest", f"oci-archive:{archive}:latest", "--all")
    args = ("--platform", platform)
    with mounted(f"oci-archive:{archive}", tmp_path / "mnt", tmp_path / "cache", *args) as mnt:
        assert_same_tree(multiarch_image.oracle_for(platform), snapshot(mnt))


def test_docker_archive_with_gzip_layers(
    torture_image: BuiltImage, torture_archives: Path, tmp_path: Path
) -> None:
    # `docker load` takes compressed layer tars too; skopeo always writes plain ones,
    # so compress its layers and point manifest.json at them.
    folder = unpack(torture_archives / "docker.tar", tmp_path / "x")
    manifest = json.loads((folder / "manifest.json").read_text())
    layers = []
    for name in manifest[0]["Layers"]:
        gz = f"{name}.gz"
        (folder / gz).write_bytes(gzip.compress((folder / name).read_bytes(), mtime=0))
        layers.append(gz)
    manifest[0]["Layers"] = layers
    (folder / "manifest.json").write_text(json.dumps(manifest))
    archive = pack(folder, tmp_path / "gz.tar")
    ref = f"docker-archive:{archive}"

    async def layer_types() -> list[str]:
        src = DockerArchiveSource(parse_archive_reference(ref))
        try:
            raw = await src.get_manifest("")
        finally:
            await src.aclose()
        return [layer["mediaType"] for layer in json.loads(raw.data)["layers"]]

    assert set(run(layer_types)) == {MT_GZIP}
    with mounted(ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(torture_image.oracle, snapshot(mnt))


def test_docker_archive_with_several_images(
    sample_image: BuiltImage,
    torture_image: BuiltImage,
    torture_archives: Path,
    tmp_path: Path,
) -> None:
    sample_tar = tmp_path / "sample.tar"
    to_archive(f"oci:{sample_image.layout}:latest", f"docker-archive:{sample_tar}:test/sample:v1")
    folder = unpack(sample_tar, tmp_path / "x")
    unpack(torture_archives / "docker.tar", tmp_path / "y")
    for path in (tmp_path / "y").iterdir():
        if path.name != "manifest.json" and not (folder / path.name).exists():
            shutil.move(path, folder / path.name)
    both = [
        *json.loads((folder / "manifest.json").read_text()),
        *json.loads((tmp_path / "y" / "manifest.json").read_text()),
    ]
    (folder / "manifest.json").write_text(json.dumps(both))
    archive = pack(folder, tmp_path / "both.tar")

    line = mount_error(f"docker-archive:{archive}", tmp_path)
    assert "holds 2 images" in line and "test/sample:v1" in line and "test/torture" in line
    with mounted(f"docker-archive:{archive}:test/sample:v1", tmp_path / "a", tmp_path / "c") as m:
        assert_same_tree(sample_image.oracle, snapshot(m))
    with mounted(f"docker-archive:{archive}:@1", tmp_path / "b", tmp_path / "c") as m:
        assert_same_tree(torture_image.oracle, snapshot(m))
    line = mount_error(f"docker-archive:{archive}:test/none:v1", tmp_path)
    assert "no image named docker.io/test/none:v1" in line


def mount_error(ref: str, tmp_path: Path) -> str:
    """The one line ``ocifs mount`` fails with (on an empty mount point)."""
    mnt = tmp_path / "mnt-for-error"
    mnt.mkdir(exist_ok=True)
    return one_line_error(ocifs("mount", ref, str(mnt), "--cache-dir", str(tmp_path / "cache")))


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_layers_are_read_in_place(tmp_path: Path) -> None:
    big = random.Random(7).randbytes(BIG_FILE_BYTES)
    image = Image(
        [
            Layer([file("small.txt", "small file\n"), file("big.bin", big)], compression="none"),
            Layer([file("top.txt", "top\n")], compression="none"),
        ]
    )
    layout = write_layout(image, tmp_path / "layout")
    archive = tmp_path / "big.tar"
    to_archive(layout.oci_ref, f"docker-archive:{archive}:big/one:v1")
    cache = tmp_path / "cache"
    with mounted(f"docker-archive:{archive}", tmp_path / "mnt", cache) as mnt:
        assert (mnt / "small.txt").read_text() == "small file\n"
        with (mnt / "big.bin").open("rb") as fh:
            fh.seek(BIG_FILE_BYTES // 2)
            assert fh.read(4096) == big[BIG_FILE_BYTES // 2 : BIG_FILE_BYTES // 2 + 4096]
        assert (mnt / "big.bin").stat().st_size == BIG_FILE_BYTES
        # Indexes and the few chunks read: nothing near the size of the layer.
        assert _tree_bytes(cache) < BIG_FILE_BYTES // 8


def test_gzipped_archive_is_refused(torture_archives: Path, tmp_path: Path) -> None:
    archive = tmp_path / "docker.tar.gz"
    archive.write_bytes(gzip.compress((torture_archives / "docker.tar").read_bytes()))
    line = mount_error(f"docker-archive:{archive}", tmp_path)
    assert "gzip-compressed" in line and "decompress" in line


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda src: src.read_bytes()[: len(src.read_bytes()) // 2], "truncated archive"),
        (lambda src: b"this is not a tar file\n" * 40, "not a tar archive"),
        (lambda src: b"", "not a tar archive"),
    ],
    ids=["truncated", "not-a-tar", "empty"],
)
def test_bad_archive_one_line(
    torture_archives: Path, tmp_path: Path, make: Callable[[Path], bytes], expected: str
) -> None:
    for kind in ("docker", "oci"):
        bad = tmp_path / f"bad-{kind}.tar"
        bad.write_bytes(make(torture_archives / f"{kind}.tar"))
        line = mount_error(f"{kind}-archive:{bad}", tmp_path)
        assert expected in line and str(bad) in line


def test_missing_manifest_json(torture_archives: Path, tmp_path: Path) -> None:
    folder = unpack(torture_archives / "docker.tar", tmp_path / "x")
    (folder / "manifest.json").unlink()
    archive = pack(folder, tmp_path / "no-manifest.tar")
    line = mount_error(f"docker-archive:{archive}", tmp_path)
    assert "no manifest.json in the archive" in line
    # An OCI archive read as a docker archive, and the other way round.
    line = mount_error(f"docker-archive:{torture_archives / 'oci.tar'}", tmp_path)
    assert "no manifest.json" in line
    line = mount_error(f"oci-archive:{archive}", tmp_path)
    assert "no index.json" in line


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("docker-archive:", "needs a file"),
        ("oci-archive::tag", "needs a file"),
        ("docker-archive:/x.tar:@one", "@INDEX must be a number"),
        ("docker-archive:/x.tar:app@sha256:" + "a" * 64, "take no digest"),
        ("docker-archive:/x.tar:", "empty image name"),
        ("docker-archive:/no/such.tar", "no such file"),
    ],
)
def test_bad_references_one_line(ref: str, expected: str, tmp_path: Path) -> None:
    assert expected in mount_error(ref, tmp_path)
