"""Third-party eStargz for tests: the stargz-snapshotter ``estargz`` Go package (Debian's
``golang-github-containerd-stargz-snapshotter-dev``) behind the small program in
``estargz_tool/``, built once per session; and helpers that convert the layers of an
OCI layout with it, or doctor an eStargz layer's TOC and footer to make bad input.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from imagebuild import Layout

__all__ = [
    "TOC_DIGEST",
    "EStargzTool",
    "blob_path",
    "convert_layout",
    "estargz_tool",
    "footer_bytes",
    "layer_descs",
    "read_toc",
    "rewrite_toc",
]

TOOL_SRC = Path(__file__).resolve().parent / "estargz_tool"
GOPATH = Path("/usr/share/gocode")
ESTARGZ_PKG = GOPATH / "src/github.com/containerd/stargz-snapshotter/estargz"
TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
BUILD_TIMEOUT_S = 300


@dataclass(frozen=True)
class EStargzTool:
    """The built ``estargz-tool`` binary."""

    path: Path

    def build(self, tar: Path, out: Path, *, chunk_size: int = 0) -> dict[str, Any]:
        """Convert the tar (or tar.gz) layer ``tar`` into the eStargz blob ``out``;
        returns ``{"tocDigest", "diffID", "size"}``."""
        args = [str(self.path), "build"]
        if chunk_size:
            args += ["-chunk-size", str(chunk_size)]
        proc = subprocess.run(
            [*args, str(tar), str(out)],
            capture_output=True,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"estargz-tool build failed: {proc.stderr}")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def verify(self, blob: Path, toc_digest: str) -> None:
        """Check ``blob``'s TOC against ``toc_digest`` with the Go package's own reader."""
        proc = subprocess.run(
            [str(self.path), "verify", str(blob), toc_digest],
            capture_output=True,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise AssertionError(f"estargz-tool verify failed: {proc.stderr}")


@pytest.fixture(scope="session")
def estargz_tool(tmp_path_factory: pytest.TempPathFactory) -> EStargzTool:
    """``estargz_tool/main.go`` built offline against Debian's Go packages."""
    go = shutil.which("go")
    if go is None or not ESTARGZ_PKG.is_dir():
        pytest.skip(
            "needs golang-go and golang-github-containerd-stargz-snapshotter-dev "
            "(tools/setup installs them)"
        )
    work = tmp_path_factory.mktemp("estargz-tool")
    out = work / "estargz-tool"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(work / "gocache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    proc = subprocess.run(
        [go, "build", "-o", str(out), str(TOOL_SRC / "main.go")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=BUILD_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building estargz-tool failed:\n{proc.stderr}")
    return EStargzTool(out)


# --- OCI layouts ------------------------------------------------------------------


def blob_path(layout: Path, digest: str) -> Path:
    """The file of blob ``digest`` in the layout."""
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def _top_manifest(layout: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    index = json.loads((layout / "index.json").read_text())
    top = index["manifests"][0]
    return index, json.loads(blob_path(layout, top["digest"]).read_bytes())


def layer_descs(layout: Path) -> list[dict[str, Any]]:
    """The layer descriptors of the layout's (single-platform) image."""
    layers: list[dict[str, Any]] = _top_manifest(layout)[1]["layers"]
    return layers


def _put(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    path = layout / "blobs" / "sha256" / digest
    if not path.exists():
        path.write_bytes(data)
    return f"sha256:{digest}", len(data)


def _write_image(
    layout: Path, index: dict[str, Any], manifest: dict[str, Any], config: dict[str, Any]
) -> Layout:
    cdigest, csize = _put(layout, json.dumps(config, indent=2).encode())
    manifest["config"].update(digest=cdigest, size=csize)
    mt = manifest["mediaType"]
    mdigest, msize = _put(layout, json.dumps(manifest, indent=2).encode())
    top = index["manifests"][0]
    top.update(digest=mdigest, size=msize)
    (layout / "index.json").write_text(json.dumps(index, indent=2))
    tag = top["annotations"]["org.opencontainers.image.ref.name"]
    return Layout(layout, tag, mdigest, mt)


def convert_layout(
    tool: EStargzTool,
    src: Path,
    dest: Path,
    *,
    layers: Iterable[int] | None = None,
    chunk_size: int = 0,
    annotate: bool = True,
) -> Layout:
    """Copy the OCI layout ``src`` to ``dest`` with layers ``layers`` (default: all)
    converted to eStargz by the Go package: gzip media type, the TOC digest and
    uncompressed-size annotations (unless ``annotate`` is false), new diffIDs."""
    shutil.copytree(src, dest)
    index, manifest = _top_manifest(dest)
    config = json.loads(blob_path(dest, manifest["config"]["digest"]).read_bytes())
    chosen = set(range(len(manifest["layers"]))) if layers is None else set(layers)
    for i, desc in enumerate(manifest["layers"]):
        if i not in chosen:
            continue
        out = dest / f"esgz-{i}.tmp"
        info = tool.build(blob_path(dest, desc["digest"]), out, chunk_size=chunk_size)
        data = out.read_bytes()
        out.unlink()
        digest, size = _put(dest, data)
        new: dict[str, Any] = {"mediaType": MT_OCI_LAYER_GZIP, "digest": digest, "size": size}
        if annotate:
            new["annotations"] = {
                TOC_DIGEST: info["tocDigest"],
                UNCOMPRESSED_SIZE: str(len(gzip.decompress(data))),
            }
        manifest["layers"][i] = new
        config["rootfs"]["diff_ids"][i] = info["diffID"]
    return _write_image(dest, index, manifest, config)


# --- reading and doctoring an eStargz blob ----------------------------------------


def footer_bytes(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer (RFC 1952 member with an ``SG`` extra subfield)."""
    payload = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + len(payload).to_bytes(2, "little") + payload
    header = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + len(extra).to_bytes(2, "little")
    empty_stored_block = b"\x01\x00\x00\xff\xff"
    return header + extra + empty_stored_block + zlib.crc32(b"").to_bytes(4, "little") + bytes(4)


def read_toc(blob: bytes) -> tuple[int, dict[str, Any]]:
    """(TOC offset, TOC document) of an eStargz blob with a 51-byte footer."""
    toc_offset = int(blob[-51:][16:32], 16)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob[toc_offset:-51]))) as tar:
        member = tar.extractfile("stargz.index.json")
        assert member is not None
        doc: dict[str, Any] = json.loads(member.read())
    return toc_offset, doc


def rewrite_toc(
    layout: Path,
    layer: int,
    edit: Callable[[dict[str, Any]], bytes | None] | None = None,
    *,
    tail: Callable[[bytes], bytes] | None = None,
) -> Layout:
    """Replace layer ``layer``'s TOC by ``edit(doc)`` (JSON bytes; None keeps ``doc`` as
    edited in place) and/or its end by ``tail(blob)``; fix digest, size and the TOC
    digest annotation in the manifest, as a producer with that bug would have."""
    index, manifest = _top_manifest(layout)
    config = json.loads(blob_path(layout, manifest["config"]["digest"]).read_bytes())
    desc = manifest["layers"][layer]
    blob = blob_path(layout, desc["digest"]).read_bytes()
    toc_offset, doc = read_toc(blob)
    if edit is not None:
        toc_json = edit(doc) or json.dumps(doc).encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo("stargz.index.json")
            info.size = len(toc_json)
            tar.addfile(info, io.BytesIO(toc_json))
        member = gzip.compress(buf.getvalue(), mtime=0)
        blob = blob[:toc_offset] + member + footer_bytes(toc_offset)
        desc.setdefault("annotations", {})[TOC_DIGEST] = (
            "sha256:" + hashlib.sha256(toc_json).hexdigest()
        )
    if tail is not None:
        blob = tail(blob)
    digest, size = _put(layout, blob)
    desc.update(digest=digest, size=size)
    return _write_image(layout, index, manifest, config)
