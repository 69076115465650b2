"""A real node's containerd root starts as hard links to a seed, except its databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from gaudi_devtools.cluster import image_seed

pytestmark = pytest.mark.unit


def test_planted_root_shares_layers_but_owns_its_databases(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    (seed / "io.containerd.metadata.v1.bolt").mkdir(parents=True)
    (seed / "io.containerd.metadata.v1.bolt" / "meta.db").write_text("db")
    layer = seed / "io.containerd.snapshotter.v1.overlayfs" / "snapshots" / "1" / "fs"
    layer.mkdir(parents=True)
    (layer / "lib.so").write_text("code")
    (seed / "io.containerd.snapshotter.v1.overlayfs" / "metadata.db").write_text("snap")
    node = tmp_path / "node"
    image_seed.plant(seed, node)
    linked = node / "io.containerd.snapshotter.v1.overlayfs" / "snapshots" / "1" / "fs" / "lib.so"
    assert linked.stat().st_ino == (layer / "lib.so").stat().st_ino
    dbs = (
        "io.containerd.metadata.v1.bolt/meta.db",
        "io.containerd.snapshotter.v1.overlayfs/metadata.db",
    )
    for db in dbs:
        assert (node / db).read_text() == (seed / db).read_text()
        assert (node / db).stat().st_ino != (seed / db).stat().st_ino
        assert (node / db).stat().st_nlink == 1


def test_a_changed_archive_gets_a_new_key(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"one")
    first = image_seed.archive_hash(archive, tmp_path / "seeds")
    assert image_seed.archive_hash(archive, tmp_path / "seeds") == first  # remembered
    archive.write_bytes(b"two!")
    second = image_seed.archive_hash(archive, tmp_path / "seeds")
    assert second != first
    assert image_seed.seed_key([first]) != image_seed.seed_key([second])
