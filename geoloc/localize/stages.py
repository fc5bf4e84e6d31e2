"""Stage protocols of the locate pipeline and the built-in stages.

Every stage is a plugin of one ``geoloc.*`` entry-point group (see :mod:`geoloc.plugins`): the
object behind the entry point is a class or factory called with the stage's keyword parameters.

==================  =========================================  ===============================
group               protocol                                   built-ins
==================  =========================================  ===============================
geoloc.recall       :class:`RecallStage`                       ``faiss``, ``pgvector``
geoloc.rerank       :class:`RerankStage`                       ``phi-cosine``
geoloc.consistency  :class:`ConsistencyStage`                  ``node-centroid``
geoloc.verify       :class:`geoloc.localize.verify.Verifier`   ``xfeat-lighterglue``, ``sift``,
                                                               ``aliked-lightglue`` (optional)
geoloc.priors       :class:`PriorStage`                        ``gnss-radius``, ``heading``
==================  =========================================  ===============================

``none`` in a pipeline disables a stage (recall cannot be disabled).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from geoloc.errors import ConfigError
from geoloc.localize.consistency import NodeCentroidConsistency, NodeMatch
from geoloc.localize.verify import Verifier

if TYPE_CHECKING:
    from geoloc.localize.frame import Frame

log = logging.getLogger(__name__)

#: Built-in stages: group -> name -> "module:attr". The lead declares the same lines as entry
#: points in pyproject.toml; until then (or in a non-installed checkout) these are registered
#: at run time by :func:`ensure_builtins` for the names not installed.
BUILTIN_STAGES: dict[str, dict[str, str]] = {
    "geoloc.recall": {
        "faiss": "geoloc.localize.stages:FaissRecall",
        "pgvector": "geoloc.localize.stages:PgvectorRecall",
    },
    "geoloc.rerank": {"phi-cosine": "geoloc.localize.stages:PhiCosineRerank"},
    "geoloc.consistency": {"node-centroid": "geoloc.localize.consistency:NodeCentroidConsistency"},
    "geoloc.verify": {
        "xfeat-lighterglue": "geoloc.localize.verify:xfeat_lighterglue",
        "sift": "geoloc.localize.verify:sift",
        "aliked-lightglue": "geoloc.localize.verify:aliked_lightglue",
    },
    "geoloc.priors": {
        "gnss-radius": "geoloc.localize.stages:GnssRadiusPrior",
        "heading": "geoloc.localize.stages:HeadingPrior",
    },
}

STAGE_GROUPS: dict[str, str] = {
    "recall": "geoloc.recall",
    "rerank": "geoloc.rerank",
    "consistency": "geoloc.consistency",
    "verify": "geoloc.verify",
    "priors": "geoloc.priors",
}


def ensure_builtins() -> None:
    """Register the built-in stages that are not installed as entry points (idempotent)."""
    from geoloc import plugins

    for group, names in BUILTIN_STAGES.items():
        have = plugins.available(group)
        for name, value in names.items():
            if name not in have:
                plugins.register(group, name, value)


# ---------------------------------------------------------------------------------------------
# what the stages see


@dataclass
class StoreContext:
    """The opened database, the encoder's id there and its Ω index (shared by all stages)."""

    db: Any
    encoder_id: int
    index: Any
    settings: Any


@dataclass(frozen=True)
class Prior:
    """A GNSS-like position prior: a circle of ``radius_m`` around (lat, lon)."""

    lat: float
    lon: float
    radius_m: float

    @classmethod
    def parse(cls, text: str) -> Prior:
        """Parse ``LAT,LON,RADIUS_M``; ConfigError on anything else."""
        parts = [p.strip() for p in text.split(",")]
        try:
            lat, lon, rad = (float(p) for p in parts)
        except ValueError as exc:
            raise ConfigError(f"--prior must be LAT,LON,RADIUS_M (numbers), got {text!r}") from exc
        if not (-90 <= lat <= 90 and -180 <= lon <= 180 and rad > 0):
            raise ConfigError(f"--prior out of range (lat, lon, radius > 0): {text!r}")
        return cls(lat, lon, rad)


@runtime_checkable
class RecallStage(Protocol):
    """``geoloc.recall``: the top-k tiles of each query Ω (one row per heading hypothesis)."""

    name: str

    def recall(
        self,
        ctx: StoreContext,
        omega: np.ndarray,
        phi: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores (H, k), tile ids (H, k)), best first; missing = (-inf, -1)."""
        ...


@runtime_checkable
class RerankStage(Protocol):
    """``geoloc.rerank``: scores of candidates from the query's and the tiles' Φ."""

    name: str

    def rerank(self, query_phi: np.ndarray, tile_phi: np.ndarray) -> np.ndarray:
        """(H, N) scores of N tiles for each of H heading hypotheses; higher is better."""
        ...


@runtime_checkable
class ConsistencyStage(Protocol):
    """``geoloc.consistency``: scene-graph agreement of a frame and a tile (see consistency.py)."""

    name: str

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


@runtime_checkable
class PriorStage(Protocol):
    """``geoloc.priors``: restrict the tiles searched and/or the headings tried."""

    name: str

    def allowed_ids(self, ctx: StoreContext, prior: Prior | None) -> np.ndarray | None:
        """Tile ids the search is restricted to (None: no restriction)."""
        ...

    def headings(self, frame: Frame, default: list[float]) -> list[float]:
        """Heading hypotheses to try (``default`` when the prior knows nothing)."""
        ...


# ---------------------------------------------------------------------------------------------
# built-ins


class FaissRecall:
    """Ω search in the encoder's FAISS index (:class:`geoloc.store.OmegaIndex`)."""

    name = "faiss"

    def recall(
        self,
        ctx: StoreContext,
        omega: np.ndarray,
        phi: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS inner product (= cosine) over Ω, restricted to ``allowed_ids`` if given."""
        scores, ids = ctx.index.search(
            np.ascontiguousarray(omega, dtype=np.float32), k, allowed_ids=allowed_ids
        )
        return np.asarray(scores), np.asarray(ids)


class PgvectorRecall:
    """Φ k-NN in pgvector (HNSW): no FAISS needed; for small databases."""

    name = "pgvector"

    def __init__(self, ef_search: int = 100) -> None:
        self.ef_search = int(ef_search)

    def recall(
        self,
        ctx: StoreContext,
        omega: np.ndarray,
        phi: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity 1 - distance of the Φ nearest tiles, per heading."""
        from geoloc.store import repository as repo

        h = phi.shape[0]
        scores = np.full((h, k), -np.inf, dtype=np.float32)
        ids = np.full((h, k), -1, dtype=np.int64)
        allowed = None if allowed_ids is None else set(int(i) for i in allowed_ids)
        for i in range(h):
            kk = k if allowed is None else min(4 * k + 64, 10_000)
            hits = repo.knn_phi(ctx.db, ctx.encoder_id, phi[i], k=kk, ef_search=self.ef_search)
            if allowed is not None:
                hits = [x for x in hits if x[0] in allowed]
            for j, (tid, dist) in enumerate(hits[:k]):
                scores[i, j] = 1.0 - float(dist)
                ids[i, j] = int(tid)
        return scores, ids


class PhiCosineRerank:
    """Cosine similarity of Φ (the CSMG scene-graph descriptor)."""

    name = "phi-cosine"

    def rerank(self, query_phi: np.ndarray, tile_phi: np.ndarray) -> np.ndarray:
        """(H, N) cosines."""
        q = np.asarray(query_phi, dtype=np.float32)
        t = np.asarray(tile_phi, dtype=np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        return np.asarray(q @ t.T)


class GnssRadiusPrior:
    """``--prior LAT,LON,RADIUS_M``: only tiles whose centre lies within the radius answer."""

    name = "gnss-radius"

    def allowed_ids(self, ctx: StoreContext, prior: Prior | None) -> np.ndarray | None:
        """Ids of complete tiles within the prior's radius (geodesic), or None without a prior."""
        if prior is None:
            return None
        from geoloc.store import repository as repo

        return np.asarray(
            repo.tile_ids_within(ctx.db, ctx.encoder_id, prior.lat, prior.lon, prior.radius_m),
            dtype=np.int64,
        )

    def headings(self, frame: Frame, default: list[float]) -> list[float]:
        """No heading information."""
        return default


class HeadingPrior:
    """A known heading (``--heading`` or DJI XMP gimbal/flight yaw) replaces the rotation search.

    ``tolerance_deg`` > 0 adds hypotheses at +- that angle around the known heading.
    """

    name = "heading"

    def __init__(self, tolerance_deg: float = 0.0, use_xmp: bool = True) -> None:
        self.tolerance_deg = float(tolerance_deg)
        self.use_xmp = bool(use_xmp)

    def allowed_ids(self, ctx: StoreContext, prior: Prior | None) -> np.ndarray | None:
        """No position information."""
        return None

    def headings(self, frame: Frame, default: list[float]) -> list[float]:
        """[heading] (+- tolerance) when the frame's heading is known, else ``default``."""
        if frame.heading_deg is None or (frame.heading_source == "xmp" and not self.use_xmp):
            return default
        h = frame.heading_deg % 360.0
        if self.tolerance_deg > 0:
            return [h, (h - self.tolerance_deg) % 360.0, (h + self.tolerance_deg) % 360.0]
        return [h]


# ---------------------------------------------------------------------------------------------
# instantiation with parameter checking


def instantiate(group: str, name: str, params: dict[str, Any]) -> Any:
    """Load plugin ``name`` of ``group`` and build it with ``params``.

    Unknown plugin -> ConfigError listing the valid names; a parameter the plugin does not take
    -> ConfigError listing its parameters.
    """
    from geoloc import plugins

    ensure_builtins()
    factory = plugins.load(group, name)
    stage = group.split(".")[-1]
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        sig = None
    if sig is not None:
        accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        valid = [
            p.name
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        ]
        bad = sorted(set(params) - set(valid))
        if bad and not accepts_kwargs:
            raise ConfigError(
                f"{stage} plugin {name!r}: unknown parameter(s) {', '.join(bad)}; "
                f"valid: {', '.join(valid) or 'none'}"
            )
    try:
        obj = factory(**params)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"{stage} plugin {name!r}: bad parameters: {exc}") from exc
    if not hasattr(obj, "name"):
        try:
            obj.name = name
        except AttributeError:  # pragma: no cover
            pass
    return obj


def check_protocol(stage: str, obj: Any) -> None:
    """ConfigError when a plugin object lacks its stage's methods."""
    needed: dict[str, Sequence[str]] = {
        "recall": ("recall",),
        "rerank": ("rerank",),
        "consistency": ("score", "combine", "refined_centre"),
        "verify": ("verify",),
        "priors": ("allowed_ids", "headings"),
    }
    missing = [m for m in needed[stage] if not callable(getattr(obj, m, None))]
    if missing:
        raise ConfigError(
            f"{stage} plugin {getattr(obj, 'name', type(obj).__name__)!r} does not implement "
            f"{', '.join(missing)}"
        )


__all__ = [
    "BUILTIN_STAGES",
    "ConsistencyStage",
    "FaissRecall",
    "GnssRadiusPrior",
    "HeadingPrior",
    "NodeCentroidConsistency",
    "PgvectorRecall",
    "PhiCosineRerank",
    "Prior",
    "PriorStage",
    "RecallStage",
    "RerankStage",
    "StoreContext",
    "Verifier",
    "check_protocol",
    "ensure_builtins",
    "instantiate",
]
