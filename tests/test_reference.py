"""parse_reference: the spellings crane and skopeo accept, and the ones they refuse."""

from __future__ import annotations

import pytest

from ocifs.errors import BadReferenceError
from ocifs.reference import Reference, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("alpine:3.19", "docker.io", "library/alpine", "3.19", None),
        ("docker://alpine", "docker.io", "library/alpine", "latest", None),
        ("library/alpine", "docker.io", "library/alpine", "latest", None),
        ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
        ("docker.io/alpine", "docker.io", "library/alpine", "latest", None),
        ("index.docker.io/alpine:edge", "docker.io", "library/alpine", "edge", None),
        ("index.docker.io/user/app", "docker.io", "user/app", "latest", None),
        ("registry-1.docker.io/library/x", "docker.io", "library/x", "latest", None),
        ("localhost:5000/x", "localhost:5000", "x", "latest", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("localhost/x:tag", "localhost", "x", "tag", None),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t", None),
        ("10.1.2.3/x", "10.1.2.3", "x", "latest", None),
        ("[::1]:5000/x", "[::1]:5000", "x", "latest", None),
        ("ghcr.io/owner/repo:v1.2.3", "ghcr.io", "owner/repo", "v1.2.3", None),
        ("quay.io/a/b@" + D, "quay.io", "a/b", None, D),
        ("quay.io/a/b:t@" + D, "quay.io", "a/b", "t", D),
        ("alpine@" + D, "docker.io", "library/alpine", None, D),
        ("docker://localhost:5000/x@" + D, "localhost:5000", "x", None, D),
        (
            "my-reg.example.com:443/a_b/c.d/e__f/g-h--i:T_a.g-1",
            "my-reg.example.com:443",
            "a_b/c.d/e__f/g-h--i",
            "T_a.g-1",
            None,
        ),
        ("Registry.Example.com/x", "Registry.Example.com", "x", "latest", None),
        ("x:" + "a" * 128, "docker.io", "library/x", "a" * 128, None),
        ("r.io/x@sha512:" + "0" * 128, "r.io", "x", None, "sha512:" + "0" * 128),
    ],
)
def test_good(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    # The canonical form parses back to the same reference.
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("docker://", "empty name"),
        ("Alpine", "lowercase"),
        ("docker.io/Library/alpine", "lowercase"),
        ("localhost:5000/X", "lowercase"),
        ("localhost:5000/", "empty repository"),
        ("localhost:5000//x", "empty path component"),
        ("x/", "empty path component"),
        ("x:", "empty tag"),
        ("x:-bad", "tag"),
        ("x:.bad", "tag"),
        ("x:" + "a" * 129, "longer than 128"),
        ("x:a b", "whitespace"),
        ("x@sha256:abc", "64 lowercase hex"),
        ("x@sha256:" + "AB" * 32, "64 lowercase hex"),
        ("x@md5:" + "a" * 32, "unsupported digest algorithm"),
        ("x@", "malformed digest"),
        ("x@sha256", "malformed digest"),
        ("reg.io:99999/x", "out of range"),
        ("reg.io:0/x", "out of range"),
        ("-reg.io/x", "malformed registry"),
        ("reg.io/x_/y", "invalid repository component"),
        ("reg.io/_x", "invalid repository component"),
        ("reg.io/x..y", "invalid repository component"),
        ("reg.io/x$y", "invalid repository component"),
        ("oci:/some/dir", "invalid"),
        ("http://reg.io/x", "transport"),
        ("reg.io/" + "a" * 250, "longer than 255"),
    ],
)
def test_bad(text: str, why: str) -> None:
    with pytest.raises(BadReferenceError) as info:
        parse_reference(text)
    message = str(info.value)
    assert why in message
    assert "\n" not in message


def test_str_and_reference() -> None:
    ref = parse_reference("localhost:5000/x:t@" + D)
    assert str(ref) == "localhost:5000/x:t@" + D
    assert ref.reference == D
    assert ref.name == "localhost:5000/x"
    plain = parse_reference("alpine")
    assert str(plain) == "docker.io/library/alpine:latest"
    assert plain.reference == "latest"
    assert str(parse_reference("r.io/x@" + D)) == "r.io/x@" + D


def test_with_reference() -> None:
    ref = parse_reference("r.io/x:t")
    assert ref.with_reference(D) == Reference("r.io", "x", None, D)
    assert ref.with_reference("other") == Reference("r.io", "x", "other", None)
    with pytest.raises(BadReferenceError):
        ref.with_reference("sha256:short")
    with pytest.raises(BadReferenceError):
        ref.with_reference("bad tag")


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("localhost/x", True),
        ("localhost:5000/x", True),
        ("127.0.0.1:5000/x", True),
        ("127.5.6.7/x", True),
        ("[::1]:5000/x", True),
        ("10.0.0.1/x", False),
        ("alpine", False),
        ("localhost.example.com/x", False),
    ],
)
def test_loopback_and_urls(text: str, loopback: bool) -> None:
    ref = parse_reference(text)
    assert ref.is_loopback is loopback
    assert ref.api_base().startswith("http://" if loopback else "https://")
    assert ref.api_base(insecure=True).startswith("http://")


def test_docker_hub_api_host() -> None:
    assert parse_reference("alpine").api_base() == "https://registry-1.docker.io"
    assert parse_reference("[::1]:5000/x").host == "::1"
    assert parse_reference("localhost:5000/x").host == "localhost"
