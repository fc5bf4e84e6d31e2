"""Fixtures of the encoder tests: real tiles of the bundled sample, a loaded default encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoloc.models import Encoder, build_encoder

#: (col, row) of 224 px windows of the bundled sample with clearly different content.
TILE_A = (300, 300)
TILE_B = (1500, 700)


def read_tile(path: Path, col: int, row: int, size: int = 224) -> np.ndarray:
    """uint8 RGB (3, size, size) window of ``path``."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as ds:
        return np.ascontiguousarray(ds.read((1, 2, 3), window=Window(col, row, size, size)))


@pytest.fixture(scope="module")
def tiles(sample_raster: Path) -> np.ndarray:
    """Two unrelated real tiles (2, 3, 224, 224) uint8."""
    return np.stack([read_tile(sample_raster, *TILE_A), read_tile(sample_raster, *TILE_B)])


@pytest.fixture(scope="module")
def sgmnet() -> Encoder:
    """The default encoder with the seeded head (not the shipped weights), eval mode."""
    enc = build_encoder("sgmnet")
    enc.eval()
    return enc
