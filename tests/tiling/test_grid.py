"""The grid formula, TileConfig validation and edge coverage."""

from __future__ import annotations

import math

import pytest
from affine import Affine

from tiling.errors import TileConfigError
from tiling.grid import NATIVE_SNAP, Grid, TileConfig, axis_count, inside_range


@pytest.mark.parametrize(
    ("n", "ts", "stride", "expected"),
    [
        (1, 224, 224, 1),
        (224, 224, 224, 1),
        (225, 224, 224, 2),
        (448, 224, 224, 2),
        (449, 224, 224, 3),
        (448, 224, 112, 3),
        (449, 224, 112, 4),
        (1000, 100, 300, 4),  # gaps between tiles: 0, 300, 600, 900
        (0, 224, 224, 0),
    ],
)
def test_axis_count(n: int, ts: int, stride: int, expected: int) -> None:
    assert axis_count(n, ts, stride) == expected


def test_grid_rows_cols_and_last_tile_reaches_edge() -> None:
    t = Affine(0.5, 0, 1000, 0, -0.5, 2000)
    g = Grid.build(TileConfig(tile_size=100, stride=60), 501, 377, t, (0.5, 0.5))
    assert (g.rows, g.cols) == (1 + math.ceil((377 - 100) / 60), 1 + math.ceil((501 - 100) / 60))
    last = g.window(g.rows - 1, g.cols - 1)
    assert last.col_off + last.width >= 501 and last.col_off < 501
    assert last.row_off + last.height >= 377 and last.row_off < 377
    assert len(g) == g.rows * g.cols == len(list(g))


def test_grid_resampled_scale_and_transform() -> None:
    t = Affine(0.25, 0, 1000, 0, -0.25, 2000)
    g = Grid.build(TileConfig(tile_size=10, gsd=1.0), 400, 200, t, (0.25, 0.25))
    assert g.scale_x == pytest.approx(4.0) and g.gsd_m == 1.0
    assert (g.rows, g.cols) == (5, 10)
    tt = g.transform(1, 2)
    assert tt.a == pytest.approx(1.0) and tt.e == pytest.approx(-1.0)
    assert (tt.c, tt.f) == pytest.approx((1000 + 20 * 1.0, 2000 - 10 * 1.0))


def test_a_gsd_within_the_snap_of_the_native_pixel_keeps_the_native_pixels() -> None:
    # a UTM orthophoto of nominal 0.5 m pixels measures 0.5 x 0.9996..1.001 m on the ground
    t = Affine(0.5, 0, 1000, 0, -0.5, 2000)
    g = Grid.build(TileConfig(tile_size=10, gsd=0.5), 400, 200, t, (0.5002, 0.4998))
    assert (g.scale_x, g.scale_y) == (1.0, 1.0)
    assert g.gsd_m == pytest.approx(math.sqrt(0.5002 * 0.4998))
    assert g.window(1, 2).col_off == 20  # whole source pixels
    # beyond NATIVE_SNAP the grid resamples to the GSD asked for
    off = 0.5 * (1 + 2 * NATIVE_SNAP)
    g = Grid.build(TileConfig(tile_size=10, gsd=0.5), 400, 200, t, (off, off))
    assert g.scale_x == pytest.approx(0.5 / off) and g.gsd_m == 0.5


def test_coverage_and_inside_range() -> None:
    g = Grid.build(TileConfig(tile_size=100), 250, 100, Affine.identity(), (1.0, 1.0))
    assert [g.coverage(0, c) for c in range(g.cols)] == [1.0, 1.0, 0.5]
    assert inside_range(-10.0, 1.0, 100, 50) == (10, 60)
    assert inside_range(0.0, 2.0, 10, 5) == (0, 2)  # centres at 1, 3 inside; 5 is out


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tile_size": 0},
        {"tile_size": 2.5},
        {"stride": 0},
        {"gsd": -1.0},
        {"gsd": float("nan")},
        {"min_valid": 1.5},
        {"min_valid": -0.1},
    ],
)
def test_tileconfig_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(TileConfigError):
        TileConfig(**kwargs)  # type: ignore[arg-type]
