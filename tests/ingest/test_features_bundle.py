"""Bundles carry the per-tile local features; ``--no-regions`` leaves the region images out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.errors import ConfigError
from geoloc.ingest import ingest

pytestmark = pytest.mark.slow


def _fresh(pg_server: Any, home: Path) -> Iterator[Settings]:
    name = pg_server.create_database()
    try:
        yield Settings(home=home, database_url=pg_server.url_for(name))
    finally:
        pg_server.drop_database(name)


@pytest.fixture()
def target(pg_server: Any, tmp_path: Path) -> Iterator[Settings]:
    """An empty database (the companion computer)."""
    yield from _fresh(pg_server, tmp_path / "companion-home")


@pytest.fixture()
def target2(pg_server: Any, tmp_path: Path) -> Iterator[Settings]:
    """A second empty database."""
    yield from _fresh(pg_server, tmp_path / "other-home")


def _features(settings: Settings, enc: Any) -> dict[int, Any]:
    from geoloc.store import TileStore

    with TileStore.open(settings, encoder_sha256=enc.weights_sha256, omega=False) as store:
        return store.features(store.within(0.0, 0.0, 1e8))


def test_bundle_carries_features_and_can_leave_regions_out(
    pg_settings: Settings,
    target: Settings,
    target2: Settings,
    crops: dict[str, Path],
    encoder: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from geoloc.ingest.bundle import export_bundle
    from geoloc.store.bundle import BundleRegions, import_bundle, verify_bundle
    from geoloc.store.faiss_store import OmegaIndex
    from geoloc.store.tile_features import FeatureStore
    from tests.ingest.test_ingest_db import run_cli

    (res,) = ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    want = _features(pg_settings, encoder)
    assert len(want) == res.tiles_kept

    full = export_bundle(pg_settings, tmp_path / "full")
    files = verify_bundle(tmp_path / "full")["files"]
    assert "index/features/meta.json" in files
    assert any(f.startswith("index/features/points.") for f in files)
    capsys.readouterr()
    assert (
        run_cli(
            monkeypatch, pg_settings, "bundle", "export", "--no-regions", str(tmp_path / "lean")
        )
        == 0
    )
    lean = json.loads(capsys.readouterr().out)
    lean_files = verify_bundle(tmp_path / "lean")["files"]
    assert not any(f.endswith(".png") for f in lean_files)
    assert {k for k in files if not k.endswith(".png")} == set(lean_files)
    assert lean["bytes"] < full.bytes
    print(
        "bundle bytes/tile: with regions",
        full.as_dict()["bytes_per_tile"],
        "without",
        lean["bytes_per_tile"],
    )

    for settings, folder in ((target, "full"), (target2, "lean")):
        import_bundle(settings, tmp_path / folder)
        got = _features(settings, encoder)
        assert sorted(got) == sorted(want)
        for tid, kp in want.items():
            np.testing.assert_array_equal(got[tid].xy, kp.xy)
            np.testing.assert_array_equal(got[tid].desc, kp.desc)
        assert run_cli(monkeypatch, settings, "index", "verify") == 0
    region_dir = next((tmp_path / "lean" / "regions").iterdir())
    with pytest.raises(ConfigError, match="--no-regions"):
        BundleRegions(str(region_dir)).around(next(iter(want)), 224, 0.5)

    # a corrupt feature file is never bundled
    fdir = FeatureStore.path_for(OmegaIndex.path_for(pg_settings, encoder.weights_sha256))
    points = next(fdir.glob("points.*.npy"))
    raw = bytearray(points.read_bytes())
    raw[-1] ^= 0x01
    points.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="SHA-256") as exc:
        export_bundle(pg_settings, tmp_path / "bad")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
