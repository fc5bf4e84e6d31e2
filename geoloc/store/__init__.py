"""The tile store: embedded Postgres + pgvector (Φ, tiles, orthomosaics) and the FAISS Ω index.

:class:`TileStore` owns both as one unit; :class:`Candidate` is the tile record it returns.
Everything is imported lazily so ``import geoloc.store`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoloc.store.database import Database, open_database
    from geoloc.store.faiss_store import OmegaIndex
    from geoloc.store.records import Candidate, RasterRecord, TileRecord
    from geoloc.store.tile_features import FeatureSpec, TileKeypoints
    from geoloc.store.tile_store import TileStore

__all__ = [
    "Candidate",
    "Database",
    "FeatureSpec",
    "OmegaIndex",
    "RasterRecord",
    "TileKeypoints",
    "TileRecord",
    "TileStore",
    "open_database",
]

_LAZY = {
    "Database": "geoloc.store.database",
    "open_database": "geoloc.store.database",
    "OmegaIndex": "geoloc.store.faiss_store",
    "Candidate": "geoloc.store.records",
    "RasterRecord": "geoloc.store.records",
    "TileRecord": "geoloc.store.records",
    "TileStore": "geoloc.store.tile_store",
    "FeatureSpec": "geoloc.store.tile_features",
    "TileKeypoints": "geoloc.store.tile_features",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module), name)
