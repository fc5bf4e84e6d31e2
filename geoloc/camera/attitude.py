"""Camera attitude: heading, pitch and roll <-> the rotation between the world and the camera.

World frame: a local metric map CRS taken as east-north-up (x east, y north, z up). Camera frame:
OpenCV's (x right, y down, z along the optical axis). Angles follow DJI's gimbal convention:

- ``heading_deg``: clockwise from north, the direction the camera faces; for a nadir frame it is
  the direction the top of the image points to (the heading of :mod:`geoloc.localize.frame`).
- ``pitch_deg``: elevation of the optical axis, 0 = horizontal, -90 = nadir (straight down).
- ``roll_deg``: rotation about the horizontal forward axis, positive = the right side goes down
  (as an aircraft's right wing).

The order is heading, then roll, then pitch (about the rolled lateral axis). Unlike yaw-pitch-roll
about the optical axis, this has no singularity at nadir, where drone cameras mostly look; it has
one at |roll| = 90 deg, which no usable ground view reaches.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["angles_from_rotation", "camera_to_world", "grid_convergence_deg", "world_to_camera"]


def camera_to_world(heading_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """The 3x3 rotation whose columns are the camera's x, y, z axes in world (ENU) coordinates."""
    psi, theta, phi = (math.radians(v) for v in (heading_deg, pitch_deg, roll_deg))
    right = np.array([math.cos(psi), -math.sin(psi), 0.0])
    forward = np.array([math.sin(psi), math.cos(psi), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    right_r = math.cos(phi) * right - math.sin(phi) * up
    up_r = math.sin(phi) * right + math.cos(phi) * up
    z_c = math.cos(theta) * forward + math.sin(theta) * up_r
    up_c = -math.sin(theta) * forward + math.cos(theta) * up_r
    return np.column_stack([right_r, -up_c, z_c])


def world_to_camera(heading_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """The 3x3 rotation taking world (ENU) vectors into the camera frame (OpenCV axes)."""
    return camera_to_world(heading_deg, pitch_deg, roll_deg).T


def angles_from_rotation(r_wc: np.ndarray) -> tuple[float, float, float]:
    """(heading, pitch, roll) in degrees of a camera-to-world rotation (inverse of the above).

    ``r_wc`` is orthonormalised first, so a rotation estimated from data may be passed as is.
    """
    u, _, vt = np.linalg.svd(np.asarray(r_wc, dtype=float))
    r = u @ vt
    if np.linalg.det(r) < 0:
        r = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    x_c, z_c = r[:, 0], r[:, 2]
    phi = math.asin(max(-1.0, min(1.0, -x_c[2])))
    psi = math.atan2(-x_c[1], x_c[0])
    forward = np.array([math.sin(psi), math.cos(psi), 0.0])
    right = np.array([math.cos(psi), -math.sin(psi), 0.0])
    up_r = math.sin(phi) * right + math.cos(phi) * np.array([0.0, 0.0, 1.0])
    theta = math.atan2(float(z_c @ up_r), float(z_c @ forward))
    return math.degrees(psi) % 360.0, math.degrees(theta), math.degrees(phi)


def grid_convergence_deg(crs: object, x: float, y: float) -> float:
    """Clockwise angle from true north to the CRS's grid north (+y) at (x, y), in degrees.

    A heading measured against the grid is ``true heading - convergence``. Measured numerically
    (a short step north along the meridian), so it holds for any projected CRS.
    """
    from tiling.crs import from_lonlat, to_lonlat

    lon, lat = to_lonlat(crs, float(x), float(y))
    x2, y2 = from_lonlat(crs, lon, min(89.9, lat + 1e-4))
    # true north expressed in grid coordinates; its grid azimuth is -convergence
    return -math.degrees(math.atan2(float(x2) - x, float(y2) - y))
