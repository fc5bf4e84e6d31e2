"""Synthetic flights cut from the bundled sample (rasterio + OpenCV, no tracker code)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tests.localize.conftest import truth_lonlat
from tests.localize.views import sample_rgb, view

GSD = 0.28  # the sample's metres per pixel; frames are cut at that resolution


@dataclass
class Flight:
    """Frames (RGB), their times (s) and the true ground point under each frame centre."""

    frames: list[np.ndarray]
    times: list[float]
    truth: list[tuple[float, float]]  # (lon, lat)
    headings: list[float]


def synthetic_flight(
    n: int = 40,
    fps: float = 10.0,
    speed_mps: float = 8.0,
    size: int = 360,
    start: tuple[float, float] = (800.0, 560.0),
    turn_at: float = 0.5,
    turn_deg: float = 30.0,
) -> Flight:
    """A flight at ``speed_mps``: east with the camera's top to the north-east, then a turn of
    ``turn_deg`` (course and camera together) after ``turn_at`` of the frames."""
    img = sample_rgb()
    step_px = speed_mps / fps / GSD
    cx, cy = start
    course, cam = 90.0, 30.0
    frames, times, truth, heads = [], [], [], []
    for i in range(n):
        if i >= int(turn_at * n):
            frac = min(1.0, (i - int(turn_at * n)) / 10.0)
            course_i, cam_i = 90.0 + turn_deg * frac, 30.0 + turn_deg * frac
        else:
            course_i, cam_i = course, cam
        frames.append(view(img, cx, cy, size, heading_deg=cam_i))
        times.append(i / fps)
        truth.append(truth_lonlat(cx, cy))
        heads.append(cam_i)
        a = math.radians(course_i)
        cx += step_px * math.sin(a)
        cy -= step_px * math.cos(a)
    return Flight(frames, times, truth, heads)


def errors_m(fixes: Sequence[object], flight: Flight) -> np.ndarray:
    """Distance (m) of each fix with a position to its truth; NaN for fixes without one."""
    from tiling.crs import geodesic_distance_m

    out = []
    for f, (lon, lat) in zip(fixes, flight.truth, strict=True):
        if getattr(f, "lat", None) is None:
            out.append(np.nan)
        else:
            out.append(float(geodesic_distance_m(f.lon, f.lat, lon, lat)))  # type: ignore[attr-defined]
    return np.array(out)
