"""Training rasters: which ones merge in memory, and how much of them is kept in memory."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoloc.training.datasets import RasterPairs, merge_groups
from geoloc.training.synthetic import ViewSynthesizer


def _write(path: Path, crs: str, x0: float, y0: float, res: float, size: int = 400) -> Path:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    img = np.kron(rng.integers(30, 220, (3, size // 8, size // 8)), np.ones((1, 8, 8)))
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
        crs=crs, transform=from_origin(x0, y0, res, res),
    ) as ds:  # fmt: skip
        ds.write(img.astype(np.uint8))
    return path


def test_merge_groups_join_only_touching_rasters_of_one_crs(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.tif", "EPSG:32634", 580000, 6697000, 0.25)  # 100 m square
    b = _write(tmp_path / "b.tif", "EPSG:32634", 580100, 6697000, 0.25)  # east neighbour of a
    far = _write(tmp_path / "far.tif", "EPSG:32634", 600000, 6697000, 0.25)  # 20 km away
    other = _write(tmp_path / "other.tif", "EPSG:32635", 580000, 6697000, 0.25)  # other CRS
    groups = merge_groups([a, far, b, other])
    assert sorted(sorted(p.name for p in g) for g in groups) == [
        ["a.tif", "b.tif"], ["far.tif"], ["other.tif"]
    ]  # fmt: skip
    # separate areas still give pairs (one synthesizer each)
    src = RasterPairs([a, far, b], gsd_range=(0.25, 0.3), val_fraction=0.0)
    assert len(src.synths) == 2
    pairs = src.sample(6, np.random.default_rng(0))
    assert pairs.anchors.shape == (6, 3, 224, 224)


def test_synthesizer_reads_no_finer_than_needed(tmp_path: Path) -> None:
    r = _write(tmp_path / "fine.tif", "EPSG:32634", 580000, 6697000, 0.05, size=800)
    full = ViewSynthesizer(r)
    assert (full.width, full.height) == (800, 800)
    half = ViewSynthesizer(r, finest_gsd_m=0.1)  # views never finer than 0.1 m/px
    assert (half.width, half.height) == (400, 400)
    assert np.mean(half.native_gsd_m) == pytest.approx(0.1, rel=1e-3)
    # the same ground point maps to the same place (the transform follows the decimation)
    lon, lat = full.px_to_lonlat(399.5, 199.5)
    col, row = half.lonlat_to_px(lon, lat)
    assert (col, row) == pytest.approx((199.5, 99.5), abs=1e-3)


def test_synthesizer_memory_budget_coarsens_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = _write(tmp_path / "big.tif", "EPSG:32634", 580000, 6697000, 0.05, size=800)
    with caplog.at_level(logging.WARNING, logger="geoloc.training.synthetic"):
        s = ViewSynthesizer(r, max_pixels=100 * 100)
    assert s.width * s.height <= 100 * 100 * 1.05
    assert "big.tif" in caplog.text and "pixels in memory" in caplog.text


def test_separate_areas_are_held_out_whole(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.tif", "EPSG:32634", 580000, 6697000, 0.25)
    b = _write(tmp_path / "b.tif", "EPSG:32634", 580100, 6697000, 0.25)  # touches a
    far = _write(tmp_path / "far.tif", "EPSG:32634", 600000, 6697000, 0.25)
    src = RasterPairs([a, b, far], gsd_range=(0.25, 0.3), val_fraction=0.3)
    n_train = [len(t) for t in src._train]
    n_val = [len(v) for v in src._val]
    # {a, b} trains, {far} (a third of the places) is the validation area, untouched by training
    assert n_train[0] > 0 and n_val[0] == 0 and n_train[1] == 0 and n_val[1] > 0
    val = src.sample(4, np.random.default_rng(0), "val")
    assert val.lonlat is not None
    assert (val.lonlat[:, 0] > src.synths[1].px_to_lonlat(0, 0)[0] - 1e-6).all()
    # one area only: a block of it is held out instead
    one = RasterPairs([a, b], gsd_range=(0.25, 0.3), val_fraction=0.3)
    assert len(one._train[0]) > 0 and len(one._val[0]) > 0
