"""Shared test set-up: an isolated GEOLOC_HOME; DB fixtures live in tests/fixtures_db.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_RASTER = REPO / "data" / "sample" / "turku_utm34n_0.28m.tif"

pytest_plugins = ["tests.fixtures_db", "tests.fixtures_extpg"]

os.environ.setdefault("OMP_NUM_THREADS", "2")


def crop_sample(dst: Path, col_off: int, row_off: int, width: int, height: int) -> Path:
    """Write a GeoTIFF crop of the bundled sample (its own georeference, same CRS and GSD)."""
    import rasterio
    from rasterio.windows import Window

    win = Window(col_off, row_off, width, height)
    with rasterio.open(SAMPLE_RASTER) as src:
        data = src.read(window=win)
        profile = src.profile.copy()
        profile.update(
            width=width,
            height=height,
            transform=src.window_transform(win),
            driver="GTiff",
            compress="deflate",
            tiled=False,
            photometric="RGB",
        )
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


@pytest.fixture(scope="session")
def sample_raster() -> Path:
    """The bundled real sample (UTM 34N, 0.28 m/px)."""
    return SAMPLE_RASTER


@pytest.fixture(scope="session")
def turku_dir() -> Path:
    """``../shared/data/turku``; skips the test when it is absent."""
    d = SHARED_DATA / "turku"
    if not d.is_dir():
        pytest.skip(f"real imagery not found at {d}")
    return d
