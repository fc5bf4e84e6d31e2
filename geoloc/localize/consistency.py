"""Node-centroid consistency: does the frame's scene graph have the same layout as the tile's?

SGM-Net describes an image by K nodes (CSMG), each with a descriptor (a slice of Φ), an area and
a centroid in [0, 1]² (nodes sorted by area, descending). For a frame and a candidate tile:

1. match the frame's nodes to the tile's nodes: maximise descriptor cosine minus an area penalty
   (exhaustive over permutations for K <= 6, greedy beyond);
2. fit the area-weighted similarity transform (Umeyama) that maps the frame's centroids onto the
   tile's matched centroids; its rotation is the residual heading after the rotation search;
3. score = descriptor agreement x area agreement x layout agreement (Gaussian of the weighted
   RMS residual of the centroids, ``sigma`` in tile widths), in [0, 1];
4. the same transform maps the frame centre (0.5, 0.5) into the tile: the in-tile refinement.

The :class:`Consistency` stage of the chain scores the top-M candidates with its plugin
(``geoloc.consistency``), lowers the others by the plugin's ``weight`` (they have no
consistency score) and re-orders the candidates by the combined score.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from geoloc.errors import ConfigError
from geoloc.localize.state import FrameState, NodeMatch


def _node_descriptors(phi: np.ndarray, k: int) -> np.ndarray:
    d = np.asarray(phi, dtype=np.float64).reshape(k, -1)
    n = np.linalg.norm(d, axis=1, keepdims=True)
    return d / np.maximum(n, 1e-12)


def match_nodes(cost: np.ndarray) -> np.ndarray:
    """Assignment minimising the total ``cost`` (K x K): exhaustive for K <= 6, greedy beyond."""
    k = cost.shape[0]
    if k <= 6:
        perms = np.array(list(itertools.permutations(range(k))), dtype=np.int64)
        totals = cost[np.arange(k)[None, :], perms].sum(axis=1)
        return perms[int(np.argmin(totals))]
    perm = np.full(k, -1, dtype=np.int64)
    c = cost.astype(np.float64).copy()
    for _ in range(k):
        i, j = np.unravel_index(int(np.argmin(c)), c.shape)
        perm[i] = j
        c[i, :] = np.inf
        c[:, j] = np.inf
    return perm


def fit_similarity(
    src: np.ndarray, dst: np.ndarray, w: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted Umeyama: ``dst ~ s R src + t``; returns (s, R 2x2, t)."""
    w = np.asarray(w, dtype=np.float64)
    w = w / max(float(w.sum()), 1e-12)
    mu_s = (w[:, None] * src).sum(0)
    mu_d = (w[:, None] * dst).sum(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = (w[:, None, None] * xd[:, :, None] * xs[:, None, :]).sum(0)
    u, sv, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1.0
    r = u @ d @ vt
    var_s = float((w * (xs**2).sum(1)).sum())
    s = float(np.trace(np.diag(sv) @ d) / var_s) if var_s > 1e-12 else 1.0
    t = mu_d - s * r @ mu_s
    return s, r, t


def node_consistency(
    frame_phi: np.ndarray,
    frame_areas: np.ndarray,
    frame_centroids: np.ndarray,
    tile_phi: np.ndarray,
    tile_areas: np.ndarray,
    tile_centroids: np.ndarray,
    *,
    sigma: float = 0.15,
    area_weight: float = 0.5,
    max_scale_dev: float | None = 0.5,
) -> NodeMatch:
    """Score the agreement of the frame's and the tile's scene graphs (see the module doc).

    ``max_scale_dev`` bounds the fitted scale to 1 +- that (the frame was brought to the map's
    scale); None leaves it free.
    """
    k = int(np.asarray(frame_areas).shape[0])
    fa = np.asarray(frame_areas, dtype=np.float64)
    ta = np.asarray(tile_areas, dtype=np.float64)
    fa_n = fa / max(float(fa.sum()), 1e-12)
    ta_n = ta / max(float(ta.sum()), 1e-12)
    fd = _node_descriptors(frame_phi, k)
    td = _node_descriptors(tile_phi, k)
    sim = fd @ td.T  # (K, K)
    cost = -sim + area_weight * np.abs(fa_n[:, None] - ta_n[None, :]) * k
    perm = match_nodes(cost)
    d_sim = float(np.clip(np.mean(sim[np.arange(k), perm]), 0.0, 1.0))
    a_agree = float(1.0 - 0.5 * np.abs(fa_n - ta_n[perm]).sum())
    src = np.asarray(frame_centroids, dtype=np.float64)
    dst = np.asarray(tile_centroids, dtype=np.float64)[perm]
    w = np.minimum(fa_n, ta_n[perm]) + 1e-6
    s, r, t = fit_similarity(src, dst, w)
    if max_scale_dev is not None:
        s_c = float(np.clip(s, 1.0 - max_scale_dev, 1.0 + max_scale_dev))
        if s_c != s:  # refit the translation under the clamped scale
            wn = w / w.sum()
            t = (wn[:, None] * dst).sum(0) - s_c * r @ (wn[:, None] * src).sum(0)
            s = s_c
    pred = (s * (r @ src.T)).T + t
    resid = float(np.sqrt((w / w.sum() * ((pred - dst) ** 2).sum(1)).sum()))
    layout = math.exp(-((resid / sigma) ** 2))
    c = s * r @ np.array([0.5, 0.5]) + t
    rot = -math.degrees(math.atan2(r[1, 0], r[0, 0]))  # y down: CCW as seen is negative
    score = d_sim * a_agree * layout
    return NodeMatch(
        score=float(score),
        perm=perm,
        descriptor_sim=d_sim,
        area_agreement=a_agree,
        layout_agreement=float(layout),
        residual=resid,
        scale=float(s),
        rotation_deg=float(rot),
        centre=(float(c[0]), float(c[1])),
    )


@runtime_checkable
class ConsistencyStage(Protocol):
    """``geoloc.consistency``: scene-graph agreement of a frame and a tile.

    ``weight`` is the share of the consistency in the final score: a candidate beyond the
    top-M (not scored) keeps ``(1 - weight)`` of its rerank score.
    """

    name: str
    weight: float

    def score(
        self,
        frame_phi: np.ndarray,
        frame_areas: np.ndarray,
        frame_centroids: np.ndarray,
        tile_phi: np.ndarray,
        tile_areas: np.ndarray,
        tile_centroids: np.ndarray,
    ) -> NodeMatch:
        """Consistency of one pair."""
        ...

    def combine(self, phi_score: float, match: NodeMatch) -> float:
        """Final score from the rerank score and the consistency."""
        ...

    def refined_centre(self, match: NodeMatch) -> tuple[float, float] | None:
        """Frame centre in tile-normalised coordinates, or None when not trustworthy."""
        ...


class NodeCentroidConsistency:
    """The built-in ``geoloc.consistency`` stage ``node-centroid``.

    ``weight`` is the share of the consistency score in the final score
    (final = (1 - weight) * Φ cosine + weight * consistency); ``sigma`` and ``area_weight`` are
    those of :func:`node_consistency`; ``refine`` moves the answer inside the tile by the
    similarity transform when the layout agrees (``min_layout``).
    """

    name = "node-centroid"
    default_conf: ClassVar[dict[str, Any]] = {
        "weight": 0.3,
        "sigma": 0.15,
        "area_weight": 0.5,
        "refine": True,
        "min_layout": 0.5,
    }

    def __init__(self, **conf: Any) -> None:
        c = {**self.default_conf, **conf}
        if not 0.0 <= c["weight"] <= 1.0:
            raise ConfigError(f"consistency: weight must be in [0, 1], got {c['weight']}")
        self.weight = float(c["weight"])
        self.sigma = float(c["sigma"])
        self.area_weight = float(c["area_weight"])
        self.refine = bool(c["refine"])
        self.min_layout = float(c["min_layout"])

    def score(
        self,
        frame_phi: np.ndarray,
        frame_areas: np.ndarray,
        frame_centroids: np.ndarray,
        tile_phi: np.ndarray,
        tile_areas: np.ndarray,
        tile_centroids: np.ndarray,
    ) -> NodeMatch:
        """Consistency of one frame/tile pair."""
        return node_consistency(
            frame_phi,
            frame_areas,
            frame_centroids,
            tile_phi,
            tile_areas,
            tile_centroids,
            sigma=self.sigma,
            area_weight=self.area_weight,
        )

    def combine(self, phi_score: float, match: NodeMatch) -> float:
        """Final score of a candidate from its Φ cosine and its consistency."""
        return (1.0 - self.weight) * phi_score + self.weight * match.score

    def refined_centre(self, match: NodeMatch) -> tuple[float, float] | None:
        """The frame centre in the tile's normalised coordinates, when trustworthy."""
        if not self.refine or match.layout_agreement < self.min_layout:
            return None
        x, y = match.centre
        return (float(np.clip(x, 0.0, 1.0)), float(np.clip(y, 0.0, 1.0)))


class Consistency:
    """The consistency stage of the chain; conf ``top_m``: candidates scored (and verified)."""

    default_conf: ClassVar[dict[str, Any]] = {"top_m": 5}

    def __init__(self, conf: dict[str, Any], stage: ConsistencyStage | None) -> None:
        self.conf = {**self.default_conf, **conf}
        self.stage = stage

    def run(self, state: FrameState) -> None:
        """Score the top-M, combine, re-order ``state.candidates`` (unless disabled)."""
        cs = self.stage
        with state.timer("consistency"):
            if cs is None or not state.request.consistency:
                return
            assert state.phi is not None and state.node_areas is not None
            assert state.node_centroids is not None
            m = state.request.top_m
            for c in state.candidates[:m]:
                h = c.heading_idx
                # the frame as prepared for the candidate's GSD layer (one view: the state's)
                v = state.view(c.layer) if len(state.views) > 1 else None
                phi = state.phi if v is None or v.phi is None else v.phi
                areas = state.node_areas if v is None or v.node_areas is None else v.node_areas
                cents = (
                    state.node_centroids
                    if v is None or v.node_centroids is None
                    else v.node_centroids
                )
                c.node_match = cs.score(
                    phi[h],
                    areas[h],
                    cents[h],
                    c.tile.phi,
                    c.tile.node_areas,
                    c.tile.node_centroids,
                )
                c.final = float(cs.combine(c.score, c.node_match))
            for c in state.candidates[m:]:
                c.final = float((1.0 - cs.weight) * c.score)
            state.candidates.sort(key=lambda c: -c.final)
            state.trace["consistency"] = [c.tile_id for c in state.candidates]
