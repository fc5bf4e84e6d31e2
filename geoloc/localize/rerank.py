"""Rerank (``geoloc.rerank``): fetch the recalled tiles' records and re-order them by Φ.

The :class:`Rerank` stage turns the recalled ids into :class:`~geoloc.localize.state.Candidate`
records (timed ``fetch``) and scores them with its plugin at every heading hypothesis, keeping
each tile's best heading (timed ``rerank``). Without a plugin the Ω score orders them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from geoloc.localize.state import Candidate, FrameState


@runtime_checkable
class RerankStage(Protocol):
    """``geoloc.rerank``: scores of candidates from the query's and the tiles' Φ."""

    name: str

    def rerank(self, query_phi: np.ndarray, tile_phi: np.ndarray) -> np.ndarray:
        """(H, N) scores of N tiles for each of H heading hypotheses; higher is better."""
        ...


class PhiCosineRerank:
    """Cosine similarity of Φ (the CSMG scene-graph descriptor)."""

    name = "phi-cosine"
    default_conf: ClassVar[dict[str, Any]] = {}

    def rerank(self, query_phi: np.ndarray, tile_phi: np.ndarray) -> np.ndarray:
        """(H, N) cosines."""
        q = np.asarray(query_phi, dtype=np.float32)
        t = np.asarray(tile_phi, dtype=np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        return np.asarray(q @ t.T)


class Rerank:
    """The rerank stage of the chain (no conf of its own); ``stage`` None keeps the Ω order."""

    default_conf: ClassVar[dict[str, Any]] = {}

    def __init__(self, conf: dict[str, Any], stage: RerankStage | None, store: Any) -> None:
        self.conf = {**self.default_conf, **conf}
        self.stage = stage
        self.store = store

    def run(self, state: FrameState) -> None:
        """Fill ``state.candidates``, best first, or stop when no recalled tile is answerable."""
        with state.timer("fetch"):
            tiles = self.store.candidates([tid for tid, _, _ in state.recalled])
        if not tiles:
            state.stop("no candidate tile")
            return
        with state.timer("rerank"):
            omega = {tid: (s, h) for tid, s, h in state.recalled}
            layer = [state.layer_of(t) for t in tiles]
            cands: list[Candidate] = []
            if self.stage is not None:
                assert state.phi is not None
                tile_phi = np.stack([t.phi for t in tiles]).astype(np.float32)
                if len(state.views) <= 1:
                    s = np.asarray(self.stage.rerank(state.phi, tile_phi))  # (H, N)
                else:  # each tile against the frame as prepared for its GSD layer
                    s = np.empty((state.phi.shape[0], len(tiles)), dtype=np.float32)
                    for v in state.views:
                        cols = [j for j, la in enumerate(layer) if state.view(la) is v]
                        if cols:
                            assert v.phi is not None
                            s[:, cols] = np.asarray(self.stage.rerank(v.phi, tile_phi[cols]))
                best_h = s.argmax(axis=0)
                for j, t in enumerate(tiles):
                    sc = float(s[best_h[j], j])
                    c = Candidate(t, omega[t.tile_id][0], sc, int(best_h[j]), sc, layer=layer[j])
                    cands.append(c)
            else:
                for j, t in enumerate(tiles):
                    o, h = omega[t.tile_id]
                    cands.append(Candidate(t, o, o, h, o, layer=layer[j]))
            cands.sort(key=lambda c: -c.score)
            state.candidates = cands
            state.trace["rerank"] = [c.tile_id for c in cands]
