"""The camera's part of frame preparation, and the way back from verified matches to a pose.

:func:`resolve_camera` picks the intrinsics (``--camera`` file, ``--hfov``, EXIF) or says why
there are none. :func:`prepare_frame` undistorts, rectifies to nadir when the pitch is known, and
works out the GSD and the heading from the priors. It returns a :class:`PixelChain` that the
localizer extends with every resize, rotation and crop it applies after, so that a match found on
the final image maps back to the pixels of the frame as captured: :func:`pose_from_matches` takes
those matches and the map region they were found in and solves the camera pose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoloc.camera.dem import Dem
from geoloc.camera.intrinsics import Camera, camera_from_exif, camera_from_hfov, load_camera
from geoloc.camera.metadata import FrameMetadata
from geoloc.camera.pose import PoseConfig, PoseResult, solve_pose
from geoloc.camera.priors import Priors
from geoloc.camera.rectify import Rectified, gsd_at_nadir, rectify

__all__ = ["PixelChain", "PreparedFrame", "pose_from_matches", "prepare_frame", "resolve_camera"]


class PixelChain:
    """Pixel coordinates of a derived image <-> the original frame's pixels.

    Starts at the frame as captured (optionally through a :class:`Rectified`), then records each
    planar step as a 3x3 matrix (source -> derived). Pixel-centre convention throughout.
    """

    def __init__(self, rectified: Rectified | None = None) -> None:
        self.rectified = rectified
        self.matrix = np.eye(3)

    def copy(self) -> PixelChain:
        """An independent chain with the same steps (to extend one branch of the localizer)."""
        out = PixelChain(self.rectified)
        out.matrix = self.matrix.copy()
        return out

    def then(self, m: np.ndarray) -> PixelChain:
        """Append a 3x3 (homography) or 2x3 (affine, as OpenCV's warpAffine) step."""
        a = np.asarray(m, dtype=np.float64)
        if a.shape == (2, 3):
            a = np.vstack([a, [0.0, 0.0, 1.0]])
        if a.shape != (3, 3):
            raise ValueError(f"a chain step is 3x3 or 2x3, got {a.shape}")
        self.matrix = a @ self.matrix
        return self

    def then_scale(self, factor: float) -> PixelChain:
        """Append a resize by ``factor`` (x' = (x + 0.5) f - 0.5, as cv2.resize samples)."""
        f = float(factor)
        return self.then(np.array([[f, 0.0, 0.5 * f - 0.5], [0.0, f, 0.5 * f - 0.5], [0, 0, 1]]))

    def then_crop(self, x0: float, y0: float) -> PixelChain:
        """Append a crop whose top-left source pixel is (``x0``, ``y0``) (negative: padding)."""
        return self.then(np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]))

    def _apply(self, m: np.ndarray, pts: np.ndarray) -> np.ndarray:
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        hom = np.column_stack([p, np.ones(len(p))]) @ m.T
        return np.asarray(hom[:, :2] / hom[:, 2:3])

    def to_source(self, pts: np.ndarray) -> np.ndarray:
        """Derived-image pixels (N, 2) -> the original frame's pixels (with its distortion)."""
        p = self._apply(np.linalg.inv(self.matrix), pts)
        return self.rectified.to_source(p) if self.rectified is not None else p

    def from_source(self, pts: np.ndarray) -> np.ndarray:
        """Original frame pixels (N, 2) -> derived-image pixels."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        if self.rectified is not None:
            p = self.rectified.from_source(p)
        return self._apply(self.matrix, p)


def resolve_camera(
    width: int,
    height: int,
    *,
    camera_file: str | None = None,
    camera: Camera | None = None,
    hfov_deg: float | None = None,
    meta: FrameMetadata | None = None,
) -> tuple[Camera | None, str]:
    """The frame's camera, fitted to its size, and where it came from (or why there is none).

    In order: a :class:`Camera` given, a ``--camera`` file (:class:`CameraFileError` when bad),
    ``--hfov``, the EXIF focal length. Returns ``(None, reason)`` when nothing says.
    """
    if camera is None and camera_file is not None:
        camera = load_camera(camera_file)
    if camera is not None:
        return camera.fitted_to(width, height), f"camera file {camera.detail}".strip()
    if hfov_deg is not None:
        return camera_from_hfov(hfov_deg, width, height), f"--hfov {hfov_deg:g}"
    if meta is not None:
        cam = camera_from_exif(meta, width, height)
        if cam is not None:
            return cam, f"EXIF {cam.detail}"
    return None, "no camera model: give --camera FILE or --hfov DEG (no EXIF focal length)"


@dataclass
class PreparedFrame:
    """A frame ready for encoding and matching, with how it relates to the captured frame.

    ``rgb``/``mask`` are nadir (rectified) when ``rectified`` is set; ``gsd_m`` is their ground
    pixel size when known, with ``gsd_source``; ``heading_deg`` is where image-up points (None:
    sweep the headings). ``chain`` maps pixels of ``rgb`` back to the captured frame.
    """

    rgb: np.ndarray
    mask: np.ndarray
    camera: Camera | None
    priors: Priors
    chain: PixelChain
    gsd_m: float | None = None
    gsd_source: str | None = None
    heading_deg: float | None = None
    rectified: bool = False
    notes: list[str] = field(default_factory=list)

    def priors_used(self) -> dict[str, Any]:
        """The answer's ``priors`` field: each prior with its source, and the camera's."""
        out = self.priors.as_dict()
        if self.camera is not None:
            out["camera"] = {"source": self.camera.source, "detail": self.camera.detail}
        if self.gsd_m is not None:
            out["gsd"] = {"value": self.gsd_m, "source": self.gsd_source}
        return out


def prepare_frame(
    rgb: np.ndarray,
    mask: np.ndarray | None,
    camera: Camera | None,
    priors: Priors,
    *,
    min_tilt_deg: float = 1.0,
    max_off_nadir_deg: float = 70.0,
) -> PreparedFrame:
    """Undistort, rectify to nadir (pitch known and tilt >= ``min_tilt_deg``), GSD and heading.

    Without a camera nothing geometric is done (the frame is used as it is, as before) and the
    GSD stays unknown unless the caller has it. The GSD is the altitude prior over the (virtual)
    focal length; it describes the ground under the nadir point.
    """
    h, w = rgb.shape[:2]
    valid = np.ones((h, w), dtype=bool) if mask is None else mask
    heading = priors.heading.value if priors.heading is not None else None
    if camera is None:
        return PreparedFrame(rgb, valid, None, priors, PixelChain(), heading_deg=heading)
    cam = camera.fitted_to(w, h)
    tilt = priors.tilt_deg()
    notes: list[str] = []
    if priors.pitch is not None and tilt is not None and tilt >= min_tilt_deg:
        roll = priors.roll.value if priors.roll is not None else 0.0
        alt = priors.altitude.value if priors.altitude is not None else None
        rect = rectify(
            rgb,
            valid,
            cam,
            priors.pitch.value,
            roll,
            altitude_m=alt,
            max_off_nadir_deg=max_off_nadir_deg,
        )
        notes.append(f"rectified to nadir from a tilt of {tilt:.1f} deg")
        prep = PreparedFrame(
            rect.rgb, rect.mask, cam, priors, PixelChain(rect), heading_deg=heading, rectified=True
        )
        focal_cam = rect.camera
    else:
        und = cam.undistort(rgb)
        und_mask = cam.undistort(valid, nearest=True) if cam.dist is not None else valid
        prep = PreparedFrame(und, und_mask, cam, priors, PixelChain(), heading_deg=heading)
        focal_cam = Camera(cam.K, w, h, None, cam.source, cam.detail)
        if cam.dist is not None:
            # undistorted pixels stand for the distorted ones through the lens model
            prep.chain.rectified = Rectified(und, und_mask, np.eye(3), focal_cam, cam, 0.0)
    if priors.altitude is not None:
        prep.gsd_m = gsd_at_nadir(focal_cam, priors.altitude.value)
        prep.gsd_source = f"altitude ({priors.altitude.source}) + camera ({cam.source})"
    prep.notes = notes
    return prep


def pose_from_matches(
    chain: PixelChain,
    camera: Camera,
    frame_px: np.ndarray,
    region_px: np.ndarray,
    region_transform: Any,
    crs: Any,
    *,
    frame_size: tuple[int, int],
    dem: Dem | None = None,
    match_ransac_px: float = 3.0,
    config: PoseConfig | None = None,
) -> PoseResult:
    """The camera pose from verified matches: points of the derived frame and of the map region.

    ``frame_px`` are pixels of the image the matcher saw (``chain`` maps them back to the
    captured frame of ``frame_size`` (width, height)); ``region_px`` their matches in the map
    region whose ``region_transform`` (an affine, pixel corner -> ``crs``) came with it. The
    RANSAC threshold of the pose is the matcher's ``match_ransac_px`` carried to the captured
    frame's resolution.
    """
    src = chain.to_source(frame_px)
    rp = np.asarray(region_px, dtype=np.float64).reshape(-1, 2)
    t = region_transform
    gx = t.a * (rp[:, 0] + 0.5) + t.b * (rp[:, 1] + 0.5) + t.c
    gy = t.d * (rp[:, 0] + 0.5) + t.e * (rp[:, 1] + 0.5) + t.f
    # how many captured-frame pixels one derived pixel spans, at the frame centre
    c = np.array([[(frame_size[0] - 1) / 2.0, (frame_size[1] - 1) / 2.0]])
    d = chain.from_source(np.vstack([c, c + [[8.0, 0.0]]]))
    spread = 8.0 / max(1e-9, float(np.linalg.norm(d[1] - d[0])))
    cfg = config or PoseConfig(ransac_px=max(1.0, match_ransac_px * spread))
    return solve_pose(
        src, np.column_stack([gx, gy]), crs, camera, frame_size=frame_size, dem=dem, config=cfg
    )
