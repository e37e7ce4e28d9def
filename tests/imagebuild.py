"""Build OCI image layouts from Python descriptions, and push them to a registry.

Layers are written with :mod:`tarfile` from explicit entry lists, so a test controls
what real builders never produce on purpose: whiteouts and opaque markers in any
order, type changes, hardlinks into lower layers, PAX or GNU headers. Output is
deterministic: the same description gives the same digests.

Ready-made descriptions live in :mod:`image_catalog` (``sample``, ``torture``,
``multiarch``). Run ``python tests/imagebuild.py build NAME DIR`` to write a layout, or
``python tests/imagebuild.py push NAME DIR HOST/REPO:TAG`` to build and push one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_MTIME",
    "Entry",
    "Image",
    "ImageIndex",
    "Layer",
    "Layout",
    "blockdev",
    "chardev",
    "directory",
    "fifo",
    "file",
    "hardlink",
    "layer_tar",
    "opaque",
    "push_layout",
    "skopeo",
    "symlink",
    "whiteout",
    "write_layout",
]

EntryKind = Literal["reg", "dir", "symlink", "hardlink", "char", "block", "fifo"]
Compression = Literal["gzip", "none"]
TarFormat = Literal["pax", "gnu"]

DEFAULT_MTIME = 1_700_000_000  # 2023-11-14, a fixed time so digests are reproducible
CREATED = "2023-11-14T22:13:20Z"

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_TYPEFLAGS: dict[str, bytes] = {
    "reg": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_DEFAULT_MODES = {"dir": 0o755, "symlink": 0o777, "hardlink": 0o644}


@dataclass
class Entry:
    """One tar entry, written exactly as given (the path is not normalized).

    ``mode`` holds permission bits including setuid/setgid/sticky; None picks 0644
    (0755 for dirs, 0777 for symlinks). ``mtime`` may be fractional (then it goes
    into a PAX header). ``xattrs`` become ``SCHILY.xattr.NAME`` PAX records.
    """

    path: str
    type: EntryKind = "reg"
    content: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: float = DEFAULT_MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)

    def tarinfo(self) -> tarfile.TarInfo:
        """Return the :class:`tarfile.TarInfo` for this entry."""
        info = tarfile.TarInfo(self.path)
        info.type = _TYPEFLAGS[self.type]
        info.mode = self.mode if self.mode is not None else _DEFAULT_MODES.get(self.type, 0o644)
        info.uid, info.gid = self.uid, self.gid
        info.uname, info.gname = self.uname, self.gname
        info.mtime = self.mtime
        info.linkname = self.linkname
        info.devmajor, info.devminor = self.devmajor, self.devminor
        info.size = len(self.content) if self.type == "reg" else 0
        if self.xattrs:
            # tarfile writes str values; surrogateescape carries arbitrary bytes through
            # (tarfile then marks the header hdrcharset=BINARY and writes them raw).
            info.pax_headers = {
                f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")
                for name, value in self.xattrs.items()
            }
        return info


def file(path: str, content: bytes | str = b"", **kw: Any) -> Entry:
    """A regular file; ``str`` content is UTF-8 encoded."""
    data = content.encode() if isinstance(content, str) else content
    return Entry(path, "reg", content=data, **kw)


def directory(path: str, **kw: Any) -> Entry:
    """A directory entry (tarfile appends the trailing slash)."""
    return Entry(path, "dir", **kw)


def symlink(path: str, target: str, **kw: Any) -> Entry:
    """A symbolic link to ``target`` (stored verbatim)."""
    return Entry(path, "symlink", linkname=target, **kw)


def hardlink(path: str, target: str, **kw: Any) -> Entry:
    """A hardlink to the entry (or lower layer's file) named ``target``."""
    return Entry(path, "hardlink", linkname=target, **kw)


def chardev(path: str, major: int, minor: int, **kw: Any) -> Entry:
    """A character device node."""
    return Entry(path, "char", devmajor=major, devminor=minor, **kw)


def blockdev(path: str, major: int, minor: int, **kw: Any) -> Entry:
    """A block device node."""
    return Entry(path, "block", devmajor=major, devminor=minor, **kw)


def fifo(path: str, **kw: Any) -> Entry:
    """A named pipe."""
    return Entry(path, "fifo", **kw)


def whiteout(path: str) -> Entry:
    """The whiteout entry deleting ``path`` of the lower layers (``dir/.wh.name``)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opaque(dirpath: str) -> Entry:
    """The opaque marker hiding all lower-layer contents of ``dirpath``."""
    d = dirpath.rstrip("/")
    return file(f"{d}/.wh..wh..opq" if d else ".wh..wh..opq")


@dataclass
class Layer:
    """A layer: entries in tar order, its compression, tar header format, history text."""

    entries: list[Entry]
    compression: Compression = "gzip"
    tar_format: TarFormat = "pax"
    created_by: str = "imagebuild"


@dataclass
class Image:
    """A single-platform image: layers plus the config fields tests care about."""

    layers: list[Layer]
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/bin:/bin"])
    cmd: list[str] = field(default_factory=lambda: ["/bin/sh"])
    labels: dict[str, str] = field(default_factory=dict)
    docker_media_types: bool = False

    @property
    def platform(self) -> dict[str, str]:
        """The image-spec platform object of this image."""
        plat = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            plat["variant"] = self.variant
        return plat


@dataclass
class ImageIndex:
    """A multi-platform image: one manifest per image, in order."""

    images: list[Image]
    docker_media_types: bool = False


@dataclass
class Layout:
    """An OCI layout on disk: ``path``, the ``tag`` in its index.json, and the digest
    and media type of the top-level manifest or index the tag names."""

    path: Path
    tag: str
    digest: str
    media_type: str
    manifests: dict[str, str] = field(default_factory=dict)  # "os/arch[/variant]" -> digest

    @property
    def oci_ref(self) -> str:
        """The ``oci:DIR:TAG`` reference skopeo understands."""
        return f"oci:{self.path}:{self.tag}"


def layer_tar(layer: Layer) -> bytes:
    """Return the uncompressed tar stream of ``layer``."""
    buf = io.BytesIO()
    fmt = tarfile.PAX_FORMAT if layer.tar_format == "pax" else tarfile.GNU_FORMAT
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tar:
        for entry in layer.entries:
            info = entry.tarinfo()
            tar.addfile(info, io.BytesIO(entry.content) if entry.type == "reg" else None)
    return buf.getvalue()


class _BlobStore:
    """Writes content-addressed blobs under ``DIR/blobs/sha256``."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        path = self.dir / digest
        if not path.exists():
            path.write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}

    def put_json(self, obj: Any, media_type: str, **extra: Any) -> dict[str, Any]:
        return self.put(json.dumps(obj, indent=2).encode(), media_type, **extra)


def _write_image(store: _BlobStore, image: Image) -> dict[str, Any]:
    """Write the layers, config and manifest of ``image``; return its descriptor."""
    docker = image.docker_media_types
    layer_descs: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    history: list[dict[str, Any]] = []
    for layer in image.layers:
        tar = layer_tar(layer)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        if layer.compression == "gzip":
            # mtime=0 and no file name keep the gzip header, hence the digest, stable.
            blob = gzip.compress(tar, compresslevel=6, mtime=0)
            mt = MT_DOCKER_LAYER_GZIP if docker else MT_OCI_LAYER_GZIP
        else:
            blob = tar
            mt = MT_DOCKER_LAYER_TAR if docker else MT_OCI_LAYER_TAR
        layer_descs.append(store.put(blob, mt))
        history.append({"created": CREATED, "created_by": layer.created_by})
    history.append(
        {"created": CREATED, "created_by": "CMD " + json.dumps(image.cmd), "empty_layer": True}
    )
    config: dict[str, Any] = {
        "created": CREATED,
        **image.platform,
        "config": {"Env": image.env, "Cmd": image.cmd, "Labels": image.labels or None},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    config_desc = store.put_json(config, MT_DOCKER_CONFIG if docker else MT_OCI_CONFIG)
    manifest_mt = MT_DOCKER_MANIFEST if docker else MT_OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_mt,
        "config": config_desc,
        "layers": layer_descs,
    }
    return store.put_json(manifest, manifest_mt)


def _platform_key(image: Image) -> str:
    return "/".join(filter(None, (image.os, image.architecture, image.variant)))


def write_layout(what: Image | ImageIndex, dest: Path, tag: str = "latest") -> Layout:
    """Write ``what`` as an OCI image layout in ``dest`` under ``tag``; return its summary."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    store = _BlobStore(dest)
    manifests: dict[str, str] = {}
    if isinstance(what, Image):
        top = _write_image(store, what)
        manifests[_platform_key(what)] = top["digest"]
    else:
        descs = []
        for image in what.images:
            desc = _write_image(store, image)
            desc["platform"] = image.platform
            descs.append(desc)
            manifests[_platform_key(image)] = desc["digest"]
        index_mt = MT_DOCKER_LIST if what.docker_media_types else MT_OCI_INDEX
        top = store.put_json(
            {"schemaVersion": 2, "mediaType": index_mt, "manifests": descs}, index_mt
        )
    top_entry = {**top, "annotations": {"org.opencontainers.image.ref.name": tag}}
    (dest / "index.json").write_text(
        json.dumps(
            {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [top_entry]}, indent=2
        )
    )
    return Layout(dest, tag, top["digest"], top["mediaType"], manifests)


# --- skopeo -----------------------------------------------------------------------

_POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}'


def skopeo(*args: str) -> str:
    """Run skopeo with a permissive signature policy of our own (the host's may be
    missing or strict); return stdout, raise with stderr on failure."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as policy:
        policy.write(_POLICY)
        policy.flush()
        cmd = ["skopeo", "--policy", policy.name, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def _as_dir_transport(layout: Layout, dest: Path) -> str:
    """Lay ``layout``'s top manifest out for skopeo's ``dir:`` transport (hardlinking
    blobs); return the ``dir:`` reference. skopeo's ``oci:`` source refuses Docker
    media types, its ``dir:`` source takes any manifest as-is."""
    dest.mkdir()
    (dest / "version").write_text("Directory Transport Version: 1.1\n")
    blobs = layout.path / "blobs" / "sha256"
    top = blobs / layout.digest.removeprefix("sha256:")
    os.link(top, dest / "manifest.json")
    for digest in layout.manifests.values():
        if digest != layout.digest:
            os.link(
                blobs / digest.removeprefix("sha256:"),
                dest / f"{digest.removeprefix('sha256:')}.manifest.json",
            )
    for b in blobs.iterdir():
        os.link(b, dest / b.name)
    return f"dir:{dest}"


def push_layout(layout: Layout, dest: str, *, creds: str | None = None) -> str:
    """Push ``layout`` to ``dest`` ("HOST/REPO:TAG", plain HTTP) byte for byte.

    ``--preserve-digests`` makes skopeo fail rather than recompress or rewrite a
    manifest; the registry's manifest is then checked against ours. Returns its digest.
    """
    args = ["copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]
    if creds:
        args += ["--dest-creds", creds]
    if layout.media_type in (MT_OCI_INDEX, MT_DOCKER_LIST):
        args.append("--all")
    with tempfile.TemporaryDirectory(dir=layout.path.parent) as tmp:
        if layout.media_type in (MT_DOCKER_MANIFEST, MT_DOCKER_LIST):
            src = _as_dir_transport(layout, Path(tmp) / "dir")
        else:
            src = layout.oci_ref
        skopeo(*args, src, f"docker://{dest}")
    inspect = ["inspect", "--raw", "--tls-verify=false"]
    if creds:
        inspect += ["--creds", creds]
    raw = skopeo(*inspect, f"docker://{dest}").encode()
    got = "sha256:" + hashlib.sha256(raw).hexdigest()
    if got != layout.digest:
        raise RuntimeError(f"{dest}: registry holds {got}, the layout has {layout.digest}")
    return got


def _main(argv: Sequence[str]) -> int:
    import argparse

    import image_catalog

    parser = argparse.ArgumentParser(prog="imagebuild", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write an OCI layout")
    b.add_argument("name", choices=sorted(image_catalog.CATALOG))
    b.add_argument("dir", type=Path)
    b.add_argument("--tag", default="latest")
    p = sub.add_parser("push", help="write an OCI layout and push it with skopeo")
    p.add_argument("name", choices=sorted(image_catalog.CATALOG))
    p.add_argument("dir", type=Path)
    p.add_argument("dest", help="HOST/REPO:TAG")
    p.add_argument("--creds", default=os.environ.get("IMAGEBUILD_CREDS"))
    args = parser.parse_args(argv)
    tag = getattr(args, "tag", "latest")
    if args.cmd == "push":
        _, colon, tag = args.dest.rpartition("/")[2].rpartition(":")
        if not colon:
            parser.error("dest must be HOST/REPO:TAG")
    layout = write_layout(image_catalog.CATALOG[args.name](), args.dir, tag)
    if args.cmd == "push":
        push_layout(layout, args.dest, creds=args.creds)
    print(layout.digest)
    return 0


if __name__ == "__main__":
    # Re-import under the module's own name so that image_catalog's classes are ours.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import imagebuild

    raise SystemExit(imagebuild._main(sys.argv[1:]))
