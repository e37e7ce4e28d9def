"""What ocifs cannot read is refused by name before mounting: encrypted layers,
foreign layers with ``urls``, unknown media types, zstd (not supported yet). One
line naming the layer digest and media type, non-zero exit, nothing mounted, and
no layer opened (the cache holds no layer index)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from imagebuild import Image, Layer, directory, file, write_layout
from mounting import is_mounted, ocifs, one_line_error

MT_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

CASES = {
    "encrypted": ({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"}),
    "foreign": (
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "urls": ["https://example.invalid/layer.tar.gz"],
        }
    ),
    "unknown": ({"mediaType": "application/vnd.example.mystery.v1"}),
    "zstd": ({"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd"}),
}


def _rewrite_top_layer(layout: Path, change: dict[str, Any]) -> dict[str, Any]:
    """Change the top layer's descriptor in the layout's manifest (a new manifest
    blob, index.json pointed at it); return the changed descriptor."""
    index = json.loads((layout / "index.json").read_text())
    top = index["manifests"][0]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / top["digest"].removeprefix("sha256:")).read_bytes())
    manifest["layers"][-1].update(change)
    data = json.dumps(manifest, indent=2).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    top.update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    return dict(manifest["layers"][-1])


@pytest.mark.parametrize("kind", sorted(CASES))
def test_refused_by_name_before_mounting(kind: str, tmp_path: Path) -> None:
    image = Image(
        [
            Layer([directory("etc"), file("etc/base.txt", "base layer\n")]),
            Layer([file("etc/top.txt", "the layer ocifs must refuse\n")]),
        ]
    )
    layout = write_layout(image, tmp_path / "layout", "latest")
    desc = _rewrite_top_layer(layout.path, CASES[kind])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = tmp_path / "cache"
    result = ocifs("mount", layout.oci_ref, str(mnt), "--cache-dir", str(cache))
    line = one_line_error(result)
    assert desc["digest"] in line and desc["mediaType"] in line, line
    assert "not supported" in line or "unknown layer media type" in line
    assert not is_mounted(mnt) and not any(mnt.iterdir())
    # Refused before any layer was opened: not even the readable base layer was indexed.
    assert not list((cache / "indexes").glob("*/*.json.gz"))
