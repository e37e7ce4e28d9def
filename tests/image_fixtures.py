"""Session fixtures: the catalog's images, built once per test run and pushed to the
session ``registry``; each comes with its layout and a lazily unpacked oracle tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from image_catalog import CATALOG
from imagebuild import Image, ImageIndex, Layout, push_layout, write_layout
from treecompare import Record, oracle_unpack, snapshot

__all__ = [
    "BuiltImage",
    "docker_sample_image",
    "multiarch_image",
    "sample_image",
    "torture_image",
]


@dataclass
class BuiltImage:
    """An image in the registry: ``ref`` is "HOST/REPO:TAG", ``digest`` that of its
    manifest (or index), ``layout`` the OCI layout it was pushed from."""

    name: str
    description: Image | ImageIndex
    layout_info: Layout
    host: str
    repo: str
    tag: str
    creds: str | None
    workdir: Path
    _oracles: dict[str, dict[str, Record]] = field(default_factory=dict, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repo}:{self.tag}"

    @property
    def ref_by_digest(self) -> str:
        return f"{self.host}/{self.repo}@{self.digest}"

    @property
    def layout(self) -> Path:
        return self.layout_info.path

    @property
    def digest(self) -> str:
        return self.layout_info.digest

    @property
    def manifests(self) -> dict[str, str]:
        """Manifest digest per platform ("linux/arm64/v8" -> "sha256:...")."""
        return self.layout_info.manifests

    def oracle_root(self, platform: str | None = None) -> Path:
        """The umoci-unpacked rootfs (for an index: of ``platform``, default the host's)."""
        key = platform or "host"
        root = self.workdir / f"oracle-{key.replace('/', '-')}" / "rootfs"
        if not root.exists():
            oracle_unpack(
                self.host, self.repo, self.tag, root.parent, creds=self.creds, platform=platform
            )
        return root

    def oracle_for(self, platform: str | None = None) -> dict[str, Record]:
        """The snapshot of :meth:`oracle_root` (computed once)."""
        key = platform or "host"
        if key not in self._oracles:
            self._oracles[key] = snapshot(self.oracle_root(platform))
        return self._oracles[key]

    @property
    def oracle(self) -> dict[str, Record]:
        """The snapshot of the oracle tree for the host's platform."""
        return self.oracle_for(None)


def build_and_push(
    name: str, registry: Any, workdir: Path, repo: str | None = None, tag: str = "latest"
) -> BuiltImage:
    """Build catalog image ``name`` under ``workdir`` and push it to ``registry``."""
    description = CATALOG[name]()
    repo = repo or f"test/{name.replace('_', '-')}"
    creds = f"{registry.user}:{registry.password}" if registry.user else None
    layout = write_layout(description, workdir / "layout", tag)
    push_layout(layout, f"{registry.host}/{repo}:{tag}", creds=creds)
    return BuiltImage(name, description, layout, registry.host, repo, tag, creds, workdir)


@pytest.fixture(scope="session")
def sample_image(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The README demo image (three gzip layers) in the session registry."""
    return build_and_push("sample", registry, tmp_path_factory.mktemp("sample-image"))


@pytest.fixture(scope="session")
def docker_sample_image(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """``sample`` with Docker schema2 media types."""
    return build_and_push("docker_sample", registry, tmp_path_factory.mktemp("docker-sample-image"))


@pytest.fixture(scope="session")
def torture_image(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """Four layers of layer-format corner cases (see image_catalog.torture)."""
    return build_and_push("torture", registry, tmp_path_factory.mktemp("torture-image"))


@pytest.fixture(scope="session")
def multiarch_image(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """An image index: linux/amd64 and linux/arm64/v8, telling apart by /etc/arch."""
    return build_and_push("multiarch", registry, tmp_path_factory.mktemp("multiarch-image"))
