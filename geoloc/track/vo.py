"""Visual odometry: the similarity between a keyframe and the current frame (ORB + RANSAC).

Frames are matched downscaled (``max_side`` px) because consecutive frames differ by a small
shift; the similarity (translation, rotation, scale) maps current-frame pixels into keyframe
pixels at full resolution. Matching against a keyframe rather than the previous frame keeps
tiny per-frame errors from adding up while the view still overlaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np


@dataclass(frozen=True)
class Motion:
    """Current frame -> keyframe: ``shift_px`` of the frame centre (x right, y down, keyframe
    pixels), ``rotation_deg`` (clockwise on screen: the heading change), ``scale`` (keyframe px
    per current px), ``inliers``."""

    shift_px: tuple[float, float]
    rotation_deg: float
    scale: float
    inliers: int


@dataclass
class _Features:
    keypoints: np.ndarray  # (N, 2) at full resolution
    descriptors: np.ndarray | None
    shape: tuple[int, int]


class VisualOdometry:
    """ORB features of a keyframe; ``motion(frame)`` estimates the frame's similarity to it."""

    default_conf: ClassVar[dict[str, Any]] = {
        "max_side": 320,
        "features": 800,
        "min_inliers": 20,
        "ransac_px": 3.0,
    }

    def __init__(self, **conf: Any) -> None:
        self.conf = {**self.default_conf, **conf}
        self._orb = cv2.ORB_create(  # type: ignore[attr-defined]
            nfeatures=int(self.conf["features"]), fastThreshold=10
        )
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        self.keyframe: _Features | None = None

    def features(self, rgb: np.ndarray) -> _Features:
        """ORB keypoints (full-resolution coordinates) and descriptors of an RGB frame."""
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        h, w = gray.shape[:2]
        f = min(1.0, float(self.conf["max_side"]) / max(h, w))
        small = cv2.resize(gray, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        kps, desc = self._orb.detectAndCompute(small, None)
        pts = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2) / f
        return _Features(pts, desc, (h, w))

    def set_keyframe(self, feats: _Features) -> None:
        """Match later frames against ``feats``."""
        self.keyframe = feats

    def motion(self, feats: _Features) -> Motion | None:
        """The similarity of ``feats``' frame to the keyframe, None when it cannot be trusted."""
        kf = self.keyframe
        if kf is None or kf.descriptors is None or feats.descriptors is None:
            return None
        if len(kf.keypoints) < 8 or len(feats.keypoints) < 8:
            return None
        matches = self._matcher.match(feats.descriptors, kf.descriptors)
        if len(matches) < int(self.conf["min_inliers"]):
            return None
        src = feats.keypoints[[m.queryIdx for m in matches]]
        dst = kf.keypoints[[m.trainIdx for m in matches]]
        a, inl = cv2.estimateAffinePartial2D(
            src,
            dst,
            method=cv2.RANSAC,
            ransacReprojThreshold=float(self.conf["ransac_px"]),
            maxIters=2000,
            confidence=0.995,
        )
        if a is None or inl is None:
            return None
        n_in = int(inl.sum())
        if n_in < int(self.conf["min_inliers"]):
            return None
        h, w = feats.shape
        c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        kh, kw = kf.shape
        ck = np.array([(kw - 1) / 2.0, (kh - 1) / 2.0])
        p = a[:, :2] @ c + a[:, 2]
        scale = math.hypot(float(a[0, 0]), float(a[1, 0]))
        rot = math.degrees(math.atan2(float(a[1, 0]), float(a[0, 0])))
        if not (0.5 < scale < 2.0):
            return None
        return Motion((float(p[0] - ck[0]), float(p[1] - ck[1])), rot, scale, n_in)


def ground_offset(shift_px: tuple[float, float], heading_deg: float, gsd_m: float) -> np.ndarray:
    """(east, north) metres of an image shift (x right, y down) for a frame whose top points to
    ``heading_deg`` (clockwise from north) at ``gsd_m`` metres per pixel."""
    dx, dy = shift_px
    h = math.radians(heading_deg)
    c, s = math.cos(h), math.sin(h)
    return np.array([dx * c - dy * s, -dx * s - dy * c], dtype=np.float64) * gsd_m
