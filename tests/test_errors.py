"""Bad input: every failure is one line on stderr, a non-zero exit, no traceback, and
nothing left mounted."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, file, push_layout, write_layout
from mounting import is_mounted, mounted, ocifs, one_line_error
from registry_fixtures import Registry
from treecompare import assert_same_tree, snapshot


def _mount_fails(ref: str, tmp_path: Path, *extra: str) -> str:
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    result = ocifs("mount", ref, str(mnt), "--cache-dir", str(tmp_path / "cache"), *extra)
    line = one_line_error(result)
    assert not is_mounted(mnt)
    return line


def _doctor_layer(layout: Path, transform: Callable[[bytes], bytes]) -> None:
    """Replace the first layer's blob by ``transform(blob)``, fixing up the manifest's
    descriptor (digest, size) and index.json, so that only the layer's bytes are bad."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    top = index["manifests"][0]
    manifest = json.loads((blobs / top["digest"][7:]).read_bytes())
    layer = manifest["layers"][0]
    data = transform((blobs / layer["digest"][7:]).read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    layer.update(digest=f"sha256:{digest}", size=len(data))
    raw = json.dumps(manifest).encode()
    mdigest = hashlib.sha256(raw).hexdigest()
    (blobs / mdigest).write_bytes(raw)
    top.update(digest=f"sha256:{mdigest}", size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))


def _layer_blob(layout: Path) -> Path:
    """The blob file of the first layer of the layout's (only) manifest."""
    blobs = layout / "blobs" / "sha256"
    top = json.loads((layout / "index.json").read_text())["manifests"][0]
    manifest = json.loads((blobs / top["digest"][7:]).read_bytes())
    return blobs / manifest["layers"][0]["digest"][7:]


def _image(tmp_path: Path, *entries_: object, compression: str = "gzip") -> Path:
    entries = list(entries_) or [file("etc/hello", b"hello\n" * 5000)]
    layout = write_layout(Image(layers=[Layer(entries, compression=compression)]),  # type: ignore[arg-type]
                          tmp_path / "layout")  # fmt: skip
    return layout.path


@pytest.mark.parametrize(
    "ref",
    ["localhost:5000/UPPER", "localhost:5000/x:bad tag", "x@sha256:1234", "a//b", "", "oci:"],
)
def test_malformed_reference(ref: str, tmp_path: Path) -> None:
    line = _mount_fails(ref, tmp_path)
    assert "reference" in line


def test_unknown_repository_and_tag(sample_image: BuiltImage, tmp_path: Path) -> None:
    line = _mount_fails(f"{sample_image.host}/no/such-repo:latest", tmp_path)
    assert "no/such-repo" in line
    line = _mount_fails(f"{sample_image.host}/{sample_image.repo}:no-such-tag", tmp_path)
    assert "no-such-tag" in line


def test_unknown_platform(multiarch_image: BuiltImage, tmp_path: Path) -> None:
    line = _mount_fails(multiarch_image.ref, tmp_path, "--platform", "linux/s390x")
    assert "linux/s390x" in line and "linux/amd64" in line


def test_credentials(auth_registry: Registry, tmp_path: Path) -> None:
    layout = _image(tmp_path)
    creds = f"{auth_registry.user}:{auth_registry.password}"
    ref = f"{auth_registry.host}/private/app:1"
    push_layout(write_layout(Image(layers=[Layer([file("etc/hello", b"hi\n")])]),
                             tmp_path / "l2"), ref, creds=creds)  # fmt: skip
    del layout
    line = _mount_fails(ref, tmp_path)
    assert "login" in line and "private/app" in line
    line = _mount_fails(ref, tmp_path, "--creds", f"{auth_registry.user}:wrong")
    assert auth_registry.password not in line
    with mounted(ref, tmp_path / "ok", tmp_path / "cache", "--creds", creds) as mnt:
        assert (mnt / "etc" / "hello").read_bytes() == b"hi\n"
    # The same credentials from an auth file (containers-auth.json).
    import base64

    token = base64.b64encode(creds.encode()).decode()
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    with mounted(ref, tmp_path / "ok2", tmp_path / "cache", "--authfile", str(authfile)) as mnt:
        assert (mnt / "etc" / "hello").read_bytes() == b"hi\n"


def test_truncated_gzip_layer(registry: Registry, tmp_path: Path) -> None:
    layout = _image(tmp_path)
    _doctor_layer(layout, lambda blob: blob[: len(blob) // 2])
    line = _mount_fails(f"oci:{layout}:latest", tmp_path)
    assert "layer 0" in line and "gzip" in line


def test_garbage_layer_through_registry(registry: Registry, tmp_path: Path) -> None:
    layout = _image(tmp_path)
    _doctor_layer(layout, lambda blob: b"\x1f\x8b" + bytes(range(256)) * 40)
    ref = f"{registry.host}/bad/garbage:latest"
    from imagebuild import Layout, skopeo

    del Layout
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{ref}")
    line = _mount_fails(ref, tmp_path)
    assert "layer 0" in line


def test_diff_id_mismatch(tmp_path: Path) -> None:
    layout = _image(tmp_path)
    other = gzip.compress(b"\0" * 1024, mtime=0)  # a valid, empty tar: diffID differs
    _doctor_layer(layout, lambda blob: other)
    line = _mount_fails(f"oci:{layout}:latest", tmp_path)
    assert "diffID" in line


def test_blob_digest_mismatch(tmp_path: Path) -> None:
    layout = _image(tmp_path)
    blob = _layer_blob(layout)
    raw = bytearray(blob.read_bytes())
    raw[-20] ^= 1
    blob.write_bytes(bytes(raw))
    line = _mount_fails(f"oci:{layout}:latest", tmp_path)
    assert "does not match" in line


def test_entry_escaping_the_root(tmp_path: Path) -> None:
    layout = _image(tmp_path, file("etc/ok", b"ok"), file("../../etc/evil", b"x"))
    line = _mount_fails(f"oci:{layout}:latest", tmp_path)
    assert "escapes" in line and "layer 0" in line


def test_mount_point_missing_or_busy(sample_image: BuiltImage, tmp_path: Path) -> None:
    result = ocifs("mount", sample_image.ref, str(tmp_path / "nope"))
    assert "nope" in one_line_error(result)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    result = ocifs("mount", sample_image.ref, str(busy))
    assert "not empty" in one_line_error(result)
    assert not is_mounted(busy)


def test_image_still_right_after_errors(sample_image: BuiltImage, tmp_path: Path) -> None:
    with mounted(sample_image.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(sample_image.oracle, snapshot(mnt))
