"""A bundle exported in the test locates the same frames to the same answers with every source
raster deleted; a truncated or tampered bundle is refused whole."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geoloc.config import Settings
from geoloc.errors import ConfigError, GeolocError
from tests.conftest import crop_sample
from tests.localize.conftest import truth_lonlat, write_jpeg
from tests.localize.views import sample_rgb, view

pytestmark = pytest.mark.slow

FRAMES = [(500.0, 400.0, 0.0), (1100.0, 450.0, 30.0), (1500.0, 500.0, 0.0)]


@pytest.fixture(scope="module")
def encoder() -> Any:
    """The default encoder, loaded once per module and optimised for inference."""
    from geoloc.models import load_encoder

    enc = load_encoder("sgmnet")
    enc.optimize_for_inference()
    return enc


def _fresh(pg_server: Any, tmp: Path) -> Iterator[Settings]:
    name = pg_server.create_database()
    try:
        yield Settings(home=tmp, database_url=pg_server.url_for(name))
    finally:
        pg_server.drop_database(name)


@pytest.fixture()
def target(pg_server: Any, tmp_path: Path) -> Iterator[Settings]:
    """A second, empty database (the companion computer)."""
    yield from _fresh(pg_server, tmp_path / "companion-home")


@pytest.fixture()
def target2(pg_server: Any, tmp_path: Path) -> Iterator[Settings]:
    """A third, empty database."""
    yield from _fresh(pg_server, tmp_path / "other-home")


def _locate(settings: Settings, encoder: Any, frames: list[Path]) -> list[Any]:
    from geoloc.localize import Localizer

    with Localizer.open(settings, encoder=encoder, preset="accurate") as lz:
        return [lz.locate(f, gsd=0.28) for f in frames]


def test_bundle_locates_without_rasters_and_refuses_tampering(
    pg_settings: Settings, target: Settings, target2: Settings, tmp_path: Path, encoder: Any
) -> None:
    from geoloc.ingest import ingest
    from geoloc.ingest.bundle import export_bundle
    from geoloc.store import open_database
    from geoloc.store import repository as repo
    from geoloc.store.bundle import import_bundle, verify_bundle
    from tiling.crs import geodesic_distance_m

    rasters = [
        crop_sample(tmp_path / "maps" / "west.tif", 0, 0, 1000, 900),
        crop_sample(tmp_path / "maps" / "east.tif", 900, 0, 1000, 900),
    ]
    res = ingest(rasters, encoder=encoder, settings=pg_settings, progress=False)
    assert [r.status for r in res] == ["ingested"] * 2
    frames = [
        write_jpeg(tmp_path / f"f{i}.jpg", view(sample_rgb(), cx, cy, 400, heading_deg=h))
        for i, (cx, cy, h) in enumerate(FRAMES)
    ]
    from_rasters = _locate(pg_settings, encoder, frames)
    assert all(f.status == "ok" for f in from_rasters), [f.message for f in from_rasters]

    out = tmp_path / "bundle"
    summary = export_bundle(pg_settings, out)
    assert summary.tiles == sum(r.tiles_kept for r in res) and summary.orthomosaics == 2
    manifest = verify_bundle(out)
    assert set(manifest["files"]) >= {"tables/tiles.copy", "tables/tile_embeddings.copy"}

    # tampered copies are refused before anything is written
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    png = next((bad / "regions").rglob("*.png"))
    data = bytearray(png.read_bytes())
    data[len(data) // 2] ^= 0xFF
    png.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="SHA-256") as exc:
        import_bundle(target2, bad)
    assert "\n" not in str(exc.value)
    truncated = tmp_path / "truncated"
    shutil.copytree(out, truncated)
    tiles_copy = truncated / "tables" / "tiles.copy"
    tiles_copy.write_bytes(tiles_copy.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="truncated"):
        import_bundle(target2, truncated)
    db2 = open_database(target2)
    try:
        assert repo.list_orthomosaics(db2) == []
    finally:
        db2.dispose()

    # the companion computer: the bundle only, every source raster gone
    imported = import_bundle(target, out)
    assert imported.tiles == summary.tiles
    shutil.rmtree(tmp_path / "maps")
    from_bundle = _locate(target, encoder, frames)
    for (cx, cy, _h), a, b in zip(FRAMES, from_rasters, from_bundle, strict=True):
        assert b.status == "ok", b.message
        assert b.tile_id == a.tile_id
        assert geodesic_distance_m(a.lon, a.lat, b.lon, b.lat) < 1.0
        lon, lat = truth_lonlat(cx, cy)
        assert geodesic_distance_m(b.lon, b.lat, lon, lat) < 5.0

    db_t = open_database(target)
    try:
        assert {c.status for c in repo.check_rasters(db_t)} == {"bundle"}
    finally:
        db_t.dispose()
    # the figures the report quotes (size per tile; latency and error, rasters vs bundle)
    for label, fixes in (("rasters", from_rasters), ("bundle", from_bundle)):
        errs = [
            geodesic_distance_m(f.lon, f.lat, *truth_lonlat(cx, cy))
            for (cx, cy, _h), f in zip(FRAMES, fixes, strict=True)
        ]
        ms = [f.timings_ms.get("total", 0.0) for f in fixes]
        print(f"{label}: errors_m {[round(e, 2) for e in errs]} total_ms {[round(t) for t in ms]}")
    print("bundle", summary.as_dict())

    # a second import into the now populated database is refused
    with pytest.raises(GeolocError):
        import_bundle(target, out)
