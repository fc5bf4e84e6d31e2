"""Fixtures of the tiler tests: the fake rasters of tests/data/rasters/data.py, written once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.rasters.data import generate


@pytest.fixture(scope="session")
def fake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{name: path}`` of every fake raster (see ``tests/data/rasters/data.py``)."""
    return generate(tmp_path_factory.mktemp("rasters"))
