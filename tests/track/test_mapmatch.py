"""Map fixes by registration in the map window around a prediction (geoloc.track.mapmatch)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.track.flight import Flight
from tests.track.test_tracker import _lossy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def matcher(ingested: Any, encoder: Any) -> Iterator[Any]:
    from geoloc.localize import Localizer, NearPositionRecall
    from geoloc.track.mapmatch import MapMatcher

    with Localizer.open(ingested, encoder=encoder, recall=NearPositionRecall()) as loc:
        yield MapMatcher(loc)


def _off(lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    k = np.cos(np.radians(lat))
    return lat + north_m / 111_320.0, lon + east_m / (111_320.0 * k)


def test_registers_a_lossy_frame_near_a_wrong_prediction(matcher: Any, flight: Flight) -> None:
    from tiling.crs import geodesic_distance_m

    for i in (0, 25, 39):
        lon, lat = flight.truth[i]
        plat, plon = _off(lat, lon, 6.0, -5.0)  # the prediction 8 m off, heading 3 deg off
        m = matcher.match(_lossy(flight.frames[i]), plat, plon, 0.28, 20.0, flight.headings[i] + 3)
        assert m is not None, i
        assert float(geodesic_distance_m(m.lon, m.lat, lon, lat)) < 0.6
        # the synthetic frames are cut in the raster's grid; the fix is in true north, which
        # the sample's UTM zone turns by the grid convergence (about a degree here)
        dh = (m.heading_deg - flight.headings[i] + 180.0) % 360.0 - 180.0
        assert 0.0 < dh < 2.5
        assert m.inliers >= 25 and 0.3 <= m.sigma_m < 2.0
        assert abs(m.gsd_m - 0.28) < 0.02


def test_start_circle_search_finds_the_heading(matcher: Any, flight: Flight) -> None:
    from tiling.crs import geodesic_distance_m

    lon, lat = flight.truth[30]
    plat, plon = _off(lat, lon, -70.0, 60.0)
    m = matcher.search(_lossy(flight.frames[30]), plat, plon, 0.28, 150.0, None)
    assert m is not None
    assert float(geodesic_distance_m(m.lon, m.lat, lon, lat)) < 1.0
    assert abs((m.heading_deg - flight.headings[30] + 180.0) % 360.0 - 180.0) < 3.0


def test_no_fix_outside_the_window_or_on_a_blank_frame(matcher: Any, flight: Flight) -> None:
    lon, lat = flight.truth[10]
    plat, plon = _off(lat, lon, 90.0, 0.0)  # the true place is beyond the 20 m margin
    assert matcher.match(flight.frames[10], plat, plon, 0.28, 20.0, flight.headings[10]) is None
    black = np.zeros_like(flight.frames[10])
    assert matcher.match(black, lat, lon, 0.28, 20.0, flight.headings[10]) is None
    assert matcher.match(flight.frames[10], 10.0, 10.0, 0.28, 20.0, 0.0) is None  # no map there
