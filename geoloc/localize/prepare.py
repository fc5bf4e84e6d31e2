"""Frame preparation: load the frame, bring it to the map's GSD, rotate it under each heading
hypothesis and encode the batch with the database's encoder.

Timed as ``load`` (decode, GSD and heading from the caller or EXIF/XMP), ``rotate`` (heading
hypotheses, scaling, the rotation batch) and ``encode``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from geoloc.localize import frame as frames
from geoloc.localize.priors import PriorStage
from geoloc.localize.state import FrameState


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor from the encoder
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


class FramePreparation:
    """The chain's first stage; conf ``rotations``: heading hypotheses when the heading is unknown.

    ``map_gsd_m`` and ``tile_px`` are the database's; ``priors`` may narrow the headings.
    """

    default_conf: ClassVar[dict[str, Any]] = {"rotations": 8}

    def __init__(
        self,
        conf: dict[str, Any],
        encoder: Any,
        priors: list[PriorStage],
        *,
        map_gsd_m: float,
        tile_px: int,
    ) -> None:
        self.conf = {**self.default_conf, **conf}
        self.encoder = encoder
        self.priors = priors
        self.map_gsd_m = float(map_gsd_m)
        self.tile_px = int(tile_px)

    def run(self, state: FrameState) -> None:
        """Fill ``frame``, ``headings``, ``image``/``mask`` (at map scale) and the encodings."""
        req = state.request
        with state.timer("load"):
            fr = frames.load_frame(
                req.image,
                gsd=req.gsd_m,
                altitude_m=req.altitude_m,
                hfov_deg=req.hfov_deg,
                heading_deg=req.heading_deg,
                name=req.name,
            )
        with state.timer("rotate"):
            headings = frames.default_headings(int(self.conf["rotations"]))
            for p in self.priors:
                headings = p.headings(fr, headings)
            img, mask, _ = frames.at_map_scale(fr, self.map_gsd_m, self.tile_px)
            batch, _valid = frames.rotation_batch(
                img, mask, headings, crop_px=self.tile_px, size=int(self.encoder.input_size)
            )
        with state.timer("encode"):
            out = self.encoder.encode(batch)
            state.omega, state.phi = _np(out.omega), _np(out.phi)
            state.node_areas, state.node_centroids = _np(out.node_areas), _np(out.node_centroids)
        state.frame, state.headings, state.image, state.mask = fr, headings, img, mask


def heading_known(state: FrameState) -> bool:
    """The frame's heading is known and the chain tries that one heading only."""
    fr = state.frame
    return len(state.headings) == 1 and fr is not None and fr.heading_deg is not None
