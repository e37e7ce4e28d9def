"""``ocifs layers``: per-layer facts of real images (registry and ``oci:`` layouts)
against what the image descriptions say and the layouts hold."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from image_catalog import sample, torture
from image_fixtures import BuiltImage
from imagebuild import Image, Layer, directory, file, hardlink, layer_tar, whiteout, write_layout
from mounting import ocifs, one_line_error

from ocifs.cli.describe import human_size
from ocifs.layers.entry import normalize_path


def layers_json(ref: str, cache: Path) -> dict[str, Any]:
    result = ocifs("layers", "--json", "--cache-dir", str(cache), ref)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def layout_layers(image: BuiltImage) -> list[dict[str, Any]]:
    blobs = image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / image.digest.removeprefix("sha256:")).read_bytes())
    return manifest["layers"]  # type: ignore[no-any-return]


def content(description: Image, layer: int, path: str) -> int:
    """The content length of the entry at ``path`` of a layer of the description."""
    for entry in description.layers[layer].entries:
        if normalize_path(entry.path) == path:
            return len(entry.content)
    raise KeyError(path)


@pytest.mark.parametrize("as_layout", [False, True])
def test_sample_layers(sample_image: BuiltImage, tmp_path: Path, as_layout: bool) -> None:
    ref = sample_image.layout_info.oci_ref if as_layout else sample_image.ref
    got = layers_json(ref, tmp_path / "cache")
    description = sample()
    descs = layout_layers(sample_image)
    assert [(la["added"], la["changed"], la["removed"]) for la in got["layers"]] == [
        (10, 0, 0),  # every entry of the base layer
        (5, 0, 0),  # srv, srv/notes, two notes, the symlink
        (2, 0, 1),  # wednesday.txt and motd; the whiteout of etc/secret.txt
    ]
    assert [la["created_by"] for la in got["layers"]] == [
        layer.created_by for layer in description.layers
    ]
    assert [(la["digest"], la["media_type"], la["compressed_bytes"]) for la in got["layers"]] == [
        (d["digest"], d["mediaType"], d["size"]) for d in descs
    ]
    tars = [len(layer_tar(layer)) for layer in description.layers]
    assert [la["uncompressed_bytes"] for la in got["layers"]] == tars
    secret = content(description, 0, "etc/secret.txt")
    assert [la["wasted_bytes"] for la in got["layers"]] == [secret, 0, 0]
    assert got["wasted_bytes"] == secret
    assert got["compressed_bytes"] == sum(d["size"] for d in descs)
    assert got["uncompressed_bytes"] == sum(tars)
    # dive's score: the deleted file counts once at its size and once at 0.
    total = sum(len(e.content) for layer in description.layers for e in layer.entries)
    assert got["efficiency"] == pytest.approx((total - secret) / total)


def test_torture_layers(torture_image: BuiltImage, tmp_path: Path) -> None:
    got = layers_json(torture_image.ref, tmp_path / "cache")
    description = torture()
    base_paths = {normalize_path(e.path) for e in description.layers[0].entries} - {""}
    counts = [(la["added"], la["changed"], la["removed"]) for la in got["layers"]]
    assert counts == [
        (len(base_paths), 0, 0),
        # added: wh/same/new, opq/upper1, opq/upperdir(/y), tc/f2d2f/inner,
        # hl/link-to-lower, lib/x, lib64/y; changed: wh/same (re-added, other mode),
        # tc/f2d2f, tc/d2s, tc/s2f (type changes), spell/dot, spell/abs; removed:
        # wh/gone, wh/dir, wh/redo, rootgone, wh/same, gone-via-link (through the lib
        # symlink), spell/plain, and the opaque marker's lower1 and lowerdir.
        # wh/never-existed hits nothing.
        (8, 6, 9),
        # tc/f2d2f (dir -> file again) is changed; all else, with wh/redo recreated
        # after its whiteout, is added; hl/orig is removed.
        (2 + 5 + 4 + 1 + 3030, 1, 1),
        (4, 0, 0),
    ]
    # Wasted in the base layer: every file whose content the final tree lost. Not
    # hl/orig: whited out in layer 3, its content lives on as hl/link-to-lower.
    lost = [
        "wh/gone", "wh/dir/sub/deep", "wh/redo/old", "wh/same/old", "rootgone",
        "opq/lower1", "opq/lowerdir/x", "tc/f2d2f", "tc/d2s/child",
        "usr/lib/gone-via-link", "spell/dot", "spell/plain", "spell/abs",
    ]  # fmt: skip
    wasted = [la["wasted_bytes"] for la in got["layers"]]
    assert wasted == [sum(content(description, 0, p) for p in lost), 23, 0, 0]
    assert content(description, 1, "tc/f2d2f/inner") == 23
    assert got["wasted_bytes"] == sum(wasted)
    assert [la["media_type"].rpartition(".")[2] for la in got["layers"]] == [
        "tar+gzip", "tar+gzip", "tar+gzip", "tar",
    ]  # fmt: skip
    assert got["layers"][3]["compressed_bytes"] == got["layers"][3]["uncompressed_bytes"]


def test_table_output(sample_image: BuiltImage, tmp_path: Path) -> None:
    result = ocifs("layers", "--cache-dir", str(tmp_path / "cache"), sample_image.ref)
    assert result.returncode == 0, result.stderr
    header, *rows, total = result.stdout.splitlines()
    assert header.split()[:3] == ["#", "DIGEST", "TYPE"]
    assert len(rows) == 3
    first = rows[0].split()
    assert first[0] == "0" and sample_image.digest != first[1]
    assert first[2] == "tar+gzip"
    assert rows[0].endswith("ADD base /")
    assert rows[2].endswith("RUN rm /etc/secret.txt && echo ... > /srv/notes/wednesday.txt")
    assert total.startswith("3 layers, ")
    assert "46 B wasted" in total and "efficiency 86.7 %" in total


def test_human_size() -> None:
    assert [human_size(n) for n in (0, 999, 1000, 12_345_678, 999_960, 10**19)] == [
        "0 B", "999 B", "1.0 kB", "12.3 MB", "1.0 MB", "10.0 EB",
    ]  # fmt: skip


def _rewrite_config(layout: Path, edit: Any) -> None:
    """Apply ``edit`` to the config of the layout's only manifest, then fix up the
    manifest's config descriptor and index.json so that every digest matches."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    top = index["manifests"][0]
    manifest = json.loads((blobs / top["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    edit(config)
    for obj, holder in ((config, manifest["config"]), (manifest, top)):
        raw = json.dumps(obj).encode()
        digest = hashlib.sha256(raw).hexdigest()
        (blobs / digest).write_bytes(raw)
        holder.update(digest=f"sha256:{digest}", size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))


def test_history_skips_empty_layers(tmp_path: Path) -> None:
    layers = [Layer([file("a", "1")], created_by="first"), Layer([file("b", "2")])]
    layout = write_layout(Image(layers), tmp_path / "layout")

    def interleave(config: dict[str, Any]) -> None:
        config["history"] = [
            {"created_by": "ENV X=1", "empty_layer": True},
            {"created_by": "first"},
            {"created_by": "LABEL y=2", "empty_layer": True},
            {"created_by": "second"},
            {"created_by": "CMD sh", "empty_layer": True},
        ]

    _rewrite_config(layout.path, interleave)
    got = layers_json(layout.oci_ref, tmp_path / "cache")
    assert [la["created_by"] for la in got["layers"]] == ["first", "second"]

    _rewrite_config(layout.path, lambda config: config.pop("history"))
    got = layers_json(layout.oci_ref, tmp_path / "cache")
    assert [la["created_by"] for la in got["layers"]] == [None, None]


def test_overwrites_hardlinks_and_deleted_dirs(tmp_path: Path) -> None:
    small, big = "x" * 100, "y" * 300
    layers = [
        Layer([
            file("f", small),
            directory("d"), file("d/one", "1" * 40),
            directory("d/sub"), file("d/sub/two", "2" * 60),
            file("kept", "k" * 70), hardlink("alias", "kept"),
        ]),
        Layer([file("f", big), whiteout("d"), whiteout("kept"), directory("d")]),
    ]  # fmt: skip
    layout = write_layout(Image(layers), tmp_path / "layout")
    got = layers_json(layout.oci_ref, tmp_path / "cache")
    counts = [(la["added"], la["changed"], la["removed"]) for la in got["layers"]]
    # d is deleted and re-added in the top layer: changed (its lower self existed).
    assert counts == [(7, 0, 0), (0, 2, 2)]
    # f's first 100 bytes and everything under the deleted d; "kept" lives on as alias.
    assert [la["wasted_bytes"] for la in got["layers"]] == [100 + 40 + 60, 0]
    # dive: f seen at 100 and 300 (min 100); d/one and d/sub/two seen at their size
    # and at 0 when deleted; kept seen at 70 and at 0.
    seen = 100 + 300 + 40 + 60 + 70
    assert got["efficiency"] == pytest.approx(100 / seen)


def test_errors_are_one_line(tmp_path: Path) -> None:
    one_line_error(ocifs("layers", "--cache-dir", str(tmp_path), f"oci:{tmp_path}/none:x"))
    one_line_error(ocifs("layers", "--cache-dir", str(tmp_path), "Bad//Ref"))
