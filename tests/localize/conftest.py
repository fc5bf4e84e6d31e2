"""Shared fixtures of the localizer tests: the bundled sample ingested once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SAMPLE_RASTER


@pytest.fixture(scope="session")
def encoder() -> Any:
    """The default encoder, loaded once per session and optimised for inference."""
    from geoloc.models import load_encoder

    enc = load_encoder("sgmnet")
    enc.optimize_for_inference()
    return enc


@pytest.fixture(scope="session")
def ingested(
    pg_server: Any, encoder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Settings of a database holding the whole bundled sample (default ingest GSD/stride)."""
    from geoloc.config import Settings
    from geoloc.ingest import ingest

    name = pg_server.create_database()
    home = tmp_path_factory.mktemp("loc-home")
    settings = Settings(home=home, database_url=pg_server.url_for(name))
    res = ingest([SAMPLE_RASTER], encoder=encoder, settings=settings, progress=False)
    assert [r.status for r in res] == ["ingested"], res
    try:
        yield settings
    finally:
        pg_server.drop_database(name)


def truth_lonlat(cx: float, cy: float) -> tuple[float, float]:
    """lon/lat of source pixel (cx, cy) of the sample (pixel-centre convention)."""
    import rasterio
    from pyproj import Transformer

    with rasterio.open(SAMPLE_RASTER) as ds:
        x, y = ds.transform @ (cx + 0.5, cy + 0.5)
        tr = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(x, y)
    return float(lon), float(lat)


def write_jpeg(path: Path, rgb: np.ndarray) -> Path:
    """Save an RGB array as a JPEG (quality 92)."""
    from PIL import Image

    Image.fromarray(rgb).save(path, quality=92)
    return path
