"""Shared test set-up: an isolated GEOLOC_HOME; DB fixtures live in tests/fixtures_db.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_RASTER = REPO / "data" / "sample" / "turku_utm34n_0.28m.tif"

pytest_plugins = ["tests.fixtures_db"]

os.environ.setdefault("OMP_NUM_THREADS", "2")


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
