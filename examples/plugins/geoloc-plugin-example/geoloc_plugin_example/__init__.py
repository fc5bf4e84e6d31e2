"""An example third-party ``geoloc.verify`` plugin: ORB features + a RANSAC similarity.

It implements the verifier protocol (:class:`geoloc.localize.verify.Verifier`) from scratch,
using only OpenCV: ``name``, ``fallback`` (None: no second verifier),
``extract_frame_features(frame_rgb, frame_mask)`` (None: ``verify`` works from the pixels) and
``verify(frame_rgb, frame_mask, region_rgb, region_mask, *, scale_known, region_key=None,
frame_features=None) -> Verification``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import cv2
import numpy as np

from geoloc.localize.verify import Verification

__version__ = "0.1.0"


class OrbVerifier:
    """ORB keypoints (rotation invariant), Hamming cross-check matching, RANSAC similarity.

    Parameters (``[verify]`` table of a pipeline file): ``n_features`` (3000),
    ``min_inliers`` (20), ``ransac_px`` (3.0).
    """

    name = "orb"
    fallback = None

    def __init__(self, n_features: int = 3000, min_inliers: int = 20, ransac_px: float = 3.0):
        self.orb = cv2.ORB_create(nfeatures=int(n_features))  # type: ignore[attr-defined]
        self.min_inliers = int(min_inliers)
        self.ransac_px = float(ransac_px)

    def _detect(self, rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        m = cv2.erode(mask.astype(np.uint8) * 255, np.ones((9, 9), np.uint8))
        kps, desc = self.orb.detectAndCompute(gray, m)
        return np.array([k.pt for k in kps], np.float32).reshape(-1, 2), desc

    def extract_frame_features(self, frame_rgb: np.ndarray, frame_mask: np.ndarray) -> Any:
        """None: ORB is cheap enough to detect on the frame in every ``verify``."""
        return None

    def verify(
        self,
        frame_rgb: np.ndarray,
        frame_mask: np.ndarray,
        region_rgb: np.ndarray,
        region_mask: np.ndarray,
        *,
        scale_known: bool,
        region_key: Hashable | None = None,
        frame_features: Any = None,
    ) -> Verification:
        """Match the frame (map GSD, about north-up) against the map region."""
        k0, d0 = self._detect(frame_rgb, frame_mask)
        k1, d1 = self._detect(region_rgb, region_mask)
        res = Verification(accepted=False, keypoints=(len(k0), len(k1)), matcher=self.name)
        if d0 is None or d1 is None or len(k0) < 8 or len(k1) < 8:
            res.reason = "too few keypoints"
            return res
        matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d0, d1)
        res.matches = len(matches)
        if len(matches) < self.min_inliers:
            res.reason = f"{len(matches)} matches"
            return res
        p0 = np.array([k0[m.queryIdx] for m in matches], dtype=np.float32)
        p1 = np.array([k1[m.trainIdx] for m in matches], dtype=np.float32)
        sim, inl = cv2.estimateAffinePartial2D(
            p0, p1, method=cv2.RANSAC, ransacReprojThreshold=self.ransac_px
        )
        if sim is None or inl is None:
            res.reason = "no similarity"
            return res
        inl = inl.ravel().astype(bool)
        res.inliers = int(inl.sum())
        scale = float(math.hypot(sim[0, 0], sim[1, 0]))
        res.scale = scale
        res.rotation_deg = -math.degrees(math.atan2(sim[1, 0], sim[0, 0]))
        res.homography = np.vstack([sim, [0.0, 0.0, 1.0]])
        proj = p0[inl] @ sim[:, :2].T + sim[:, 2]
        res.rmse_px = float(np.sqrt(np.mean(np.sum((proj - p1[inl]) ** 2, axis=1))))
        c = np.array([(frame_rgb.shape[1] - 1) / 2.0, (frame_rgb.shape[0] - 1) / 2.0])
        px, py = sim[:, :2] @ c + sim[:, 2]
        res.centre_xy = (float(px), float(py))
        lo, hi = (0.8, 1.25) if scale_known else (0.33, 3.0)
        if res.inliers < self.min_inliers:
            res.reason = f"{res.inliers} inliers"
        elif not lo <= scale <= hi:
            res.reason = f"scale {scale:.2f}"
        else:
            res.accepted, res.reason = True, "ok"
        return res
