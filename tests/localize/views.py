"""Real-pixel test views cut from the bundled sample (rasterio + OpenCV, no project code)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
import rasterio

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "turku_utm34n_0.28m.tif"


@cache
def sample_rgb() -> np.ndarray:
    """The whole bundled sample as (H, W, 3) uint8 (0.28 m/px, north-up)."""
    with rasterio.open(SAMPLE) as ds:
        return np.ascontiguousarray(ds.read([1, 2, 3]).transpose(1, 2, 0))


def map_at(gsd_m: float) -> np.ndarray:
    """The sample resampled to ``gsd_m`` metres per pixel."""
    rgb = sample_rgb()
    f = 0.28 / gsd_m
    return cv2.resize(
        rgb, (round(rgb.shape[1] * f), round(rgb.shape[0] * f)), interpolation=cv2.INTER_AREA
    )


def view(
    img: np.ndarray, cx: float, cy: float, size: int, heading_deg: float = 0.0, scale: float = 1.0
) -> np.ndarray:
    """A square ``size`` px view centred on (cx, cy) of ``img`` whose image-up points to
    ``heading_deg`` (clockwise from north), at ``scale`` times the resolution of ``img``."""
    # output pixel p -> source pixel: centre + R(heading) (p - c) / scale
    a = np.deg2rad(heading_deg)
    c, s = np.cos(a), np.sin(a)
    # image-up of the view = direction heading; in source pixels "up" is (0, -1)
    r = np.array([[c, -s], [s, c]]) / scale
    half = size / 2.0
    m = np.zeros((2, 3))
    m[:, :2] = r
    m[:, 2] = np.array([cx, cy]) - r @ np.array([half, half])
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
