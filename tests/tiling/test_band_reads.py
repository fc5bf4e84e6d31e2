"""Raster.tiles reads 1:1 and downsampled grids by row bands: the same tiles and pixels as one
window per tile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rasterio.enums import Resampling

import tiling.raster as raster_mod
from tiling import Raster, TileConfig, open_raster
from tiling.grid import Grid
from tiling.raster import _is_copy

RASTERS = (
    "utm",
    "wgs84",
    "webmerc",
    "nodata",
    "alpha",
    "internal_mask",
    "uint16",
    "float_nan",
    "palette",
    "gray",
    "mosaic_vrt",
)
# (gsd, tile size, stride): native and downsampled grids are read by bands, upsampled ones
# tile by tile (the fake rasters are about 0.5 m/px)
CONFIGS = (
    (None, 224, 56),
    (None, 100, 30),
    (None, 64, 64),
    (0.37, 224, 56),
    (0.21, 128, 100),
    (0.7, 100, 30),
    (1.3, 64, 20),
    (2.0, 32, 16),
)


Window = tuple[np.ndarray, np.ndarray]


def _per_tile(r: Raster, cfg: TileConfig) -> tuple[dict[tuple[int, int], Window], int]:
    """The kept tiles' (pixels, mask) read one window per tile, and the skipped count."""
    g = r.grid(cfg)
    res = Resampling.average if g.scale_x >= 1.0 else Resampling.bilinear
    kept: dict[tuple[int, int], Window] = {}
    skipped = 0
    for row, col in g:
        cov = g.coverage(row, col)
        if cov <= 0 or cov < cfg.min_valid:
            skipped += 1
            continue
        w = g.window(row, col)
        px, m = r.read_window(
            w.col_off, w.row_off, g.scale_x, g.scale_y, cfg.tile_size, cfg.tile_size, res
        )
        vf = float(m.mean())
        if vf <= 0 or vf < cfg.min_valid:
            skipped += 1
            continue
        kept[(row, col)] = (px, m)
    return kept, skipped


def _assert_same(path: Path, cfg: TileConfig) -> int:
    with open_raster(path) as r:
        tiles = list(r.tiles(cfg))
        ref, skipped = _per_tile(r, cfg)
        assert (r.last_kept, r.last_skipped) == (len(ref), skipped)
    assert [(t.row, t.col) for t in tiles] == sorted(ref)
    for t in tiles:
        px, m = ref[(t.row, t.col)]
        np.testing.assert_array_equal(t.pixels, px, err_msg=f"{path.name} tile {t.row},{t.col}")
        np.testing.assert_array_equal(t.mask, m)
        assert t.pixels.flags.c_contiguous and t.valid_fraction == pytest.approx(m.mean())
    return len(tiles)


@pytest.mark.parametrize("name", RASTERS)
@pytest.mark.parametrize(("gsd", "size", "stride"), CONFIGS)
def test_band_tiles_equal_window_tiles(
    fake: dict[str, Path], name: str, gsd: float | None, size: int, stride: int
) -> None:
    _assert_same(fake[name], TileConfig(tile_size=size, stride=stride, gsd=gsd, min_valid=0.3))


@pytest.mark.parametrize("band_max", [120, 300])
def test_bands_split_across_the_width(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch, band_max: int
) -> None:
    # several bands per row of tiles (and one tile per band when a band fits no more)
    monkeypatch.setattr(raster_mod, "BAND_MAX_PX", band_max)
    for name in ("utm", "nodata", "mosaic_vrt"):
        assert _assert_same(fake[name], TileConfig(tile_size=100, stride=30, min_valid=0.3)) > 0


def test_real_rasters_native_and_resampled() -> None:
    from tests.conftest import SAMPLE_RASTER, SHARED_DATA

    for cfg in (TileConfig(224, stride=56), TileConfig(224, stride=56, gsd=0.5)):
        assert _assert_same(SAMPLE_RASTER, cfg) > 0
    mosaic = SHARED_DATA / "turku" / "turku_mosaic_utm34n.tif"
    if not mosaic.is_file():
        pytest.skip(f"real imagery not found at {mosaic}")
    assert _assert_same(mosaic, TileConfig(224, stride=112)) > 0
    # no overviews: downsampled by tiling.resample, read by bands
    assert _assert_same(mosaic, TileConfig(224, stride=112, gsd=0.3)) > 0


def test_one_read_per_band_on_native_and_downsampled_grids(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    windows: list[int] = []
    sources: list[int] = []  # rows of source pixels per read
    read, gdal = Raster.read_window, Raster._gdal_read

    def counted(self: Raster, *args: object, **kw: object) -> tuple[np.ndarray, np.ndarray]:
        windows.append(int(args[4]))  # type: ignore[call-overload]
        return read(self, *args, **kw)  # type: ignore[arg-type]

    def counted_gdal(self: Raster, window: object, shape: tuple[int, int], res: object) -> object:
        sources.append(shape[0])
        return gdal(self, window, shape, res)  # type: ignore[arg-type]

    monkeypatch.setattr(Raster, "read_window", counted)
    monkeypatch.setattr(Raster, "_gdal_read", counted_gdal)
    with open_raster(fake["utm"]) as r:  # 501 x 377 px
        assert r.overview_factors == []
        native = TileConfig(tile_size=100, stride=25)
        g = r.grid(native)
        assert _is_copy(g)
        kept = list(r.tiles(native))
        assert len(windows) == g.rows < len(kept)  # one band per row of tiles
        assert not np.shares_memory(kept[0].pixels, kept[1].pixels)
        # downsampled: one read per row of tiles, of the source rows the row above did not hold
        windows.clear(), sources.clear()
        down = TileConfig(tile_size=100, stride=25, gsd=0.7)
        g = r.grid(down)
        assert not _is_copy(g) and g.scale_y > 1.0
        kept = list(r.tiles(down))
        assert not windows and len(sources) == g.rows < len(kept)
        assert sum(sources) <= r.height + g.rows * 2  # each source row read about once
        windows.clear(), sources.clear()
        up = TileConfig(tile_size=100, stride=25, gsd=0.37)
        assert not _is_copy(r.grid(up))
        kept = list(r.tiles(up))
        assert len(windows) == len(kept) and set(windows) == {100}  # one window per tile
    # with overviews GDAL reads them (fewer source pixels): one window per tile again
    import shutil

    import rasterio

    ovr = tmp_path / "utm_ovr.tif"
    shutil.copy(fake["utm"], ovr)
    with rasterio.open(ovr, "r+") as ds:
        ds.build_overviews([2], Resampling.average)
    windows.clear()
    with open_raster(ovr) as r:
        assert r.overview_factors == [2]
        kept = list(r.tiles(TileConfig(tile_size=100, stride=25, gsd=1.1)))
        assert len(windows) == len(kept) > 0
        # a reduction below the first overview's: GDAL would read the source pixels too
        windows.clear()
        assert list(r.tiles(TileConfig(tile_size=100, stride=25, gsd=0.7))) and not windows


def test_downsampled_pixels_are_area_means(tmp_path: Path) -> None:
    # a 2x2 block mean at scale 2 (grid-aligned), and fractional overlaps at scale 1.5
    import rasterio
    from affine import Affine

    from tiling.resample import axis_weights, downsample

    src = np.arange(36, dtype=np.uint8).reshape(1, 6, 6)
    ax = axis_weights(0.0, 2.0, 0, 3, 6)
    out, ok = downsample(src, None, ax, ax, True)
    np.testing.assert_allclose(out[0], src[0].reshape(3, 2, 3, 2).mean(axis=(1, 3)))
    assert ok.all()
    ax = axis_weights(0.0, 1.5, 0, 4, 6)
    out, _ = downsample(src.astype(np.float32), None, ax, ax, True)
    row = np.array([0, 1, 2, 3, 4, 5], dtype=np.float64)
    want0 = (row[0] + 0.5 * row[1]) / 1.5  # output 0 covers [0, 1.5)
    assert out[0, 0, 0] == pytest.approx(want0 + 6 * want0)  # rows weigh alike: x + 6 * y
    # invalid source pixels carry no weight; an output centred on one is invalid (the centre
    # of output (0, 0) at scale 2 is source (1, 1), the top-left corner of that pixel)
    valid = np.ones((6, 6), dtype=bool)
    valid[1, 1] = False
    ax = axis_weights(0.0, 2.0, 0, 3, 6)
    out, ok = downsample(src, valid, ax, ax, True)
    assert out[0, 0, 0] == 0.0 and not ok[0, 0] and ok[0, 1]
    valid[1, 1], valid[0, 0] = True, False
    out, ok = downsample(src, valid, ax, ax, True)
    assert ok[0, 0] and out[0, 0, 0] == pytest.approx((1 + 6 + 7) / 3)
    # through a file: the same through open_raster
    path = tmp_path / "ramp.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=6,
        height=6,
        count=3,
        dtype="uint8",
        crs="EPSG:32634",
        transform=Affine(1.0, 0, 500000, 0, -1.0, 6700000),
    ) as ds:
        ds.write(np.repeat(src, 3, axis=0))
    with open_raster(path) as r:
        px, m = r.read_window(0.0, 0.0, 2.0, 2.0, 3, 3, Resampling.average)
    np.testing.assert_array_equal(px[0], np.rint(src[0].reshape(3, 2, 3, 2).mean(axis=(1, 3))))
    assert m.all()


def test_is_copy_only_for_unit_scale() -> None:
    from affine import Affine

    t = Affine(0.5, 0, 0, 0, -0.5, 0)
    assert _is_copy(Grid.build(TileConfig(), 500, 400, t, (0.5, 0.5)))
    # within NATIVE_SNAP of the native pixel (a projection's scale factor): native pixels
    assert _is_copy(Grid.build(TileConfig(gsd=0.5), 500, 400, t, (0.50004, 0.50004)))
    assert not _is_copy(Grid.build(TileConfig(gsd=0.5), 500, 400, t, (0.5006, 0.5006)))


@pytest.mark.parametrize("name", ["utm", "nodata", "mosaic_vrt"])
@pytest.mark.parametrize("gsd", [None, 0.37, 0.7])
def test_tiles_of_some_rows_are_those_rows_of_all_tiles(
    fake: dict[str, Path], name: str, gsd: float | None
) -> None:
    # what a Ray actor reads for its band of rows: the same tiles, pixels and masks
    cfg = TileConfig(tile_size=100, stride=30, gsd=gsd, min_valid=0.3)
    with open_raster(fake[name]) as r:
        every = list(r.tiles(cfg))
        rows = r.grid(cfg).rows
        parts = [list(r.tiles(cfg, rows=(a, a + 2))) for a in range(0, rows, 2)]
        assert list(r.tiles(cfg, rows=(rows, rows + 3))) == []  # past the grid: none, no error
    got = [t for p in parts for t in p]
    assert [(t.row, t.col) for t in got] == [(t.row, t.col) for t in every]
    for a, b in zip(got, every, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.mask, b.mask)
