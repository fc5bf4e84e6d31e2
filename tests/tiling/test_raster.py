"""Bands, dtypes, masks (nodata, alpha, internal mask, NaN), huge VRTs and read_region."""

from __future__ import annotations

import math
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tiling import TileConfig, TilingError, open_raster
from tiling.crs import to_lonlat
from tiling.errors import EmptyRasterError, TileConfigError


def _tiles(path: Path, **kw: object) -> tuple[list, int]:  # type: ignore[type-arg]
    with open_raster(path) as r:
        tiles = list(r.tiles(TileConfig(**kw)))  # type: ignore[arg-type]
        return tiles, r.last_skipped


def test_nodata_tiles_skipped_and_masked(fake: dict[str, Path]) -> None:
    # 672 x 448, nodata on columns < 250: tile column 0 is all nodata, column 1 is 198/224 valid.
    with open_raster(fake["nodata"]) as r:
        assert r.mask_kind == "nodata"
        tiles = list(r.tiles())
        assert r.last_skipped == 2
    assert sorted((t.row, t.col) for t in tiles) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for t in tiles:
        cols = t.window.col_off + np.arange(224)
        expected = np.broadcast_to(cols >= 250, (224, 224))
        np.testing.assert_array_equal(t.mask, expected)
        assert not t.pixels[:, ~t.mask].any() and t.pixels[:, t.mask].all()
        assert t.valid_fraction == pytest.approx(expected.mean())


def test_alpha_band_is_the_mask(fake: dict[str, Path]) -> None:
    # 448 x 448 RGBA, alpha 0 on rows < 200: tile row 0 is 24/224 valid -> skipped.
    with open_raster(fake["alpha"]) as r:
        assert r.mask_kind == "alpha" and r.bands == (1, 2, 3)
        tiles = list(r.tiles())
        assert r.last_skipped == 2
        assert [t.row for t in tiles] == [1, 1] and all(t.mask.all() for t in tiles)
        tiles = list(r.tiles(TileConfig(min_valid=0.1)))
    top = [t for t in tiles if t.row == 0]
    assert len(top) == 2 and all(t.mask[:200].sum() == 0 and t.mask[200:].all() for t in top)


def test_internal_mask(fake: dict[str, Path]) -> None:
    # 448 x 448, mask invalid on columns >= 300: tile column 1 is 76/224 valid -> skipped.
    with open_raster(fake["internal_mask"]) as r:
        assert r.mask_kind == "mask"
        tiles = list(r.tiles())
        assert r.last_skipped == 2 and [t.col for t in tiles] == [0, 0]
        t = next(t for t in r.tiles(TileConfig(min_valid=0.3)) if t.col == 1)
    assert t.mask[:, : 300 - 224].all() and not t.mask[:, 300 - 224 :].any()


def test_uint16_stretch_is_computed_once_from_the_data(fake: dict[str, Path]) -> None:
    with rasterio.open(fake["uint16"]) as ds:
        data = ds.read().astype(float)
    with open_raster(fake["uint16"]) as r:
        assert r.stretch is not None
        for (lo, hi), band in zip(r.stretch, data, strict=True):
            assert lo == pytest.approx(np.percentile(band, 2), rel=0.01)
            assert hi == pytest.approx(np.percentile(band, 98), rel=0.01)
        tiles = list(r.tiles(TileConfig(tile_size=100)))
        stretch = r.stretch
    for t in tiles:
        c, rr = int(t.window.col_off), int(t.window.row_off)
        src = data[:, rr : rr + 100, c : c + 100]
        for b in range(3):
            lo, hi = stretch[b]
            want = np.clip(np.round((src[b] - lo) * 255 / (hi - lo)), 0, 255)
            assert np.abs(t.pixels[b, : src.shape[1], : src.shape[2]] - want).max() <= 1
    allpx = np.concatenate([t.pixels.ravel() for t in tiles])
    assert allpx.min() == 0 and allpx.max() == 255  # the stretch uses the full uint8 range


def test_float_nan_is_masked_and_stretched(fake: dict[str, Path]) -> None:
    with rasterio.open(fake["float_nan"]) as ds:
        data = ds.read()
    with open_raster(fake["float_nan"]) as r:
        assert r.stretch is not None
        assert r.stretch[0][0] == pytest.approx(np.nanpercentile(data[0], 2), rel=0.02)
        tiles = list(r.tiles())
        # 448 x 448, NaN on rows >= 298: tile row 1 is 74/224 valid -> skipped
        assert r.last_skipped == 2 and [t.row for t in tiles] == [0, 0]
        t = next(t for t in r.tiles(TileConfig(min_valid=0.2)) if t.row == 1)
    assert t.mask[: 298 - 224].all() and not t.mask[298 - 224 :].any()
    assert not t.pixels[:, ~t.mask].any()


def test_single_band_is_grey_rgb(fake: dict[str, Path]) -> None:
    with rasterio.open(fake["gray"]) as ds:
        band = ds.read(1)
    tiles, _ = _tiles(fake["gray"], tile_size=100)
    assert tiles
    for t in tiles:
        assert (t.pixels[0] == t.pixels[1]).all() and (t.pixels[1] == t.pixels[2]).all()
    t0 = tiles[0]
    np.testing.assert_array_equal(t0.pixels[0], band[:100, :100])


def test_band_selection(fake: dict[str, Path]) -> None:
    with rasterio.open(fake["four_band"]) as ds:
        data = ds.read()
    with open_raster(fake["four_band"]) as r:
        assert r.bands == (1, 2, 3) and r.mask_kind == "none"
        np.testing.assert_array_equal(next(iter(r.tiles())).pixels, data[:3, :224, :224])
    with open_raster(fake["four_band"], bands=(4, 3, 2)) as r:
        np.testing.assert_array_equal(next(iter(r.tiles())).pixels, data[[3, 2, 1], :224, :224])
    with open_raster(fake["five_band"], bands=(5, 4, 3)) as r:
        assert r.stretch is not None and len(list(r.tiles(TileConfig(tile_size=100)))) == 4
    with pytest.raises(TileConfigError, match=r"band 6 requested but the raster has 5 band"):
        open_raster(fake["five_band"], bands=(6, 2, 1))
    with pytest.raises(TileConfigError, match="give 1 or 3 bands"):
        open_raster(fake["five_band"], bands=(1, 2))


def test_one_pixel_raster_is_processed(fake: dict[str, Path]) -> None:
    with open_raster(fake["one_px"]) as r:
        assert list(r.tiles()) == [] and r.last_skipped == 1
        assert len(list(r.tiles(TileConfig(tile_size=1)))) == 1
        assert r.info()["tiles"]["candidates"] == 1


@pytest.mark.parametrize("name", ["all_nodata", "all_nan"])
def test_empty_rasters_raise(fake: dict[str, Path], name: str) -> None:
    with pytest.raises(EmptyRasterError, match="has no valid pixel") as exc:
        open_raster(fake[name])
    assert str(fake[name]) in str(exc.value) and "\n" not in str(exc.value)


def test_huge_vrt_tiles_lazily_with_bounded_memory(fake: dict[str, Path]) -> None:
    # 50,000 x 50,000 px x 3 bands = 7.5 GB if loaded whole.
    with open_raster(fake["huge_vrt"]) as r:
        assert (r.width, r.height) == (50_000, 50_000)
        grid = r.grid()
        assert (grid.rows, grid.cols) == (224, 224)
        tracemalloc.start()
        t0 = time.perf_counter()
        it = r.tiles()
        first = [next(it) for _ in range(30)]
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        it.close()
        assert [(t.row, t.col) for t in first[:3]] == [(0, 0), (0, 1), (0, 2)]
        assert peak < 64 * 2**20, f"peak Python memory {peak / 2**20:.0f} MB"
        assert elapsed < 60  # generous: only guards against reading the whole raster
        assert r.count_tiles() == (223 * 223, 224 * 224 - 223 * 223)


def test_read_region_geometry_and_content(fake: dict[str, Path]) -> None:
    with open_raster(fake["utm"]) as r, rasterio.open(fake["utm"]) as ds:
        # centre on the corner between source pixels (100, 150) and (101, 151): the pixel grid of
        # a native-GSD region then coincides with the source grid.
        x, y = r.transform.c + 151 * r.transform.a, r.transform.f + 100 * r.transform.e
        lon, lat = to_lonlat(r.crs, x, y)
        px, mask, t = r.read_region(lon, lat, 64, r.gsd_xy_m[0])
        assert px.shape == (3, 64, 64) and mask.all()
        assert (t.c + 32 * t.a, t.f + 32 * t.e) == pytest.approx((x, y), abs=1e-6)
        assert t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0  # north-up
        src = ds.read([1, 2, 3], window=rasterio.windows.Window(119, 68, 64, 64)).astype(int)
        assert np.abs(px.astype(int) - src).mean() < 1.0
        # 2 m pixels: the square covers 128 m, pixel size in metres = 2
        px2, _, t2 = r.read_region(lon, lat, 64, 2.0)
        assert t2.a == pytest.approx(2.0 * r.transform.a / r.gsd_xy_m[0])
        # centred on the raster's top-left corner: only the bottom-right quarter is inside
        lon0, lat0 = to_lonlat(r.crs, r.transform.c, r.transform.f)
        px3, m3, _ = r.read_region(lon0, lat0, 100, 0.5)
        assert m3.mean() == pytest.approx(0.25, abs=0.02)
        assert not m3[:49, :].any() and not m3[:, :49].any() and m3[51:, 51:].all()
        assert not px3[:, ~m3].any()
        # far away: everything masked
        _, m4, _ = r.read_region(lon + 1.0, lat, 32, 0.5)
        assert not m4.any()
        with pytest.raises(TileConfigError):
            r.read_region(lon, lat, 0, 0.5)


def test_errors_are_tiling_errors_with_one_line(fake: dict[str, Path], tmp_path: Path) -> None:
    cases = ["no_crs", "identity", "rotated", "zero_bytes", "text_file", "missing_source_vrt"]
    for name in cases:
        with pytest.raises(TilingError) as exc:
            open_raster(fake[name])
        msg = str(exc.value)
        assert msg.startswith(str(fake[name]) + ": ") and "\n" not in msg
    with pytest.raises(TilingError, match="no such file"):
        open_raster(tmp_path / "nope.tif")
    with pytest.raises(TilingError, match="is a directory"):
        open_raster(tmp_path)


def test_truncated_geotiff_fails_on_read(fake: dict[str, Path]) -> None:
    with pytest.raises(TilingError) as exc:
        with open_raster(fake["truncated"]) as r:
            list(r.tiles())
    assert str(exc.value).startswith(str(fake["truncated"]) + ":")
    assert "\n" not in str(exc.value)


def test_overview_raster_uses_the_same_geometry(fake: dict[str, Path]) -> None:
    # Downsampling 8x on a raster with overviews: tiles are the right size and mean colour.
    with open_raster(fake["utm_overviews"]) as r, rasterio.open(fake["utm_overviews"]) as ds:
        tiles = list(r.tiles(TileConfig(tile_size=25, gsd=r.gsd_m * 8)))
        full = ds.read([1, 2, 3]).astype(float)
    assert len(tiles) == 20 and all(t.pixels.shape == (3, 25, 25) for t in tiles)
    mean_tiles = np.mean([t.pixels.astype(float).mean(axis=(1, 2)) for t in tiles], axis=0)
    assert mean_tiles == pytest.approx(full.mean(axis=(1, 2)), abs=2.0)
    assert math.isclose(tiles[0].gsd_m, r.gsd_m * 8)


def test_read_region_uses_the_local_ground_scale(tmp_path: Path) -> None:
    # A coarse EPSG:4326 raster from 40 N to 70 N: a degree of longitude shrinks from 85 km to
    # 38 km, so a region's pixel size in degrees must follow the latitude of the region.
    from affine import Affine
    from pyproj import Geod

    from tests.data.rasters.data import pattern, write

    p = write(
        tmp_path / "big4326.tif",
        pattern(300, 300, seed=30),
        crs="EPSG:4326",
        transform=Affine(0.1, 0, 10.0, 0, -0.1, 70.0),
    )
    geod = Geod(ellps="WGS84")
    with open_raster(p) as r:
        for lat in (42.0, 55.0, 68.0):
            _, mask, t = r.read_region(25.0, lat, 32, 1000.0)  # 1 km pixels
            assert mask.all()
            lon0, lat0 = t.c + 16 * t.a, t.f + 16 * t.e
            assert (lon0, lat0) == pytest.approx((25.0, lat), abs=1e-9)
            dx = geod.inv(lon0 - t.a / 2, lat0, lon0 + t.a / 2, lat0)[2]
            dy = geod.inv(lon0, lat0 - t.e / 2, lon0, lat0 + t.e / 2)[2]
            assert dx == pytest.approx(1000.0, rel=0.005) and dy == pytest.approx(1000.0, rel=0.005)


def test_palette_raster_is_expanded_to_rgb(fake: dict[str, Path]) -> None:
    with rasterio.open(fake["palette"]) as ds:
        idx = ds.read(1)
        cmap = ds.colormap(1)
    with open_raster(fake["palette"]) as r:
        tiles = list(r.tiles(TileConfig(tile_size=100)))
        assert r.last_skipped == 2  # the two tiles of index 0 (nodata) on the left
        # resampling must not average colour indices: only palette colours come out
        resampled = list(r.tiles(TileConfig(tile_size=40, gsd=1.3)))
    assert [t.col for t in tiles] == [1, 2, 1, 2]
    for t in tiles:
        rr, c = int(t.window.row_off), int(t.window.col_off)
        want = np.array([cmap[int(i)][:3] for i in idx[rr : rr + 100, c : c + 100].ravel()])
        np.testing.assert_array_equal(t.pixels.reshape(3, -1).T, want)
    colours = {tuple(v[:3]) for k, v in cmap.items() if k in (1, 2, 3)} | {(0, 0, 0)}
    for t in resampled:
        assert {tuple(p) for p in t.pixels.reshape(3, -1).T} <= colours
