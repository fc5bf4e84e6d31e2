"""Tracking sessions over HTTP: frames of one flight in order -> TrackFix each; DELETE ends it."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np

from tests.serve.conftest import Running


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")  # lossless: the synthetic views verify
    return buf.getvalue()


def test_session_tracks_and_ends(served: Running, service: Any) -> None:
    from tests.track.flight import synthetic_flight

    flight = synthetic_flight(n=4)
    frames = [_png(f) for f in flight.frames]
    lon0, lat0 = flight.truth[0]
    url = f"{served.url}/v1/track/flight-1/frames"
    fixes = []
    for i, data in enumerate(frames):
        params: dict[str, Any] = {"gsd": 0.28, "t": flight.times[i]}
        if i == 0:
            params["prior"] = f"{lat0},{lon0},150"
        r = httpx.post(url, params=params, content=data, timeout=300)
        assert r.status_code == 200, r.text
        fixes.append(r.json())
    assert [f["index"] for f in fixes] == [0, 1, 2, 3]
    assert fixes[0]["status"] == "map_fix", fixes[0]
    assert all(f["session"] == "flight-1" for f in fixes)
    assert all(f["lat"] is not None for f in fixes)
    assert "flight-1" in service.sessions
    r = httpx.delete(f"{served.url}/v1/track/flight-1", timeout=30)
    assert r.status_code == 200 and sum(r.json()["frames"].values()) == 4
    assert "flight-1" not in service.sessions
    assert httpx.delete(f"{served.url}/v1/track/flight-1", timeout=30).status_code == 404
    r = httpx.post(f"{served.url}/v1/track/bad%20id/frames", content=frames[0], timeout=30)
    assert r.status_code == 400
