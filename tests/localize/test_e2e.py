"""End to end on the bundled sample: ingest once, then locate frames cut from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.localize.conftest import truth_lonlat, write_jpeg
from tests.localize.views import sample_rgb, view

pytestmark = pytest.mark.slow


def _dist(fix: Any, lon: float, lat: float) -> float:
    from tiling.crs import geodesic_distance_m

    return float(geodesic_distance_m(fix.lon, fix.lat, lon, lat))


@pytest.fixture(scope="module")
def loc(ingested: Any, encoder: Any) -> Any:
    from geoloc.localize import Localizer

    with Localizer.open(ingested, encoder=encoder, preset="accurate") as lz:
        yield lz


def test_exact_view_within_2m(loc: Any, tmp_path: Path) -> None:
    cx, cy = 1000.0, 600.0
    rgb = view(sample_rgb(), cx, cy, 400)  # 112 m at 0.28 m/px, north-up
    f = write_jpeg(tmp_path / "exact.jpg", rgb)
    fix = loc.locate(f, gsd=0.28)
    lon, lat = truth_lonlat(cx, cy)
    print(fix.as_dict())
    assert fix.status == "ok", fix.message
    assert fix.method == "verified"
    assert _dist(fix, lon, lat) < 2.0
    assert fix.heading_deg is not None and min(fix.heading_deg, 360 - fix.heading_deg) < 5
    assert 0.5 <= fix.confidence <= 1.0
    assert set(fix.timings_ms) >= {"load", "encode", "recall", "rerank", "verify", "total"}
    assert len(fix.candidates) == 5
    assert fix.pipeline["preset"] == "accurate"


def test_rotated_scaled_shifted_jittered(loc: Any, tmp_path: Path) -> None:
    # 37 deg heading, 1.2x finer than the frame-spans-a-tile assumption (GSD not given),
    # centre shifted by 30 % of a tile from a tile centre, colour jitter
    cx, cy = 900.0 + 0.3 * 400, 500.0
    rgb = view(sample_rgb(), cx, cy, 400, heading_deg=37.0, scale=1.2).astype(np.float32)
    rgb = np.clip(rgb * np.array([1.1, 0.95, 0.9]) + 12.0, 0, 255).astype(np.uint8)
    f = write_jpeg(tmp_path / "rot.jpg", rgb)
    fix = loc.locate(f)
    lon, lat = truth_lonlat(cx, cy)
    print(fix.as_dict())
    assert fix.status == "ok", fix.message
    assert _dist(fix, lon, lat) < 56.0  # one tile step (112 px stride at 0.5 m/px)
