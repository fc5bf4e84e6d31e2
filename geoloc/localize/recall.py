"""Recall (``geoloc.recall``): the first candidate tiles of a frame, merged over its headings.

The :class:`Recall` stage intersects the priors' restrictions, asks its recall plugin for the
top-N tiles of each heading hypothesis and keeps, per tile, its best score and that heading. In a
store of several GSD layers it does so per view of the frame (the frame prepared at a layer's
GSD), restricted to that view's layers' tiles, and merges the lists by score.
Built-in plugins: ``faiss`` (Ω in the FAISS index), ``pgvector`` (Φ k-NN in Postgres) and
``near-position`` (the tiles around a predicted position, for a tracker: no global search).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from geoloc.errors import ConfigError
from geoloc.localize import priors as priors_mod
from geoloc.localize.priors import Prior, PriorStage
from geoloc.localize.state import FrameState


@runtime_checkable
class RecallStage(Protocol):
    """``geoloc.recall``: the top-k tiles of each query (one row per heading hypothesis)."""

    name: str

    def recall(
        self,
        store: Any,
        omega: np.ndarray,
        phi: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None,
        prior: Prior | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores (H, k), tile ids (H, k)), best first; missing = (-inf, -1).

        ``store`` is the open tile store, ``omega`` (H, D) and ``phi`` (H, P) the frame's
        encodings, ``allowed_ids`` the priors' restriction (None: any tile), ``prior`` the
        frame's position prior.
        """
        ...


def _empty(h: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((h, k), -np.inf, dtype=np.float32), np.full((h, k), -1, dtype=np.int64)


class FaissRecall:
    """Ω search in the encoder's FAISS index (inner product = cosine)."""

    name = "faiss"
    default_conf: ClassVar[dict[str, Any]] = {}

    def recall(
        self,
        store: Any,
        omega: np.ndarray,
        phi: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None,
        prior: Prior | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ω top-k per heading, restricted to ``allowed_ids`` if given."""
        scores, ids = store.search(np.ascontiguousarray(omega, dtype=np.float32), k, allowed_ids)
        return np.asarray(scores), np.asarray(ids)


class PgvectorRecall:
    """Φ k-NN in Postgres (pgvector HNSW; a prior's few tiles scored exactly).

    Φ, the scene-graph descriptor, tolerates the residual heading and offset of a frame better
    than the flattened Ω map, so it recalls the right tile more often (the scale benchmark's
    figures in the README decide the default); the Ω FAISS index is not loaded. ``ef_search`` is the
    HNSW candidate list (raised to the recall depth when smaller). ``prefilter`` ``scan`` (the
    default) scans Φ's sign bits held in this process (128 B per tile and as much for their
    FAISS binary index; exact Hamming,
    :meth:`geoloc.store.TileStore.search_phi`); ``hnsw`` walks Postgres's HNSW index over the
    same bits instead (no codes in memory). Both re-rank by the halfvec cosine in Postgres,
    unless ``rescore`` is ``memory`` (the default, with the scan): the scan's candidates are
    then re-ranked by int8 codes of Φ held here too (1 KiB per tile; a cosine within a few
    thousandths of the halfvec's, and the rerank stage scores the recalled tiles exactly), a
    query less per frame. The scan won at 100k tiles in the scale benchmark (README): the
    index's walk misses Hamming-nearest tiles the scan finds, and costs more.
    """

    name = "pgvector"
    default_conf: ClassVar[dict[str, Any]] = {
        "ef_search": 400,
        "prefilter": "scan",
        "rescore": "memory",
    }

    def __init__(self, **conf: Any) -> None:
        conf = {**self.default_conf, **conf}
        self.ef_search = int(conf["ef_search"])
        self.prefilter = str(conf["prefilter"])
        if self.prefilter not in ("hnsw", "scan"):
            raise ConfigError(
                f"pgvector recall: prefilter must be hnsw or scan, got {self.prefilter!r}"
            )
        from geoloc.store.tile_store import RESCORES

        self.rescore = str(conf["rescore"])
        if self.rescore not in RESCORES:
            raise ConfigError(
                f"pgvector recall: rescore must be one of {', '.join(RESCORES)}, "
                f"got {self.rescore!r}"
            )

    def recall(
        self,
        store: Any,
        omega: np.ndarray,
        phi: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None,
        prior: Prior | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of the Φ nearest tiles, per heading."""
        scan = self.prefilter == "scan"
        scores, ids = store.search_phi(
            phi, k, allowed_ids, self.ef_search, scan=scan, rescore=self.rescore
        )
        return np.asarray(scores), np.asarray(ids)


class NearPositionRecall:
    """The tiles whose centre lies within the frame's prior circle, nearest first.

    For a tracker: the prior is the predicted position (and its uncertainty as the radius), so
    recall costs one range query instead of a global search; rerank, consistency and
    verification then work as for any frame. Without a prior nothing is recalled. The score is
    ``1 - distance / radius`` (the same for every heading: the rerank stage picks the heading).
    """

    name = "near-position"
    default_conf: ClassVar[dict[str, Any]] = {}

    def recall(
        self,
        store: Any,
        omega: np.ndarray,
        phi: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None,
        prior: Prior | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k tiles nearest to the prior's centre within its radius."""
        h = omega.shape[0]
        scores, ids = _empty(h, k)
        if prior is None:
            return scores, ids
        near = np.asarray(store.within(prior.lat, prior.lon, prior.radius_m), dtype=np.int64)
        if allowed_ids is not None:
            near = np.intersect1d(near, np.asarray(allowed_ids, dtype=np.int64))
        if near.size == 0:
            return scores, ids
        from tiling.crs import geodesic_distance_m

        tiles = store.candidates(near)
        lon = np.array([t.center_lon for t in tiles], dtype=np.float64)
        lat = np.array([t.center_lat for t in tiles], dtype=np.float64)
        d = np.asarray(
            geodesic_distance_m(
                lon, lat, np.full_like(lon, prior.lon), np.full_like(lat, prior.lat)
            )
        )
        order = np.argsort(d, kind="stable")[:k]
        n = order.size
        scores[:, :n] = (1.0 - d[order] / prior.radius_m).astype(np.float32)
        ids[:, :n] = np.array([tiles[i].tile_id for i in order], dtype=np.int64)
        return scores, ids


def merge_headings(scores: np.ndarray, ids: np.ndarray, k: int) -> list[tuple[int, float, int]]:
    """(tile id, best score, heading index of that score) of the k best tiles over all headings.

    Ties keep the first heading that reached the score; missing entries are skipped.
    """
    best: dict[int, tuple[float, int]] = {}
    for h in range(ids.shape[0]):
        for s, i in zip(scores[h], ids[h], strict=True):
            if i < 0 or not np.isfinite(s):
                continue
            if int(i) not in best or s > best[int(i)][0]:
                best[int(i)] = (float(s), h)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
    return [(tid, s, h) for tid, (s, h) in ranked]


class Recall:
    """The recall stage of the chain; conf ``top_n``: tiles recalled (over all headings)."""

    default_conf: ClassVar[dict[str, Any]] = {"top_n": 50}

    def __init__(
        self, conf: dict[str, Any], stage: RecallStage, priors: list[PriorStage], store: Any
    ) -> None:
        self.conf = {**self.default_conf, **conf}
        self.stage = stage
        self.priors = priors
        self.store = store

    def run(self, state: FrameState) -> None:
        """Fill ``state.recalled``, or stop when the priors leave no tile.

        With several GSD layers, each view of the frame (prepared at its layers' GSD) recalls
        among its layers' tiles only, and the lists are merged by score.
        """
        req = state.request
        assert state.omega is not None and state.phi is not None
        with state.timer("recall"):
            allowed = priors_mod.allowed_ids(self.priors, self.store, req.prior)
            if allowed is not None and allowed.size == 0:
                state.stop("no tile lies within the prior")
                return
            views = state.views
            if len(views) <= 1 and len(state.layers) <= 1:
                scores, ids = self.stage.recall(
                    self.store, state.omega, state.phi, req.top_n, allowed, req.prior
                )
                state.recalled = merge_headings(np.asarray(scores), np.asarray(ids), req.top_n)
            else:
                merged: list[tuple[int, float, int]] = []
                for v in views:
                    assert v.omega is not None and v.phi is not None
                    scores, ids = self._recall_layers(v.layers, v.omega, v.phi, allowed, state)
                    merged += merge_headings(scores, ids, req.top_n)
                merged.sort(key=lambda r: -r[1])
                state.recalled = merged[: req.top_n]
            state.trace["recall"] = [tid for tid, _, _ in state.recalled]

    def _recall_layers(
        self,
        layers: tuple[int, ...],
        omega: np.ndarray,
        phi: np.ndarray,
        allowed: np.ndarray | None,
        state: FrameState,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The plugin's top-N among the tiles of ``layers`` (and the priors' ``allowed``)."""
        req = state.request
        k = req.top_n
        if len(layers) == len(state.layers):  # every layer: the priors' restriction only
            return _arrays(self.stage.recall(self.store, omega, phi, k, allowed, req.prior))
        ids = np.asarray(self.store.layer_tile_ids(layers), dtype=np.int64)
        total = sum(la.tiles for la in state.layers)
        if allowed is not None or 2 * ids.size <= total:
            # few tiles (or a prior): an exact search among them
            restrict = ids if allowed is None else np.intersect1d(ids, allowed)
            if restrict.size == 0:
                return _empty(omega.shape[0], k)
            return _arrays(self.stage.recall(self.store, omega, phi, k, restrict, req.prior))
        # most of the store: a restricted search would cost more than searching everything for
        # as many more tiles as the other layers could take, then dropping theirs
        kk = int(min(k + max(total - ids.size, 0), 4 * k + 64))
        scores, got = _arrays(self.stage.recall(self.store, omega, phi, kk, None, req.prior))
        keep = np.isin(got, ids)
        scores, got = np.where(keep, scores, -np.inf), np.where(keep, got, -1)
        return scores.astype(np.float32), got.astype(np.int64)


def _arrays(res: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(res[0]), np.asarray(res[1])
