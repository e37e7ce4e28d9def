"""Unit tests of the merged tree (ocifs.tree): whiteouts, opaque dirs, hardlinks, inodes.

Expected results follow image-spec layer.md and what ``umoci raw unpack`` (0.4.7)
produced for the same layers when these rules were written down.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from ocifs.errors import LayerFormatError
from ocifs.layers.entry import EntryType, LayerEntry
from ocifs.tree import ROOT_INO, Node, Tree, build_tree

REG, DIR, SYMLINK, HARDLINK = EntryType.REG, EntryType.DIR, EntryType.SYMLINK, EntryType.HARDLINK


def reg(path: str, mode: int = 0o644, size: int = 0, **kw: object) -> LayerEntry:
    return LayerEntry(path, REG, mode=mode, size=size, **kw)  # type: ignore[arg-type]


def dir_(path: str, mode: int = 0o750, **kw: object) -> LayerEntry:
    return LayerEntry(path, DIR, mode=mode, **kw)  # type: ignore[arg-type]


def sym(path: str, target: str) -> LayerEntry:
    return LayerEntry(path, SYMLINK, mode=0o777, linkname=target)


def link(path: str, target: str) -> LayerEntry:
    return LayerEntry(path, HARDLINK, linkname=target)


def wh(path: str) -> LayerEntry:
    return LayerEntry(path, REG)


def paths(tree: Tree) -> dict[str, Node]:
    """Every path of the tree ("" is the root) and its node, no symlinks followed."""
    out: dict[str, Node] = {}
    todo: list[tuple[str, Node]] = [("", tree.root)]
    while todo:
        path, node = todo.pop()
        out[path] = node
        for name, child in (node.children or {}).items():
            todo.append((posixpath.join(path, name) if path else name, child))
    return out


def node(tree: Tree, path: str) -> Node:
    found = tree.lookup(path)
    assert found is not None, path
    return found


# --- root ---------------------------------------------------------------------------


def test_default_root_is_0755_root_owned_dir() -> None:
    tree = build_tree([[reg("f")]])
    root = tree.root
    assert (root.type, root.mode, root.uid, root.gid) == (DIR, 0o755, 0, 0)
    assert (root.ino, root.layer, root.entry) == (ROOT_INO, -1, None)
    assert tree.get(ROOT_INO) is root
    assert tree.lookup("") is root


def test_root_metadata_from_entries_top_layer_wins() -> None:
    first, second = dir_("", mode=0o700, uid=5, gid=6), dir_("", mode=0o711, uid=7)
    tree = build_tree([[first, reg("f")], [second]])
    assert (tree.root.mode, tree.root.uid, tree.root.gid) == (0o711, 7, 0)
    assert tree.root.entry is second and tree.root.layer == 1
    assert set(tree.root.names) == {"f"}


def test_root_entry_that_is_not_a_dir_is_an_error() -> None:
    with pytest.raises(LayerFormatError, match=r"layer 0: entry ''"):
        build_tree([[reg("")]])


def test_empty_image_is_just_the_root() -> None:
    tree = build_tree([])
    assert tree.nodes == 1 and tree.root.names == () and tree.root.nlink == 2


# --- implicit parents -----------------------------------------------------------------


def test_missing_parents_are_implicit_0755_root_dirs() -> None:
    tree = build_tree([[reg("a/b/c", uid=7, gid=8)]])
    for path in ("a", "a/b"):
        implicit = node(tree, path)
        assert (implicit.type, implicit.mode, implicit.uid, implicit.gid) == (DIR, 0o755, 0, 0)
        assert (implicit.layer, implicit.entry, implicit.mtime_ns) == (-1, None, 0)
    assert node(tree, "a/b/c").uid == 7


def test_later_dir_entry_for_an_implicit_parent_sets_its_metadata() -> None:
    entry = dir_("a", mode=0o700, uid=3)
    tree = build_tree([[reg("a/f"), entry]])
    a = node(tree, "a")
    assert (a.mode, a.uid, a.entry, a.layer) == (0o700, 3, entry, 0)
    assert a.names == ("f",)


def test_parent_that_is_a_regular_file_is_an_error() -> None:
    with pytest.raises(LayerFormatError, match=r"layer 1: entry 'f/x': parent is not a dir"):
        build_tree([[reg("f")], [reg("f/x")]])


# --- whiteouts ------------------------------------------------------------------------


def test_whiteout_removes_lower_file_and_whole_subtree() -> None:
    lower = [dir_("d"), reg("d/f"), dir_("d/sub"), reg("d/sub/g"), reg("keep")]
    tree = build_tree([lower, [wh(".wh.d")]])
    assert set(paths(tree)) == {"", "keep"}


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_whiteout_spares_the_same_layers_entry_in_either_order(whiteout_first: bool) -> None:
    new = reg("f", size=2)
    upper = [wh(".wh.f"), new] if whiteout_first else [new, wh(".wh.f")]
    tree = build_tree([[reg("f", size=1)], upper])
    assert node(tree, "f").entry is new


def test_whiteouts_never_appear_in_the_tree() -> None:
    tree = build_tree([[reg("a")], [wh(".wh.a"), wh(".wh.nothing"), wh("d/.wh..wh..opq")]])
    assert set(paths(tree)) == {""}


@pytest.mark.parametrize(
    "layer",
    [
        [wh(".wh.missing")],
        [wh("no/such/dir/.wh.x")],
        [wh("f/.wh.x")],  # parent is a file
        [wh("no/such/.wh..wh..opq")],
    ],
)
def test_whiteout_of_nonexistent_path_is_a_noop(layer: list[LayerEntry]) -> None:
    tree = build_tree([[reg("f"), dir_("d"), reg("d/g")], layer])
    assert set(paths(tree)) == {"", "f", "d", "d/g"}


@pytest.mark.parametrize("name", ["d/.wh.", "d/.wh..", "d/.wh..."])
def test_whiteout_naming_no_file_is_an_error(name: str) -> None:
    with pytest.raises(LayerFormatError, match=rf"layer 1: entry '{name}'"):
        build_tree([[dir_("d")], [wh(name)]])


def test_whiteout_of_a_symlink_removes_the_link_not_its_target() -> None:
    tree = build_tree([[dir_("usr/lib"), reg("usr/lib/f"), sym("lib", "usr/lib")], [wh(".wh.lib")]])
    assert set(paths(tree)) == {"", "usr", "usr/lib", "usr/lib/f"}


def test_whiteout_through_symlinked_parent() -> None:
    lower = [dir_("usr/lib"), reg("usr/lib/f"), reg("usr/lib/g"), sym("lib", "usr/lib")]
    tree = build_tree([lower, [wh("lib/.wh.f")]])
    assert node(tree, "usr/lib").names == ("g",)
    assert node(tree, "lib").type is SYMLINK


# --- opaque directories ---------------------------------------------------------------


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_hides_lower_children_keeps_same_layer_ones(marker_first: bool) -> None:
    lower = [dir_("d", mode=0o700), reg("d/old"), dir_("d/olddir"), reg("d/olddir/x"), reg("top")]
    upper_d = dir_("d", mode=0o750)
    marker = wh("d/.wh..wh..opq")
    adds = [upper_d, reg("d/new"), reg("d/sub/deep")]
    upper = [marker, *adds] if marker_first else [*adds, marker]
    tree = build_tree([lower, upper])
    assert set(paths(tree)) == {"", "top", "d", "d/new", "d/sub", "d/sub/deep"}
    assert node(tree, "d").entry is upper_d and node(tree, "d").mode == 0o750


def test_opaque_without_dir_entry_keeps_lower_dir_metadata() -> None:
    lower_d = dir_("d", mode=0o700, uid=9)
    tree = build_tree([[lower_d, reg("d/old")], [wh("d/.wh..wh..opq")]])
    d = node(tree, "d")
    assert d.entry is lower_d and d.names == ()


def test_opaque_marker_at_root_hides_everything_below() -> None:
    tree = build_tree([[reg("a"), dir_("b")], [reg("c"), wh(".wh..wh..opq")]])
    assert set(paths(tree)) == {"", "c"}


def test_opaque_hides_only_lower_layers_not_earlier_same_layer_or_later() -> None:
    tree = build_tree([[reg("d/l0")], [reg("d/l1"), wh("d/.wh..wh..opq")], [reg("d/l2")]])
    assert node(tree, "d").names == ("l1", "l2")


# --- delete and recreate, type changes ------------------------------------------------


def test_delete_and_recreate_dir_in_one_layer() -> None:
    new_d = dir_("d", mode=0o711)
    lower = [dir_("d", mode=0o700), reg("d/old")]
    for upper in ([wh(".wh.d"), new_d, reg("d/new")], [new_d, reg("d/new"), wh(".wh.d")]):
        tree = build_tree([lower, upper])
        assert node(tree, "d").entry is new_d and node(tree, "d").names == ("new",)


def test_whiteout_dir_and_child_without_dir_entry_gives_implicit_dir() -> None:
    # umoci gives this result when the whiteout comes first in the tar; here order
    # within a layer never matters for whiteouts.
    for upper in ([wh(".wh.d"), reg("d/new")], [reg("d/new"), wh(".wh.d")]):
        tree = build_tree([[dir_("d", mode=0o700, uid=5), reg("d/old")], upper])
        d = node(tree, "d")
        assert (d.mode, d.uid, d.entry, d.names) == (0o755, 0, None, ("new",))


def test_delete_and_recreate_across_layers() -> None:
    tree = build_tree([[reg("d/old")], [wh(".wh.d")], [reg("d/new")]])
    assert node(tree, "d").names == ("new",) and node(tree, "d").entry is None


def test_dir_over_dir_merges_metadata_keeps_children() -> None:
    upper = dir_("d", mode=0o700, uid=4, xattrs={"user.b": b"2"})
    tree = build_tree([[dir_("d", xattrs={"user.a": b"1"}), reg("d/f")], [upper, reg("d/g")]])
    d = node(tree, "d")
    assert (d.mode, d.uid, d.xattrs, d.entry, d.layer) == (0o700, 4, {"user.b": b"2"}, upper, 1)
    assert d.names == ("f", "g")


@pytest.mark.parametrize("new", [reg("d", size=3), sym("d", "elsewhere")])
def test_non_dir_over_dir_replaces_subtree(new: LayerEntry) -> None:
    tree = build_tree([[dir_("d"), reg("d/f"), dir_("d/s"), reg("d/s/g")], [new]])
    assert set(paths(tree)) == {"", "d"}
    assert node(tree, "d").type is new.type and node(tree, "d").children is None


@pytest.mark.parametrize("lower", [reg("x"), sym("x", "y"), LayerEntry("x", EntryType.FIFO)])
def test_dir_over_non_dir_replaces_it_with_empty_dir(lower: LayerEntry) -> None:
    tree = build_tree([[lower, reg("y")], [dir_("x"), reg("x/added")]])
    x = node(tree, "x")
    assert x.type is DIR and x.names == ("added",) and x.layer == 1


def test_non_dir_over_non_dir_replaces() -> None:
    tree = build_tree([[reg("x", size=5)], [sym("x", "t")]])
    x = node(tree, "x")
    assert (x.type, x.linkname, x.size) == (SYMLINK, "t", 0)


def test_duplicates_in_one_layer_later_wins() -> None:
    second = reg("f", size=2)
    tree = build_tree([[reg("f", size=1), second, dir_("d"), reg("d/x"), reg("d")]])
    assert node(tree, "f").entry is second
    assert node(tree, "d").type is REG and tree.lookup("d/x") is None


# --- node fields ----------------------------------------------------------------------


def test_node_fields_come_from_the_entry() -> None:
    dev = LayerEntry("dev/null", EntryType.CHAR, mode=0o666, devmajor=1, devminor=3)
    f = reg("f", mode=0o4755, size=12, uid=1, gid=2, mtime_ns=5, data_offset=512)
    tree = build_tree([[dev, f, sym("s", "/f")]])
    n = node(tree, "f")
    assert (n.mode, n.size, n.uid, n.gid, n.mtime_ns) == (0o4755, 12, 1, 2, 5)
    assert n.entry is f and n.entry.data_offset == 512
    d = node(tree, "dev/null")
    assert (d.type, d.devmajor, d.devminor, d.size) == (EntryType.CHAR, 1, 3, 0)
    assert node(tree, "s").linkname == "/f"


def test_names_are_sorted() -> None:
    tree = build_tree([[reg("b"), reg("a"), dir_("C"), reg("c")], [reg("aa")]])
    assert tree.root.names == ("C", "a", "aa", "b", "c")


# --- hardlinks ------------------------------------------------------------------------


def test_hardlink_in_same_layer_shares_one_node() -> None:
    target = reg("f", size=4, data_offset=1024)
    tree = build_tree([[target, link("g", "f")]])
    f, g = node(tree, "f"), node(tree, "g")
    assert f is g and f.ino == g.ino and f.nlink == 2
    assert f.entry is target and f.layer == 0 and f.type is REG
    assert tree.nodes == 2


def test_hardlink_to_lower_layer_file() -> None:
    target = reg("f", size=4)
    tree = build_tree([[target], [reg("other")], [link("g", "f")]])
    g = node(tree, "g")
    assert g is node(tree, "f") and g.entry is target and g.layer == 0 and g.nlink == 2


def test_hardlink_survives_whiteout_of_original_name() -> None:
    target = reg("f", size=4)
    tree = build_tree([[target], [link("g", "f")], [wh(".wh.f")]])
    g = node(tree, "g")
    assert g.entry is target and g.nlink == 1 and tree.lookup("f") is None


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_hardlink_to_lower_file_whited_out_in_links_layer(whiteout_first: bool) -> None:
    # The whiteout acts on the lower layers; the link names the lower file as they left it.
    target = reg("f", size=4)
    upper = [wh(".wh.f"), link("g", "f")] if whiteout_first else [link("g", "f"), wh(".wh.f")]
    tree = build_tree([[target], upper])
    assert node(tree, "g").entry is target and tree.lookup("f") is None


def test_hardlink_to_link_made_earlier_in_same_layer() -> None:
    target = reg("f")
    tree = build_tree([[target, link("g", "f"), link("h", "g")]])
    assert node(tree, "h") is node(tree, "f") and node(tree, "f").nlink == 3


def test_hardlink_through_symlink_made_in_same_layer() -> None:
    tree = build_tree([[reg("usr/lib/f")], [sym("lib", "usr/lib"), link("g", "lib/f")]])
    assert node(tree, "g") is node(tree, "usr/lib/f")


def test_replacing_content_at_one_name_keeps_other_name_on_old_node() -> None:
    target, newer = reg("f", size=4), reg("f", size=9)
    tree = build_tree([[target, link("g", "f"), link("h", "f")], [newer]])
    f, g = node(tree, "f"), node(tree, "g")
    assert f is not g and f.entry is newer and g.entry is target
    assert (f.nlink, g.nlink) == (1, 2) and f.ino != g.ino


def test_hardlink_forward_reference_in_same_layer() -> None:
    target = reg("f", size=4)
    tree = build_tree([[link("g", "f"), target]])
    assert node(tree, "g") is node(tree, "f") and node(tree, "g").entry is target


def test_hardlink_prefers_same_layer_entry_over_lower_file() -> None:
    lower, later, earlier = reg("f", size=1), reg("f", size=2), reg("f", size=3)
    tree = build_tree([[lower], [link("g", "f"), later]])
    assert node(tree, "g").entry is later and node(tree, "f").nlink == 2
    tree = build_tree([[lower], [earlier, link("g", "f"), reg("f", size=4)]])
    assert node(tree, "g").entry is earlier and node(tree, "f").size == 4


def test_hardlink_through_symlinked_parent() -> None:
    target = reg("usr/lib/f")
    tree = build_tree([[dir_("usr/lib"), target, sym("lib", "usr/lib")], [link("g", "lib/f")]])
    assert node(tree, "g") is node(tree, "usr/lib/f") and node(tree, "g").nlink == 2


def test_hardlink_to_symlink_shares_it() -> None:
    tree = build_tree([[sym("s", "nowhere"), link("h", "s")]])
    h = node(tree, "h")
    assert h is node(tree, "s") and h.type is SYMLINK and h.nlink == 2


def test_hardlink_to_missing_target_is_an_error() -> None:
    with pytest.raises(LayerFormatError, match=r"layer 1: entry 'g': hardlink target 'f'"):
        build_tree([[reg("x")], [link("g", "f")]])


def test_hardlink_to_file_whited_out_by_an_earlier_layer_is_an_error() -> None:
    with pytest.raises(LayerFormatError, match=r"layer 2: entry 'g'"):
        build_tree([[reg("f")], [wh(".wh.f")], [link("g", "f")]])


@pytest.mark.parametrize("layers", [[[dir_("d"), link("g", "d")]], [[dir_("d")], [link("g", "d")]]])
def test_hardlink_to_directory_is_an_error(layers: list[list[LayerEntry]]) -> None:
    with pytest.raises(LayerFormatError, match=r"entry 'g': hardlink to directory 'd'"):
        build_tree(layers)


def test_hardlink_to_root_is_an_error() -> None:
    with pytest.raises(LayerFormatError, match=r"layer 0: entry 'g'"):
        build_tree([[link("g", "")]])


# --- nlink ----------------------------------------------------------------------------


def test_nlink_of_directories_counts_child_dirs() -> None:
    tree = build_tree([[dir_("a"), dir_("a/b"), dir_("a/c"), reg("a/f"), sym("a/s", "b")]])
    assert tree.root.nlink == 3
    assert node(tree, "a").nlink == 4
    assert node(tree, "a/b").nlink == 2
    assert node(tree, "a/f").nlink == 1


def test_nlink_after_whiteout_of_subdir() -> None:
    tree = build_tree([[dir_("a/b"), dir_("a/c")], [wh("a/.wh.b")]])
    assert node(tree, "a").nlink == 3


# --- symlinked parents ----------------------------------------------------------------


def test_usrmerge_entry_under_lower_layer_symlink() -> None:
    usr_lib = dir_("usr/lib", mode=0o750)
    tree = build_tree([[usr_lib, sym("lib", "usr/lib")], [reg("lib/x")]])
    assert set(paths(tree)) == {"", "usr", "usr/lib", "usr/lib/x", "lib"}
    assert node(tree, "lib").type is SYMLINK and node(tree, "usr/lib").entry is usr_lib


def test_usrmerge_with_symlink_from_same_layer() -> None:
    tree = build_tree([[dir_("usr/lib"), sym("lib", "usr/lib"), reg("lib/x")]])
    assert node(tree, "usr/lib").names == ("x",)


def test_dangling_absolute_symlink_parent_creates_dirs_inside_root() -> None:
    tree = build_tree([[sym("lib", "/usr/lib")], [reg("lib/x")]])
    assert node(tree, "usr/lib").mode == 0o755 and node(tree, "usr/lib").names == ("x",)


def test_dotdot_in_symlink_parent_is_clamped_at_root() -> None:
    tree = build_tree([[dir_("d"), sym("d/up", "../../../../etc")], [reg("d/up/x")]])
    assert node(tree, "etc/x").type is REG


def test_chained_symlink_parents() -> None:
    lower = [dir_("real"), sym("a", "b"), sym("b", "/c/../real")]
    tree = build_tree([lower, [reg("a/x")]])
    assert node(tree, "real").names == ("x",)


def test_entry_replacing_a_symlink_with_a_dir_stops_following_it() -> None:
    lower = [dir_("usr/lib"), sym("lib", "usr/lib")]
    tree = build_tree([lower, [reg("lib/a"), dir_("lib"), reg("lib/b")]])
    assert node(tree, "usr/lib").names == ("a",)
    assert node(tree, "lib").names == ("b",)


def test_symlink_loop_in_parents_is_an_error() -> None:
    with pytest.raises(LayerFormatError, match=r"layer 1: entry 'a/x': too many levels"):
        build_tree([[sym("a", "b"), sym("b", "a")], [reg("a/x")]])


def test_symlink_to_file_as_parent_is_an_error() -> None:
    with pytest.raises(LayerFormatError, match=r"layer 1: entry 'a/x'"):
        build_tree([[reg("f"), sym("a", "f")], [reg("a/x")]])


# --- Tree API -------------------------------------------------------------------------


def test_get_unknown_inode_raises_key_error() -> None:
    tree = build_tree([[reg("f")]])
    assert tree.nodes == 2
    for ino in (0, -1, 3):
        with pytest.raises(KeyError):
            tree.get(ino)


def test_lookup_does_not_follow_symlinks_resolve_does() -> None:
    tree = build_tree(
        [[dir_("usr/lib"), reg("usr/lib/f"), sym("lib", "/usr/lib"), sym("l2", "lib/f")]]
    )
    assert tree.lookup("lib/f") is None
    assert node(tree, "lib").type is SYMLINK
    assert tree.resolve("lib/f") is node(tree, "usr/lib/f")
    assert tree.resolve("l2") is node(tree, "usr/lib/f")
    assert tree.resolve("lib") is node(tree, "usr/lib")
    assert tree.resolve("lib/missing") is None
    assert tree.resolve("usr/lib/f/x") is None


def test_resolve_of_a_symlink_loop_is_none() -> None:
    tree = build_tree([[sym("a", "b"), sym("b", "a")]])
    assert tree.resolve("a") is None and tree.lookup("a") is not None


def test_inodes_are_depth_first_in_sorted_order() -> None:
    tree = build_tree([[reg("b"), dir_("a"), reg("a/z"), dir_("a/y"), reg("a/y/q"), reg("c")]])
    order = ["", "a", "a/y", "a/y/q", "a/z", "b", "c"]
    assert [node(tree, p).ino for p in order] == list(range(1, 8))
    assert all(tree.get(i) is node(tree, p) for i, p in enumerate(order, start=1))


def test_inodes_are_deterministic_across_builds() -> None:
    def layers() -> list[list[LayerEntry]]:
        return [
            [dir_("etc"), reg("etc/passwd"), reg("bin/sh"), link("bin/bash", "bin/sh")],
            [reg("etc/hosts"), wh("etc/.wh.passwd"), dir_("var/log")],
        ]

    one, two = build_tree(layers()), build_tree(layers())
    assert {p: n.ino for p, n in paths(one).items()} == {p: n.ino for p, n in paths(two).items()}
    assert node(one, "bin/sh").ino == node(one, "bin/bash").ino
    assert one.nodes == two.nodes == len({n.ino for n in paths(one).values()})


def test_parent_of_directories() -> None:
    tree = build_tree([[dir_("a/b")]])
    assert tree.root.parent is tree.root
    assert node(tree, "a/b").parent is node(tree, "a")


# --- property test against a naive model ----------------------------------------------


class _Skip(Exception):
    """The example leads through a symlink, which the naive model does not follow."""


class _Bad(Exception):
    """The model says the layer stack is invalid."""


@dataclass(eq=False)
class _Obj:
    type: EntryType
    entry: LayerEntry | None


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _model(layers: Sequence[Sequence[LayerEntry]]) -> dict[str, _Obj]:
    """Layers applied to a flat dict of paths: each layer's whiteouts first, then the rest."""
    model: dict[str, _Obj] = {"": _Obj(DIR, None)}

    def drop_below(path: str) -> None:
        for p in [p for p in model if p.startswith(path + "/") or (not path and p)]:
            del model[p]

    def dir_state(path: str, tree: dict[str, _Obj] = model) -> str:
        for p in [*_ancestors(path), path] if path else []:
            obj = tree.get(p)
            if obj is None:
                return "missing"
            if obj.type is SYMLINK:
                raise _Skip
            if obj.type is not DIR:
                return "notdir"
        return "dir"

    def lookup(tree: dict[str, _Obj], path: str) -> _Obj | None:
        return tree.get(path) if dir_state(path.rpartition("/")[0], tree) == "dir" else None

    for layer in layers:
        outs = [e for e in layer if e.path.rpartition("/")[2].startswith(".wh.")]
        rest = [e for e in layer if not e.path.rpartition("/")[2].startswith(".wh.")]
        lower = dict(model)
        for e in outs:
            parent, _, base = e.path.rpartition("/")
            if dir_state(parent) != "dir":
                continue
            if base == ".wh..wh..opq":
                drop_below(parent)
            else:
                gone = posixpath.join(parent, base[4:]) if parent else base[4:]
                model.pop(gone, None)
                drop_below(gone)
        made: dict[int, _Obj] = {}
        for pos, e in enumerate(rest):
            if not e.path:
                if e.type is not DIR:
                    raise _Bad
                model[""] = _Obj(DIR, e)
                continue
            if dir_state(e.path.rpartition("/")[0]) == "notdir":
                raise _Bad
            for a in _ancestors(e.path):
                model.setdefault(a, _Obj(DIR, None))
            old = model.get(e.path)
            if e.type is DIR and old is not None and old.type is DIR:
                model[e.path] = _Obj(DIR, e)
                continue
            if e.type is HARDLINK:
                same = [
                    p for p, x in enumerate(rest) if x.path == e.linkname and x.type is not HARDLINK
                ]
                before = [p for p in same if p < pos]
                if same:
                    p = before[-1] if before else same[0]
                    if rest[p].type is DIR:
                        raise _Bad
                    obj = made.setdefault(p, _Obj(rest[p].type, rest[p]))
                else:
                    found = lookup(lower, e.linkname) or lookup(model, e.linkname)
                    if found is None or found.type is DIR:
                        raise _Bad
                    obj = found
            else:
                obj = made.setdefault(pos, _Obj(e.type, e))
            drop_below(e.path)
            model[e.path] = obj
    return model


# Few names, so that entries, whiteouts and link targets of a stack often meet.
_names = st.sampled_from(["a", "b"])
_paths = st.lists(_names, min_size=1, max_size=3).map("/".join)
# Half the names non-directories end in are never directories, so fewer files sit under files.
_leaf_paths = st.tuples(st.lists(_names, max_size=2), st.sampled_from(["a", "b", "f", "g"])).map(
    lambda t: "/".join([*t[0], t[1]])
)


@st.composite
def _stacks(draw: st.DrawFn) -> list[list[LayerEntry]]:
    seen: list[str] = []  # paths drawn so far: hardlinks mostly name one of them
    layers: list[list[LayerEntry]] = []
    for _ in range(draw(st.integers(1, 4))):
        layer: list[LayerEntry] = []
        for _ in range(draw(st.integers(0, 10))):
            layer.append(draw(_entry(seen)))
            if layer[-1].type in (REG, SYMLINK) and ".wh." not in layer[-1].path:
                seen.append(layer[-1].path)
        layers.append(layer)
    return layers


@st.composite
def _entry(draw: st.DrawFn, seen: list[str]) -> LayerEntry:
    path = draw(_paths)
    kinds = ["reg", "reg", "reg", "dir", "dir", "dir", "sym", "link", "wh", "wh", "opq", "root"]
    kind = draw(st.sampled_from(kinds))
    mode = draw(st.sampled_from([0o644, 0o600, 0o755]))
    if kind in ("reg", "sym", "link"):
        path = draw(_leaf_paths)
    if kind == "reg":
        return reg(path, mode=mode, size=draw(st.integers(0, 3)))
    if kind == "dir":
        return dir_(path, mode=mode)
    if kind == "sym":
        return sym(path, draw(st.sampled_from(["/a", "b", "../a", "x"])))
    if kind == "link":
        use_seen = seen and draw(st.integers(0, 9)) > 0
        return link(path, draw(st.sampled_from(seen) if use_seen else _leaf_paths))
    parent = path.rpartition("/")[0]
    if kind == "wh":
        return wh(posixpath.join(parent, ".wh." + path.rpartition("/")[2]))
    if kind == "opq":
        return wh(posixpath.join(parent, ".wh..wh..opq"))
    return dir_("", mode=mode)


@settings(max_examples=400, deadline=None)
@given(_stacks())
def test_random_layer_stacks_match_naive_model(layers: list[list[LayerEntry]]) -> None:
    try:
        expected = _model(layers)
    except _Skip:
        assume(False)
        return
    except _Bad:
        event("invalid stack")
        with pytest.raises(LayerFormatError):
            build_tree(layers)
        return
    event("valid stack")
    tree = build_tree(layers)
    got = paths(tree)
    assert set(got) == set(expected)
    names_of: dict[int, list[str]] = {}
    for path, obj in expected.items():
        n = got[path]
        assert n.type is obj.type, path
        assert n.entry is obj.entry, path
        want_mode = 0o755 if obj.entry is None else obj.entry.mode
        assert n.mode == want_mode, path
        if obj.type is DIR:
            kids = [
                p
                for p, o in expected.items()
                if o.type is DIR and p and p.rpartition("/")[0] == path
            ]
            assert n.nlink == 2 + len(kids), path
        else:
            names_of.setdefault(id(obj), []).append(path)
    for group in names_of.values():
        assert len({got[p].ino for p in group}) == 1
        assert got[group[0]].nlink == len(group)
    assert tree.nodes == len({n.ino for n in got.values()})
    assert len(names_of) + sum(o.type is DIR for o in expected.values()) == tree.nodes


def test_deep_nesting_needs_no_recursion() -> None:
    deep = "/".join(["d"] * 5000)
    tree = build_tree([[reg(deep + "/f")], [reg(deep + "/g")]])
    assert node(tree, deep).names == ("f", "g") and tree.nodes == 5003
