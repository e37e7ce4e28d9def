"""``ocifs export``: the merged tree as one tar stream, unpacked by GNU tar (as root)
into the same tree as umoci's unpack of the image (the oracle)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from image_catalog import CAPABILITY_XATTR
from image_fixtures import BuiltImage
from mounting import ocifs, one_line_error
from treecompare import assert_same_tree, snapshot

TIMEOUT_S = 300
TAR_EXTRACT = ["tar", "-xpf", "-", "--xattrs", "--xattrs-include=*", "--numeric-owner"]


def _export_into(ref: str, dest: Path, cache: Path) -> None:
    """``ocifs export REF -o -`` piped into ``tar -x`` at ``dest``."""
    dest.mkdir()
    with subprocess.Popen(
        [sys.executable, "-m", "ocifs", "export", ref, "-o", "-", "--cache-dir", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as export:
        tar = subprocess.run(
            [*TAR_EXTRACT, "-C", str(dest)], stdin=export.stdout, capture_output=True,
            timeout=TIMEOUT_S, check=False,
        )  # fmt: skip
        assert export.stderr is not None
        err = export.stderr.read()
        assert export.wait(timeout=TIMEOUT_S) == 0, err
    assert tar.returncode == 0, tar.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="tar restores owners and devices only as root")
@pytest.mark.parametrize("name", ["torture", "sample", "docker_sample"])
def test_export_unpacks_to_the_oracle_tree(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    image: BuiltImage = request.getfixturevalue(f"{name}_image")
    dest = tmp_path / "rootfs"
    _export_into(image.ref, dest, tmp_path / "cache")
    assert_same_tree(image.oracle, snapshot(dest))


def test_export_to_file_from_oci_layout(torture_image: BuiltImage, tmp_path: Path) -> None:
    out = tmp_path / "rootfs.tar"
    result = ocifs("export", torture_image.layout_info.oci_ref, "-o", str(out),
                   "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size % tarfile.RECORDSIZE == 0
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["."].isdir() and members["."].mode == 0o751  # tarfile drops the "/"
    # One name of the shared file carries the data, the others link to it.
    group = [members[n] for n in ("hl/a", "hl/b", "hl/c")]
    assert [m.islnk() for m in group] == [False, True, True]
    assert {m.linkname for m in group[1:]} == {"hl/a"}
    assert members["hl/link-to-lower"].isreg()
    cap = members["xattr/cap"].pax_headers["SCHILY.xattr.security.capability"]
    assert cap.encode("utf-8", "surrogateescape") == CAPABILITY_XATTR
    assert "SCHILY.xattr.user.empty" not in members["xattr/binary"].pax_headers
    assert members["modes/mtime-frac"].mtime == pytest.approx(1_600_000_000.25, abs=1e-6)
    assert (members["dev/bigdev"].devmajor, members["dev/bigdev"].devminor) == (259, 300_000)
    assert members["dev/pipe"].isfifo()
    assert not any(".wh." in n for n in members)
    assert "wh/gone" not in members and "opq/lower1" not in members


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    result = ocifs("export", f"oci:{tmp_path / 'missing'}:latest", "-o", str(tmp_path / "x.tar"),
                   "--cache-dir", str(tmp_path / "cache"))  # fmt: skip
    assert one_line_error(result).startswith("ocifs: export: ")


def test_export_into_closed_pipe_is_quiet(sample_image: BuiltImage, tmp_path: Path) -> None:
    shell = (
        f"{sys.executable} -m ocifs export {sample_image.ref} -o - "
        f"--cache-dir {tmp_path / 'cache'} | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"
    )
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.stderr == ""
    assert done.stdout.strip() in ("0", "141")
