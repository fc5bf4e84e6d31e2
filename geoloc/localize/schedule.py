"""The verification scheduler: which (candidate, heading, verifier) to try, in which order, and
when to stop.

The plan, first success wins:

1. every top-M candidate at its best heading; right after the best one, the same candidate with
   the verifier's fallback (e.g. SIFT: rotation invariant and cheaper than the learned
   matcher), since a wrong heading hypothesis is the likeliest reason the best candidate fails;
2. the fallback on the other candidates;
3. unless the heading is known, a heading sweep in 45 deg steps around the best heading on the
   best ``sweep_top`` candidates (learned matchers tolerate only part of a turn).

The frame is rotated and its features extracted once per (verifier, heading); the rotation and
the crop extend the frame's :class:`~geoloc.camera.PixelChain` (kept in the match with the
region's transform, for the pose stage); map regions come from
:class:`~geoloc.localize.regions.MapRegions`. ``verify_budget_ms`` > 0 stops the plan once
that much time has gone (the first attempt always runs).
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import numpy as np

from geoloc.localize import frame as frames
from geoloc.localize.prepare import heading_known
from geoloc.localize.regions import MapRegions
from geoloc.localize.state import Candidate, FrameState, Match
from geoloc.localize.verify import Verifier

log = logging.getLogger(__name__)

#: Heading offsets of the sweep, nearest first.
SWEEP_DEG = (45.0, -45.0, 90.0, -90.0, 135.0, -135.0, 180.0)

Attempt = tuple[Candidate, float, Verifier]


class VerificationScheduler:
    """The verification stage of the chain.

    Conf: ``heading_sweep`` (try other headings when the best ones fail), ``verify_budget_ms``
    (0: no limit), ``sweep_top`` (candidates tried at the sweep's headings).
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "heading_sweep": True,
        "verify_budget_ms": 0.0,
        "sweep_top": 2,
    }

    def __init__(
        self,
        conf: dict[str, Any],
        verifier: Verifier,
        regions: MapRegions,
        *,
        tile_px: int,
    ) -> None:
        self.conf = {**self.default_conf, **conf}
        self.verifier = verifier
        self.regions = regions
        self.tile_px = int(tile_px)

    def plan(self, cands: list[Candidate], headings: list[float], sweep: bool) -> list[Attempt]:
        """The ordered attempts for these candidates (see the module docstring)."""
        vs, fb = self.verifier, self.verifier.fallback
        attempts: list[Attempt] = [(c, headings[c.heading_idx], vs) for c in cands]
        if fb is not None and cands:
            attempts.insert(1, (cands[0], headings[cands[0].heading_idx], fb))
            attempts += [(c, headings[c.heading_idx], fb) for c in cands[1:]]
        if sweep and cands:
            h0 = headings[cands[0].heading_idx]
            tried = {(c.tile_id, headings[c.heading_idx]) for c in cands}
            top = cands[: int(self.conf["sweep_top"])]
            for dh in SWEEP_DEG:
                h = (h0 + dh) % 360.0
                attempts += [(c, h, vs) for c in top if (c.tile_id, h) not in tried]
        return attempts

    def run(self, state: FrameState) -> None:
        """Try the plan on the top-M candidates; set ``state.match`` to the first that verifies."""
        if state.stopped:
            return
        assert state.image is not None and state.mask is not None and state.frame is not None
        img, mask = state.image, state.mask
        state.verifying = True
        sweep = bool(self.conf["heading_sweep"]) and not heading_known(state)
        if state.scale_search is not None and state.scale_search.index > 0:
            sweep = False  # the heading sweep runs at the first scale hypothesis only (its cost)
        attempts = self.plan(state.candidates[: state.request.top_m], state.headings, sweep)
        # the frame at map scale, cropped to at most 2 tiles (the region holds it with margin)
        crop = int(min(max(img.shape[:2]), 2 * self.tile_px))
        region_px = int(min(1024, max(2 * self.tile_px, self.tile_px + crop)))
        scale_known = state.frame.gsd_m is not None
        frame_cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray, Any, Any]] = {}
        state.budget_ms = float(self.conf["verify_budget_ms"])
        budget_s = state.budget_ms / 1e3
        t_start = time.perf_counter()
        with state.timer("verify"):
            for n, (cand, h, verifier) in enumerate(attempts):
                if n and budget_s > 0 and time.perf_counter() - t_start >= budget_s:
                    log.debug("verification budget of %.0f ms spent after %d", budget_s * 1e3, n)
                    state.budget_stopped_after = n
                    return
                key = (id(verifier), h)
                if key not in frame_cache:
                    with state.timer("verify.frame_features"):
                        r, m = frames.rotate_to_north(img, mask, h)
                        chain = None
                        if state.prep is not None:
                            rot = frames.rotation_matrix(img.shape[1], img.shape[0], -h)
                            x0, y0 = frames.centre_crop_origin(r.shape[1], r.shape[0], crop)
                            chain = state.prep.chain.copy().then(rot).then_crop(x0, y0)
                        r, m = frames.centre_crop(r, crop), frames.centre_crop(m, crop)
                        frame_cache[key] = (r, m, verifier.extract_frame_features(r, m), chain)
                r, m, feats, chain = frame_cache[key]
                with state.timer("verify.read_region"):
                    region, rmask, rt = self.regions.around(cand.tile, region_px)
                with state.timer("verify.match"):
                    res = verifier.verify(
                        r,
                        m,
                        region,
                        rmask,
                        scale_known=scale_known,
                        region_key=("t", cand.tile_id, region_px),
                        frame_features=feats,
                    )
                if not res.accepted or res.centre_xy is None:
                    log.debug(
                        "tile %d heading %.0f %s: %s", cand.tile_id, h, verifier.name, res.reason
                    )
                    continue
                from tiling.crs import to_lonlat

                x, y = rt @ (res.centre_xy[0] + 0.5, res.centre_xy[1] + 0.5)
                lon, lat = to_lonlat(cand.tile.crs, x, y)
                err_m = float(res.error_px()) * self.regions.gsd_m
                state.match = Match(
                    cand,
                    h,
                    res,
                    float(lat),
                    float(lon),
                    err_m,
                    n + 1,
                    region_transform=rt,
                    chain=chain,
                )
                return
