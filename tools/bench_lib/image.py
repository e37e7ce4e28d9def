"""The benchmark image: a debootstrap Debian rootfs (cached as a tarball) split over a
few gzip layers, plus a data layer with thousands of small files and one 64 MiB random
file. Layers and the OCI layout are written with tarfile + gzip, so the same rootfs
tarball always gives the same digests; the layout is pushed with skopeo.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "BIG_FILE",
    "GREP_PATTERN",
    "SMALL_FILE",
    "BenchImage",
    "build_image",
    "cached_image",
    "debian_mirror",
    "push",
    "rootfs_tarball",
]

CACHE_ROOT = Path("/var/tmp/ocifs-bench")
SUITE = "bookworm"
MTIME = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"
BIG_FILE = "srv/bench/random-64MiB.bin"
BIG_FILE_BYTES = 64 * 1024 * 1024
SMALL_DIRS = 60
SMALL_FILES_PER_DIR = 80
GREP_PATTERN = "ocifs-bench-needle"
SMALL_FILE = "etc/debian_version"
GZIP_LEVEL = 6
COPY_BUFFER_BYTES = 1024 * 1024
# Debian paths split into layers by prefix (first match wins; the rest is layer 0).
LAYER_PREFIXES: tuple[tuple[str, ...], ...] = ((), ("usr/lib/",), ("usr/share/",))
# Left out as Debian's own images leave them out (device nodes, apt lists and debs).
EXCLUDE_PREFIXES = ("dev/", "var/lib/apt/lists/", "var/cache/apt/")
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}'


@dataclass
class LayerBlob:
    """One written layer: its blob path, digest, size, diffID and uncompressed size."""

    path: Path
    digest: str
    size: int
    diff_id: str
    tar_bytes: int
    what: str


@dataclass
class BenchImage:
    """The layout on disk and what the measures need to know about it."""

    layout: Path
    layers: list[LayerBlob]
    tags: dict[str, str] = field(default_factory=dict)  # tag -> manifest digest
    files: int = 0

    @property
    def blob_bytes(self) -> int:
        """Sum of the layer blobs' sizes (what a full pull downloads, near enough)."""
        return sum(layer.size for layer in self.layers)

    @property
    def tar_bytes(self) -> int:
        """Sum of the layers' uncompressed sizes."""
        return sum(layer.tar_bytes for layer in self.layers)

    def biggest_debian_layer(self) -> LayerBlob:
        """The largest Debian layer (the index-build measure mounts it alone)."""
        return max(self.layers[:-1], key=lambda layer: layer.size)


def debian_mirror() -> str:
    """The Debian mirror apt is configured with for ``bookworm`` (deb822 or one-line)."""
    sources = [Path("/etc/apt/sources.list")]
    sources_d = Path("/etc/apt/sources.list.d")
    if sources_d.is_dir():
        sources += sorted(sources_d.iterdir())
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields: dict[str, list[str]] = {}
                for line in stanza.splitlines():
                    key, sep, value = line.partition(":")
                    if sep and not line.startswith(("#", " ")):
                        fields[key.strip().lower()] = value.split()
                if SUITE in fields.get("suites", []) and "deb" in fields.get("types", []):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return "http://deb.debian.org/debian"


def rootfs_tarball(log: IO[str]) -> Path:
    """A cached tarball of a minbase Debian rootfs; debootstrapped on first use."""
    tarball = CACHE_ROOT / f"debian-{SUITE}-minbase.tar"
    if tarball.exists():
        return tarball
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    print(f"bench: debootstrap {SUITE} minbase from {mirror} (once; cached)", file=log)
    with tempfile.TemporaryDirectory(dir=CACHE_ROOT) as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(root), mirror],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        partial = tarball.with_suffix(".tar.partial")
        subprocess.run(
            ["tar", "--numeric-owner", "--sort=name", "-C", str(root), "-cf", str(partial), "."],
            check=True,
        )
        os.rename(partial, tarball)
    return tarball


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what passes to ``sink`` (the tar stream's diffID and size)."""

    def __init__(self, sink: io.BufferedIOBase) -> None:
        super().__init__()
        self.sink = sink
        self.sha = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.count += len(view)
        self.sink.write(view)
        return len(view)


def _layer_of(name: str) -> int:
    for k, prefixes in enumerate(LAYER_PREFIXES):
        if any(name.startswith(p) for p in prefixes):
            return k
    return 0


def _norm(name: str) -> str:
    return name.removeprefix("./").rstrip("/")


def _split_rootfs(tar: tarfile.TarFile) -> list[list[tarfile.TarInfo]]:
    """Members per layer, each preceded by its parent directories; files under
    :data:`EXCLUDE_PREFIXES` (not the directories themselves) left out."""
    members = [m for m in tar.getmembers() if _norm(m.name) not in ("", ".")]
    for m in members:  # "usr/bin/x", not "./usr/bin/x", as image builders write names
        m.name = _norm(m.name)
        if m.islnk():
            m.linkname = _norm(m.linkname)
    by_name = {_norm(m.name): m for m in members}
    layer_of: dict[str, int] = {}
    out: list[list[tarfile.TarInfo]] = [[] for _ in LAYER_PREFIXES]
    placed: list[set[str]] = [set() for _ in LAYER_PREFIXES]
    for m in members:
        name = _norm(m.name)
        if name.startswith(EXCLUDE_PREFIXES) and (name.startswith("dev/") or not m.isdir()):
            continue
        k = _layer_of(name + ("/" if m.isdir() else ""))
        if m.islnk():
            k = max(k, layer_of.get(_norm(m.linkname), 0))
        layer_of[name] = k
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in placed[k] and parent in by_name:
                placed[k].add(parent)
                out[k].append(by_name[parent])
        if name not in placed[k]:
            placed[k].add(name)
            out[k].append(m)
    return out


def _small_file_text(rng: random.Random, i: int, j: int) -> bytes:
    words = ["alpha", "beta", "gamma", "delta", "kappa", "omega", "sigma", "lambda"]
    lines = [f"# small file {i}/{j}"]
    for _ in range(rng.randrange(4, 60)):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randrange(3, 12))))
    if (i * SMALL_FILES_PER_DIR + j) % 997 == 0:
        lines.append(f"the {GREP_PATTERN} is here")
    return ("\n".join(lines) + "\n").encode()


def _data_members() -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """The data layer: thousands of small text files, then one 64 MiB random file."""

    def info(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        ti.mtime = MTIME
        ti.size = size
        return ti

    yield info("srv", tarfile.DIRTYPE), None
    yield info("srv/bench", tarfile.DIRTYPE), None
    yield info("srv/bench/small", tarfile.DIRTYPE), None
    rng = random.Random(7)
    for i in range(SMALL_DIRS):
        yield info(f"srv/bench/small/d{i:03d}", tarfile.DIRTYPE), None
        for j in range(SMALL_FILES_PER_DIR):
            data = _small_file_text(rng, i, j)
            yield (
                info(f"srv/bench/small/d{i:03d}/f{j:03d}.txt", tarfile.REGTYPE, len(data)),
                (io.BytesIO(data)),
            )
    big = random.Random(64).randbytes(BIG_FILE_BYTES)
    yield info(BIG_FILE, tarfile.REGTYPE, len(big)), io.BytesIO(big)


def _write_layer(
    blobs: Path, members: Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]], what: str
) -> LayerBlob:
    tmp = blobs / f".layer-{os.getpid()}.tmp"
    # mtime=0 and no file name keep the gzip header, hence the digest, stable.
    with (
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz,
    ):
        hashing = _HashingWriter(gz)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as out:
            for ti, data in members:
                out.addfile(ti, data)
    sha = hashlib.sha256()
    with tmp.open("rb") as fh:
        while chunk := fh.read(COPY_BUFFER_BYTES):
            sha.update(chunk)
    digest = sha.hexdigest()
    path = blobs / digest
    os.replace(tmp, path)
    return LayerBlob(
        path,
        f"sha256:{digest}",
        path.stat().st_size,
        f"sha256:{hashing.sha.hexdigest()}",
        hashing.count,
        what,
    )


def _put_json(blobs: Path, obj: Any) -> tuple[str, int]:
    data = json.dumps(obj, indent=2, sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _manifest(blobs: Path, layers: list[LayerBlob]) -> dict[str, Any]:
    config = {
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/bash"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": layer.what} for layer in layers],
    }
    config_digest, config_size = _put_json(blobs, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": MT_LAYER, "digest": layer.digest, "size": layer.size} for layer in layers
        ],
    }
    digest, size = _put_json(blobs, manifest)
    return {"mediaType": MT_MANIFEST, "digest": digest, "size": size}


def build_image(layout: Path, log: IO[str]) -> BenchImage:
    """Write the benchmark image's OCI layout at ``layout``: tag ``full`` (every layer)
    and tag ``onelayer`` (the biggest Debian layer alone, for the index-build measure)."""
    tarball = rootfs_tarball(log)
    if layout.exists():
        shutil.rmtree(layout)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers: list[LayerBlob] = []
    files = 0
    with tarfile.open(tarball) as tar:
        parts = _split_rootfs(tar)
        for k, members in enumerate(parts):
            files += len(members)

            def with_data(
                ms: list[tarfile.TarInfo],
            ) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
                for m in ms:
                    yield m, tar.extractfile(m) if m.isreg() else None

            layers.append(_write_layer(blobs, with_data(members), f"debian {SUITE} part {k}"))
    layers.append(_write_layer(blobs, _data_members(), "small files + 64 MiB random file"))
    files += 3 + SMALL_DIRS * (SMALL_FILES_PER_DIR + 1) + 1
    image = BenchImage(layout, layers, files=files)
    descs = []
    for tag, subset in (("full", layers), ("onelayer", [image.biggest_debian_layer()])):
        desc = _manifest(blobs, subset)
        image.tags[tag] = desc["digest"]
        descs.append({**desc, "annotations": {"org.opencontainers.image.ref.name": tag}})
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descs}
    (layout / "index.json").write_text(json.dumps(index, indent=2))
    return image


def skopeo(*args: str) -> None:
    """Run skopeo with a permissive policy of our own (the host's may be strict)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as policy:
        policy.write(POLICY)
        policy.flush()
        proc = subprocess.run(
            ["skopeo", "--policy", policy.name, *args], capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed:\n{proc.stderr}")


def push(image: BenchImage, host: str, repo: str) -> dict[str, str]:
    """Push every tag of the layout to ``host/repo`` byte for byte; returns tag -> ref."""
    refs = {}
    for tag in image.tags:
        ref = f"{host}/{repo}:{tag}"
        skopeo(
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
            f"oci:{image.layout}:{tag}",
            f"docker://{ref}",
        )
        refs[tag] = ref
    return refs


@contextlib.contextmanager
def policy_file() -> Iterator[str]:
    """A permissive skopeo policy file for the timed pulls (path yielded)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as policy:
        policy.write(POLICY)
        policy.flush()
        yield policy.name


LAYOUT_VERSION = 2


def cached_image(log: IO[str]) -> BenchImage:
    """The benchmark layout under the cache root, rebuilt only when the rootfs tarball
    or this builder changed (a JSON stamp beside it says what it holds)."""
    tarball = rootfs_tarball(log)
    layout = CACHE_ROOT / "layout"
    stamp = CACHE_ROOT / "layout.json"
    st = tarball.stat()
    key = {"version": LAYOUT_VERSION, "tarball": [st.st_size, st.st_mtime_ns]}
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("key") == key and (layout / "index.json").exists():
            layers = [
                LayerBlob(
                    Path(d["path"]), d["digest"], d["size"], d["diff_id"], d["tar_bytes"], d["what"]
                )
                for d in saved["layers"]
            ]
            return BenchImage(layout, layers, saved["tags"], saved["files"])
    print("bench: writing the image's layers (once; cached)", file=log, flush=True)
    stamp.unlink(missing_ok=True)
    image = build_image(layout, log)
    saved_layers = [
        {
            "path": str(x.path),
            "digest": x.digest,
            "size": x.size,
            "diff_id": x.diff_id,
            "tar_bytes": x.tar_bytes,
            "what": x.what,
        }
        for x in image.layers
    ]
    stamp.write_text(
        json.dumps({"key": key, "layers": saved_layers, "tags": image.tags, "files": image.files})
    )
    return image
