"""Features once per row strip (:class:`StripFeatures`) against one pass per tile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from geoloc.ingest.features import StripFeatures, TileFeatures
from geoloc.store.tile_features import XFEAT_SPEC, core_box
from tiling import TilingPolicy, open_raster


def _tiles(path: Path, stride: int, rows: int) -> tuple[list[Any], Any]:
    with open_raster(path) as r:
        cfg, _ = TilingPolicy(tile_size=224, gsd=0.28, stride=stride).resolve(r)
        grid = r.grid(cfg)
        return [t for t in r.tiles(cfg) if t.row < rows], grid


def _run(extract: Any, tiles: list[Any], batch: int) -> list[Any]:
    """Feed ``tiles`` in batches; check that every answer is a prefix, in order."""
    out: list[Any] = []
    for i in range(0, len(tiles), batch):
        chunk = tiles[i : i + batch]
        got = extract.add(chunk, np.stack([t.pixels for t in chunk]))
        out += got
        assert len(out) <= i + len(chunk)
    out += extract.finish()
    assert len(out) == len(tiles)
    return out


def test_strips_keep_the_tiles_keypoints_within_tolerance(sample_raster: Path) -> None:
    tiles, grid = _tiles(sample_raster, 56, 2)
    kw = {"rows": grid.rows, "cols": grid.cols, "tile_size": 224, "stride": grid.stride}
    strips = StripFeatures(XFEAT_SPEC, **kw)
    assert strips.span > 1 and grid.cols > strips.span  # more than one strip per row
    per_tile = _run(TileFeatures(XFEAT_SPEC, **kw), tiles, 16)
    per_strip = _run(strips, tiles, 16)
    near = total = 0
    cosines: list[np.ndarray] = []
    for t, (xa, da, _), (xb, db, sb) in zip(tiles, per_tile, per_strip, strict=True):
        # the same cells: every keypoint in the tile's core cell, in tile pixels
        x0, y0, x1, y1 = core_box(t.row, t.col, grid.rows, grid.cols, 224, grid.stride)
        assert ((xb[:, 0] >= x0) & (xb[:, 0] < x1) & (xb[:, 1] >= y0) & (xb[:, 1] < y1)).all()
        assert len(xb) <= XFEAT_SPEC.max_per_tile and (np.diff(sb) <= 0).all()
        assert abs(len(xb) - len(xa)) <= max(2, len(xa) // 10)
        if len(xa) == 0 or len(xb) == 0:
            continue
        d = np.linalg.norm(xb[:, None] - xa[None], axis=2)
        j = d.argmin(axis=1)
        ok = d[np.arange(len(xb)), j] <= 1.0
        near += int(ok.sum())
        total += len(xb)
        cosines.append((db[ok] * da[j[ok]]).sum(axis=1))
    cos = np.concatenate(cosines)
    # the documented tolerance: most keypoints within 1 px of the tile's own, their descriptors
    # close (a strip shows a core cell more context left and right than its tile does)
    assert total > 0 and near / total >= 0.75, near / total
    assert float(np.median(cos)) >= 0.93, float(np.median(cos))


def test_without_overlap_a_strip_is_one_tile(sample_raster: Path) -> None:
    tiles, grid = _tiles(sample_raster, 224, 2)
    kw = {"rows": grid.rows, "cols": grid.cols, "tile_size": 224, "stride": grid.stride}
    strips = StripFeatures(XFEAT_SPEC, **kw)
    assert strips.span == 1
    for (xa, da, sa), (xb, db, sb) in zip(
        _run(TileFeatures(XFEAT_SPEC, **kw), tiles, 5),
        _run(strips, tiles, 3),
        strict=True,
    ):
        # the same images (batched differently: float sums in another order)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_allclose(da, db, atol=1e-5)
        np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-7)


def test_a_strip_waits_for_its_row_and_span(sample_raster: Path) -> None:
    tiles, grid = _tiles(sample_raster, 56, 2)
    kw = {"rows": grid.rows, "cols": grid.cols, "tile_size": 224, "stride": grid.stride}
    strips = StripFeatures(XFEAT_SPEC, **kw)
    first = [t for t in tiles if t.row == 0][: strips.span]
    assert len(first) == strips.span and first[-1].col - first[0].col == strips.span - 1
    # a full span is still open: nothing answered until a tile beyond it arrives
    assert strips.add(first, np.stack([t.pixels for t in first])) == []
    nxt = [t for t in tiles if t.row == 0][strips.span]
    assert len(strips.add([nxt], nxt.pixels[None])) == strips.span
    assert len(strips.finish()) == 1 and strips.finish() == []
