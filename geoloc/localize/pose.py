"""The pose stage: the camera's own position and attitude from the verified match.

After verification, the match's inlier pairs (pixels of the image the verifier saw <-> pixels
of the map region) go back through the frame's :class:`~geoloc.camera.PixelChain` to the frame
as captured, and :func:`geoloc.camera.pose_from_matches` solves the camera pose (on the ground
plane, or on the DEM opened with the localizer). Without a camera model, or when the pose is
rejected (not physical, too few inliers), ``state.pose`` says why and the answer keeps the
verified ground point as before.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from geoloc.camera.dem import Dem
from geoloc.camera.pose import PoseResult
from geoloc.camera.prepare import pose_from_matches
from geoloc.localize.state import FrameState

log = logging.getLogger(__name__)


class PoseStage:
    """The chain's pose stage; conf ``match_ransac_px``: the verifier's RANSAC threshold (map px).

    ``dem`` (optional) gives terrain heights under the matched map points.
    """

    default_conf: ClassVar[dict[str, Any]] = {"match_ransac_px": 3.0}

    def __init__(self, conf: dict[str, Any], *, dem: Dem | None = None) -> None:
        self.conf = {**self.default_conf, **conf}
        self.dem = dem

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
        with state.timer("pose"):
            try:
                state.pose = pose_from_matches(
                    m.chain,
                    cam,
                    res.frame_px,
                    res.region_px,
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
