"""A pinhole renderer of georeferenced rasters: oblique views with a known pose (tests, benchmarks).

The raster is draped on the plane z = ``ground_z`` of a metric CRS (the raster's own when it is
in metres at true scale, else the local UTM zone) and seen by a :class:`Camera` at a
:class:`CameraPose`; pixels are read through :mod:`tiling` at the raster's native resolution and
resampled bilinearly. Rays that miss the ground, go beyond ``max_range_m`` or leave the raster are
masked.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.camera.intrinsics import Camera
from geoloc.camera.pose import CameraPose, metric_crs

__all__ = ["RenderedView", "ground_crs", "random_pose", "render_view"]


@dataclass
class RenderedView:
    """A rendered frame and its truth: the camera, the pose and the CRS the pose is in."""

    rgb: np.ndarray
    mask: np.ndarray
    camera: Camera
    pose: CameraPose
    ground_z: float = 0.0

    def ground_points(self, pixels: np.ndarray) -> np.ndarray:
        """Ground (x, y) in the pose's CRS seen at the given frame pixels (N, 2); NaN if none."""
        d = self.pose.rays(self.camera, pixels)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (self.ground_z - self.pose.z) / d[:, 2]
        s = np.where(s > 0, s, np.nan)
        return (self.pose.centre[None, :2] + s[:, None] * d[:, :2]).astype(np.float64)

    def truth(self) -> dict[str, Any]:
        """The true pose and ground point (JSON-able): what a test or benchmark compares with."""
        from tiling.crs import to_lonlat

        heading, pitch, roll = self.pose.angles()
        lon, lat = self.pose.lonlat()
        gx, gy = self.centre_ground()
        glon, glat = to_lonlat(self.pose.crs, gx, gy)
        return {
            "crs": self.pose.crs,
            "x": self.pose.x,
            "y": self.pose.y,
            "z": self.pose.z,
            "ground_z": self.ground_z,
            "lon": lon,
            "lat": lat,
            "alt_agl_m": self.pose.z - self.ground_z,
            "heading_deg": heading,
            "pitch_deg": pitch,
            "roll_deg": roll,
            "ground_lon": float(glon),
            "ground_lat": float(glat),
        }

    def save(self, directory: str | os.PathLike[str], name: str) -> Path:
        """Write ``name.png`` (the frame), ``name.json`` (:meth:`truth`) and ``name.camera.json``.

        The camera file is in the ``--camera`` format. Returns the PNG's path.
        """
        from PIL import Image

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        png = d / f"{name}.png"
        Image.fromarray(self.rgb).save(png)
        (d / f"{name}.json").write_text(json.dumps(self.truth(), indent=2) + "\n")
        (d / f"{name}.camera.json").write_text(json.dumps(self.camera.as_dict(), indent=2) + "\n")
        return png

    def centre_ground(self) -> tuple[float, float]:
        """Ground (x, y) under the frame centre (pixel-centre convention)."""
        c = np.array([[(self.camera.width - 1) / 2.0, (self.camera.height - 1) / 2.0]])
        x, y = self.ground_points(c)[0]
        return float(x), float(y)


def ground_crs(raster_path: str | os.PathLike[str]) -> str:
    """The metric CRS a view of this raster is rendered in (see :func:`metric_crs`)."""
    from tiling import open_raster
    from tiling.crs import to_lonlat

    with open_raster(raster_path) as r:
        t = r.transform
        x, y = t @ (r.width / 2.0, r.height / 2.0)
        lon, lat = to_lonlat(r.crs, x, y)
        return metric_crs(r.crs, float(lon), float(lat))


def random_pose(
    raster_path: str | os.PathLike[str],
    rng: np.random.Generator,
    *,
    tilt_deg: tuple[float, float] = (0.0, 45.0),
    altitude_m: tuple[float, float] = (60.0, 150.0),
    margin_m: float = 0.0,
) -> CameraPose:
    """A random pose over the raster whose frame centre looks at a point inside it.

    Heading uniform in [0, 360), tilt from the nadir and altitude uniform in their ranges, the
    ground point under the frame centre at least ``margin_m`` inside the raster's bounds.
    """
    from tiling import open_raster
    from tiling.crs import affine_xy, from_lonlat, to_lonlat

    crs = ground_crs(raster_path)
    with open_raster(raster_path) as r:
        cols = np.array([0.0, r.width, r.width, 0.0])
        rows = np.array([0.0, 0.0, r.height, r.height])
        lon, lat = to_lonlat(r.crs, *affine_xy(r.transform, cols, rows))
    xs, ys = from_lonlat(crs, np.asarray(lon), np.asarray(lat))
    x0, x1 = float(np.max(np.sort(xs)[:2])) + margin_m, float(np.min(np.sort(xs)[2:])) - margin_m
    y0, y1 = float(np.max(np.sort(ys)[:2])) + margin_m, float(np.min(np.sort(ys)[2:])) - margin_m
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{raster_path}: raster smaller than twice the margin of {margin_m} m")
    heading = float(rng.uniform(0.0, 360.0))
    tilt = float(rng.uniform(*tilt_deg))
    alt = float(rng.uniform(*altitude_m))
    gx, gy = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
    # the camera stands back from the ground point along the heading's opposite direction
    back = alt * math.tan(math.radians(tilt))
    from geoloc.camera.attitude import grid_convergence_deg

    grid_heading = math.radians(heading - grid_convergence_deg(crs, gx, gy))
    cx, cy = gx - back * math.sin(grid_heading), gy - back * math.cos(grid_heading)
    return CameraPose.from_angles(cx, cy, alt, heading, tilt - 90.0, 0.0, crs)


def render_view(
    raster_path: str | os.PathLike[str],
    camera: Camera,
    pose: CameraPose,
    *,
    ground_z: float = 0.0,
    max_range_m: float = 2000.0,
) -> RenderedView:
    """Render what ``camera`` at ``pose`` sees of the raster lying on the plane z = ``ground_z``.

    ``pose`` must be in the raster's :func:`ground_crs`. Returns RGB (H, W, 3) uint8 and the mask
    of pixels that show the raster.
    """
    import cv2

    from tiling import open_raster
    from tiling.crs import crs_string, from_lonlat, to_lonlat

    w, h = camera.width, camera.height
    ys, xs = np.mgrid[0:h, 0:w]
    px = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)
    view = RenderedView(
        np.zeros((h, w, 3), np.uint8), np.zeros((h, w), bool), camera, pose, ground_z
    )
    g = view.ground_points(px)
    dist = np.hypot(g[:, 0] - pose.x, g[:, 1] - pose.y)
    ok = np.isfinite(g).all(axis=1) & (dist < max_range_m)
    if not ok.any():
        return view
    with open_raster(raster_path) as r:
        gx, gy = g[ok, 0], g[ok, 1]
        if crs_string(r.crs) != pose.crs:
            lon, lat = to_lonlat(pose.crs, gx, gy)
            gx, gy = (np.asarray(v) for v in from_lonlat(r.crs, np.asarray(lon), np.asarray(lat)))
        inv = ~r.transform
        col = inv.a * gx + inv.b * gy + inv.c - 0.5
        row = inv.d * gx + inv.e * gy + inv.f - 0.5
        inside = (col > -0.5) & (row > -0.5) & (col < r.width - 0.5) & (row < r.height - 0.5)
        if not inside.any():
            return view
        c0 = max(0, int(math.floor(col[inside].min())) - 1)
        r0 = max(0, int(math.floor(row[inside].min())) - 1)
        c1 = min(r.width, int(math.ceil(col[inside].max())) + 2)
        r1 = min(r.height, int(math.ceil(row[inside].max())) + 2)
        pixels, valid = r.read_window(c0, r0, 1.0, 1.0, c1 - c0, r1 - r0)
    src = np.ascontiguousarray(pixels.transpose(1, 2, 0))
    flat_x = np.full(h * w, -1e6, np.float32)
    flat_y = np.full(h * w, -1e6, np.float32)
    idx = np.flatnonzero(ok)
    flat_x[idx] = np.where(inside, col - c0, -1e6)
    flat_y[idx] = np.where(inside, row - r0, -1e6)
    map_x, map_y = flat_x.reshape(h, w), flat_y.reshape(h, w)
    view.rgb = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    view.mask = cv2.remap(
        valid.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
    ).astype(bool)
    view.rgb[~view.mask] = 0
    return view
