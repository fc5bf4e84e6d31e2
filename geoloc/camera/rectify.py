"""Oblique frame -> virtual nadir frame, by the homography of the camera rotation (K' R K^-1).

A camera turned about its own centre sees the same rays, so a frame whose pitch and roll are known
can be re-projected into a virtual camera at the same place looking straight down, with the same
heading (image-up still points to the heading). Over flat ground the result is an orthophoto-like
view at one uniform GSD (altitude / focal length), which is what the map tiles are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geoloc.camera.attitude import camera_to_world, world_to_camera
from geoloc.camera.intrinsics import Camera

__all__ = ["Rectified", "gsd_at_nadir", "nadir_rotation", "rectify"]


def gsd_at_nadir(camera: Camera, altitude_m: float) -> float:
    """Ground size (m) of one pixel under a nadir camera ``altitude_m`` above flat ground."""
    if not (math.isfinite(altitude_m) and altitude_m > 0):
        raise ValueError(f"altitude must be a positive number of metres, got {altitude_m}")
    return altitude_m / camera.focal_px


def nadir_rotation(pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation taking camera-frame rays to the frame of a nadir camera with the same heading."""
    return world_to_camera(0.0, -90.0, 0.0) @ camera_to_world(0.0, pitch_deg, roll_deg)


@dataclass
class Rectified:
    """A frame re-projected to a virtual nadir camera.

    ``homography`` maps undistorted source pixels to rectified pixels; ``camera`` is the virtual
    camera (no distortion); ``gsd_m`` is set when the altitude was given. ``source_camera`` is
    the real camera, used to map points back (:meth:`to_source`).
    """

    rgb: np.ndarray
    mask: np.ndarray
    homography: np.ndarray
    camera: Camera
    source_camera: Camera
    tilt_deg: float
    gsd_m: float | None = None

    def to_source(self, pts: np.ndarray) -> np.ndarray:
        """Rectified pixel coordinates (N, 2) -> the original frame's (distorted) pixels."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        hom = np.column_stack([p, np.ones(len(p))]) @ np.linalg.inv(self.homography).T
        und = hom[:, :2] / hom[:, 2:3]
        cam = self.source_camera
        if cam.dist is None or len(und) == 0:
            return und
        import cv2

        rays = np.column_stack([und, np.ones(len(und))]) @ np.linalg.inv(cam.K).T
        out, _ = cv2.projectPoints(rays[:, None, :], np.zeros(3), np.zeros(3), cam.K, cam.dist)
        return np.asarray(out, dtype=np.float64).reshape(-1, 2)

    def from_source(self, pts: np.ndarray) -> np.ndarray:
        """Original frame pixels (N, 2) -> rectified pixel coordinates."""
        und = self.source_camera.undistort_points(pts)
        hom = np.column_stack([und, np.ones(len(und))]) @ self.homography.T
        return hom[:, :2] / hom[:, 2:3]


def _boundary(width: int, height: int, n: int = 32) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    w, h = width - 1.0, height - 1.0
    return np.concatenate(
        [
            np.column_stack([t * w, np.zeros(n)]),
            np.column_stack([np.full(n, w), t * h]),
            np.column_stack([w - t * w, np.full(n, h)]),
            np.column_stack([np.zeros(n), h - t * h]),
        ]
    )


def rectify(
    rgb: np.ndarray,
    mask: np.ndarray | None,
    camera: Camera,
    pitch_deg: float,
    roll_deg: float = 0.0,
    *,
    altitude_m: float | None = None,
    max_off_nadir_deg: float = 70.0,
    max_pixels: int | None = None,
) -> Rectified:
    """Warp an oblique frame to a virtual nadir camera at the same place and heading.

    The output canvas holds the whole ground footprint of the frame, cut where rays are more than
    ``max_off_nadir_deg`` from the vertical (towards the horizon the footprint is unbounded and
    its pixels are too stretched to match). The virtual focal length is the camera's, reduced when
    the canvas would exceed ``max_pixels`` (default: 4 times the frame). Distortion is removed on
    the way. ``altitude_m`` (above the ground) gives the rectified GSD.
    """
    import cv2

    h_in, w_in = rgb.shape[:2]
    cam = camera.fitted_to(w_in, h_in)
    if mask is None:
        mask = np.ones((h_in, w_in), dtype=bool)
    rot = nadir_rotation(pitch_deg, roll_deg)
    k_inv = np.linalg.inv(cam.K)
    tilt = math.degrees(math.acos(max(-1.0, min(1.0, float(rot[2, 2])))))

    # rays of the frame boundary in the virtual camera; clamp to the off-nadir limit
    b = _boundary(w_in, h_in)
    rays = np.column_stack([b, np.ones(len(b))]) @ k_inv.T @ rot.T
    radial = np.hypot(rays[:, 0], rays[:, 1])
    limit = math.tan(math.radians(max_off_nadir_deg))
    down = rays[:, 2] > 1e-9
    r_plane = np.where(down, radial / np.where(down, rays[:, 2], 1.0), np.inf)
    scale = np.where(
        r_plane > limit, limit / np.maximum(radial, 1e-12), 1.0 / np.where(down, rays[:, 2], 1.0)
    )
    xy = rays[:, :2] * scale[:, None]  # on the plane z = 1 of the virtual camera
    centre_ray = np.array([(w_in - 1) / 2.0, (h_in - 1) / 2.0, 1.0]) @ k_inv.T @ rot.T
    if centre_ray[2] <= 0:
        raise ValueError(
            f"pitch {pitch_deg} deg / roll {roll_deg} deg: the frame centre looks above the horizon"
        )
    lo, hi = xy.min(axis=0), xy.max(axis=0)

    f = cam.focal_px
    cap = max_pixels if max_pixels is not None else 4 * w_in * h_in
    area = float((hi - lo).prod()) * f * f
    if area > cap:
        f *= math.sqrt(cap / area)
    w_out = max(1, int(math.ceil((hi[0] - lo[0]) * f)) + 1)
    h_out = max(1, int(math.ceil((hi[1] - lo[1]) * f)) + 1)
    k_v = np.array([[f, 0.0, -lo[0] * f], [0.0, f, -lo[1] * f], [0.0, 0.0, 1.0]])
    hmg = k_v @ rot @ k_inv
    hmg /= hmg[2, 2]

    src_rgb = cam.undistort(rgb)
    src_mask = cam.undistort(mask, nearest=True) if cam.dist is not None else mask
    # inverse map by hand: an output pixel whose ray is behind the real camera must stay empty
    # (warpPerspective would fold it onto the frame)
    hinv = np.linalg.inv(hmg)
    ys, xs = np.mgrid[0:h_out, 0:w_out].astype(np.float32)
    den = hinv[2, 0] * xs + hinv[2, 1] * ys + hinv[2, 2]
    behind = den <= 1e-9
    den = np.where(behind, 1.0, den)
    map_x = ((hinv[0, 0] * xs + hinv[0, 1] * ys + hinv[0, 2]) / den).astype(np.float32)
    map_y = ((hinv[1, 0] * xs + hinv[1, 1] * ys + hinv[1, 2]) / den).astype(np.float32)
    map_x[behind] = -1e6
    map_y[behind] = -1e6
    out = cv2.remap(src_rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    out_mask = cv2.remap(
        src_mask.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
    ).astype(bool)
    virtual = Camera(
        k_v, w_out, h_out, None, "rectified", f"nadir from pitch {pitch_deg:g} roll {roll_deg:g}"
    )
    gsd = altitude_m / f if altitude_m is not None and altitude_m > 0 else None
    return Rectified(out, out_mask, hmg, virtual, cam, tilt, gsd)
