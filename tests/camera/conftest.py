"""Fixtures of the camera tests: a real RGB view and a standard camera."""

from __future__ import annotations

import numpy as np
import pytest

from geoloc.camera import Camera, camera_from_hfov
from tests.conftest import SAMPLE_RASTER


@pytest.fixture(scope="session")
def view_rgb() -> np.ndarray:
    """A 160 x 200 px crop of the bundled sample (real texture for the frame files)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(SAMPLE_RASTER) as ds:
        return np.ascontiguousarray(
            ds.read([1, 2, 3], window=Window(100, 60, 200, 160)).transpose(1, 2, 0)
        )


@pytest.fixture
def camera() -> Camera:
    """640 x 480 px, 60 deg horizontal field of view, no distortion."""
    return camera_from_hfov(60.0, 640, 480)
