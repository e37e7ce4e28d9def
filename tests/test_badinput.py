"""Bad input: a corpus of broken manifests, indexes, configs and layers served from real
OCI layouts (``oci:DIR``) to the real CLI, plus property-based fuzzing (hypothesis) of
the parsers. Each bad input gives a one-line error (non-zero exit, no traceback) or a
mount whose affected files fail with EIO; nothing is written outside the cache dir and
nothing half-written stays in it. Cases already in test_errors.py (truncated gzip,
garbage through a registry, diffID mismatch, blob digest mismatch, ``../../etc/evil``)
are not repeated here.
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
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mounting import is_mounted, ocifs, one_line_error

from ocifs.errors import OcifsError
from ocifs.layers.entry import EntryType, LayerEntry, normalize_path
from ocifs.layers.gzip import MIN_EXPANSION_LIMIT_BYTES
from ocifs.layers.tar import list_tar
from ocifs.oci import (
    Descriptor,
    Platform,
    media_type_of,
    parse_config,
    parse_index,
    parse_manifest,
    select_platform,
)
from ocifs.reference import parse_reference
from ocifs.tree import build_tree

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
CORPUS = Path(__file__).parent / "corpus"
# Marks the paths bad entries try to reach outside the image: none may appear.
MARKER = f"ocifs-escape-{uuid.uuid4().hex[:12]}"
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- building layouts by hand ---------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RawLayout:
    """An OCI layout written blob by blob, so that any field can be wrong."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        (self.root / "blobs" / "sha256" / _digest(data)[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": _digest(data), "size": len(data), **extra}

    def json_blob(self, obj: Any, media_type: str, **extra: Any) -> dict[str, Any]:
        return self.blob(json.dumps(obj).encode(), media_type, **extra)

    def image(
        self,
        layers: list[tuple[bytes, str]],
        *,
        config: dict[str, Any] | None = None,
        edit_manifest: Callable[[dict[str, Any]], None] | None = None,
        platform: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Write layers (blob, media type), a config with their true diffIDs (unless
        ``config`` is given) and a manifest; return the manifest's descriptor."""
        descs, diff_ids = [], []
        for blob, mt in layers:
            descs.append(self.blob(blob, mt))
            try:
                raw = gzip.decompress(blob) if mt == MT_TGZ else blob
            except (OSError, EOFError):
                raw = blob  # broken on purpose: any diffID will do
            diff_ids.append(_digest(raw))
        if config is None:
            config = {"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}  # fmt: skip
        manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                    "config": self.json_blob(config, MT_CONFIG), "layers": descs}  # fmt: skip
        if edit_manifest is not None:
            edit_manifest(manifest)
        extra = {"platform": platform} if platform else {}
        return self.json_blob(manifest, MT_MANIFEST, **extra)

    def tag(self, desc: dict[str, Any], tag: str = "latest") -> str:
        """Name ``desc`` in index.json; return the ``oci:DIR:TAG`` reference."""
        entry = {**desc, "annotations": {"org.opencontainers.image.ref.name": tag}}
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [entry]}
        (self.root / "index.json").write_text(json.dumps(index))
        return f"oci:{self.root}:{tag}"


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def reg(name: str, data: bytes = b"x\n", **kw: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in kw.items():
        setattr(info, key, value)
    return info, data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# --- running the CLI in a sandbox -----------------------------------------------------


@dataclass
class Outcome:
    """What the user saw: the one error line, or None for a mount that came up (the
    check then ran against it)."""

    error: str | None


def _listing(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in filenames:
            st = os.lstat(here / name)
            out[str((here / name).relative_to(root))] = (st.st_size, int(st.st_mtime_ns))
    return out


def _escaped() -> list[str]:
    """Paths outside any test directory that carry this run's marker."""
    found = []
    for base in (Path("/tmp"), Path("/"), Path("/etc")):
        found += [str(p) for p in base.iterdir() if MARKER in p.name]
    return found


def run_case(
    tmp_path: Path, ref: str, check: Callable[[Path], None] | None = None, *extra: str
) -> Outcome:
    """``ocifs mount REF`` with HOME, XDG dirs and TMPDIR inside ``tmp_path/home``;
    a failure must be one line; a mount is checked with ``check`` then unmounted. The
    files under ``tmp_path`` (but the cache) must be the same before and after, and
    the cache must hold no scratch or half-written files."""
    home = tmp_path / "home"
    for sub in ("tmp", "cache", "state", "run"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home / "tmp"),
           "XDG_CACHE_HOME": str(home / "cache"), "XDG_STATE_HOME": str(home / "state"),
           "XDG_RUNTIME_DIR": str(home / "run")}  # fmt: skip
    cache = tmp_path / "cache"
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    log = home / "state" / "mount.log"
    skip = {cache, mnt, home / "state"}
    before = _listing(tmp_path, skip)
    result = ocifs("mount", ref, str(mnt), "--cache-dir", str(cache), "--log-file", str(log),
                   *extra, env=env)  # fmt: skip
    try:
        if result.returncode == 0:
            assert is_mounted(mnt)
            assert check is not None, f"{ref} mounted, an error was expected"
            check(mnt)
            outcome = Outcome(None)
        else:
            outcome = Outcome(one_line_error(result))
            assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert _listing(tmp_path, skip) == before, "files written outside the cache dir"
    assert not _escaped()
    if cache.exists():
        scratch = cache / "tmp"
        assert not scratch.exists() or not any(scratch.iterdir()), "scratch files left"
        assert not [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]
    if log.exists():
        assert "Traceback" not in log.read_text()
    return outcome


def _expect_error(outcome: Outcome, *words: str) -> None:
    assert outcome.error is not None
    for word in words:
        assert word.lower() in outcome.error.lower(), (word, outcome.error)


# --- manifests, indexes, configs -------------------------------------------------------

GOOD_LAYER = gz(tar_of(reg("etc/hello", b"hello\n")))


def _one_image(layout: RawLayout, **kw: Any) -> str:
    return layout.tag(layout.image([(GOOD_LAYER, MT_TGZ)], **kw))


def _del(*keys: str | int) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        obj: Any = m
        for key in keys[:-1]:
            obj = obj[key]
        del obj[keys[-1]]

    return edit


def _set(value: Any, *keys: str | int) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        obj: Any = m
        for key in keys[:-1]:
            obj = obj[key]
        obj[keys[-1]] = value

    return edit


MANIFEST_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, ...]]] = {
    "no-config": (_del("config"), ("config",)),
    "no-layers": (_del("layers"), ("layers",)),
    "layers-not-list": (_set({"a": 1}, "layers"), ("layers",)),
    "schema-1": (_set(1, "schemaVersion"), ("schemaVersion",)),
    "unknown-media-type": (_set("application/vnd.example+json", "mediaType"), ("media type",)),
    "layer-no-digest": (_del("layers", 0, "digest"), ("digest",)),
    "layer-bad-digest": (_set("sha256:xyz", "layers", 0, "digest"), ("digest",)),
    "layer-negative-size": (_set(-1, "layers", 0, "size"), ("size",)),
    "layer-string-size": (_set("12", "layers", 0, "size"), ("size",)),
    "layer-size-too-big": (_set(10**6, "layers", 0, "size"), ("blob",)),
    "layer-size-too-small": (_set(10, "layers", 0, "size"), ("does not match",)),
    "layer-zstd": (
        _set("application/vnd.oci.image.layer.v1.tar+zstd", "layers", 0, "mediaType"),
        ("zstd",),
    ),
    "layer-encrypted": (
        _set("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", "layers", 0, "mediaType"),
        ("encrypted",),
    ),
    "layer-foreign-urls": (_set(["http://example.invalid/x"], "layers", 0, "urls"), ("foreign",)),
    "layer-unknown-type": (_set("text/plain", "layers", 0, "mediaType"), ("media type",)),
    "config-digest-wrong": (_set("sha256:" + "0" * 64, "config", "digest"), ("not found",)),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_bad_manifest(case: str, tmp_path: Path) -> None:
    edit, words = MANIFEST_EDITS[case]
    layout = RawLayout(tmp_path / "layout")
    _expect_error(run_case(tmp_path, _one_image(layout, edit_manifest=edit)), *words)


CONFIGS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "no-rootfs": ({"architecture": "amd64", "os": "linux"}, ("diff_ids",)),
    "diff-ids-not-list": ({"rootfs": {"diff_ids": "sha256:00"}}, ("diff_ids",)),
    "too-few-diff-ids": ({"rootfs": {"diff_ids": []}}, ("diffIDs",)),
    "too-many-diff-ids": ({"rootfs": {"diff_ids": [_digest(b"a"), _digest(b"b")]}}, ("diffIDs",)),
    "wrong-diff-id": ({"rootfs": {"diff_ids": [_digest(b"other")]}}, ("diffID",)),
    "not-an-object": ([1, 2, 3], ("JSON object",)),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_bad_config(case: str, tmp_path: Path) -> None:
    config, words = CONFIGS[case]
    layout = RawLayout(tmp_path / "layout")
    _expect_error(run_case(tmp_path, _one_image(layout, config=config)), *words)


def test_manifest_digest_wrong(tmp_path: Path) -> None:
    layout = RawLayout(tmp_path / "layout")
    desc = layout.image([(GOOD_LAYER, MT_TGZ)])
    path = layout.root / "blobs" / "sha256" / desc["digest"][7:]
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    _expect_error(run_case(tmp_path, layout.tag(desc)), "digest")


def test_manifest_not_json_and_huge(tmp_path: Path) -> None:
    layout = RawLayout(tmp_path / "layout")
    ref = layout.tag(layout.blob(b"\xff\xfe not json {", MT_MANIFEST))
    _expect_error(run_case(tmp_path, ref), "JSON")
    layout = RawLayout(tmp_path / "layout2")
    huge = {"annotations": {"pad": "x" * (5 * 1024 * 1024)}}
    ref = _one_image(layout, edit_manifest=lambda m: m.update(huge))
    _expect_error(run_case(tmp_path, ref), "larger than")


def test_deeply_nested_index(tmp_path: Path) -> None:
    layout = RawLayout(tmp_path / "layout")
    amd64 = {"os": "linux", "architecture": "amd64"}
    desc = layout.image([(GOOD_LAYER, MT_TGZ)], platform=amd64)
    for _ in range(12):
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [desc]}
        desc = layout.json_blob(index, MT_INDEX, platform=amd64)
    _expect_error(run_case(tmp_path, layout.tag(desc), None, "--platform", "linux/amd64"),
                  "nested")  # fmt: skip


def test_unknown_platforms_only(tmp_path: Path) -> None:
    layout = RawLayout(tmp_path / "layout")
    descs = [
        layout.image([(GOOD_LAYER, MT_TGZ)], platform={"os": "plan9", "architecture": "mips"}),
        {**layout.image([(GOOD_LAYER, MT_TGZ)]),
         "platform": {"os": "unknown", "architecture": "unknown"}},
    ]  # fmt: skip
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descs}
    ref = layout.tag(layout.json_blob(index, MT_INDEX))
    _expect_error(run_case(tmp_path, ref, None, "--platform", "linux/amd64"), "plan9/mips")


def test_index_entries_broken(tmp_path: Path) -> None:
    layout = RawLayout(tmp_path / "layout")
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [{"mediaType": MT_MANIFEST}]}
    _expect_error(run_case(tmp_path, layout.tag(layout.json_blob(index, MT_INDEX))), "digest")


# --- layers ------------------------------------------------------------------------------


def _layer_ref(tmp_path: Path, blob: bytes, mt: str = MT_TGZ, **kw: Any) -> str:
    layout = RawLayout(tmp_path / "layout")
    return layout.tag(layout.image([(blob, mt)], **kw))


def _pax(name: str, pax: dict[str, str], data: bytes = b"data\n") -> bytes:
    info, _ = reg(name, data)
    info.pax_headers = pax
    return tar_of((info, data), reg("etc/after", b"after\n"))


def _raw_header_tar(name: bytes, typeflag: bytes = b"0", data: bytes = b"x") -> bytes:
    """A ustar header built by hand, for names tarfile would never write."""
    hdr = bytearray(512)
    hdr[0 : len(name[:100])] = name[:100]
    hdr[100:108] = b"0000644\0"
    hdr[108:116] = b"0000000\0"
    hdr[116:124] = b"0000000\0"
    hdr[124:136] = f"{len(data):011o}\0".encode()
    hdr[136:148] = b"00000000000\0"
    hdr[156:157] = typeflag
    hdr[257:265] = b"ustar\x0000"
    hdr[148:156] = b" " * 8
    hdr[148:156] = f"{sum(hdr):06o}\0 ".encode()
    body = data + b"\0" * (-len(data) % 512)
    return bytes(hdr) + body + b"\0" * 1024


def _pax_link(linkpath: str) -> bytes:
    info, _ = link("etc/hl", "etc/x", tarfile.LNKTYPE)
    info.pax_headers = {"linkpath": linkpath}
    return tar_of(reg("etc/x"), (info, None))


def _corrupt_second_header() -> bytes:
    """Three files; the second header's checksum is wrong (tarfile would stop there
    quietly and list one file)."""
    data = bytearray(tar_of(reg("a"), reg("b"), reg("c"), fmt=tarfile.USTAR_FORMAT))
    data[1024 + 148] ^= 0x01
    return bytes(data)


ESCAPES = [f"../../../../../../../tmp/{MARKER}", f"a/../../{MARKER}", f"./../{MARKER}"]

LAYER_ERRORS: dict[str, tuple[bytes, str, tuple[str, ...]]] = {
    "garbage-as-gzip": (os.urandom(4096), MT_TGZ, ("layer 0",)),
    "garbage-as-tar": (b"\x01" * 4096, MT_TAR, ("layer 0",)),
    "gzip-header-only": (gz(b"")[:10], MT_TGZ, ("layer 0",)),
    "gzip-bad-crc": (gz(tar_of(reg("a")))[:-8] + b"\0" * 8, MT_TGZ, ("layer 0",)),
    "gzip-of-garbage": (gz(os.urandom(3000)), MT_TGZ, ("layer 0",)),
    "tar-truncated-mid-file": (tar_of(reg("big", b"y" * 5000))[:1500], MT_TAR, ("layer 0",)),
    "escape-1": (tar_of(reg(ESCAPES[0])), MT_TAR, ("escapes",)),
    "escape-2": (tar_of(reg(ESCAPES[1])), MT_TAR, ("escapes",)),
    "escape-3": (gz(tar_of(reg(ESCAPES[2]))), MT_TGZ, ("escapes",)),
    "hardlink-escape": (
        tar_of(link("etc/l", f"../../{MARKER}", tarfile.LNKTYPE)),
        MT_TAR,
        ("escapes",),
    ),
    "hardlink-missing": (
        tar_of(reg("etc/a"), link("etc/l", "etc/nope", tarfile.LNKTYPE)),
        MT_TAR,
        ("does not exist",),
    ),
    "hardlink-to-dir": (
        tar_of(link("l", "etc", tarfile.LNKTYPE), reg("etc/a")),
        MT_TAR,
        ("hardlink",),
    ),
    "hardlink-to-root": (tar_of(link("l", "./", tarfile.LNKTYPE)), MT_TAR, ("root",)),
    "whiteout-dotdot": (tar_of(reg("etc/.wh..."), reg("x")), MT_TAR, ("whiteout",)),
    "whiteout-dot": (tar_of(reg("etc/.wh.."), reg("x")), MT_TAR, ("whiteout",)),
    "whiteout-empty": (tar_of(reg("etc/.wh."), reg("x")), MT_TAR, ("whiteout",)),
    "whiteout-root-dotdot": (tar_of(reg(".wh..."), reg("x")), MT_TAR, ("whiteout",)),
    "pax-path-nul": (_pax("etc/x", {"path": "etc/a\0b"}), MT_TAR, ("NUL",)),
    "pax-linkpath-escape": (_pax_link(f"../{MARKER}"), MT_TAR, ("escapes",)),
    "pax-size-negative": (_pax("etc/x", {"size": "-5"}), MT_TAR, ("layer 0",)),
    "pax-size-huge": (_pax("etc/x", {"size": str(10**15)}), MT_TAR, ("layer 0",)),
    "pax-size-beyond-stream": (_pax("etc/x", {"size": "70000"}), MT_TAR, ("layer 0",)),
    "root-as-file": (tar_of(reg("/")), MT_TAR, ("root",)),
    "bad-header-mid-archive": (_corrupt_second_header(), MT_TAR, ("invalid tar header",)),
    "parent-is-file": (tar_of(reg("etc"), reg("etc/x")), MT_TAR, ("not a directory",)),
    "symlink-loop-parent": (
        tar_of(link("a", "b"), link("b", "a"), reg("a/x")),
        MT_TAR,
        ("symbolic links",),
    ),
    "unknown-typeflag": (_raw_header_tar(b"etc/odd", b"Z"), MT_TAR, ("type",)),
    "gnu-sparse": (_raw_header_tar(b"etc/sparse", b"S"), MT_TAR, ("layer 0",)),
}


@pytest.mark.parametrize("case", sorted(LAYER_ERRORS))
def test_bad_layer(case: str, tmp_path: Path) -> None:
    blob, mt, words = LAYER_ERRORS[case]
    outcome = run_case(tmp_path, _layer_ref(tmp_path, blob, mt))
    _expect_error(outcome, *words)


def _check_files(want: dict[str, bytes | str]) -> Callable[[Path], None]:
    """A check that each path reads (bytes) or readlinks (str) as given."""

    def check(mnt: Path) -> None:
        for rel, value in want.items():
            if isinstance(value, str):
                assert os.readlink(mnt / rel) == value, rel
            else:
                assert (mnt / rel).read_bytes() == value, rel

    return check


LAYER_MOUNTS: dict[str, tuple[bytes, dict[str, bytes | str]]] = {
    # Symlink targets are just strings: absolute or climbing ones are fine.
    "symlink-absolute": (
        tar_of(link("etc/shadow-link", f"/etc/{MARKER}")),
        {"etc/shadow-link": f"/etc/{MARKER}"},
    ),
    "symlink-climbing": (
        tar_of(link("a/b/up", f"../../../../../tmp/{MARKER}")),
        {"a/b/up": f"../../../../../tmp/{MARKER}"},
    ),
    "absolute-names": (
        tar_of(reg("/etc/abs", b"abs\n"), reg("//etc///two", b"2\n")),
        {"etc/abs": b"abs\n", "etc/two": b"2\n"},
    ),
    "dot-names": (tar_of(reg("./a/./b/../c", b"c\n")), {"a/c": b"c\n"}),
    "duplicates-last-wins": (
        tar_of(reg("etc/dup", b"first\n"), reg("etc/dup", b"second!\n")),
        {"etc/dup": b"second!\n"},
    ),
    "hardlink-to-later-entry": (
        tar_of(link("etc/early", "etc/late", tarfile.LNKTYPE), reg("etc/late", b"late\n")),
        {"etc/early": b"late\n", "etc/late": b"late\n"},
    ),
    "hardlink-absolute-target": (
        tar_of(reg("etc/t", b"t\n"), link("etc/l", "/etc/t", tarfile.LNKTYPE)),
        {"etc/l": b"t\n"},
    ),
    "pax-size-garbage-ignored": (_pax("etc/x", {"size": "abc"}, b""), {"etc/after": b"after\n"}),
}


@pytest.mark.parametrize("case", sorted(LAYER_MOUNTS))
def test_odd_but_valid_layer(case: str, tmp_path: Path) -> None:
    blob, want = LAYER_MOUNTS[case]
    outcome = run_case(tmp_path, _layer_ref(tmp_path, gz(blob)), _check_files(want))
    assert outcome.error is None


def _corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.tar")) if CORPUS.is_dir() else []


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_corpus_tar(path: Path, tmp_path: Path) -> None:
    """Hand-made tar files kept in tests/corpus/: each is refused in one line."""
    outcome = run_case(tmp_path, _layer_ref(tmp_path, path.read_bytes(), MT_TAR))
    _expect_error(outcome, "layer 0")


# --- gzip bombs --------------------------------------------------------------------------


def _zeros_bomb(total_bytes: int) -> bytes:
    """A gzip'd tar of one file of zeros ``total_bytes`` long, as concatenated gzip
    members (one compressed run of zeros repeated), made in well under a second."""
    member_bytes = 64 * 1024 * 1024
    head = tarfile.TarInfo("zeros")
    head.size = total_bytes - 512 - 1024  # the end-of-archive blocks are zeros too
    head.mode = 0o644
    header = head.tobuf(tarfile.USTAR_FORMAT)
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = co.compress(b"\0" * member_bytes) + co.flush()
    members = [gz(header)] + [member] * ((total_bytes - 512) // member_bytes)
    rest = (total_bytes - 512) % member_bytes
    if rest:
        members.append(gz(b"\0" * rest))
    return b"".join(members)


BOMB_BYTES = 4 * 1024**3
BOMB_BOUND_S = 300.0
BOMB_MAX_RSS_KIB = 1024 * 1024


def test_gzip_bomb_is_refused_with_bounded_work(tmp_path: Path) -> None:
    """4 GiB of zeros in a 4 MB gzip layer: refused in one line once the stream
    expands past max(1 GiB, 250x the blob), in bounded time and memory."""
    bomb = _zeros_bomb(BOMB_BYTES)
    assert len(bomb) < BOMB_BYTES // 500
    config = {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}}
    ref = _layer_ref(tmp_path, bomb, MT_TGZ, config=config)
    # Measure the daemon's peak RSS from a wrapper whose only child is the CLI.
    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(r.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)\n"
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "ocifs", "mount", ref, str(mnt),
         "--cache-dir", str(tmp_path / "cache"), "--log-file", str(tmp_path / "log")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    peak_kib = int(result.stdout.strip() or 0)
    line = one_line_error(result)
    print(f"bomb: {line} in {elapsed:.1f}s, peak RSS {peak_kib} KiB")
    assert "gzip bomb" in line and "layer 0" in line
    assert elapsed < BOMB_BOUND_S
    assert 0 < peak_kib < BOMB_MAX_RSS_KIB
    assert not is_mounted(mnt)
    assert not list((tmp_path / "cache").rglob("*.gzidx"))


def test_small_bomb_under_the_limit_mounts(tmp_path: Path) -> None:
    """Below the floor (here 256 MiB of zeros) a layer of zeros is legal and reads right."""
    size = 256 * 1024 * 1024
    assert size < MIN_EXPANSION_LIMIT_BYTES
    bomb = _zeros_bomb(size)
    digest = hashlib.sha256()  # the diffID, hashed without holding the stream
    with gzip.GzipFile(fileobj=io.BytesIO(bomb)) as fh:
        while piece := fh.read(1 << 22):
            digest.update(piece)
    config = {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + digest.hexdigest()]}}
    ref = _layer_ref(tmp_path, bomb, MT_TGZ, config=config)

    def check(mnt: Path) -> None:
        with (mnt / "zeros").open("rb") as fh:
            fh.seek(200 * 1024 * 1024)
            assert fh.read(1 << 20) == b"\0" * (1 << 20)

    assert run_case(tmp_path, ref, check).error is None


# --- property-based fuzzing of the parsers --------------------------------------------


def _only_ocifs_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except OcifsError as exc:
        assert "\n" not in str(exc), str(exc)


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_parse_reference_text(text: str) -> None:
    _only_ocifs_errors(lambda: parse_reference(text))


_REF_PARTS = st.lists(
    st.sampled_from(["docker://", "localhost", ":5000", "/", "a", "B", "..", "-", "_", "__",
                     ":", "@", "sha256:", "0" * 64, "[::1]", ".", "x" * 130, "é", "\0", " "]),
    max_size=12,
)  # fmt: skip


@FUZZ
@given(_REF_PARTS)
def test_fuzz_parse_reference_pieces(parts: list[str]) -> None:
    _only_ocifs_errors(lambda: parse_reference("".join(parts)))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_DIGESTS = st.sampled_from(["sha256:" + "a" * 64, "sha512:" + "b" * 128, "sha256:xyz", "", 5])
_DESCRIPTOR = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.sampled_from([MT_MANIFEST, MT_INDEX, MT_TGZ, "", 3]) | _JSON,
        "digest": _DIGESTS | _JSON,
        "size": st.integers(-5, 10**20) | _JSON,
        "platform": st.fixed_dictionaries(
            {}, optional={"os": st.sampled_from(["linux", 1]) | _JSON,
                          "architecture": st.sampled_from(["amd64", None]) | _JSON,
                          "variant": _JSON}) | _JSON,
        "annotations": st.dictionaries(st.text(max_size=5), _JSON, max_size=3) | _JSON,
        "urls": _JSON,
        "artifactType": _JSON,
    },
)  # fmt: skip
_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.sampled_from([2, 1, "2"]) | _JSON,
        "mediaType": st.sampled_from([MT_MANIFEST, MT_INDEX, "x"]) | _JSON,
        "config": _DESCRIPTOR | _JSON,
        "layers": st.lists(_DESCRIPTOR, max_size=3) | _JSON,
        "manifests": st.lists(_DESCRIPTOR, max_size=3) | _JSON,
        "rootfs": st.fixed_dictionaries({}, optional={"diff_ids": st.lists(_DIGESTS) | _JSON})
        | _JSON,
        "os": _JSON, "architecture": _JSON, "variant": _JSON,
    },
)  # fmt: skip


def _as_bytes(doc: object) -> bytes:
    return json.dumps(doc).encode()


@FUZZ
@given(_DOCS | _JSON, st.sampled_from(["", MT_MANIFEST, MT_INDEX, "text/html; x=1"]))
def test_fuzz_oci_parsers(doc: object, header_type: str) -> None:
    raw = _as_bytes(doc)
    _only_ocifs_errors(lambda: media_type_of(raw, header_type, "fuzz"))
    _only_ocifs_errors(lambda: parse_manifest(raw, "sha256:" + "a" * 64, "fuzz"))
    _only_ocifs_errors(lambda: parse_config(raw, "sha256:" + "a" * 64, "fuzz"))

    def index() -> None:
        entries = parse_index(raw, "fuzz")
        select_platform(entries, Platform("linux", "amd64"), "fuzz")
        select_platform(entries, Platform("linux", "arm64", "v8"), "fuzz")

    _only_ocifs_errors(index)
    _only_ocifs_errors(lambda: Descriptor.from_json(doc, "fuzz"))


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_oci_parsers_raw_bytes(raw: bytes) -> None:
    _only_ocifs_errors(lambda: media_type_of(raw, "", "fuzz"))
    _only_ocifs_errors(lambda: parse_manifest(raw, "sha256:" + "a" * 64, "fuzz"))
    _only_ocifs_errors(lambda: parse_index(raw, "fuzz"))
    _only_ocifs_errors(lambda: parse_config(raw, "sha256:" + "a" * 64, "fuzz"))


@FUZZ
@given(st.text(max_size=40))
def test_fuzz_platform_parse(text: str) -> None:
    _only_ocifs_errors(lambda: Platform.parse(text))


def _seed_tar() -> bytes:
    """A small tar with most header kinds: PAX (xattr, long name), GNU long link,
    symlink, hardlink, device, fifo, directory, whiteout."""
    pax_file, data = reg("etc/" + "long" * 40 + "/f", b"pax content\n")
    pax_file.pax_headers = {"SCHILY.xattr.user.k": "v", "mtime": "1700000000.5"}
    dev = tarfile.TarInfo("dev/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    fifo = tarfile.TarInfo("run/fifo")
    fifo.type = tarfile.FIFOTYPE
    d = tarfile.TarInfo("etc")
    d.type, d.mode = tarfile.DIRTYPE, 0o755
    pax = tar_of((d, None), (pax_file, data), link("etc/s", "/etc/x"),
                 link("etc/h", pax_file.name, tarfile.LNKTYPE), (dev, None), (fifo, None),
                 reg("etc/.wh.gone"))  # fmt: skip
    gnu = tar_of(reg("g/" + "n" * 120, b"gnu\n"), link("g/l", "g/" + "n" * 120, tarfile.LNKTYPE),
                 fmt=tarfile.GNU_FORMAT)  # fmt: skip
    return _members_only(pax) + gnu  # a PAX archive running into a GNU one


def _members_only(archive: bytes) -> bytes:
    """The archive without its end-of-archive blocks and record padding."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        last = tar.getmembers()[-1]
        end = last.offset_data + -(-last.size // 512) * 512
    return archive[:end]


SEED_TAR = _seed_tar()


def _list(data: bytes) -> list[LayerEntry]:
    return list_tar(io.BytesIO(data), "fuzz layer")


def test_seed_tar_lists() -> None:
    names = [e.path for e in _list(SEED_TAR)]
    assert "etc/s" in names and "dev/null" in names and "g/l" in names


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(SEED_TAR) - 1), st.integers(0, 255)), max_size=12),
    st.integers(0, len(SEED_TAR)),
)
def test_fuzz_list_tar_mutated(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(SEED_TAR)
    for pos, value in flips:
        data[pos] = value
    _only_ocifs_errors(lambda: _list(bytes(data[:cut])))
    _only_ocifs_errors(lambda: _list(bytes(data)))


@FUZZ
@given(st.integers(0, len(SEED_TAR) // 512 - 1), st.binary(min_size=1, max_size=600))
def test_fuzz_list_tar_header_spliced(block: int, junk: bytes) -> None:
    data = SEED_TAR[: block * 512] + junk + SEED_TAR[block * 512 + len(junk) :]
    _only_ocifs_errors(lambda: _list(data))


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_list_tar_random(data: bytes) -> None:
    _only_ocifs_errors(lambda: _list(data))


_NAMES = st.sampled_from(["a", "b", "etc", ".wh.a", ".wh..wh..opq", ".wh...", "..", ".", "",
                          "lib", "usr", "x y", "é", ".wh.", ".wh..", "/", "//"])  # fmt: skip
_PATHS = st.lists(_NAMES, min_size=0, max_size=4).map("/".join)
_ENTRIES = st.builds(
    LayerEntry,
    path=_PATHS,
    type=st.sampled_from(list(EntryType)),
    mode=st.integers(0, 0o7777),
    size=st.integers(0, 10),
    linkname=_PATHS | st.sampled_from(["/", "/etc/passwd", "../../x", "a/../../b"]),
)
_LAYERS = st.lists(st.lists(_ENTRIES, max_size=12), min_size=1, max_size=4)


def _walk_tree(node: Any, depth: int = 0) -> Iterator[tuple[str, Any]]:
    assert depth < 100
    for name, child in (node.children or {}).items():
        yield name, child
        if child.type is EntryType.DIR and child is not node:
            yield from _walk_tree(child, depth + 1)


def _normalized(entry: LayerEntry) -> LayerEntry | None:
    """The entry as list_tar would make it, or None if list_tar refuses it."""
    try:
        entry.path = normalize_path(entry.path)
        if entry.type is EntryType.HARDLINK:
            entry.linkname = normalize_path(entry.linkname)
    except OcifsError:
        return None
    return entry


@FUZZ
@given(_LAYERS)
def test_fuzz_build_tree(raw_layers: list[list[LayerEntry]]) -> None:
    """Random entries (as list_tar leaves them: normalized paths, but whiteouts of odd
    names, links anywhere, type changes): only LayerFormatError may escape, and the
    tree holds no name a directory entry may not have."""
    layers = [[e for e in map(_normalized, layer) if e is not None] for layer in raw_layers]
    try:
        tree = build_tree(layers)
    except OcifsError as exc:
        assert "\n" not in str(exc)
        return
    seen = 0
    for name, child in _walk_tree(tree.root):
        seen += 1
        assert name and name not in (".", "..") and "/" not in name and "\0" not in name, name
        assert 1 <= child.ino <= tree.nodes
        assert tree.get(child.ino) is child
    assert seen < tree.nodes + sum(len(lay) for lay in layers) + 1
