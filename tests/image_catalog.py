"""Ready-made image descriptions for tests and the demo: ``sample``, ``torture``,
``multiarch`` (and ``docker_sample``, the sample with Docker schema2 media types).

Each function returns a fresh description; :data:`CATALOG` maps names to them.
The constants below name what tests check in the unpacked tree.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from imagebuild import (
    Entry,
    Image,
    ImageIndex,
    Layer,
    blockdev,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
)

__all__ = [
    "BIG_FILE_BYTES",
    "BIG_FILE_SEED",
    "CAPABILITY_XATTR",
    "CATALOG",
    "DEEP_DIRS",
    "LONG_NAME",
    "MANY_FILES",
    "SAMPLE_WORD",
    "UTF8_NAME",
    "big_file_content",
    "docker_sample",
    "multiarch",
    "sample",
    "torture",
]

SAMPLE_WORD = "marmalade"

BIG_FILE_BYTES = 64 * 1024 * 1024
BIG_FILE_SEED = 0x0C1F5
MANY_FILES = 3000
DEEP_DIRS = 40
LONG_NAME = "n" * 120 + "-long-component-" + "m" * 100  # 236 bytes, < NAME_MAX
UTF8_NAME = "héllo wörld ☃ 日本語.txt"
# A VFS_CAP_REVISION_2 value (magic with the effective flag, then permitted and
# inheritable words for caps 0-31 and 32-63) granting CAP_NET_BIND_SERVICE (10) and
# CAP_BPF (39); the 0x80 byte makes it a binary (non-UTF-8) PAX value.
CAPABILITY_XATTR = bytes([1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0])
BINARY_XATTR = bytes(range(256))
BIG_UID = 4_000_000_000  # > 2**31 and > ustar's 8 octal digits: needs a PAX header
BIG_GID = 3_000_000_001


def big_file_content() -> bytes:
    """The 64 MiB seeded random content of ``/big/random.bin``."""
    return random.Random(BIG_FILE_SEED).randbytes(BIG_FILE_BYTES)


def sample() -> Image:
    """A small three-layer image for the README demo."""
    os_release = (
        'PRETTY_NAME="ocifs demo 1.0"\nNAME="ocifs demo"\nVERSION_ID="1.0"\n'
        'ID=ocifsdemo\nHOME_URL="https://example.invalid/ocifs"\n'
    )
    base = Layer(
        [
            directory("etc"),
            file("etc/os-release", os_release),
            file("etc/hostname", "demo\n"),
            file("etc/secret.txt", "this file is deleted by a whiteout in layer 3\n", mode=0o600),
            directory("bin"),
            file("bin/hello", "#!/bin/sh\necho hello from ocifs\n", mode=0o755),
            directory("usr"),
            directory("usr/share"),
            directory("usr/share/doc"),
            file("usr/share/doc/README", f"Toast with {SAMPLE_WORD} is the demo's breakfast.\n"),
        ],
        created_by="ADD base /",
    )
    docs = Layer(
        [
            directory("srv"),
            directory("srv/notes"),
            file("srv/notes/monday.txt", f"Buy oranges for the {SAMPLE_WORD}.\n"),
            file("srv/notes/tuesday.txt", "Nothing to report.\n"),
            symlink("srv/latest", "notes/monday.txt"),
        ],
        created_by="COPY notes /srv/notes",
    )
    top = Layer(
        [
            whiteout("etc/secret.txt"),
            file("srv/notes/wednesday.txt", f"Out of {SAMPLE_WORD} again.\n"),
            file("etc/motd", "Mounted lazily by ocifs.\n"),
        ],
        created_by="RUN rm /etc/secret.txt && echo ... > /srv/notes/wednesday.txt",
    )
    return Image([base, docs, top], labels={"org.opencontainers.image.title": "ocifs demo"})


def docker_sample() -> Image:
    """``sample`` with Docker schema2 media types for manifest, config and layers."""
    image = sample()
    image.docker_media_types = True
    return image


def multiarch() -> ImageIndex:
    """An index with linux/amd64 and linux/arm64/v8 images whose ``/etc/arch`` differ."""
    images = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        layers = [
            Layer(
                [
                    directory("etc"),
                    file("etc/arch", f"{arch}\n"),
                    file("etc/common", "same on every platform\n"),
                ]
            ),
            Layer([directory("opt"), file(f"opt/only-on-{arch}", arch)], compression="none"),
        ]
        images.append(Image(layers, architecture=arch, variant=variant))
    return ImageIndex(images)


def _base_layer() -> Layer:
    """Layer 1 (gzip, PAX): the lower state every later layer edits."""
    e: list[Entry] = [
        directory("./", mode=0o751, mtime=1_500_000_000),
        directory("etc"),
        file("etc/os-release", 'NAME="torture"\nID=torture\n'),
        file("etc/empty"),
        directory("usr"),
        directory("usr/lib"),
        file("usr/lib/libc.so", "not really libc\n"),
        file("usr/lib/gone-via-link", "whited out as lib/.wh.gone-via-link\n"),
        directory("usr/lib64"),
        # usrmerge: a later layer writes through these symlinks.
        symlink("lib", "usr/lib"),
        symlink("lib64", "/usr/lib64"),
        # whiteouts: a file, a whole dir, a dir later recreated.
        directory("wh"),
        file("wh/gone", "deleted by layer 2\n"),
        file("wh/kept", "stays\n"),
        directory("wh/dir"),
        directory("wh/dir/sub"),
        file("wh/dir/sub/deep", "deleted with its dir\n"),
        directory("wh/redo"),
        file("wh/redo/old", "gone when redo is deleted and recreated\n"),
        directory("wh/same"),
        file("wh/same/old", "gone: layer 2 whites out same/ and re-adds it\n"),
        file("rootgone", "deleted by a whiteout at the layer root\n"),
        # opaque: layer 2 marks these opaque.
        directory("opq", mode=0o750),
        file("opq/lower1", "hidden by the opaque marker\n"),
        directory("opq/lowerdir"),
        file("opq/lowerdir/x", "hidden too\n"),
        # type changes.
        directory("tc"),
        file("tc/f2d2f", "file in layer 1\n"),
        directory("tc/d2s"),
        file("tc/d2s/child", "gone when d2s becomes a symlink\n"),
        symlink("tc/s2f", "somewhere"),
        # hardlinks: within this layer, and a target for a later layer's link.
        directory("hl"),
        file("hl/a", "shared by a, b and c\n", mode=0o640, uid=1000, gid=1000),
        hardlink("hl/b", "hl/a"),
        hardlink("./hl/c", "hl/a"),
        file("hl/orig", "original name whited out in layer 3\n", mode=0o600, uid=7, gid=8),
        # devices and fifo.
        directory("dev"),
        chardev("dev/null", 1, 3, mode=0o666),
        blockdev("dev/loop0", 7, 0, mode=0o660, gid=6),
        chardev("dev/bigdev", 259, 300_000, mode=0o600),
        fifo("dev/pipe", mode=0o620),
        # modes and owners.
        directory("modes"),
        file("modes/setuid", "#!/bin/sh\n", mode=0o4755),
        file("modes/setgid", "#!/bin/sh\n", mode=0o2711, gid=50),
        file("modes/all", "#!/bin/sh\n", mode=0o7777),
        directory("modes/sticky", mode=0o1777),
        directory("modes/setgiddir", mode=0o2775, gid=100),
        file("modes/zero", "nobody may read this\n", mode=0o000),
        directory("modes/zerodir", mode=0o000),
        file("modes/zerodir/inside", "in a 0000 dir\n"),
        file("modes/bigids", "large owner\n", uid=BIG_UID, gid=BIG_GID, uname="bigu", gname="bigg"),
        file("modes/nobody", "", uid=65534, gid=65534, uname="nobody", gname="nogroup"),
        file("modes/mtime", "fixed mtime\n", mtime=1_234_567_890),
        file("modes/mtime-frac", "fractional mtime via PAX\n", mtime=1_600_000_000.25),
        # xattrs.
        directory("xattr", xattrs={"user.dir": b"on a directory"}),
        file("xattr/plain", "x\n", xattrs={"user.foo": b"bar"}),
        file(
            "xattr/cap", "#!/bin/sh\n", mode=0o755, xattrs={"security.capability": CAPABILITY_XATTR}
        ),
        # An empty PAX value deletes the record (POSIX pax; Go and umoci agree), so
        # user.empty must not appear in the tree.
        file(
            "xattr/binary",
            "",
            xattrs={"user.binary": BINARY_XATTR, "user.empty": b"", "user.two": b"2"},
        ),
        # symlinks.
        directory("links"),
        symlink("links/rel", "../etc/os-release"),
        symlink("links/abs", "/etc/os-release"),
        symlink("links/dangling", "/nonexistent/target"),
        symlink("links/dir", "../usr"),
        symlink("links/long", "/" + "/".join(["t" * 60] * 3)),
        # spellings of one path.
        directory("./spell"),
        file("./spell/dot", "v1 of dot\n"),
        file("spell/plain", "v1 of plain\n"),
        file("/spell/abs", "v1 of abs\n"),
        # a file whose parent dirs have no entries.
        file("implicit/parent/file", "parents created implicitly\n"),
        # a 40-deep path.
        *[
            directory("/".join(f"d{i:02}" for i in range(1, n + 1)))
            for n in range(1, DEEP_DIRS + 1)
        ],
        file("/".join(f"d{i:02}" for i in range(1, DEEP_DIRS + 1)) + "/leaf", "deep\n"),
    ]
    return Layer(e, created_by="ADD base /")


def _edit_layer() -> Layer:
    """Layer 2 (gzip, PAX): whiteouts, opaque dirs, type changes, usrmerge writes."""
    e: list[Entry] = [
        whiteout("wh/gone"),
        whiteout("wh/dir"),
        whiteout("wh/redo"),
        whiteout("wh/never-existed"),
        whiteout("rootgone"),
        # delete and re-add in one layer, the whiteout last: it acts on lower layers only.
        directory("wh/same", mode=0o700, uid=3),
        file("wh/same/new", "added in the layer that whites out same/\n"),
        whiteout("wh/same"),
        # the opaque marker comes after this layer's own files: order must not matter.
        file("opq/upper1", "added next to the opaque marker\n"),
        directory("opq/upperdir"),
        file("opq/upperdir/y", "kept\n"),
        opaque("opq"),
        # type changes: file -> dir, dir -> symlink, symlink -> file.
        directory("tc/f2d2f"),
        file("tc/f2d2f/inner", "inner of the dir phase\n"),
        symlink("tc/d2s", "../etc"),
        file("tc/s2f", "now a file\n"),
        # hardlink to a lower layer's file.
        hardlink("hl/link-to-lower", "hl/orig"),
        # writes through lower symlinks (usrmerge).
        file("lib/x", "written through lib -> usr/lib\n"),
        file("lib64/y", "written through the absolute lib64 -> /usr/lib64\n"),
        file("lib/.wh.gone-via-link"),
        # spellings: replace ./spell/dot as /spell/dot, whiteout spell/plain as ./spell.
        file("/spell/dot", "v2 of dot\n"),
        file("./spell/.wh.plain"),
        file("spell/abs", "v2 of abs\n"),
    ]
    return Layer(e, created_by="RUN edits")


def _names_layer() -> Layer:
    """Layer 3 (gzip, GNU headers): long and non-ASCII names, many small files."""
    long_dir = "long/" + "/".join([LONG_NAME[:150]] * 2)
    e: list[Entry] = [
        whiteout("hl/orig"),  # hl/link-to-lower must survive with the content
        file("tc/f2d2f", "file again in layer 3\n"),
        directory("wh/redo"),
        file("wh/redo/new", "recreated after the whiteout\n"),
        directory("long"),
        file(f"long/{LONG_NAME}", "a 236-byte name\n"),
        directory("long/" + LONG_NAME[:150]),
        directory(long_dir),
        file(f"{long_dir}/{LONG_NAME}", "a path of more than 255 bytes\n"),
        directory("utf8"),
        file(f"utf8/{UTF8_NAME}", "non-ASCII name\n"),
        directory("utf8/ディレクトリ"),
        symlink("utf8/リンク", UTF8_NAME),
        directory("many"),
    ]
    per_dir = 100
    for d in range(MANY_FILES // per_dir):
        e.append(directory(f"many/d{d:02}"))
        e.extend(file(f"many/d{d:02}/f{i:03}", f"small file {d}/{i}\n") for i in range(per_dir))
    return Layer(e, tar_format="gnu", created_by="COPY many /many")


def torture() -> Image:
    """Four layers of corner cases (see the module constants and the report)."""
    big = Layer(
        [
            directory("big"),
            file("big/random.bin", big_file_content()),
            file("big/small", "a small file in the uncompressed layer\n"),
            file("big/empty"),
        ],
        compression="none",
        created_by="ADD random.bin /big/",
    )
    return Image([_base_layer(), _edit_layer(), _names_layer(), big])


CATALOG: dict[str, Callable[[], Image | ImageIndex]] = {
    "sample": sample,
    "docker_sample": docker_sample,
    "torture": torture,
    "multiarch": multiarch,
}
