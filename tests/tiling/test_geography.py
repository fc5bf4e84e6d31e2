"""Real geography of the tiles: centres, footprint areas, grid counts, extent, GSD, pixels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Geod
from rasterio.windows import Window

from tiling import TileConfig, open_raster
from tiling.crs import from_lonlat

GEOD = Geod(ellps="WGS84")
RASTERS = ["utm", "utm_overviews", "wgs84", "webmerc", "mosaic_vrt", "odd_name"]
CONFIGS = [
    TileConfig(),
    TileConfig(tile_size=100, stride=60),
    TileConfig(tile_size=64, gsd=1.3),  # downsampled
    TileConfig(tile_size=128, gsd=0.3, min_valid=1.0),  # upsampled, full tiles only
]


def expected_count(n: float, ts: int, stride: int) -> int:
    """Grid formula, written independently of tiling.grid."""
    return 1 if n <= ts else math.ceil((n - ts) / stride) + 1


@pytest.mark.parametrize("name", RASTERS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"ts{c.tile_size}-st{c.stride}-gsd{c.gsd}")
def test_tile_geography(fake: dict[str, Path], name: str, cfg: TileConfig) -> None:
    with open_raster(fake[name]) as r:
        tiles = list(r.tiles(cfg))
        grid = r.grid(cfg)
        gx, gy = r.gsd_xy_m
        t_inv = ~r.transform
        outline = r.footprint_lonlat
        crs = r.crs
        w, h = r.width, r.height
    ts = cfg.tile_size
    # grid formula: output size = source size * native GSD / target GSD
    out_w = w if cfg.gsd is None else w * gx / cfg.gsd
    out_h = h if cfg.gsd is None else h * gy / cfg.gsd
    assert grid.cols == expected_count(out_w, ts, cfg.step)
    assert grid.rows == expected_count(out_h, ts, cfg.step)
    assert len(tiles) + r.last_skipped == grid.rows * grid.cols
    assert len(tiles) == r.last_kept > 0
    gsd = math.sqrt(gx * gy) if cfg.gsd is None else cfg.gsd
    for t in tiles:
        assert t.pixels.shape == (3, ts, ts) and t.pixels.dtype == np.uint8
        assert t.mask.shape == (ts, ts) and t.mask.dtype == bool
        assert t.gsd_m == pytest.approx(gsd)
        assert t.valid_fraction >= cfg.min_valid and t.valid_fraction == t.mask.mean()
        # the centre, back to a source pixel, is the window centre (within 0.5 px)
        x, y = from_lonlat(crs, t.center_lon, t.center_lat)
        col, row = t_inv.a * x + t_inv.b * y + t_inv.c, t_inv.d * x + t_inv.e * y + t_inv.f
        wc = t.window.col_off + t.window.width / 2, t.window.row_off + t.window.height / 2
        assert abs(col - wc[0]) < 0.5 and abs(row - wc[1]) < 0.5
        # footprint area on the ellipsoid = (tile size * GSD)^2 within 1 %
        area = abs(GEOD.geometry_area_perimeter(t.footprint)[0])
        assert area == pytest.approx((ts * gsd) ** 2, rel=0.01)
        # no tile leaves the raster: its part outside the raster is its invalid part
        inside = t.footprint.intersection(outline).area / t.footprint.area
        assert inside == pytest.approx(t.valid_fraction, abs=0.02)
        assert outline.contains(t.footprint.centroid) or t.valid_fraction <= 0.51
        if cfg.min_valid == 1.0:
            assert t.window.col_off >= 0 and t.window.row_off >= 0
            assert t.window.col_off + t.window.width <= w + 1e-6
            assert t.window.row_off + t.window.height <= h + 1e-6


@pytest.mark.parametrize("name", ["utm", "wgs84", "mosaic_vrt"])
def test_native_tiles_are_the_source_pixels(fake: dict[str, Path], name: str) -> None:
    with open_raster(fake[name]) as r, rasterio.open(fake[name]) as ds:
        for t in r.tiles(TileConfig(tile_size=100, stride=70)):
            w = t.window
            c1, r1 = (
                min(ds.width, int(w.col_off + w.width)),
                min(ds.height, int(w.row_off + w.height)),
            )
            win = Window(int(w.col_off), int(w.row_off), c1 - int(w.col_off), r1 - int(w.row_off))
            src = ds.read([1, 2, 3], window=win)
            np.testing.assert_array_equal(t.pixels[:, : win.height, : win.width], src)
            assert t.mask[: win.height, : win.width].all()
            assert not t.mask[win.height :, :].any() and not t.mask[:, win.width :].any()
            assert not t.pixels[:, win.height :, :].any()


def test_vrt_mosaic_matches_its_sources(fake: dict[str, Path]) -> None:
    expected = np.load(fake["mosaic_vrt"].parent / "mosaic_expected.npy")
    with open_raster(fake["mosaic_vrt"]) as r:
        tiles = list(
            r.tiles(TileConfig(tile_size=200, stride=100, min_valid=1.0))
        )  # across the seam
    assert len(tiles) == 5
    for t in tiles:
        c, rr = int(t.window.col_off), int(t.window.row_off)
        np.testing.assert_array_equal(
            t.pixels[:, :200, :200], expected[:, rr : rr + 200, c : c + 200]
        )


def test_resampled_tiles_average_the_source(fake: dict[str, Path]) -> None:
    # gsd = 4 x native (0.25 m -> 1 m): each output pixel ~ the mean of a 4x4 source block.
    with open_raster(fake["utm_overviews"]) as r, rasterio.open(fake["utm_overviews"]) as ds:
        t = next(iter(r.tiles(TileConfig(tile_size=50, gsd=4 * r.gsd_m))))
        src = ds.read([1, 2, 3], window=Window(0, 0, 200, 200)).astype(float)
    block_mean = src.reshape(3, 50, 4, 50, 4).mean(axis=(2, 4))
    assert np.abs(t.pixels.astype(float) - block_mean).mean() < 3.0


def test_gsd_of_geographic_raster(fake: dict[str, Path]) -> None:
    with open_raster(fake["wgs84"]) as r:
        t = r.transform
        lon_c, lat_c = t.c + t.a * r.width / 2, t.f + t.e * r.height / 2
        ex = GEOD.inv(lon_c, lat_c, lon_c + t.a, lat_c)[2]
        ey = GEOD.inv(lon_c, lat_c, lon_c, lat_c + t.e)[2]
        assert r.gsd_xy_m == pytest.approx((ex, ey), rel=1e-3)
        assert r.gsd_m == pytest.approx(math.sqrt(ex * ey), rel=1e-3)
        assert r.crs_str == "EPSG:4326"


def test_bounds_and_info(fake: dict[str, Path]) -> None:
    with open_raster(fake["utm"]) as r:
        info = r.info()
        w, s, e, n = r.bounds_lonlat
    assert 22.45 < w < e < 22.48 and 60.40 < s < n < 60.41
    assert info["crs"] == "EPSG:32634" and info["width"] == 501 and info["height"] == 377
    assert info["bounds_lonlat"] == [w, s, e, n]
    assert info["tiles"]["candidates"] == expected_count(501, 224, 224) * expected_count(
        377, 224, 224
    )
    assert info["tiles"]["kept"] + info["tiles"]["skipped"] == info["tiles"]["candidates"]
    assert info["gsd_m"] == pytest.approx(0.5, rel=1e-3)
