"""``ocifs manifest``, ``config``, ``digest`` and ``platforms`` against skopeo and the
layouts the images were pushed from, over a real registry and ``oci:`` layouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from image_fixtures import BuiltImage
from imagebuild import skopeo
from mounting import OCIFS_TIMEOUT_S, ocifs, one_line_error

ARM = "linux/arm64/v8"


def ocifs_bytes(*args: str) -> bytes:
    """Run ``python -m ocifs ARGS``; return stdout as bytes, failing on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "ocifs", *args],
        capture_output=True,
        check=False,
        timeout=OCIFS_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def skopeo_raw(ref: str, *extra: str) -> bytes:
    return skopeo(*extra, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").encode()


def blob(image: BuiltImage, digest: str) -> bytes:
    return (image.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def refs(image: BuiltImage) -> list[str]:
    """The image by tag, by digest, and as its OCI layout."""
    return [image.ref, image.ref_by_digest, image.layout_info.oci_ref]


@pytest.mark.parametrize("name", ["sample_image", "docker_sample_image", "multiarch_image"])
def test_manifest_is_the_bytes_served(name: str, request: pytest.FixtureRequest) -> None:
    image: BuiltImage = request.getfixturevalue(name)
    served = skopeo_raw(image.ref)
    assert served == blob(image, image.digest)
    for ref in refs(image):
        assert ocifs_bytes("manifest", ref) == served, ref


def test_manifest_of_a_platform(multiarch_image: BuiltImage) -> None:
    arm = multiarch_image.manifests[ARM]
    expected = skopeo_raw(f"{multiarch_image.host}/{multiarch_image.repo}@{arm}")
    for ref in refs(multiarch_image):
        assert ocifs_bytes("manifest", "--platform", ARM, ref) == expected
        # A variant left out matches any variant (image-index.md).
        assert ocifs_bytes("manifest", "--platform", "linux/arm64", ref) == expected


@pytest.mark.parametrize("name", ["sample_image", "docker_sample_image", "multiarch_image"])
def test_config_is_the_bytes_skopeo_sees(name: str, request: pytest.FixtureRequest) -> None:
    image: BuiltImage = request.getfixturevalue(name)
    # skopeo picks the host's platform (linux/amd64 here) as ocifs does by default.
    expected = skopeo("inspect", "--config", "--raw", "--tls-verify=false", f"docker://{image.ref}")
    for ref in refs(image):
        assert ocifs_bytes("config", ref) == expected.encode()


def test_config_of_a_platform(multiarch_image: BuiltImage) -> None:
    override = ["--override-arch", "arm64", "--override-variant", "v8"]
    expected = skopeo(
        *override, "inspect", "--config", "--raw", "--tls-verify=false",
        f"docker://{multiarch_image.ref}",
    ).encode()  # fmt: skip
    assert json.loads(expected)["architecture"] == "arm64"
    for ref in refs(multiarch_image):
        assert ocifs_bytes("config", "--platform", ARM, ref) == expected


@pytest.mark.parametrize("name", ["sample_image", "multiarch_image"])
def test_digest_names_what_the_reference_names(name: str, request: pytest.FixtureRequest) -> None:
    image: BuiltImage = request.getfixturevalue(name)
    for ref in refs(image):
        assert ocifs_bytes("digest", ref).decode() == image.digest + "\n"


def test_digest_of_a_platform(multiarch_image: BuiltImage) -> None:
    for platform, digest in multiarch_image.manifests.items():
        for ref in refs(multiarch_image):
            assert ocifs_bytes("digest", "--platform", platform, ref).decode() == digest + "\n"


def test_platforms_of_an_index(multiarch_image: BuiltImage) -> None:
    for ref in refs(multiarch_image):
        assert ocifs_bytes("platforms", ref).decode() == "linux/amd64\nlinux/arm64/v8\n"
    listed = json.loads(ocifs_bytes("platforms", "--json", multiarch_image.ref))
    assert {p["platform"]: p["digest"] for p in listed} == multiarch_image.manifests
    assert [(p["os"], p["architecture"], p["variant"]) for p in listed] == [
        ("linux", "amd64", None),
        ("linux", "arm64", "v8"),
    ]


def test_platforms_of_a_single_image(sample_image: BuiltImage) -> None:
    for ref in refs(sample_image):
        assert ocifs_bytes("platforms", ref).decode() == "linux/amd64\n"
    (only,) = json.loads(ocifs_bytes("platforms", "--json", sample_image.ref))
    assert only["digest"] == sample_image.digest


def test_errors_are_one_line(multiarch_image: BuiltImage, tmp_path: Path) -> None:
    host = multiarch_image.host
    line = one_line_error(ocifs("manifest", f"{host}/test/multiarch:no-such-tag"))
    assert "no-such-tag" in line
    line = one_line_error(ocifs("config", "--platform", "linux/s390x", multiarch_image.ref))
    assert "linux/s390x" in line and "linux/arm64/v8" in line
    line = one_line_error(ocifs("digest", "--platform", "linux", multiarch_image.ref))
    assert "platform" in line
    one_line_error(ocifs("platforms", "not a reference"))
    one_line_error(ocifs("manifest", f"oci:{tmp_path / 'missing'}:latest"))
