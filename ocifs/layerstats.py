"""What each layer of an image does, from the layer indexes alone (no pull): files
added, changed and removed, bytes wasted, the command that made it; and the
image's efficiency score as dive (github.com/wagoodman/dive) defines it.

The layers are replayed bottom to top with :func:`ocifs.tree.apply_layer`, so that
whiteouts, opaque directories, hardlinks and writes through symlinks mean here what
they mean in the mounted tree (image-spec layer.md "Changesets", "Whiteouts").

Definitions (paths, not bytes, are counted in ``added``/``changed``/``removed``):

- *added*: a path of the layer that the layers below do not have.
- *changed*: a path the layers below have, replaced by this layer; a directory
  entry over a directory counts only when its mode, owner or xattrs differ (image
  builders restate parent directories in every layer) or when this layer's
  whiteouts deleted it first.
- *removed*: a name a whiteout or an opaque marker of this layer deletes from the
  layers below; a whiteout that hits nothing is not counted.
- *wasted bytes* of a layer: the content bytes of its regular files that the final
  image does not show (overwritten or deleted by a later layer, or by a later entry
  of the same layer). A file still reachable through a hardlink is not wasted.
- *efficiency*: dive's score. For every path, each layer that has it as a leaf (a
  non-directory, or a directory without entries under it in that layer) adds one
  occurrence whose size is the file's content size (0 for anything else), and
  deleting a file adds an occurrence of size 0. The score is the sum over paths of
  the smallest occurrence divided by the sum of all occurrences (1.0 when that is
  0). Unlike dive, deleting a directory counts as deleting each file in it (dive adds
  the directory's total to both sides of the ratio, so deleting never lowers it),
  and opaque markers count as deletions too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ocifs.layers.entry import EntryType, LayerEntry
from ocifs.layers.index import Layer
from ocifs.tree import Node, apply_layer, empty_root, parent_of

__all__ = ["ImageStats", "LayerStats", "history_commands", "image_stats"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
ESTARGZ_UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"


@dataclass(frozen=True, slots=True)
class LayerStats:
    """The facts about one layer (``index`` 0 is the bottom). Sizes are bytes;
    ``uncompressed_bytes`` is None when the layer's index does not know it."""

    index: int
    digest: str
    media_type: str
    compressed_bytes: int
    uncompressed_bytes: int | None
    created_by: str | None
    added: int
    changed: int
    removed: int
    wasted_bytes: int


@dataclass(frozen=True, slots=True)
class ImageStats:
    """The per-layer facts and the image totals (bytes); ``efficiency`` is in [0, 1]."""

    layers: tuple[LayerStats, ...]
    compressed_bytes: int
    uncompressed_bytes: int | None
    wasted_bytes: int
    efficiency: float


def history_commands(config_raw: bytes, layer_count: int) -> list[str | None]:
    """The ``created_by`` of each layer from the config's ``history`` (image-spec
    config.md), skipping ``empty_layer`` entries; None where history says nothing."""
    try:
        history = json.loads(config_raw).get("history")
    except (ValueError, AttributeError):
        history = None
    commands: list[str | None] = []
    if isinstance(history, list):
        for item in history:
            if not isinstance(item, dict) or item.get("empty_layer") is True:
                continue
            text = item.get("created_by")
            commands.append(text if isinstance(text, str) else None)
    commands = commands[:layer_count]
    return commands + [None] * (layer_count - len(commands))


def _split(entries: Sequence[LayerEntry]) -> tuple[list[LayerEntry], dict[str, LayerEntry]]:
    """A layer's whiteouts (and opaque markers), and its other entries by path (the
    last entry at a path wins, as when the layer is applied)."""
    whiteouts: list[LayerEntry] = []
    placed: dict[str, LayerEntry] = {}
    for entry in entries:
        if entry.path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
            whiteouts.append(entry)
        else:
            placed[entry.path] = entry
    return whiteouts, placed


def _files_below(node: Node, path: str) -> Iterator[str]:
    """The paths of the regular files at or below ``node`` (found at ``path``)."""
    stack = [(node, path)]
    while stack:
        node, path = stack.pop()
        if node.type is EntryType.REG:
            yield path
        elif node.children:
            stack.extend((child, f"{path}/{name}") for name, child in node.children.items())


def _is_dir(etype: EntryType) -> bool:
    return etype is EntryType.DIR


def _same_dir_meta(node: Node, entry: LayerEntry) -> bool:
    return (
        node.mode == entry.mode & 0o7777
        and (node.uid, node.gid) == (entry.uid, entry.gid)
        and node.xattrs == entry.xattrs
    )


class _Efficiency:
    """dive's score: per path, the smallest occurrence and the sum of occurrences."""

    def __init__(self) -> None:
        self.smallest: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def add(self, path: str, size: int) -> None:
        old = self.smallest.get(path)
        self.smallest[path] = size if old is None else min(old, size)
        self.total[path] = self.total.get(path, 0) + size

    def add_layer_leaves(self, placed: dict[str, LayerEntry]) -> None:
        parents: set[str] = set()
        for path in placed:
            while path:
                path = path.rpartition("/")[0]
                if path in parents:
                    break
                parents.add(path)
        for path, entry in placed.items():
            if entry.type is not EntryType.DIR or path not in parents:
                self.add(path, entry.size if entry.type is EntryType.REG else 0)

    def score(self) -> float:
        total = sum(self.total.values())
        return 1.0 if total == 0 else sum(self.smallest.values()) / total


def _layer_counts(
    root: Node, whiteouts: list[LayerEntry], placed: dict[str, LayerEntry], eff: _Efficiency
) -> tuple[int, int, int]:
    """(added, changed, removed) of one layer against the tree below it at ``root``;
    records the layer's deletions in ``eff``."""
    removed: set[tuple[int, str]] = set()
    for entry in whiteouts:
        directory = parent_of(root, entry.path)
        if directory is None or not directory.children:
            continue
        dir_path, _, base = entry.path.rpartition("/")
        named = [base[len(WHITEOUT_PREFIX) :]]
        names = list(directory.children) if base == OPAQUE_MARKER else named
        for name in names:
            hit = directory.children.get(name)
            if hit is None or (id(directory), name) in removed:
                continue
            removed.add((id(directory), name))
            for path in _files_below(hit, f"{dir_path}/{name}" if dir_path else name):
                eff.add(path, 0)
    added = changed = 0
    for path, entry in placed.items():
        if not path:
            continue  # the root always exists: restating it is neither
        directory = parent_of(root, path)
        name = path.rpartition("/")[2]
        old = None
        if directory is not None and directory.children is not None:
            old = directory.children.get(name)
        if old is None:
            added += 1
        elif (id(directory), name) in removed:
            changed += 1  # deleted and made anew by this layer: a replacement
        elif not (_is_dir(entry.type) and _is_dir(old.type) and _same_dir_meta(old, entry)):
            changed += 1
    return added, changed, len(removed)


def _reachable_entries(root: Node) -> set[int]:
    """The identities of the layer entries whose content the final tree serves."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node.entry is not None:
            seen.add(id(node.entry))
        if node.children:
            stack.extend(node.children.values())
    return seen


def _uncompressed_size(layer: Layer) -> int | None:
    """From the layer index, else the eStargz annotation (its TOC does not say)."""
    if layer.uncompressed_size:
        return layer.uncompressed_size
    text = layer.desc.annotations.get(ESTARGZ_UNCOMPRESSED_SIZE, "")
    return int(text) if text.isdigit() else None


def image_stats(layers: Sequence[Layer], config_raw: bytes) -> ImageStats:
    """Replay ``layers`` (bottom first) and return what each does; CPU work
    proportional to the number of entries, to be run in a worker thread. Raises
    :class:`ocifs.errors.LayerFormatError` as building the tree does."""
    commands = history_commands(config_raw, len(layers))
    root = empty_root()
    eff = _Efficiency()
    counts: list[tuple[int, int, int]] = []
    for index, layer in enumerate(layers):
        whiteouts, placed = _split(layer.entries)
        counts.append(_layer_counts(root, whiteouts, placed, eff))
        eff.add_layer_leaves(placed)
        apply_layer(root, index, layer.entries)
    shown = _reachable_entries(root)
    stats = []
    for index, layer in enumerate(layers):
        wasted = sum(
            e.size for e in layer.entries if e.type is EntryType.REG and id(e) not in shown
        )
        added, changed, removed = counts[index]
        stats.append(
            LayerStats(
                index=index,
                digest=layer.desc.digest,
                media_type=layer.desc.media_type,
                compressed_bytes=layer.desc.size,
                uncompressed_bytes=_uncompressed_size(layer),
                created_by=commands[index],
                added=added,
                changed=changed,
                removed=removed,
                wasted_bytes=wasted,
            )
        )
    sizes = [s.uncompressed_bytes for s in stats]
    return ImageStats(
        layers=tuple(stats),
        compressed_bytes=sum(s.compressed_bytes for s in stats),
        uncompressed_bytes=None if None in sizes else sum(s or 0 for s in sizes),
        wasted_bytes=sum(s.wasted_bytes for s in stats),
        efficiency=eff.score(),
    )
