"""The tile store: embedded Postgres + pgvector (Φ, tiles, orthomosaics) and the FAISS Ω index.

``open_database`` and ``OmegaIndex`` are imported lazily so ``import geoloc.store`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoloc.store.database import Database, open_database
    from geoloc.store.faiss_store import OmegaIndex

__all__ = ["Database", "OmegaIndex", "open_database"]


def __getattr__(name: str) -> Any:
    if name in ("Database", "open_database"):
        from geoloc.store import database

        return getattr(database, name)
    if name == "OmegaIndex":
        from geoloc.store.faiss_store import OmegaIndex

        return OmegaIndex
    raise AttributeError(name)
