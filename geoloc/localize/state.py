"""The one typed per-frame state the locate chain passes from stage to stage, and the answer.

A :class:`FrameState` starts with the request (what the caller asked) and every stage adds its
outputs: the prepared frame and its encodings, the recalled tiles, the ranked candidates, the
verified match. The answer stage turns it into a :class:`Fix`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    from geoloc.camera.pose import PoseResult
    from geoloc.camera.prepare import PixelChain, PreparedFrame
    from geoloc.localize.frame import Frame
    from geoloc.localize.priors import Prior
    from geoloc.localize.verify import Verification
    from geoloc.store.tile_store import GsdLayer


@dataclass
class Fix:
    """The answer for one frame (``as_dict`` is the JSON object of ``geoloc locate``)."""

    frame: str
    status: str  # "ok" | "no_match" | "error"
    lat: float | None = None
    lon: float | None = None
    confidence: float = 0.0
    error_m_est: float | None = None
    tile_id: int | None = None
    orthomosaic: str | None = None
    heading_deg: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    method: str | None = None  # verified | refined | tile-centre
    verification: dict[str, Any] | None = None
    message: str | None = None
    #: the camera's own pose (lat, lon, alt_agl_m, alt_msl_m, heading/pitch/roll_deg,
    #: error_m_est), or None with ``camera_reason`` saying why
    camera: dict[str, Any] | None = None
    camera_reason: str | None = None
    #: every prior the frame was prepared with, each with its source (flag / exif / xmp)
    priors: dict[str, Any] = field(default_factory=dict)
    #: the scale search of a frame whose GSD was unknown (hypotheses tried, the one verified,
    #: the GSD and altitude it gives), None when the GSD was known
    scale: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


@dataclass
class NodeMatch:
    """Consistency of one frame/tile pair.

    ``perm[i]`` is the tile node matched to frame node i; ``centre`` the frame centre mapped into
    the tile's normalised coordinates (x right, y down); ``rotation_deg`` counter-clockwise as
    seen (frame -> tile); ``residual`` the weighted RMS centroid residual (tile widths).
    """

    score: float
    perm: np.ndarray
    descriptor_sim: float
    area_agreement: float
    layout_agreement: float
    residual: float
    scale: float
    rotation_deg: float
    centre: tuple[float, float]


@dataclass(frozen=True)
class FrameRequest:
    """What the caller asked for one frame (``Localizer.locate``'s arguments, resolved)."""

    image: str | Path | np.ndarray
    name: str
    prior: Prior | None = None
    gsd_m: float | None = None
    altitude_m: float | None = None
    hfov_deg: float | None = None
    heading_deg: float | None = None
    camera_file: str | Path | None = None
    pitch_deg: float | None = None
    roll_deg: float | None = None
    top_n: int = 50
    top_m: int = 5
    consistency: bool = True


@dataclass
class Candidate:
    """One candidate tile of a frame: the stored tile record and its scores so far.

    ``score`` is the rerank score at the candidate's best heading (the Ω score without a rerank
    stage), ``final`` the score after consistency, which orders the candidates.
    """

    tile: Any  # the store's tile record (tile_id, centre, transform, crs, Φ, nodes, ...)
    omega: float
    score: float
    heading_idx: int
    final: float
    node_match: NodeMatch | None = None
    #: the store's GSD layer of the tile (index into ``FrameState.layers``)
    layer: int = 0

    @property
    def tile_id(self) -> int:
        """The tile's id."""
        return int(self.tile.tile_id)


@dataclass
class Match:
    """The verification that answered: its candidate, heading tried and ground point."""

    candidate: Candidate
    heading_deg: float
    result: Verification
    lat: float
    lon: float
    error_m: float
    attempts: int
    #: the map region's affine (pixel corner -> the tile's CRS) the match was found in
    region_transform: Any = None
    #: pixels of the image the verifier saw -> pixels of the frame as captured
    chain: PixelChain | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``verification`` object of a fix."""
        res = self.result
        return {
            "matcher": res.matcher,
            "inliers": int(res.inliers),
            "matches": int(res.matches),
            "rmse_px": float(res.rmse_px or 0.0),
            "scale": float(res.scale or 0.0),
            "rotation_deg": float(res.rotation_deg or 0.0),
            "model": res.model,
            "ncc": float(res.ncc),
            "error_m": self.error_m,
            "attempts": self.attempts,
        }


@dataclass
class ScaleSearch:
    """The scale hypotheses of a frame whose GSD is unknown, tried one after the other.

    ``default_factor`` is the resize to map scale that assumes the frame's shorter side spans
    one tile; hypothesis i resizes by ``default_factor * relative[i]``. ``base_chain`` is the
    frame's pixel chain before that resize (each hypothesis extends a copy of it).
    """

    default_factor: float
    relative: list[float]
    index: int = 0
    base_chain: PixelChain | None = None
    #: (recalled, candidates, message) of the first hypothesis, kept while the others are tried
    first: tuple[Any, Any, Any] | None = None

    @property
    def factor(self) -> float:
        """The resize to map scale of the hypothesis the chain is on."""
        return self.default_factor * self.relative[self.index]


@dataclass
class FrameView:
    """The frame prepared at one scale: what recall, rerank, consistency and verification of the
    ``layers`` (indices into ``FrameState.layers``) compare against their tiles.

    ``factor`` is the resize from the prepared frame to ``image``; ``chain`` the pixel chain of
    the captured frame to ``image`` (None without a camera preparation); ``omega`` (H, D),
    ``phi`` (H, P), ``node_areas`` (H, K), ``node_centroids`` (H, K, 2) its encodings, one row
    per heading hypothesis.
    """

    factor: float
    layers: tuple[int, ...]
    image: np.ndarray
    mask: np.ndarray
    chain: PixelChain | None = None
    omega: np.ndarray | None = None
    phi: np.ndarray | None = None
    node_areas: np.ndarray | None = None
    node_centroids: np.ndarray | None = None


@dataclass
class FrameState:
    """Everything known about one frame while the chain runs (see the module docstring)."""

    request: FrameRequest
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    # frame preparation
    frame: Frame | None = None
    headings: list[float] = field(default_factory=list)
    image: np.ndarray | None = None  # the frame at map scale, (H, W, 3) uint8
    mask: np.ndarray | None = None
    prep: PreparedFrame | None = None  # the camera's preparation (chain to the captured frame)
    camera_reason: str = ""  # where the camera model came from, or why there is none
    map_scale: float = 1.0  # the resize applied to bring the prepared frame to the map's GSD
    scale_search: ScaleSearch | None = None  # set when the GSD is unknown
    omega: np.ndarray | None = None  # (H, D) one row per heading hypothesis
    phi: np.ndarray | None = None  # (H, P)
    node_areas: np.ndarray | None = None  # (H, K)
    node_centroids: np.ndarray | None = None  # (H, K, 2)
    #: the store's GSD layers (main first) and the frame prepared for them; image, mask,
    #: map_scale and the encodings above are those of ``views[0]`` (the main layer's when it is
    #: searched)
    layers: list[GsdLayer] = field(default_factory=list)
    views: list[FrameView] = field(default_factory=list)
    # recall -> rerank -> consistency
    recalled: list[tuple[int, float, int]] = field(default_factory=list)  # id, Ω score, heading
    candidates: list[Candidate] = field(default_factory=list)
    # verification
    verifying: bool = False  # the chain has a verifier (an unverified answer is weak)
    match: Match | None = None
    budget_ms: float = 0.0  # the verification budget (0: none)
    budget_stopped_after: int = 0  # attempts made when the budget ran out (0: it did not)
    message: str | None = None  # why the chain stopped early
    # pose
    pose: PoseResult | None = None
    #: candidate tile ids in their order after each stage ("recall", "rerank", "consistency"),
    #: for benchmarks that score recall per stage
    trace: dict[str, list[int]] = field(default_factory=dict)

    def view(self, layer: int) -> FrameView:
        """The frame as prepared for GSD layer ``layer`` (recall only returns tiles of layers
        with a view; the first view otherwise)."""
        for v in self.views:
            if layer in v.layers:
                return v
        return self.views[0]

    def layer_of(self, tile: Any) -> int:
        """The index of ``tile``'s GSD layer: its orthomosaic's, else the nearest GSD's."""
        oid = int(tile.orthomosaic_id)
        for i, la in enumerate(self.layers):
            if oid in la.orthomosaic_ids:
                return i
        if not self.layers:
            return 0
        g = float(tile.gsd_m)
        return min(range(len(self.layers)), key=lambda i: abs(self.layers[i].gsd_m - g))

    def gsd_of(self, cand: Candidate) -> float:
        """The map GSD (m/px) the candidate's region and its frame view are at."""
        return float(self.layers[cand.layer].gsd_m) if self.layers else float(cand.tile.gsd_m)

    @contextmanager
    def timer(self, key: str) -> Iterator[None]:
        """Add the time spent in the block to ``timings[key]`` (ms)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + (time.perf_counter() - t0) * 1e3

    def timings_ms(self) -> dict[str, float]:
        """The timings rounded, with the ``total`` since the state was made."""
        out = {k: round(v, 2) for k, v in self.timings.items()}
        out["total"] = round((time.perf_counter() - self.started) * 1e3, 2)
        return out

    def stop(self, message: str) -> None:
        """End the chain for this frame: no candidate, and why."""
        self.candidates = []
        self.message = message

    @property
    def stopped(self) -> bool:
        """True when a stage ended the chain (nothing left to rank or verify)."""
        return self.message is not None and not self.candidates


class ChainStage(Protocol):
    """A stage of the locate chain: its defaults and one step over the per-frame state."""

    default_conf: ClassVar[dict[str, Any]]
    conf: dict[str, Any]

    def run(self, state: FrameState) -> None:
        """Read what earlier stages put in ``state`` and add this stage's outputs."""
        ...
