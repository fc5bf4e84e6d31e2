"""The tracker on synthetic flights over the ingested sample: accuracy, gating, blackout."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.track.flight import Flight, errors_m

pytestmark = pytest.mark.slow


def _run(tr: Any, flight: Flight, blank: range = range(0)) -> list[Any]:
    out = []
    for i, (rgb, t) in enumerate(zip(flight.frames, flight.times, strict=True)):
        frame = np.zeros_like(rgb) if i in blank else rgb
        out.append(tr.update(frame, t=t))
    return out


def _start(flight: Flight) -> str:
    lon, lat = flight.truth[0]
    return f"{lat},{lon},150"


def test_flight_tracked_within_targets(tracker_factory: Any, flight: Flight) -> None:
    tr = tracker_factory(start=_start(flight), gsd=0.28)
    fixes = _run(tr, flight)
    err = errors_m(fixes, flight)
    for f, e in zip(fixes, err, strict=True):
        print(f.index, f.status, round(float(e), 2), f.error_m_est, f.heading_deg)
    first = next(i for i, f in enumerate(fixes) if f.status == "map_fix")
    after = err[first:]
    assert np.isfinite(after).all()  # every frame after the first fix has a position
    assert float(np.median(after)) <= 2.0
    assert float(np.percentile(after, 95)) <= 5.0
    pos = np.array([[f.lat, f.lon] for f in fixes[first:]])
    jumps = np.hypot(np.diff(pos[:, 0]) * 111_320, np.diff(pos[:, 1]) * 111_320 * 0.49)
    assert float(jumps.max()) < 25.0
    assert sum(f.status == "map_fix" for f in fixes) >= 4
    assert sum(f.status == "vo" for f in fixes) >= len(fixes) // 2
    headings = [f.heading_deg for f in fixes[first:]]
    true_h = flight.headings[first:]
    dh = [abs((h - g + 180) % 360 - 180) for h, g in zip(headings, true_h, strict=True)]
    assert max(dh) < 5.0
    speed = np.median([f.speed_mps for f in fixes[first + 5 :]])
    assert 6.0 < speed < 10.0  # the flight's 8 m/s
    d = fixes[-1].as_dict()
    assert set(d) >= {"index", "t", "frame", "status", "lat", "lon", "heading_deg", "speed_mps"}
