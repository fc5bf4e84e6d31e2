"""The tiler on the real Turku imagery (../shared/data/turku; skipped when absent)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Geod

from tiling import TileConfig, open_raster
from tiling.crs import from_lonlat

pytestmark = pytest.mark.realdata
GEOD = Geod(ellps="WGS84")


def _photos(turku_dir: Path) -> list[tuple[float, float]]:
    with open(turku_dir / "photo_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    return [(float(r["Longitude"]), float(r["Latitude"])) for r in rows]


def test_mosaic_tile_centres_inside_raster_bounds(turku_dir: Path) -> None:
    path = turku_dir / "turku_mosaic_utm34n.tif"
    with open_raster(path) as r:
        west, south, east, north = r.bounds_lonlat
        outline = r.footprint_lonlat
        tiles = list(r.tiles())
        assert r.crs_str == "EPSG:32634" and r.gsd_m == pytest.approx(0.14, rel=1e-3)
        # README: lon/lat envelope 22.460448..22.471283 E, 60.400861..60.403960 N
        assert (west, south, east, north) == pytest.approx(
            (22.460448, 60.400861, 22.471283, 60.403960), abs=2e-6
        )
        # 4213 x 2372 px: 19 x 11 candidates; 18 x 10 full tiles, the right column 181/224
        # valid (kept), the bottom row 132/224 valid (kept), the corner 0.48 (skipped)
        assert r.grid().rows == 11 and r.grid().cols == 19
        assert len(tiles) == 208 and r.last_skipped == 1
    for t in tiles:
        assert west < t.center_lon < east and south < t.center_lat < north
        assert outline.contains(t.footprint.centroid)
        area = abs(GEOD.geometry_area_perimeter(t.footprint)[0])
        assert area == pytest.approx((224 * t.gsd_m) ** 2, rel=0.01)


def test_geographic_tiles_and_gsd(turku_dir: Path) -> None:
    # README: sat_map_00 is EPSG:4326, 1469 x 1274 px, GSD 0.1357 m x 0.1357 m.
    with open_raster(turku_dir / "sat_map_00.tif") as r:
        assert r.crs_str == "EPSG:4326"
        assert r.gsd_xy_m == pytest.approx((0.1357, 0.1357), abs=5e-4)
        w, s, e, n = r.bounds_lonlat
        tiles = list(r.tiles(TileConfig(gsd=0.5)))
    assert tiles and all(w < t.center_lon < e and s < t.center_lat < n for t in tiles)


def test_drone_position_reads_the_right_pixels(turku_dir: Path) -> None:
    """The photo positions land on the README's mosaic pixels, and the per-tile GeoTIFF (4326)
    and the mosaic (UTM) show the same ground there."""
    lon, lat = _photos(turku_dir)[0]  # drone_image_1: mosaic (row 557, col 623)
    mosaic = turku_dir / "turku_mosaic_utm34n.tif"
    with rasterio.open(mosaic) as ds:
        x, y = from_lonlat(ds.crs, lon, lat)
        assert ds.index(x, y) == (557, 623)
    with open_raster(mosaic) as r:
        a, ma, _ = r.read_region(lon, lat, 128, 0.5)
    with open_raster(turku_dir / "sat_map_00.tif") as r:
        b, mb, _ = r.read_region(lon, lat, 128, 0.5)
    assert ma.all() and mb.all()
    ga, gb = a.astype(float).mean(axis=0), b.astype(float).mean(axis=0)
    # North-up in UTM vs north-up in lon/lat differ by the grid convergence (~1.3 deg): compare
    # the central part, where that rotation moves pixels by < 1 px.
    c = slice(48, 80)
    corr = np.corrcoef(ga[c, c].ravel(), gb[c, c].ravel())[0, 1]
    assert corr > 0.9, corr
    # 10 m (20 px) off, the same comparison is much worse: the check can fail
    shifted = np.corrcoef(ga[c, c].ravel(), gb[c, slice(68, 100)].ravel())[0, 1]
    assert shifted < corr - 0.2, (corr, shifted)
