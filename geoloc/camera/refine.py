"""Sub-pixel refinement of verified frame <-> map correspondences at the frame's resolution.

The verifier matches the frame resampled to the map's GSD, so each inlier carries about a map
pixel of keypoint noise on both sides; on a tilted view that noise trades pitch for position.
:func:`refine_on_map` keeps each inlier's point in the full-resolution frame fixed and finds
where exactly that point lies on the map: the frame around the point is rendered onto the map's
pixel grid through the current frame -> map homography (blurred first, so the rendering averages
the frame's finer pixels as the map's coarser ones do), and the rendered patch is searched for in
the map by normalised cross-correlation within a few pixels, the peak interpolated to sub-pixel.
A point whose patch is flat, whose peak is weak or lies on the search border, or whose patch
leaves the map, is not refined (``keep`` is False).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MapRefinement", "refine_on_map"]


@dataclass
class MapRefinement:
    """Refined map points (N, 2; map pixels, pixel-centre convention), which were refined
    (``keep``), and each point's correlation peak (``ncc``; 0 when not searched)."""

    map_px: np.ndarray
    keep: np.ndarray
    ncc: np.ndarray


def _gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    if rgb.ndim == 2:
        return rgb.astype(np.float32)
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.float32)


def _window_blurred(
    rgb: np.ndarray, x0: int, y0: int, x1: int, y1: int, sigma: float, reach: int
) -> np.ndarray:
    """Gray pixels ``[y0:y1, x0:x1]`` of ``rgb`` blurred by ``sigma`` as a blur of the whole
    image would give them: the window is read ``reach`` pixels wider (clipped at the image's
    edges, where the blur's own border rule applies) and cut back after the blur."""
    import cv2

    h, w = rgb.shape[:2]
    if sigma <= 0:
        return _gray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    ax0, ay0 = max(0, x0 - reach), max(0, y0 - reach)
    ax1, ay1 = min(w, x1 + reach), min(h, y1 + reach)
    # where the wider window is cut by the image's edge, the blur's border rule applies there,
    # as it does for the whole image; elsewhere its border effects stay outside the cut
    blurred = cv2.GaussianBlur(_gray(np.ascontiguousarray(rgb[ay0:ay1, ax0:ax1])), (0, 0), sigma)
    return np.ascontiguousarray(blurred[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0])


def _peak_offset(a: float, b: float, c: float) -> float:
    """Sub-pixel offset of a parabola's vertex through (-1, a), (0, b), (1, c)."""
    den = a - 2.0 * b + c
    return 0.0 if abs(den) < 1e-9 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


def refine_on_map(
    frame_rgb: np.ndarray,
    frame_px: np.ndarray,
    frame_to_map: np.ndarray,
    map_rgb: np.ndarray,
    map_mask: np.ndarray | None = None,
    *,
    half_px: int = 8,
    search_px: int = 3,
    min_ncc: float = 0.6,
) -> MapRefinement:
    """Where each frame point ``frame_px`` (N, 2; pixels of ``frame_rgb``) lies on the map.

    ``frame_to_map`` (3x3) maps frame pixels to map pixels (both pixel-centre convention); it
    needs to be right within ``search_px`` map pixels. Each patch is (2 ``half_px`` + 1) map
    pixels square. Points not refined keep the homography's prediction in ``map_px``.
    """
    import cv2

    pts = np.asarray(frame_px, dtype=np.float64).reshape(-1, 2)
    h = np.asarray(frame_to_map, dtype=np.float64)
    n = len(pts)
    hom = np.column_stack([pts, np.ones(n)]) @ h.T
    pred = hom[:, :2] / hom[:, 2:3]
    out = MapRefinement(pred.copy(), np.zeros(n, bool), np.zeros(n))
    if n == 0:
        return out
    inv = np.linalg.inv(h)
    # frame pixels per map pixel at the points: the blur that makes the rendering map-like
    step = pred + [1.0, 0.0]
    back = np.column_stack([step, np.ones(n)]) @ inv.T
    per_map = np.median(np.hypot(*(back[:, :2] / back[:, 2:3] - pts).T))
    # The blur is applied per point, to the frame window its patch samples (plus the kernel's
    # reach), not to the whole frame: a full-resolution photo is mostly pixels no patch reads.
    # OpenCV's float Gaussian reaches 4 sigma, so within the window this equals a blur of the
    # whole frame (its border rule applies where the window meets the frame's edge, as before).
    sigma = 0.45 * float(per_map) if per_map > 1.0 else 0.0
    # A frame many times finer than the map (a photo at cm/px on a map at dm/px) is first
    # averaged over d x d blocks, leaving >= 2 of its pixels per map pixel: the blur then runs
    # on d^2 times fewer pixels with a kernel d times shorter (at full resolution it was most
    # of a located photo's time). A box of d pixels has variance (d^2 - 1) / 12, so the blur
    # after it adds what is left of sigma^2 (the same total smoothing); reduced pixel i is the
    # mean of frame pixels i d .. i d + d - 1, centred on frame coordinate i d + (d - 1) / 2.
    d = max(1, int(per_map // 2.0))
    src = frame_rgb
    if d > 1:
        full = _gray(frame_rgb)
        src = cv2.resize(
            full[: full.shape[0] // d * d, : full.shape[1] // d * d],
            (full.shape[1] // d, full.shape[0] // d),
            interpolation=cv2.INTER_AREA,
        )
        sigma = math.sqrt(max(0.0, sigma**2 - (d * d - 1) / 12.0)) / d
    reach = int(math.ceil(4.0 * sigma)) + 2 if sigma > 0 else 1
    fh, fw = src.shape[:2]
    mp = _gray(map_rgb)
    valid = np.ones(mp.shape, bool) if map_mask is None else np.asarray(map_mask, bool)
    mh, mw = mp.shape
    r, hp = int(search_px), int(half_px)
    s = np.arange(-hp, hp + 1, dtype=np.float64)
    sx, sy = np.meshgrid(s, s)
    for k in range(n):
        u0 = pred[k]
        # the frame rendered on the map grid around the point's predicted map position
        g = np.stack([u0[0] + sx, u0[1] + sy, np.ones_like(sx)], axis=-1) @ inv.T
        gx, gy = (  # in the pixels of ``src`` (the frame's, or its d x d block means)
            ((g[..., 0] / g[..., 2] - (d - 1) / 2.0) / d).astype(np.float32),
            ((g[..., 1] / g[..., 2] - (d - 1) / 2.0) / d).astype(np.float32),
        )
        if gx.min() < 0 or gy.min() < 0 or gx.max() > fw - 1 or gy.max() > fh - 1:
            continue
        # the pixels bilinear sampling at (gx, gy) reads
        x0f, y0f = int(gx.min()), int(gy.min())
        x1f, y1f = min(fw, int(gx.max()) + 2), min(fh, int(gy.max()) + 2)
        win = _window_blurred(src, x0f, y0f, x1f, y1f, sigma, reach)
        tpl = cv2.remap(win, gx - np.float32(x0f), gy - np.float32(y0f), cv2.INTER_LINEAR)
        if float(tpl.std()) < 2.0:  # a flat patch fixes no position
            continue
        cx, cy = int(round(u0[0])), int(round(u0[1]))
        x0, y0, x1, y1 = cx - hp - r, cy - hp - r, cx + hp + r + 1, cy + hp + r + 1
        if x0 < 0 or y0 < 0 or x1 > mw or y1 > mh or not valid[y0:y1, x0:x1].all():
            continue
        res = cv2.matchTemplate(mp[y0:y1, x0:x1], tpl, cv2.TM_CCOEFF_NORMED)
        j, i = np.unravel_index(int(np.argmax(res)), res.shape)
        peak = float(res[j, i])
        out.ncc[k] = peak
        if peak < min_ncc or not (0 < i < 2 * r and 0 < j < 2 * r):
            continue
        dx = _peak_offset(float(res[j, i - 1]), peak, float(res[j, i + 1]))
        dy = _peak_offset(float(res[j - 1, i]), peak, float(res[j + 1, i]))
        # the template's centre is the frame point: placed at result (i, j) it sits on map
        # pixel (cx - r + i, cy - r + j)
        out.map_px[k] = (cx - r + i + dx, cy - r + j + dy)
        out.keep[k] = True
    return out
