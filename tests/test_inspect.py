"""``ocifs ls``, ``cat`` and ``grep`` on images in the real registry (and an OCI
layout), with no mount: compared with GNU grep, coreutils ls/cat and the bytes of the
umoci-unpacked oracle tree."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from image_catalog import SAMPLE_WORD, UTF8_NAME
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, directory, file, symlink, write_layout
from mounting import ocifs, one_line_error

TIMEOUT_S = 300
NON_UTF8 = os.fsdecode(b"caf\xe9.txt")


def run(*args: str, cache: Path) -> subprocess.CompletedProcess[bytes]:
    """``python -m ocifs ARGS --cache-dir CACHE`` with output as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "ocifs", *args, "--cache-dir", str(cache)],
        capture_output=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def gnu(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """A GNU tool in the C locale (sorting and grep semantics as ocifs documents)."""
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(args, capture_output=True, timeout=TIMEOUT_S, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inspect-cache")


@pytest.fixture(scope="module")
def odd_layout(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An OCI layout with symlink loops and a non-UTF-8 name: its ``oci:DIR:TAG``."""
    image = Image(
        [
            Layer(
                [
                    directory("loop"),
                    symlink("loop/a", "b"),
                    symlink("loop/b", "a"),
                    symlink("loop/self", "self"),
                    directory("names"),
                    file(f"names/{NON_UTF8}", "latin-1 name\n"),
                    symlink("names/to-odd", NON_UTF8),
                ]
            )
        ]
    )
    return write_layout(image, tmp_path_factory.mktemp("odd") / "layout").oci_ref


# ---- grep


GREP_CASES = [
    ("torture", ["-r", "small file 1/"]),
    ("torture", ["-rn", "^[a-z]*$"]),
    ("torture", ["-rc", "e"]),
    ("torture", ["-rl", "x"]),
    ("torture", ["-rL", "x"]),
    ("torture", ["-ri", "NAME="]),
    ("torture", ["-rw", "file"]),
    ("torture", ["-rx", "deep"]),
    ("torture", ["-rv", "e"]),  # random.bin: "binary file matches" on stderr
    ("torture", ["-rh", "-E", "v[12] of (dot|abs)"]),
    ("torture", ["-r", "-F", "a.b"]),
    ("torture", ["-r", "--include=*.txt", "--exclude-dir=many", "."]),
    ("torture", ["-r", "--exclude=f0*", "--exclude-dir=d0?", "small"]),
    ("torture", ["-r", "no such text anywhere"]),
    ("sample", ["-r", SAMPLE_WORD]),
    ("sample", ["-rn", "-e", "demo", "-e", r"\(o\)\1"]),
]


def _grep_both(image: BuiltImage, cache: Path, flags: list[str], paths: list[str]) -> None:
    """ocifs grep vs GNU grep over the oracle tree, root prefix taken off grep's output."""
    root = str(image.oracle_root())
    expected = gnu("grep", *flags, *[root + p for p in paths] or [root])
    got = run("grep", *flags, image.ref, *paths, cache=cache)
    prefix = root.encode()
    want_out = sorted(expected.stdout.replace(prefix, b"").splitlines())
    want_err = sorted(
        line.replace(b"grep: " + prefix, b"ocifs: grep: ") for line in expected.stderr.splitlines()
    )
    assert (got.returncode, sorted(got.stdout.splitlines())) == (expected.returncode, want_out)
    assert sorted(got.stderr.splitlines()) == want_err


@pytest.mark.parametrize(("name", "flags"), GREP_CASES)
def test_grep_like_gnu_grep(
    name: str, flags: list[str], request: pytest.FixtureRequest, cache: Path
) -> None:
    image: BuiltImage = request.getfixturevalue(f"{name}_image")
    _grep_both(image, cache, flags, [])


def test_grep_operands_like_gnu_grep(torture_image: BuiltImage, cache: Path) -> None:
    _grep_both(torture_image, cache, ["-r", "v2"], ["/spell", "/etc/os-release", "/nope"])
    _grep_both(torture_image, cache, ["torture"], ["/etc/os-release"])  # no names shown
    _grep_both(torture_image, cache, ["-H", "torture"], ["/etc/os-release"])
    _grep_both(torture_image, cache, ["torture"], ["/etc"])  # Is a directory, exit 2


def test_grep_output_is_in_walk_order(sample_image: BuiltImage, cache: Path) -> None:
    got = run("grep", "-rl", "e", sample_image.ref, cache=cache)
    assert got.returncode == 0
    names = got.stdout.splitlines()
    assert names == sorted(names) and len(names) > 3


def test_grep_skips_big_files_and_bad_patterns(torture_image: BuiltImage, cache: Path) -> None:
    got = run("grep", "-rl", "--max-filesize", "1M", "-v", "zzz", torture_image.ref, "/big",
              cache=cache)  # fmt: skip
    assert got.stdout.splitlines() == [b"/big/small"]
    bad = run("grep", "a\\{1", torture_image.ref, cache=cache)
    assert bad.returncode == 2
    assert bad.stderr == b"ocifs: grep: Unmatched \\{\n"


def test_grep_quiet_stops_early(torture_image: BuiltImage, cache: Path) -> None:
    got = run("grep", "-rq", "torture", torture_image.ref, cache=cache)
    assert (got.returncode, got.stdout, got.stderr) == (0, b"", b"")


# ---- ls


def test_ls_like_coreutils_ls(torture_image: BuiltImage, cache: Path) -> None:
    root = torture_image.oracle_root()
    for path in ("/", "/etc", "/utf8", "/many/d07", "/links/dir"):
        want = gnu("ls", "-1", str(root) + path)
        got = run("ls", torture_image.ref, path, cache=cache)
        assert (got.returncode, got.stdout) == (0, want.stdout), path
    want = gnu("ls", "-1A", str(root / "wh"))
    assert run("ls", "-A", torture_image.ref, "/wh", cache=cache).stdout == want.stdout


def test_ls_long_agrees_with_oracle(torture_image: BuiltImage, cache: Path) -> None:
    root = torture_image.oracle_root()
    for directory_path in ("/modes", "/dev", "/links", "/hl", "/xattr", "/big"):
        got = run("ls", "-l", torture_image.ref, directory_path, cache=cache)
        assert got.returncode == 0, got.stderr
        for line in got.stdout.decode().splitlines():
            fields = line.split()
            name = fields[-3] if fields[0].startswith("l") else fields[-1]
            on_disk = root / directory_path.lstrip("/") / name
            st = os.lstat(on_disk)
            assert fields[0] == stat.filemode(st.st_mode), line
            assert (int(fields[2]), int(fields[3])) == (st.st_uid, st.st_gid), line
            if not stat.S_ISDIR(st.st_mode):
                assert int(fields[1]) == st.st_nlink, line
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                assert line.split()[4:6] == [f"{os.major(st.st_rdev)},", str(os.minor(st.st_rdev))]
            elif not stat.S_ISDIR(st.st_mode):
                assert int(fields[4]) == st.st_size, line
            if stat.S_ISLNK(st.st_mode):
                assert line.endswith(f"{name} -> {os.readlink(on_disk)}")


def test_ls_json_recursive_matches_oracle(torture_image: BuiltImage, cache: Path) -> None:
    got = run("ls", "-RA", "--json", torture_image.ref, "/", cache=cache)
    assert got.returncode == 0, got.stderr
    entries = {e["path"]: e for e in json.loads(got.stdout)}
    oracle = torture_image.oracle
    assert set(entries) == set(oracle) - {"/"}
    for path, record in oracle.items():
        if path == "/":
            continue
        entry = entries[path]
        assert (entry["type"], int(entry["mode"], 8), entry["uid"], entry["gid"]) == (
            record.type,
            record.mode,
            record.uid,
            record.gid,
        ), path
        if record.type == "reg":
            assert entry["size"] == record.size
        if record.type == "symlink":
            assert entry["target"] == record.target


def test_ls_missing_path(torture_image: BuiltImage, cache: Path) -> None:
    result = ocifs("ls", torture_image.ref, "/nope/x", "--cache-dir", str(cache))
    assert result.returncode == 2
    assert one_line_error(result) == "ocifs: ls: cannot access '/nope/x': No such file or directory"


# ---- cat


def _image_bytes(root: Path, path: str) -> bytes:
    """The content at ``path`` with symlinks resolved inside ``root`` (not the host's)."""
    current = root
    parts = path.strip("/").split("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        nxt = current / part
        if nxt.is_symlink():
            hops += 1
            assert hops < 40
            target = os.readlink(nxt)
            parts = target.strip("/").split("/") + parts if target else parts
            current = root if target.startswith("/") else current
            continue
        current = nxt
    return current.read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/etc/os-release",
        "/links/rel",  # relative symlink
        "/links/abs",  # absolute: resolved in the image, not on the host
        "/links/dir/lib/libc.so",  # through a symlinked directory
        "/lib64/y",
        "/hl/link-to-lower",
        f"/utf8/{UTF8_NAME}",
        "/utf8/リンク",
        "/modes/zero",
        "/etc/empty",
    ],
)
def test_cat_equals_oracle_bytes(torture_image: BuiltImage, cache: Path, path: str) -> None:
    got = run("cat", torture_image.ref, path, cache=cache)
    assert (got.returncode, got.stderr) == (0, b"")
    assert got.stdout == _image_bytes(torture_image.oracle_root(), path)


def test_cat_big_file_streams(torture_image: BuiltImage, cache: Path) -> None:
    want = hashlib.sha256((torture_image.oracle_root() / "big/random.bin").read_bytes())
    got = hashlib.sha256()
    total = 0
    with subprocess.Popen(
        [sys.executable, "-m", "ocifs", "cat", torture_image.ref, "/big/random.bin",
         "--cache-dir", str(cache)],
        stdout=subprocess.PIPE,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            got.update(chunk)
            total += len(chunk)
        assert proc.wait(timeout=TIMEOUT_S) == 0
    assert (total, got.hexdigest()) == (64 << 20, want.hexdigest())


def test_cat_several_files_and_errors_like_coreutils(
    torture_image: BuiltImage, cache: Path, tmp_path: Path
) -> None:
    got = run("cat", torture_image.ref, "/etc/os-release", "/nope", "/etc", "/links/dangling",
              "/etc/os-release/x", "/spell/dot", cache=cache)  # fmt: skip
    root = torture_image.oracle_root()
    assert got.returncode == 1
    assert got.stdout == (root / "etc/os-release").read_bytes() + (root / "spell/dot").read_bytes()
    assert got.stderr.decode().splitlines() == [
        "ocifs: cat: /nope: No such file or directory",
        "ocifs: cat: /etc: Is a directory",
        "ocifs: cat: /links/dangling: No such file or directory",
        "ocifs: cat: /etc/os-release/x: Not a directory",
    ]
    # The same messages as coreutils cat gives for the same kinds of path.
    (tmp_path / "f").write_text("x")
    real = gnu("cat", "nope", ".", "f/x", cwd=tmp_path).stderr.decode().splitlines()
    assert [line.split(": ", 2)[2] for line in real] == [
        "No such file or directory",
        "Is a directory",
        "Not a directory",
    ]


def test_cat_and_ls_on_oci_layout_loops_and_odd_names(
    odd_layout: str, cache: Path, tmp_path: Path
) -> None:
    got = run("cat", odd_layout, "/loop/a", "/loop/self", cache=cache)
    assert got.returncode == 1
    assert got.stderr.decode().splitlines() == [
        "ocifs: cat: /loop/a: Too many levels of symbolic links",
        "ocifs: cat: /loop/self: Too many levels of symbolic links",
    ]
    raw_name = os.fsencode(NON_UTF8)
    assert run("cat", odd_layout, f"/names/{NON_UTF8}", cache=cache).stdout == b"latin-1 name\n"
    assert run("cat", odd_layout, "/names/to-odd", cache=cache).stdout == b"latin-1 name\n"
    assert run("ls", odd_layout, "/names", cache=cache).stdout == raw_name + b"\nto-odd\n"
    # A missing non-UTF-8 name is quoted as coreutils quotes it.
    missing = os.fsdecode(b"/names/x\xff")
    got = run("cat", odd_layout, missing, cache=cache)
    (tmp_path / "names").mkdir()
    real = gnu("cat", os.fsdecode(b"names/x\xff"), cwd=tmp_path)
    assert got.returncode == real.returncode == 1
    assert got.stderr == real.stderr.replace(b"cat: 'names", b"ocifs: cat: '/names")
    got = run("ls", odd_layout, missing, cache=cache)
    real = gnu("ls", os.fsdecode(b"names/x\xff"), cwd=tmp_path)
    assert got.returncode == real.returncode == 2
    want = real.stderr.replace(b"ls: cannot access 'names", b"ocifs: ls: cannot access '/names")
    assert got.stderr == want


def test_bad_reference_is_one_line(tmp_path: Path) -> None:
    for command in (["cat", "oci:", "/x"], ["ls", "oci:"], ["grep", "x", "oci:"]):
        result = ocifs(*command, "--cache-dir", str(tmp_path))
        one_line_error(result)


def test_lookup_agrees_with_tree_resolve(torture_image: BuiltImage, cache: Path) -> None:
    """browse.lookup (which also says why a path fails) resolves as Tree.resolve does."""
    import trio

    from ocifs.browse import PathError, lookup, walk
    from ocifs.image import opened_image
    from ocifs.sources import SourceOptions

    async def check() -> None:
        ref = torture_image.layout_info.oci_ref
        async with opened_image(ref, SourceOptions(), cache) as image:
            paths = [p for p, _ in walk(image.tree.root, "/")]
            paths += [p + "/x" for p in paths[:200]] + ["/links/dir/lib/../lib64/y"]
            for path in paths:
                want = image.tree.resolve(path)
                try:
                    got = lookup(image.tree, path)
                except PathError:
                    got = None
                assert got is want, path

    trio.run(check)
