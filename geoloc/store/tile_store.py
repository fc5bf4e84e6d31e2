"""``TileStore``: Postgres (tiles, Φ, orthomosaics) and the encoder's Ω FAISS index as one unit.

Read side (the localizer)::

    with TileStore.open(settings, encoder_sha256=sha, encoder_name=name) as store:
        scores, ids = store.search(omega, k=50, allowed_ids=store.within(lat, lon, 300.0))
        cands = store.candidates(ids[0])

Only tiles of ``complete`` orthomosaics are ever returned. The store imports neither
``geoloc.models`` nor ``tiling``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from geoloc.config import Settings
from geoloc.errors import EmptyDatabaseError, EncoderMismatchError, GeolocError, IndexError_
from geoloc.store import repository as repo
from geoloc.store.records import Candidate

if TYPE_CHECKING:
    from geoloc.store.database import Database
    from geoloc.store.faiss_store import OmegaIndex

log = logging.getLogger(__name__)

__all__ = ["Candidate", "TileStore"]


class TileStore:
    """The tile database and the Ω index of one encoder, opened together."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        encoder_id: int,
        encoder_sha256: str,
        index: OmegaIndex | None,
        map_gsd_m: float,
        tile_px: int,
    ) -> None:
        self._db = db
        self._settings = settings
        self.encoder_id = int(encoder_id)
        self.encoder_sha256 = encoder_sha256
        self._index = index
        self.map_gsd_m = float(map_gsd_m)
        self.tile_px = int(tile_px)
        self._reopen_failed = False  # warned once that a re-saved index did not open

    # ------------------------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        *,
        encoder_sha256: str,
        encoder_name: str | None = None,
        omega: bool = True,
    ) -> TileStore:
        """Open the database and (``omega=True``) the encoder's Ω index for searching.

        Raises EncoderMismatchError when the database holds tiles of other encoder weights only,
        EmptyDatabaseError when nothing is ingested for this encoder, IndexError_ when ``omega``
        and the index is missing or corrupt, DatabaseError when the database is unreachable.
        """
        from geoloc.store.database import open_database

        settings = settings or Settings.from_env()
        db = open_database(settings)
        try:
            return cls._open_on(db, settings, encoder_sha256, encoder_name, omega)
        except BaseException:
            db.dispose()
            raise

    @classmethod
    def _open_on(
        cls,
        db: Database,
        settings: Settings,
        sha: str,
        name: str | None,
        omega: bool,
    ) -> TileStore:
        row = repo.find_encoder(db, sha, name=name)
        label = f"{name or 'encoder'} ({sha[:12]})"
        if row is None or repo.complete_tile_ids(db, row.id).size == 0:
            others = [
                f"{e.name} ({e.weights_sha256[:12]})"
                for e in repo.list_encoders(db)
                if e.weights_sha256 != sha and repo.complete_tile_ids(db, e.id).size
            ]
            if others:
                raise EncoderMismatchError(
                    f"the database was built with encoder {', '.join(others)}, not "
                    f"{label}: pass the same --encoder/--checkpoint, or ingest again with this one"
                )
            raise EmptyDatabaseError(
                f"{db.url}: no complete orthomosaic for encoder {label}: "
                "run `geoloc ingest RASTER` first"
            )
        orthos = [o for o in repo.list_orthomosaics(db, row.id) if o.status == "complete"]
        gsds = Counter(round(float(o.target_gsd_m or o.gsd_m), 6) for o in orthos)
        sizes = Counter(int(o.tile_size) for o in orthos)
        map_gsd = gsds.most_common(1)[0][0]
        if len(gsds) > 1:
            log.warning(
                "orthomosaics ingested at %d different GSDs; frames are scaled to %.3f m/px",
                len(gsds),
                map_gsd,
            )
        index = None
        if omega:
            from geoloc.store.faiss_store import OmegaIndex

            index = OmegaIndex.open(settings, row.weights_sha256, create=False)
        return cls(
            db,
            settings,
            encoder_id=row.id,
            encoder_sha256=row.weights_sha256,
            index=index,
            map_gsd_m=map_gsd,
            tile_px=sizes.most_common(1)[0][0],
        )

    def close(self) -> None:
        """Dispose of the database connections (the index needs no closing)."""
        self._db.dispose()

    def __enter__(self) -> TileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> Database:
        """The open database (for maintenance commands; the localizer needs only the methods)."""
        return self._db

    @property
    def settings(self) -> Settings:
        """The settings the store was opened with."""
        return self._settings

    @property
    def index(self) -> OmegaIndex | None:
        """The Ω index (None when opened with ``omega=False``)."""
        return self._index

    # ------------------------------------------------------------------------------- reading
    def search(
        self, omega: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` tiles most similar by Ω to each query row: (scores (H, k), ids (H, k)).

        Best first; missing results are ``-inf`` / ``-1``. ``allowed_ids`` restricts the search.
        """
        if self._index is None:
            raise IndexError_("the tile store was opened without its Ω index (omega=False)")
        scores, ids = self._index.search(
            np.ascontiguousarray(omega, dtype=np.float32), k, allowed_ids=allowed_ids
        )
        return np.asarray(scores), np.asarray(ids)

    def knn_phi(self, phi: np.ndarray, k: int, ef_search: int = 100) -> list[tuple[int, float]]:
        """The ``k`` tiles nearest by Φ cosine distance (pgvector HNSW): ``(id, distance)``."""
        return repo.knn_phi(self._db, self.encoder_id, phi, k=k, ef_search=ef_search)

    def candidates(self, tile_ids: Sequence[int] | np.ndarray) -> list[Candidate]:
        """The tiles with these ids, in input order; unknown or incomplete ones are left out."""
        return repo.fetch_candidates(self._db, self.encoder_id, tile_ids)

    def within(self, lat: float, lon: float, radius_m: float) -> np.ndarray:
        """Sorted int64 ids of the tiles whose centre is within ``radius_m`` (geodesic)."""
        return repo.tile_ids_within(self._db, self.encoder_id, lat, lon, radius_m)

    def reopen_if_changed(self) -> bool:
        """Re-open the Ω index when another process saved it (an ingest while this is warm).

        Returns True when a fresh index was loaded. When the saved index cannot be opened the
        one already open keeps answering (warned once until a re-open succeeds).
        """
        index = self._index
        if index is None or not index.changed_on_disk():
            return False
        from geoloc.store.faiss_store import OmegaIndex

        try:
            fresh = OmegaIndex.open(self._settings, index.encoder_sha256, create=False)
        except GeolocError as exc:
            if not self._reopen_failed:
                log.warning("Ω index changed on disk but cannot be re-opened, kept: %s", exc)
            self._reopen_failed = True
            return False
        self._index, self._reopen_failed = fresh, False
        log.info("Ω index changed on disk: re-opened (%d tiles)", len(fresh))
        return True
