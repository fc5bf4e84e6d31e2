"""Small real rasters for the ingest tests: crops of the bundled Turku sample (0.28 m/px)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SAMPLE_RASTER


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
def crops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two disjoint crops: ``a`` (west) and ``b`` (east) of 1000 x 700 px (280 m x 196 m).

    At the default ingest GSD (0.5 m/px, 224 px tiles, 112 px stride) each gives 15 candidate
    tiles, about 14 kept (the tiler decides; tests compare with its own count).
    """
    d = tmp_path_factory.mktemp("ingest-rasters")
    return {
        "a": crop_sample(d / "crop a.tif", 0, 0, 1000, 700),
        "b": crop_sample(d / "crop_b.tif", 1100, 400, 1000, 700),
    }


@pytest.fixture(scope="session")
def encoder():  # type: ignore[no-untyped-def]
    """The default encoder, loaded once per session and optimised for inference."""
    from geoloc.models import load_encoder

    enc = load_encoder("sgmnet")
    enc.optimize_for_inference()
    return enc
