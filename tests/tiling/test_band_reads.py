"""Raster.tiles reads 1:1 grids by row bands: the same tiles and pixels as one window per tile."""

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
# (gsd, tile size, stride): native grids are read by bands, resampled ones tile by tile
CONFIGS = ((None, 224, 56), (None, 100, 30), (None, 64, 64), (0.37, 224, 56), (0.21, 128, 100))


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


def test_one_read_per_band_on_native_grids(
    fake: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    read = Raster.read_window

    def counted(self: Raster, *args: object, **kw: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(int(args[4]))  # type: ignore[call-overload]
        return read(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Raster, "read_window", counted)
    with open_raster(fake["utm"]) as r:  # 501 x 377 px
        native = TileConfig(tile_size=100, stride=25)
        g = r.grid(native)
        assert _is_copy(g)
        kept = list(r.tiles(native))
        assert len(calls) == g.rows < len(kept)  # one band per row of tiles
        assert not np.shares_memory(kept[0].pixels, kept[1].pixels)
        calls.clear()
        resampled = TileConfig(tile_size=100, stride=25, gsd=0.7)
        assert not _is_copy(r.grid(resampled))
        kept = list(r.tiles(resampled))
        assert len(calls) == len(kept) and set(calls) == {100}  # one window per tile


def test_is_copy_only_for_unit_scale() -> None:
    from affine import Affine

    t = Affine(0.5, 0, 0, 0, -0.5, 0)
    assert _is_copy(Grid.build(TileConfig(), 500, 400, t, (0.5, 0.5)))
    # within NATIVE_SNAP of the native pixel (a projection's scale factor): native pixels
    assert _is_copy(Grid.build(TileConfig(gsd=0.5), 500, 400, t, (0.50004, 0.50004)))
    assert not _is_copy(Grid.build(TileConfig(gsd=0.5), 500, 400, t, (0.5006, 0.5006)))


@pytest.mark.parametrize("name", ["utm", "nodata", "mosaic_vrt"])
@pytest.mark.parametrize("gsd", [None, 0.37])
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
