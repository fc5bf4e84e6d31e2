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


def test_wrong_map_fix_is_gated_out(tracker_factory: Any, short_flight: Flight) -> None:
    from dataclasses import replace

    # map fixes at frames 0, 5, 10, ...: the wrong one lands on a scheduled fix
    tr = tracker_factory(start=_start(short_flight), gsd=0.28, conf={"map_fix_every": 5})
    real = tr.map_fixer
    injected: list[int] = []

    def fixer(rgb: Any, prior: Any, heading: Any, gsd: Any, name: str) -> Any:
        fix = real(rgb, prior, heading, gsd, name)
        if tr.index == 10 and fix.lat is not None:  # a confident match 150 m to the north
            injected.append(tr.index)
            return replace(fix, lat=fix.lat + 150.0 / 111_320.0, status="ok", method="verified")
        return fix

    tr.map_fixer = fixer
    fixes = _run(tr, short_flight)
    err = errors_m(fixes, short_flight)
    assert injected == [10]
    assert fixes[10].status != "map_fix"
    assert tr.counts["refused"] >= 1
    assert float(np.nanmax(err)) < 5.0  # the track never followed it
    assert sum(f.status == "map_fix" for f in fixes[11:]) >= 1  # later good fixes still accepted


def test_blackout_is_coasted_and_recovered(tracker_factory: Any, short_flight: Flight) -> None:
    tr = tracker_factory(start=_start(short_flight), gsd=0.28)
    blank = range(8, 13)  # 0.5 s of black frames
    fixes = _run(tr, short_flight, blank=blank)
    err = errors_m(fixes, short_flight)
    print([(f.index, f.status, round(float(e), 2)) for f, e in zip(fixes, err, strict=True)])
    assert [fixes[i].status for i in blank] == ["coasting"] * len(blank)
    assert np.isfinite(err).all()  # a position for every frame, through the blackout
    sig = [fixes[i].error_m_est for i in blank]
    assert sig == sorted(sig)  # the uncertainty grows while coasting
    assert float(err[blank.stop :].max()) < 5.0  # rejoined within the targets
    assert any(f.status == "map_fix" for f in fixes[blank.stop : blank.stop + 20])


def _lossy(rgb: np.ndarray, quality: int = 85) -> np.ndarray:
    """A JPEG round trip at a camera's usual quality (and its YUV 4:2:0 chroma)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_lossy_frames_get_their_first_fix_and_track(
    tracker_factory: Any, short_flight: Flight
) -> None:
    lossy = Flight(
        [_lossy(f) for f in short_flight.frames], short_flight.times, short_flight.truth,
        short_flight.headings,
    )  # fmt: skip
    tr = tracker_factory(start=_start(lossy), gsd=0.28)
    fixes = _run(tr, lossy)
    err = errors_m(fixes, lossy)
    assert fixes[0].status == "map_fix"  # the first fix, near --start, from a lossy frame
    assert np.isfinite(err).all()
    assert float(np.median(err)) <= 2.0 and float(err.max()) < 5.0
    assert sum(f.status == "map_fix" for f in fixes) >= len(fixes) // 4


def test_plot_over_the_orthomosaic(
    tracker_factory: Any, short_flight: Flight, tmp_path: Any
) -> None:
    from PIL import Image

    from geoloc.track.outputs import plot_track

    tr = tracker_factory(start=_start(short_flight), gsd=0.28)
    rows = [f.as_dict() for f in _run(tr, short_flight)]
    rows[5] = {**rows[5], "status": "lost", "lat": None, "lon": None}  # a lost frame
    bg = tr.map_image(rows)
    assert bg is not None
    img, (west, east, south, north) = bg
    assert img.ndim == 3 and img.shape[2] == 3 and float(img.std()) > 5.0  # map texture
    for r in rows:
        if r["lat"] is not None:
            assert west < r["lon"] < east and south < r["lat"] < north
    assert all(len(r["error_ellipse_m"]) == 3 for r in rows if r["lat"] is not None)
    out = plot_track(tmp_path / "track.png", rows, bg)
    png = np.asarray(Image.open(out).convert("RGB")).astype(float)
    # the map shows through: far more colour than the white canvas of a plot without it
    assert float(png.std(axis=2).mean()) > 2.0
    plain = np.asarray(Image.open(plot_track(tmp_path / "plain.png", rows)).convert("RGB"))
    assert float(png.std()) > float(plain.astype(float).std())


def test_lost_track_relocalizes_near_the_prediction(tracker_factory: Any, flight: Flight) -> None:
    # a low "lost" threshold so a 2 s blackout loses the track
    tr = tracker_factory(start=_start(flight), gsd=0.28, conf={"lost_m": 1.5})
    blank = range(8, 28)
    fixes = _run(tr, flight, blank=blank)
    err = errors_m(fixes, flight)
    statuses = [f.status for f in fixes]
    assert "lost" in statuses[blank.start : blank.stop]  # the blackout outlasts the threshold
    assert all(fixes[i].lat is None for i in blank if statuses[i] == "lost")
    # within two frames of the blackout's end: a map-window fix near the prediction
    assert "map_fix" in statuses[blank.stop : blank.stop + 2]
    assert np.isfinite(err[blank.stop :]).all() and float(err[blank.stop :].max()) < 5.0
