"""Sub-pixel refinement of correspondences at the frame's resolution (geoloc.camera.refine)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from geoloc.camera.refine import refine_on_map
from tests.localize.views import map_at, sample_rgb


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.column_stack([pts, np.ones(len(pts))]) @ h.T
    return np.asarray(q[:, :2] / q[:, 2:3])


@pytest.mark.parametrize(
    ("finer", "size"),
    [
        (2.2, (800, 600)),  # 3.9 frame pixels per map pixel: blurred at full resolution
        (9.0, (2400, 1800)),  # 16: averaged over 8 x 8 blocks first, then blurred
    ],
)
def test_refinement_recovers_the_exact_map_points(finer: float, size: tuple[int, int]) -> None:
    src = sample_rgb()  # 0.28 m/px
    f = 0.28 / 0.5
    # the map at 0.5 m/px, resampled on exactly known pixel centres (cv2.resize's area mode
    # shifts by a fraction of a pixel at this factor): map px = (source px + 0.5) f - 0.5
    to_map = np.array([[f, 0.0, 0.5 * f - 0.5], [0.0, f, 0.5 * f - 0.5], [0.0, 0.0, 1.0]])
    h, w = map_at(0.5).shape[:2]
    blurred = cv2.GaussianBlur(src, (0, 0), 0.45 / f)
    mp = cv2.warpAffine(blurred, to_map[:2], (w, h), flags=cv2.INTER_LINEAR)
    # a frame ``finer`` times finer than the source, turned by 25 deg, with a little perspective
    a = np.deg2rad(25.0)
    k = 2.2 / finer  # the perspective terms scale with the frame's pixel size
    frame_to_src = np.array(
        [
            [np.cos(a) / finer, -np.sin(a) / finer, 700.0],
            [np.sin(a) / finer, np.cos(a) / finer, 350.0],
            [2e-5 * k, 1e-5 * k, 1.0],
        ]
    )
    frame = cv2.warpPerspective(
        src, frame_to_src, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    )
    truth = to_map @ frame_to_src
    rng = np.random.default_rng(0)
    margin = 60 * finer / 2.2
    pts = rng.uniform([margin, margin], [size[0] - margin, size[1] - margin], size=(80, 2))
    exact = _apply(truth, pts)
    # the verifier's model is off by about a map pixel and a half
    off = np.array([[1.0, 0.0, 1.2], [0.0, 1.0, -0.9], [0.0, 0.0, 1.0]])
    rough = off @ truth
    res = refine_on_map(frame, pts, rough, mp)
    before = np.hypot(*(_apply(rough, pts) - exact).T)
    after = np.hypot(*(res.map_px - exact).T)
    assert res.keep.mean() > 0.6
    assert np.median(before) > 1.4
    assert np.median(after[res.keep]) < 0.15
    # points not refined keep the prediction
    assert np.allclose(res.map_px[~res.keep], _apply(rough, pts)[~res.keep])


def test_flat_patches_and_points_off_the_map_are_not_refined() -> None:
    frame = np.full((200, 200, 3), 128, np.uint8)
    mp = np.full((100, 100, 3), 128, np.uint8)
    h = np.diag([0.5, 0.5, 1.0])
    res = refine_on_map(frame, np.array([[100.0, 100.0], [5.0, 5.0]]), h, mp)
    assert not res.keep.any()
    assert np.allclose(res.map_px, [[50.0, 50.0], [2.5, 2.5]])


def test_window_blur_equals_the_blur_of_the_whole_frame() -> None:
    """Refinement blurs only the frame windows its patches read: the pixels must be those of
    a blur of the whole frame, inside the frame and where a window meets its edges."""
    import cv2

    from geoloc.camera.refine import _gray, _window_blurred

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    for sigma in (0.0, 1.3, 3.6):
        reach = int(np.ceil(4.0 * sigma)) + 2
        whole = _gray(rgb) if sigma == 0 else cv2.GaussianBlur(_gray(rgb), (0, 0), sigma)
        for x0, y0, x1, y1 in ((100, 80, 160, 150), (0, 0, 40, 30), (380, 250, 420, 300)):
            win = _window_blurred(rgb, x0, y0, x1, y1, sigma, reach)
            # float rounding of the vectorised filter only (gray levels are 0..255)
            np.testing.assert_allclose(win, whole[y0:y1, x0:x1], rtol=0, atol=1e-3)
