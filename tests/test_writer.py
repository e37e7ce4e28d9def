"""Writing images: pushing to the real registry (monolithic and chunked uploads, HEAD
skips, cross-repository mounts) and writing OCI layouts, checked with skopeo/umoci."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio
from image_fixtures import BuiltImage
from registry_fixtures import Registry
from treecompare import assert_same_tree, snapshot

from ocifs.reference import parse_reference
from ocifs.sources.writer import ImageSink, LayoutSink, RegistrySink


async def _copy(layout: Path, sink: ImageSink, tag: str) -> str:
    """Push every blob of the layout's (only) manifest from its files, then the manifest."""
    blobs = layout / "blobs" / "sha256"
    top = json.loads((layout / "index.json").read_text())["manifests"][0]
    raw = (blobs / top["digest"][7:]).read_bytes()
    manifest = json.loads(raw)
    for desc in [manifest["config"], *manifest["layers"]]:
        await sink.put_blob_file(blobs / desc["digest"][7:], desc["digest"], desc["size"])
    digest = await sink.put_manifest(raw, top["mediaType"], tag)
    await sink.aclose()
    return digest


def _uploads(registry: Registry, mark: int) -> list[str]:
    return [f"{r.method} {r.uri}" for r in registry.since(mark) if "/blobs/uploads/" in r.uri]


def test_push_to_registry(torture_image: BuiltImage, registry: Registry, tmp_path: Path) -> None:
    ref = parse_reference(f"{registry.host}/written/torture:copy")
    mark = registry.mark()
    digest = trio.run(_copy, torture_image.layout, RegistrySink(ref), "copy")
    uploads = _uploads(registry, mark)
    # The 64 MiB layer went up in pieces (PATCH), the small ones in one PUT.
    assert any(u.startswith("PATCH") for u in uploads)
    assert digest == torture_image.digest
    # skopeo reads it back, and umoci unpacks the same tree as the original.
    out = tmp_path / "out"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{out}:t"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{out}:t", str(tmp_path / "root")],
                   check=True, capture_output=True)  # fmt: skip
    assert_same_tree(torture_image.oracle, snapshot(tmp_path / "root"))

    # Pushing again uploads nothing (HEAD finds every blob) ...
    mark = registry.mark()
    trio.run(_copy, torture_image.layout, RegistrySink(ref), "again")
    assert _uploads(registry, mark) == []
    # ... and into another repository, blobs are mounted across, not uploaded.
    other = parse_reference(f"{registry.host}/written/other:t")
    mark = registry.mark()
    sink = RegistrySink(other, mount_from="written/torture")
    trio.run(_copy, torture_image.layout, sink, "t")
    assert not [u for u in _uploads(registry, mark) if u.startswith(("PATCH", "PUT"))]


def test_write_layout(sample_image: BuiltImage, tmp_path: Path) -> None:
    out = tmp_path / "layout"
    trio.run(_copy, sample_image.layout, LayoutSink(out), "v1")
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{out}:v1", str(tmp_path / "root")],
                   check=True, capture_output=True)  # fmt: skip
    assert_same_tree(sample_image.oracle, snapshot(tmp_path / "root"))
    # The same tag written twice stays one index.json entry.
    trio.run(_copy, sample_image.layout, LayoutSink(out), "v1")
    assert len(json.loads((out / "index.json").read_text())["manifests"]) == 1
