"""Fixtures of the tiler tests: the fake rasters of tests/data/rasters/data.py, written once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.rasters.data import generate


@pytest.fixture(scope="session")
def fake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{name: path}`` of every fake raster (see ``tests/data/rasters/data.py``)."""
    return generate(tmp_path_factory.mktemp("rasters"))


@pytest.fixture(scope="session")
def brighton_dir() -> Path:
    """``../shared/data/brighton_beach`` (a 106 m x 98 m map and real DJI photos of it)."""
    from tests.conftest import SHARED_DATA

    d = SHARED_DATA / "brighton_beach"
    if not (d / "map_pointcloud_10cm.tif").is_file():
        pytest.skip(f"real imagery not found at {d}")
    return d
