"""registries.conf: parsing and resolution rules, then real mounts through a second
real registry acting as a mirror, search registries for short names, blocked
registries and ``insecure`` locations. ``CONTAINERS_REGISTRIES_CONF`` points at a
file of the test's own; the CLI subprocess inherits it."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_fixtures import BuiltImage
from imagebuild import push_layout
from mounting import mounted, ocifs, one_line_error
from registry_fixtures import Registry, _start
from treecompare import assert_same_tree, snapshot

from ocifs.errors import BadReferenceError
from ocifs.reference import names_registry
from ocifs.registries_conf import (
    BlockedRegistryError,
    RegistriesConfError,
    config_files,
    load_registries_conf,
    parse_registries_conf,
)

DIGEST = "sha256:" + "ab" * 32


def _names(text: str, conf: str) -> list[tuple[str, ...]]:
    """For each candidate of ``text``: its endpoints as "ref[ insecure][ mirror]"."""
    parsed = parse_registries_conf(conf)
    return [
        tuple(
            str(e.ref) + (" insecure" if e.insecure else "") + (" mirror" if e.mirror else "")
            for e in c.endpoints
        )
        for c in parsed.candidates(text)
    ]


# --- rules, on parsed text ------------------------------------------------------


def test_names_registry() -> None:
    assert names_registry("localhost/x") and names_registry("a.io/x:1")
    assert names_registry("127.0.0.1:5000/x@" + DIGEST)
    assert names_registry("docker://alpine")  # skopeo: docker:// means Docker Hub
    assert not names_registry("alpine") and not names_registry("team/app:1")
    assert not names_registry("alpine@" + DIGEST)


def test_no_config_means_docker_hub() -> None:
    assert _names("alpine", "") == [("docker.io/library/alpine:latest",)]
    assert _names("a.io/x:1", "") == [("a.io/x:1",)]


def test_prefix_location_and_mirrors_in_order() -> None:
    conf = """
        [[registry]]
        prefix = "example.com/foo"
        location = "internal.example.com/bar"
        insecure = true
        [[registry.mirror]]
        location = "mirror-a.local:5000/m"
        insecure = true
        [[registry.mirror]]
        location = "mirror-b.local/m"
        [[registry]]
        location = "example.com"
    """
    assert _names("example.com/foo/app:1", conf) == [
        (
            "mirror-a.local:5000/m/app:1 insecure mirror",
            "mirror-b.local/m/app:1 mirror",
            "internal.example.com/bar/app:1 insecure",
        )
    ]
    # The prefix ends at a path component: foobar falls to the shorter prefix.
    assert _names("example.com/foobar/app:1", conf) == [("example.com/foobar/app:1",)]
    assert _names("other.io/foo/app:1", conf) == [("other.io/foo/app:1",)]


def test_pull_from_mirror_and_digest_only() -> None:
    conf = """
        [[registry]]
        location = "a.io"
        [[registry.mirror]]
        location = "by-digest.io"
        pull-from-mirror = "digest-only"
        [[registry.mirror]]
        location = "by-tag.io"
        pull-from-mirror = "tag-only"
        [[registry]]
        location = "b.io"
        mirror-by-digest-only = true
        [[registry.mirror]]
        location = "m.io"
    """
    assert _names("a.io/x:1", conf) == [("by-tag.io/x:1 mirror", "a.io/x:1")]
    assert _names(f"a.io/x@{DIGEST}", conf) == [
        (f"by-digest.io/x@{DIGEST} mirror", f"a.io/x@{DIGEST}")
    ]
    assert _names("b.io/x:1", conf) == [("b.io/x:1",)]
    assert _names(f"b.io/x@{DIGEST}", conf) == [(f"m.io/x@{DIGEST} mirror", f"b.io/x@{DIGEST}")]


def test_short_names_aliases_and_search_order() -> None:
    conf = """
        unqualified-search-registries = ["one.io", "docker.io"]
        short-name-mode = "enforcing"
        [aliases]
        "app" = "quay.io/team/app"
    """
    assert _names("mine/app:2", conf) == [("one.io/mine/app:2",), ("docker.io/mine/app:2",)]
    assert _names("alpine", conf) == [
        ("one.io/alpine:latest",),
        ("docker.io/library/alpine:latest",),
    ]
    assert _names("app:3", conf) == [("quay.io/team/app:3",)]
    assert _names(f"app@{DIGEST}", conf) == [(f"quay.io/team/app@{DIGEST}",)]
    # A name with a registry is never searched.
    assert _names("two.io/mine/app", conf) == [("two.io/mine/app:latest",)]


def test_blocked() -> None:
    conf = """
        unqualified-search-registries = ["bad.io", "good.io"]
        [[registry]]
        location = "bad.io"
        blocked = true
    """
    with pytest.raises(BlockedRegistryError, match=r"registry bad\.io is blocked"):
        _names("bad.io/x:1", conf)
    # A short name skips a blocked search registry.
    assert _names("x", conf) == [("good.io/x:latest",)]


def test_version_1_tables() -> None:
    conf = """
        [registries.search]
        registries = ["s.io"]
        [registries.insecure]
        registries = ["plain.io"]
        [registries.block]
        registries = ["bad.io"]
    """
    assert _names("x", conf) == [("s.io/x:latest",)]
    assert _names("plain.io/x", conf) == [("plain.io/x:latest insecure",)]
    with pytest.raises(BlockedRegistryError):
        _names("bad.io/x", conf)


@pytest.mark.parametrize(
    "text",
    [
        "unqualified-search-registries = [",
        'unqualified-search-registries = "a.io"',
        "[[registry]]\ninsecure = true",
        '[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\ninsecure = true',
        '[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\nlocation = "m.io"\n'
        'pull-from-mirror = "sometimes"',
    ],
)
def test_invalid_files(text: str) -> None:
    with pytest.raises(RegistriesConfError, match=r"^f\.conf"):
        parse_registries_conf(text, "f.conf")


def test_bad_rewrite_is_one_error() -> None:
    conf = '[[registry]]\nprefix = "a.io/x"\nlocation = "b.io/UPPER"\n'
    with pytest.raises(RegistriesConfError, match="not valid"):
        _names("a.io/x/y", conf)
    with pytest.raises(BadReferenceError):
        _names("Not A Name", "")


def test_files_and_drop_ins_in_order(tmp_path: Path) -> None:
    main = tmp_path / "registries.conf"
    main.write_text('unqualified-search-registries = ["main.io"]\n')
    # The environment variable names the one file to read.
    assert config_files({"CONTAINERS_REGISTRIES_CONF": str(main)}) == [main]
    # A user file with drop-ins: the later file's fields win, registries merge by prefix.
    user = tmp_path / "home" / ".config" / "containers"
    (user / "registries.conf.d").mkdir(parents=True)
    (user / "registries.conf").write_text(
        'unqualified-search-registries = ["user.io"]\n[[registry]]\nlocation = "a.io"\n'
    )
    (user / "registries.conf.d" / "20-b.conf").write_text(
        '[[registry]]\nlocation = "a.io"\ninsecure = true\n'
    )
    (user / "registries.conf.d" / "10-a.conf").write_text(
        'unqualified-search-registries = ["drop.io"]\n'
    )
    (user / "registries.conf.d" / "ignored.txt").write_text("not toml [")
    files = config_files({}, home=tmp_path / "home")
    assert [p.name for p in files] == ["registries.conf", "10-a.conf", "20-b.conf"]
    conf = load_registries_conf({}, home=tmp_path / "home")
    assert conf.search == ("drop.io",)
    assert conf.registries["a.io"].insecure
    # An unreadable file is one error naming it.
    with pytest.raises(RegistriesConfError, match="cannot read"):
        load_registries_conf({"CONTAINERS_REGISTRIES_CONF": str(tmp_path / "none.conf")})


# --- real registries -------------------------------------------------------------


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A second real registry, used as a mirror or a search registry."""
    yield from _start(tmp_path_factory.mktemp("mirror-registry"), basic_auth=False)


def _dead_host() -> str:
    """A loopback ``host:port`` where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def conf_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The registries.conf every ``ocifs`` run of the test reads (via the environment)."""
    path = tmp_path / "registries.conf"
    path.write_text("")
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(path))
    return path


def _manifest_gets(reg: Registry, mark: int) -> list[int]:
    return [r.status for r in reg.since(mark) if "/manifests/" in r.uri and r.method == "GET"]


def test_origin_down_served_by_mirror(
    sample_image: BuiltImage, mirror: Registry, conf_file: Path, tmp_path: Path
) -> None:
    push_layout(sample_image.layout_info, f"{mirror.host}/mirrored/sample:latest")
    origin = _dead_host()
    conf_file.write_text(
        f'[[registry]]\nprefix = "{origin}/team"\nlocation = "{origin}/team"\n'
        f'[[registry.mirror]]\nlocation = "{mirror.host}/mirrored"\n'
    )
    with mounted(f"{origin}/team/sample:latest", tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(sample_image.oracle, snapshot(mnt))
        fsname = next(
            line for line in Path("/proc/mounts").read_text().splitlines() if str(mnt) in line
        )
        assert f"ocifs:{origin}/team/sample:latest@" in fsname  # the name asked for


def test_mirror_lacking_the_image_falls_back_to_origin(
    sample_image: BuiltImage, registry: Registry, mirror: Registry, conf_file: Path, tmp_path: Path
) -> None:
    conf_file.write_text(
        f'[[registry]]\nlocation = "{registry.host}"\n'
        f'[[registry.mirror]]\nlocation = "{mirror.host}/empty"\n'
    )
    mark = mirror.mark()
    with mounted(sample_image.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(sample_image.oracle, snapshot(mnt))
    assert _manifest_gets(mirror, mark) == [404]


def test_mirror_down_falls_back_to_origin(
    sample_image: BuiltImage, registry: Registry, conf_file: Path, tmp_path: Path
) -> None:
    conf_file.write_text(
        f'[[registry]]\nlocation = "{registry.host}"\n'
        f'[[registry.mirror]]\nlocation = "{_dead_host()}"\n'
    )
    with mounted(sample_image.ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(sample_image.oracle, snapshot(mnt))


def test_nowhere_to_be_found_names_every_endpoint(
    registry: Registry, mirror: Registry, conf_file: Path, tmp_path: Path
) -> None:
    conf_file.write_text(
        f'[[registry]]\nlocation = "{registry.host}"\n'
        f'[[registry.mirror]]\nlocation = "{mirror.host}"\n'
    )
    (tmp_path / "mnt").mkdir()
    line = one_line_error(ocifs("mount", f"{registry.host}/no/such:v1", str(tmp_path / "mnt")))
    assert f"manifest unknown: {registry.host}/no/such:v1" in line
    assert f"also tried {mirror.host}/no/such (mirror)" in line


def test_blocked_registry_one_line(
    sample_image: BuiltImage, registry: Registry, conf_file: Path, tmp_path: Path
) -> None:
    conf_file.write_text(f'[[registry]]\nlocation = "{registry.host}"\nblocked = true\n')
    (tmp_path / "mnt").mkdir()
    mark = registry.mark()
    line = one_line_error(ocifs("mount", sample_image.ref, str(tmp_path / "mnt")))
    assert f"registry {registry.host} is blocked" in line
    assert registry.since(mark) == []  # not a single request


def test_invalid_conf_one_line(sample_image: BuiltImage, conf_file: Path, tmp_path: Path) -> None:
    conf_file.write_text("[[registry]\n")
    (tmp_path / "mnt").mkdir()
    line = one_line_error(ocifs("mount", sample_image.ref, str(tmp_path / "mnt")))
    assert str(conf_file) in line and "invalid TOML" in line


def test_short_name_through_search_registries(
    sample_image: BuiltImage, registry: Registry, mirror: Registry, conf_file: Path, tmp_path: Path
) -> None:
    # The first search registry lacks it; the second (the session registry) has it.
    conf_file.write_text(f'unqualified-search-registries = ["{mirror.host}", "{registry.host}"]\n')
    with mounted(sample_image.repo, tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(sample_image.oracle, snapshot(mnt))
        fsname = next(
            line for line in Path("/proc/mounts").read_text().splitlines() if str(mnt) in line
        )
        assert f"ocifs:{sample_image.ref}@" in fsname


# --- insecure: a non-loopback address, where plain HTTP needs permission ----------


def _host_address() -> str | None:
    """A non-loopback IPv4 address of this host, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        addr = str(s.getsockname()[0])
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


@contextlib.contextmanager
def forwarder(listen: str, target: tuple[str, int]) -> Iterator[str]:
    """A plain TCP relay from ``listen``:<free port> to ``target``; yields host:port."""
    server = socket.create_server((listen, 0))
    stop = threading.Event()

    def pump(a: socket.socket, b: socket.socket) -> None:
        with a, b, selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not stop.is_set():
                for key, _ in sel.select(0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    key.data.sendall(data)

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            up = socket.create_connection(target)
            threading.Thread(target=pump, args=(conn, up), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"{listen}:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.mark.parametrize("insecure", [True, False])
def test_insecure_location(
    sample_image: BuiltImage, registry: Registry, conf_file: Path, tmp_path: Path, insecure: bool
) -> None:
    address = _host_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this host")
    with forwarder(address, ("127.0.0.1", registry.port)) as relay:
        conf_file.write_text(
            f'[[registry]]\nprefix = "registry.example/team"\nlocation = "{relay}/test"\n'
            f"insecure = {'true' if insecure else 'false'}\n"
        )
        ref = "registry.example/team/sample:latest"
        if insecure:
            with mounted(ref, tmp_path / "mnt", tmp_path / "cache") as mnt:
                assert_same_tree(sample_image.oracle, snapshot(mnt))
        else:
            # HTTPS to a plain-HTTP registry fails the TLS handshake: plain HTTP to a
            # non-loopback host needs `insecure = true`.
            (tmp_path / "mnt").mkdir()
            line = one_line_error(ocifs("mount", ref, str(tmp_path / "mnt")))
            assert f"manifest {relay}/test/sample:latest" in line
