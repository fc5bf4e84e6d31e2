"""The pose stage: the camera's own position and attitude from the verified match.

After verification, the match's inlier pairs (pixels of the image the verifier saw <-> pixels
of the map region) go back through the frame's :class:`~geoloc.camera.PixelChain` to the frame
as captured, and :func:`geoloc.camera.pose_from_matches` solves the camera pose (on the ground
plane, or on the DEM opened with the localizer). Without a camera model, or when the pose is
rejected (not physical, too few inliers), ``state.pose`` says why and the answer keeps the
verified ground point as before.

With the map's pixels at hand (``regions``) and ``refine`` on, the inliers are first refined at
the frame's full resolution (:func:`geoloc.camera.refine.refine_on_map`): each inlier's point in
the prepared frame stays, its map point is re-found to a fraction of a map pixel, and the pose is
solved from the refined pairs (from the verifier's when too few refine).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from geoloc.camera.dem import Dem
from geoloc.camera.pose import PoseResult
from geoloc.camera.prepare import pose_from_matches
from geoloc.camera.refine import refine_on_map
from geoloc.localize.state import FrameState, Match

log = logging.getLogger(__name__)


def _affine3(t: Any) -> np.ndarray:
    """A rasterio/affine transform as a 3x3 matrix."""
    return np.array([[t.a, t.b, t.c], [t.d, t.e, t.f], [0.0, 0.0, 1.0]])


#: pixel-centre coordinates -> pixel-corner coordinates (what a raster transform takes)
_TO_CORNER = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])

#: the largest map window read around the matched tile for the refinement (map pixels)
REFINE_WINDOW_PX = 1024


class PoseStage:
    """The chain's pose stage; conf ``match_ransac_px``: the verifier's RANSAC threshold (map px);
    ``refine``: refine the inliers at the frame's resolution first, with ``refine_half_px`` (patch
    half side), ``refine_search_px`` (search radius), ``refine_min_ncc`` (map pixels) and
    ``refine_min_points`` (fewer refined: the verifier's points are used).

    ``dem`` (optional) gives terrain heights under the matched map points; ``regions`` (the
    verifier's :class:`~geoloc.localize.regions.MapRegions`) the map's pixels for the refinement.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "match_ransac_px": 3.0,
        "refine": True,
        "refine_half_px": 8,
        "refine_search_px": 3,
        "refine_min_ncc": 0.6,
        "refine_min_points": 12,
    }

    def __init__(
        self, conf: dict[str, Any], *, dem: Dem | None = None, regions: Any = None
    ) -> None:
        self.conf = {**self.default_conf, **conf}
        self.dem = dem
        self.regions = regions

    @property
    def name(self) -> str:
        """The stage in the pipeline's chain: PnP on the ground plane or on the DEM."""
        return "pnp-dem" if self.dem is not None else "pnp-plane"

    def run(self, state: FrameState) -> None:
        """Set ``state.pose`` from ``state.match`` when the frame has a camera model."""
        m, prep = state.match, state.prep
        if m is None or prep is None or prep.camera is None:
            return
        res = m.result
        if res.frame_px is None or res.region_px is None or m.chain is None:
            state.pose = PoseResult(False, "the verifier gave no inlier points")
            return
        cam = prep.camera
        frame_px, region_px = res.frame_px, res.region_px
        if self.conf["refine"] and self.regions is not None:
            with state.timer("pose.refine"):
                frame_px, region_px = self.refine(state, m)
        with state.timer("pose"):
            try:
                state.pose = pose_from_matches(
                    m.chain,
                    cam,
                    frame_px,
                    region_px,
                    m.region_transform,
                    m.candidate.tile.crs,
                    frame_size=(cam.width, cam.height),
                    dem=self.dem,
                    match_ransac_px=float(self.conf["match_ransac_px"]),
                )
            except ValueError as exc:  # degenerate geometry the solver refuses
                state.pose = PoseResult(False, f"pose not solvable: {exc}")
        if not state.pose.ok:
            log.debug("%s: pose rejected: %s", state.request.name, state.pose.reason)

    def refine(self, state: FrameState, m: Match) -> tuple[np.ndarray, np.ndarray]:
        """The match's inlier pairs with their map points refined (see the module docstring);
        the verifier's pairs when the map cannot be read or too few points refine."""
        import cv2

        res, prep = m.result, state.prep
        assert res.frame_px is not None and res.region_px is not None and m.chain is not None
        fp, rp = np.asarray(res.frame_px, np.float64), np.asarray(res.region_px, np.float64)
        if prep is None or len(fp) < int(self.conf["refine_min_points"]):
            return fp, rp
        win, win_mask, wt = self.regions.around(m.candidate.tile, self._window_px(m, rp))
        if not win_mask.any():
            return fp, rp
        # region pixels -> window pixels (both pixel-centre), through the ground
        a = np.linalg.inv(_TO_CORNER) @ np.linalg.inv(_affine3(wt))
        a = a @ _affine3(m.region_transform) @ _TO_CORNER
        # the verifier's points in the prepared (full-resolution) frame, and in the window
        inv = np.linalg.inv(m.chain.matrix)
        q = np.column_stack([fp, np.ones(len(fp))]) @ inv.T
        q = q[:, :2] / q[:, 2:3]
        w = np.column_stack([rp, np.ones(len(rp))]) @ a.T
        h, _ = cv2.findHomography(q, w[:, :2], 0)
        if h is None:
            return fp, rp
        out = refine_on_map(
            prep.rgb,
            q,
            h,
            win,
            win_mask,
            half_px=int(self.conf["refine_half_px"]),
            search_px=int(self.conf["refine_search_px"]),
            min_ncc=float(self.conf["refine_min_ncc"]),
        )
        keep = out.keep
        if int(keep.sum()) < int(self.conf["refine_min_points"]):
            log.debug("%s: %d of %d inliers refined", state.request.name, keep.sum(), len(fp))
            return fp, rp
        back = np.column_stack([out.map_px[keep], np.ones(int(keep.sum()))])
        back = back @ np.linalg.inv(a).T
        return fp[keep], back[:, :2] / back[:, 2:3]

    def _window_px(self, m: Match, region_px: np.ndarray) -> int:
        """Side of the map window centred on the matched tile that holds every inlier's patch
        and search (rounded up to 64 px so that matches near each other share a cached read)."""
        from tiling.crs import from_lonlat

        tile = m.candidate.tile
        cx, cy = from_lonlat(tile.crs, float(tile.center_lon), float(tile.center_lat))
        inv = np.linalg.inv(_affine3(m.region_transform))
        c = inv @ np.array([float(cx), float(cy), 1.0])  # pixel corners: the centre's pixel
        reach = float(np.abs(region_px - (c[:2] - 0.5)).max())
        pad = int(self.conf["refine_half_px"]) + int(self.conf["refine_search_px"]) + 4
        side = 2 * (int(np.ceil(reach)) + pad)
        return int(min(REFINE_WINDOW_PX, 64 * int(np.ceil(side / 64.0))))
