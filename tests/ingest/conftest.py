"""Small real rasters for the ingest tests: crops of the bundled Turku sample (0.28 m/px)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import crop_sample


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
