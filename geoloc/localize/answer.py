"""The answer stage: the fix (ground point, method, heading, confidence, status) from the state.

A verified match answers with the ground point under the frame centre; otherwise the best
candidate's centre, moved inside the tile by the consistency stage when ``answer`` allows it.
The retrieval confidence is the score margin between the best candidate and the next one whose
footprint does not overlap it; a verification adds its inlier evidence; when the chain verifies
and nothing verified, the retrieval confidence is scaled down, so that a candidate that
verifies beats one that only scores higher.

With ``calibration`` set, the confidence is instead a logistic mapping of the same evidence,
``sigmoid(bias + a log(1 + inliers) + b margin + c rmse_px)`` (inliers and RMSE are 0 when
nothing verified), fitted on the scale benchmark so that a confidence reads as the share of such
answers that are right (``benchmarks/scale_calibrate.py``).

With a camera model and a solved pose, the ground point under the frame centre comes through the
pose and the fix gains ``camera`` (the drone's position, height and attitude); otherwise
``camera`` is null and ``camera_reason`` says why. ``priors`` lists every prior used, with its
source.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from geoloc.localize.consistency import ConsistencyStage
from geoloc.localize.state import Candidate, Fix, FrameState

ANSWERS = ("verified", "refined", "tile-centre")


def calibrated_confidence(
    weights: tuple[float, float, float, float] | list[float],
    *,
    inliers: int,
    margin: float,
    rmse_px: float,
) -> float:
    """The logistic confidence ``sigmoid(bias + a log(1 + inliers) + b margin + c rmse_px)``."""
    bias, a, b, c = (float(w) for w in weights)
    z = bias + a * math.log1p(max(int(inliers), 0)) + b * float(margin) + c * float(rmse_px)
    return float(1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0))))


class Answer:
    """The last stage of the chain.

    Conf: ``answer`` (verified | refined | tile-centre), ``min_confidence`` (below: no_match),
    ``margin_scale`` (the Φ-score margin that gives a retrieval confidence of 1),
    ``unverified_factor`` (scales the confidence of an answer that did not verify; with the
    default ``min_confidence`` such an answer is never ``ok``), ``inlier_scale`` (inliers for a
    verification confidence of 1 - 1/e), ``candidates`` (how many the fix lists),
    ``calibration`` (None, or ``(bias, a, b, c)`` of the logistic confidence in the module
    docstring).
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "answer": "verified",
        "min_confidence": 0.5,
        "margin_scale": 0.1,
        "unverified_factor": 0.45,
        "inlier_scale": 15.0,
        "candidates": 5,
        "calibration": None,
    }

    def __init__(
        self,
        conf: dict[str, Any],
        consistency: ConsistencyStage | None,
        *,
        tile_ground_m: float,
        rotations: int,
        map_gsd_m: float = 0.0,
    ) -> None:
        self.conf = {**self.default_conf, **conf}
        self.consistency = consistency
        self.tile_ground_m = float(tile_ground_m)
        self.rotations = int(rotations)
        self.map_gsd_m = float(map_gsd_m)

    def margin_confidence(
        self, cands: list[Candidate], tile_ground_m: float | None = None
    ) -> float:
        """Margin between the best and the next candidate whose footprint does not overlap
        (``tile_ground_m``: the best one's tile side on the ground, default the map's)."""
        if len(cands) < 2:
            return 1.0
        from tiling.crs import geodesic_distance_m

        ground = self.tile_ground_m if tile_ground_m is None else float(tile_ground_m)
        b = cands[0].tile
        for c in cands[1:]:
            t = c.tile
            d = float(geodesic_distance_m(b.center_lon, b.center_lat, t.center_lon, t.center_lat))
            if d >= ground:
                margin = (cands[0].final - c.final) / float(self.conf["margin_scale"])
                return float(np.clip(margin, 0.0, 1.0))
        return 1.0

    def run(self, state: FrameState, fix: Fix) -> Fix:
        """Fill ``fix`` from the state; ``fix`` carries the frame name and pipeline already."""
        self._camera(state, fix)
        if state.stopped:
            fix.message = state.message
            return fix
        cands = state.candidates
        top, m = cands[0], state.match
        conf_r = self.margin_confidence(cands, self._ground(state, top))
        answer = top
        if m is not None:
            answer = m.candidate
            lat, lon = m.lat, m.lon
            fix.method = "verified"
            conf_v = 1.0 - math.exp(-m.result.inliers / float(self.conf["inlier_scale"]))
            fix.confidence = float(1.0 - (1.0 - conf_v) * (1.0 - conf_r))
            fix.error_m_est = m.error_m
            pose = state.pose
            if pose is not None and pose.ok and pose.ground_lat is not None:
                assert pose.ground_lon is not None
                lat, lon = pose.ground_lat, pose.ground_lon
                gsd = state.gsd_of(answer) if len(state.layers) > 1 else self.map_gsd_m
                fix.error_m_est = max(float(pose.ground_error_m_est or 0.0), gsd)
            fix.heading_deg = float((m.heading_deg - float(m.result.rotation_deg or 0.0)) % 360.0)
            fix.verification = m.as_dict()
        else:
            lat, lon = self._unverified(state, top, fix)
            factor = float(self.conf["unverified_factor"]) if state.verifying else 1.0
            fix.confidence = conf_r * factor
        fix.lat, fix.lon = float(lat), float(lon)
        fix.tile_id = answer.tile_id
        fix.orthomosaic = str(answer.tile.raster_path)
        fix.candidates = [
            {
                "tile_id": c.tile_id,
                "lat": float(c.tile.center_lat),
                "lon": float(c.tile.center_lon),
                "score": round(float(c.final), 6),
            }
            for c in cands[: int(self.conf["candidates"])]
        ]
        cal = self.conf["calibration"]
        if cal is not None:
            fix.confidence = calibrated_confidence(
                cal,
                inliers=m.result.inliers if m is not None else 0,
                margin=conf_r,
                rmse_px=float(m.result.rmse_px or 0.0) if m is not None else 0.0,
            )
        fix.confidence = float(np.clip(fix.confidence, 0.0, 1.0))
        min_conf = float(self.conf["min_confidence"])
        fix.status = "ok" if fix.confidence >= min_conf else "no_match"
        if fix.status == "no_match":
            fix.message = f"confidence {fix.confidence:.2f} below {min_conf:.2f}"
            if state.verifying and m is None:
                fix.message += "; no candidate verified"
            if state.budget_stopped_after:
                fix.message += (
                    f" within the {state.budget_ms:g} ms verification budget"
                    f" ({state.budget_stopped_after} attempts)"
                )
        return fix

    def _ground(self, state: FrameState, cand: Candidate) -> float:
        """Tile side on the ground (m) of the candidate's GSD layer (the map's by default)."""
        if len(state.layers) > 1:
            return float(state.layers[cand.layer].tile_ground_m)
        return self.tile_ground_m

    def _camera(self, state: FrameState, fix: Fix) -> None:
        """``camera``/``camera_reason`` and ``priors`` of the fix."""
        prep, pose = state.prep, state.pose
        if prep is not None:
            fix.priors = prep.priors_used()
        if pose is not None and pose.ok:
            fix.camera = pose.as_answer()
            return
        fix.camera = None
        if prep is None or prep.camera is None:
            fix.camera_reason = state.camera_reason or "no camera model"
        elif pose is not None:
            fix.camera_reason = f"pose rejected: {pose.reason}"
        else:
            fix.camera_reason = "no verified match to solve the pose from"

    def _unverified(self, state: FrameState, top: Candidate, fix: Fix) -> tuple[float, float]:
        """The top candidate's centre, or its refined point; sets method, error and heading."""
        lat, lon = float(top.tile.center_lat), float(top.tile.center_lon)
        fix.method = "tile-centre"
        ground = self._ground(state, top)
        fix.error_m_est = 0.5 * ground
        cs = self.consistency
        if self.conf["answer"] in ("refined", "verified") and top.node_match is not None:
            assert cs is not None  # a node match comes from the consistency stage
            rc = cs.refined_centre(top.node_match)
            if rc is not None:
                lon, lat = top.tile.to_lonlat(
                    rc[0] * top.tile.tile_size, rc[1] * top.tile.tile_size
                )
                fix.method = "refined"
                fix.error_m_est = 0.35 * ground
        known = state.frame is not None and state.frame.heading_deg is not None
        fix.heading_deg = (
            float(state.headings[top.heading_idx]) if self.rotations > 1 or known else None
        )
        return lat, lon
