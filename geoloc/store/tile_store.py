"""``TileStore``: Postgres (tiles, Φ, orthomosaics) and the encoder's Ω FAISS index as one unit.

Read side (the localizer)::

    with TileStore.open(settings, encoder_sha256=sha, encoder_name=name) as store:
        scores, ids = store.search(omega, k=50, allowed_ids=store.within(lat, lon, 300.0))
        cands = store.candidates(ids[0])

Write side (ingest), one raster at a time under the database-wide ingest lock::

    with TileStore.for_encoder(settings, name=..., config=..., weights_sha256=...,
                               omega_dim=..., phi_dim=...) as store, store.locked():
        store.recover()
        oid = store.begin(raster_record)       # an ``ingesting`` row: invisible to searches
        store.use_features(XFEAT_SPEC)         # optional: per-tile local features
        store.add(tiles, omega, phi, areas, centroids, features=feats)   # per batch
        store.commit(kept, skipped)            # FAISS, features saved, *then* row complete
        # or store.abort() on any failure

Why the two stores never disagree for a searcher: Ω of tiles that are not yet ``complete`` are
only in the in-memory index until :meth:`commit` saves it (atomically: new files + rename), and
the row becomes ``complete`` only after that save. A crash in between leaves an ``ingesting`` row
and possibly saved Ω ids of it; :meth:`recover` (under the lock, so no live writer owns them)
deletes such rows and removes every FAISS id that is not a tile of a complete orthomosaic.
The per-tile local features (:mod:`geoloc.store.tile_features`, in the index folder) follow the
same rule: saved after the Ω index and before the row becomes ``complete``, reconciled by
:meth:`recover` like the FAISS ids.

Only tiles of ``complete`` orthomosaics are ever returned. The store imports neither
``geoloc.models`` nor ``tiling``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc.config import Settings
from geoloc.errors import (
    ConfigError,
    DatabaseError,
    EmptyDatabaseError,
    EncoderMismatchError,
    GeolocError,
    IndexError_,
    NoOmegaIndexError,
)
from geoloc.lru import Lru
from geoloc.store import repository as repo
from geoloc.store.records import (
    Candidate,
    OrthoGrid,
    RasterRecord,
    TileGrid,
    TileRecord,
    TileRef,
)
from geoloc.store.tile_features import (
    DEFAULT_DESC_BITS,
    FeatureSpec,
    FeatureStore,
    TileKeypoints,
    TilePoints,
)

if TYPE_CHECKING:
    from geoloc.store.database import Database
    from geoloc.store.faiss_store import OmegaIndex
    from geoloc.store.maintenance import VerifyReport

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OMEGA",
    "Candidate",
    "FeatureSpec",
    "GsdLayer",
    "RasterRecord",
    "TileKeypoints",
    "TileRecord",
    "TileStore",
    "WriteTimings",
]


@dataclass
class WriteTimings:
    """Seconds the store spent writing the current raster (reset by :meth:`TileStore.begin`)."""

    db_s: float = 0.0
    faiss_add_s: float = 0.0
    faiss_save_s: float = 0.0
    features_save_s: float = 0.0


#: Whether a new store keeps the Ω FAISS index. Only Ω recall (the ``seed`` preset) reads it;
#: the default chain recalls by Φ in Postgres, and the index is most of the bytes per tile.
DEFAULT_OMEGA = False

#: Orthomosaic grids (:meth:`TileStore.grid`) kept in memory: one int64 per grid cell each.
GRID_CACHE = 256

#: Where :meth:`TileStore.search_phi` re-ranks its scan's candidates.
RESCORES = ("postgres", "memory")

#: Orthomosaics whose tile GSDs differ by less than this (relative) form one GSD layer: a frame
#: scaled to one of them is within the scale tolerance of every matcher for the others.
LAYER_TOLERANCE = 0.02


@dataclass(frozen=True)
class GsdLayer:
    """Tiles of one ground sampling distance: the complete orthomosaics tiled at ``gsd_m``
    (within :data:`LAYER_TOLERANCE`) with ``tile_px`` tiles; ``tiles`` is their tile count."""

    gsd_m: float
    tile_px: int
    orthomosaic_ids: tuple[int, ...]
    tiles: int

    @property
    def tile_ground_m(self) -> float:
        """Side of one tile on the ground (m)."""
        return self.tile_px * self.gsd_m


def gsd_layers(orthos: Sequence[repo.OrthomosaicRow]) -> list[GsdLayer]:
    """The GSD layers of these orthomosaics (complete ones only), most tiles first.

    A layer's GSD is that of its orthomosaics holding the most tiles (rounded to the µm, as
    ingest records it); ties between layers go to the finer GSD.
    """
    rows = sorted(
        (
            (round(float(o.target_gsd_m or o.gsd_m), 6), int(o.tile_size), o)
            for o in orthos
            if o.status == "complete"
        ),
        key=lambda r: (r[1], r[0], r[2].id),
    )
    groups: list[list[tuple[float, int, repo.OrthomosaicRow]]] = []
    for r in rows:
        g = groups[-1] if groups else None
        if g is not None and g[0][1] == r[1] and r[0] <= g[0][0] * (1.0 + LAYER_TOLERANCE):
            g.append(r)
        else:
            groups.append([r])
    layers = []
    for g in groups:
        per_gsd: Counter[float] = Counter()
        for gsd, _px, o in g:
            per_gsd[gsd] += max(int(o.tiles_kept), 0)
        gsd = max(sorted(per_gsd), key=lambda k: per_gsd[k])
        ids = tuple(sorted(int(o.id) for _, _, o in g))
        layers.append(GsdLayer(gsd, g[0][1], ids, sum(per_gsd.values())))
    return sorted(layers, key=lambda la: (-la.tiles, la.gsd_m))


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
        has_omega: bool = True,
    ) -> None:
        self._db = db
        self._settings = settings
        self.encoder_id = int(encoder_id)
        self.encoder_sha256 = encoder_sha256
        #: the store keeps the Ω index (written by ingest, read by Ω recall); recorded per
        #: encoder in the database (``encoders.has_omega``)
        self.has_omega = bool(has_omega)
        self._index = index
        self.map_gsd_m = float(map_gsd_m)
        self.tile_px = int(tile_px)
        self._layers: list[GsdLayer] | None = None  # read on first use, again after a re-open
        # Φ sign codes for the in-memory recall scan, with the orthomosaics stamp they are of
        self._codes: (
            tuple[tuple[int, int, str], np.ndarray, np.ndarray, Any, np.ndarray | None] | None
        ) = None
        self._layer_ids: dict[tuple[int, ...], np.ndarray] = {}
        self._grids: Lru[int, OrthoGrid] = Lru(GRID_CACHE)
        self._reopen_failed = False  # warned once that a re-saved index did not open
        self._omega_dim: int | None = None  # set by for_encoder: the write side's Ω width
        self._lock: contextlib.ExitStack | None = None
        self._writing: int | None = None  # orthomosaic id between begin and commit/abort
        self._writing_stride = 0  # grid stride (output px) of the raster being written
        self._adding_omega = False  # a rebuild adds the Ω index to a store without one
        self._features: FeatureStore | None = None  # opened on first use
        self.write_timings = WriteTimings()
        # a reader without the Ω index in memory learns from the database that orthomosaics
        # (maybe a new GSD layer) were added or removed, whether or not the store keeps Ω
        self._ortho_stamp = None if index is not None else repo.orthomosaics_stamp(db, encoder_id)

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
        EmptyDatabaseError when nothing is ingested for this encoder, NoOmegaIndexError when
        ``omega`` and the store was ingested without its Ω index, IndexError_ when ``omega`` and
        the index is missing or corrupt, DatabaseError when the database is unreachable.
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
        if omega and not row.has_omega:
            raise NoOmegaIndexError(
                f"{db.url}: the store of encoder {label} has no Ω index (ingested with "
                "--no-omega), which Ω recall (--preset seed) needs: run `geoloc index rebuild "
                "--omega`, or use a preset that recalls by Φ (fast, accurate, realtime)"
            )
        map_gsd, tile_px = _map_grid(db, row.id, warn=True)
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
            tile_px=tile_px,
            has_omega=row.has_omega,
        )

    @classmethod
    def for_encoder(
        cls,
        settings: Settings | None = None,
        *,
        name: str,
        config: dict[str, Any],
        weights_sha256: str,
        omega_dim: int,
        phi_dim: int,
        db: Database | None = None,
        omega: bool | None = None,
    ) -> TileStore:
        """Open the store to write tiles of this encoder (registered on first use).

        The database may be empty; ``map_gsd_m``/``tile_px`` are those of what is already
        complete (0 when nothing is). ``db`` is an already open database to take over (closed
        with the store). ``omega``: keep the Ω index (None: as the store is; a new store
        :data:`DEFAULT_OMEGA`). A store without
        complete tiles takes the setting; one with tiles keeps its own (a warning says so:
        ``geoloc index rebuild --omega`` adds the index to a store). DatabaseError when it is
        unreachable or the encoder is registered with other dimensions.
        """
        from geoloc.store.database import open_database

        settings = settings or Settings.from_env()
        db = db if db is not None else open_database(settings)
        try:
            encoder_id = repo.get_or_create_encoder(
                db,
                name=name,
                config=config,
                weights_sha256=weights_sha256,
                omega_dim=int(omega_dim),
                phi_dim=int(phi_dim),
                has_omega=DEFAULT_OMEGA if omega is None else bool(omega),
            )
            gsd, px = _map_grid(db, encoder_id, warn=False)
            has_omega = _omega_setting(db, encoder_id, omega)
        except BaseException:
            db.dispose()
            raise
        store = cls(
            db,
            settings,
            encoder_id=encoder_id,
            encoder_sha256=weights_sha256.lower(),
            index=None,
            map_gsd_m=gsd,
            tile_px=px,
            has_omega=has_omega,
        )
        store._omega_dim = int(omega_dim)
        return store

    @classmethod
    def for_registered(cls, settings: Settings | None = None, spec: str | None = None) -> TileStore:
        """Open the store of a registered encoder for maintenance (verify, rebuild).

        ``spec`` is an encoder id, name or weights SHA-256 prefix; None when the database holds
        exactly one encoder. EmptyDatabaseError / ConfigError when none or several match.
        """
        from geoloc.store.database import open_database
        from geoloc.store.maintenance import resolve_encoder

        settings = settings or Settings.from_env()
        db = open_database(settings)
        try:
            enc = resolve_encoder(db, spec)
            return cls.for_encoder(
                settings,
                name=enc.name,
                config=enc.config,
                weights_sha256=enc.weights_sha256,
                omega_dim=enc.omega_dim,
                phi_dim=enc.phi_dim,
                db=db,
            )
        except BaseException:
            db.dispose()
            raise

    def close(self) -> None:
        """Release the ingest lock if held and dispose of the database connections."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
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
    @property
    def layers(self) -> list[GsdLayer]:
        """The store's GSD layers, the main one (most tiles: ``map_gsd_m``) first."""
        if self._layers is None:
            self._layers = gsd_layers(repo.list_orthomosaics(self._db, self.encoder_id))
            self._layer_ids = {}
        return self._layers

    def layer_tile_ids(self, layers: Sequence[int]) -> np.ndarray:
        """Sorted int64 ids of the tiles of these layers (indices into :attr:`layers`)."""
        key = tuple(sorted({int(i) for i in layers}))
        hit = self._layer_ids.get(key)
        if hit is None:
            ls = self.layers
            orthos = sorted({o for i in key for o in ls[i].orthomosaic_ids})
            hit = repo.tile_ids_of_orthomosaics(self._db, self.encoder_id, orthos)
            self._layer_ids[key] = hit
        return hit

    def search(
        self, omega: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` tiles most similar by Ω to each query row: (scores (H, k), ids (H, k)).

        Best first; missing results are ``-inf`` / ``-1``. ``allowed_ids`` restricts the search.
        """
        if self._index is None:
            raise IndexError_(
                "the tile store was opened without its Ω index (omega=False)"
                if self.has_omega
                else "the store has no Ω index (ingested with --no-omega): "
                "run `geoloc index rebuild --omega`"
            )
        scores, ids = self._index.search(
            np.ascontiguousarray(omega, dtype=np.float32), k, allowed_ids=allowed_ids
        )
        return np.asarray(scores), np.asarray(ids)

    def knn_phi(
        self,
        phi: np.ndarray,
        k: int,
        ef_search: int = 100,
        allowed_ids: np.ndarray | None = None,
    ) -> list[tuple[int, float]]:
        """The ``k`` tiles nearest by Φ cosine distance (pgvector HNSW): ``(id, distance)``."""
        return repo.knn_phi(self._db, self.encoder_id, phi, k, ef_search, allowed_ids)

    def search_phi(
        self,
        phi: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None = None,
        ef_search: int = 100,
        scan: bool = False,
        rescore: str = "postgres",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Φ top-``k`` of each row of ``phi`` (H, P), like :meth:`search` for Ω: (cosine
        scores (H, k), tile ids (H, k)), best first, missing = (-inf, -1). A restriction
        (``allowed_ids``) of a few thousand tiles is scored exactly, a larger search by HNSW.

        ``scan``: the Hamming prefilter scans Φ's sign bits held in this process
        (:func:`repository.knn_phi_scan`; 128 B per tile, read from Postgres on first use and
        again after an ingest or delete changes the complete orthomosaics, and as much again
        for their FAISS binary index) instead of walking the HNSW index. ``rescore``
        ``memory`` (with ``scan``): its candidates are re-ranked by Φ codes held here too
        (:func:`geoloc.quantize.unit_int8`, 1 KiB per tile, read with the sign bits) instead of
        by the halfvec cosine in Postgres; the scores are then the codes' cosines."""
        if rescore not in RESCORES:
            raise ConfigError(f"rescore must be one of {', '.join(RESCORES)}, got {rescore!r}")
        phi = np.asarray(phi, dtype=np.float32).reshape(len(phi), -1)
        if scan:
            in_memory = rescore == "memory"
            ids, codes, hamming, phi_codes = self._sign_codes(with_phi=in_memory)
            hits = repo.knn_phi_scan(
                self._db,
                self.encoder_id,
                phi,
                k,
                ids,
                codes,
                allowed_ids,
                hamming,
                phi_codes if in_memory else None,
            )
        else:
            hits = repo.knn_phi_many(self._db, self.encoder_id, phi, k, ef_search, allowed_ids)
        scores = np.full((phi.shape[0], k), -np.inf, dtype=np.float32)
        ids = np.full((phi.shape[0], k), -1, dtype=np.int64)
        for h, row in enumerate(hits):
            for j, (tid, dist) in enumerate(row[:k]):
                scores[h, j], ids[h, j] = 1.0 - dist, tid
        return scores, ids

    @property
    def sign_codes_loaded(self) -> bool:
        """True once a scan search read Φ's sign codes into this process (:meth:`search_phi`)."""
        return self._codes is not None

    def _sign_codes(
        self, with_phi: bool = False
    ) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray | None]:
        """The (ids, sign codes, -, Φ codes) of :func:`repository.phi_sign_codes` with the sign
        codes' :func:`repository.hamming_index` third, cached until the complete orthomosaics
        change (their stamp is one small query per search); read again when ``with_phi`` asks
        for Φ codes the cache lacks."""
        stamp = repo.orthomosaics_stamp(self._db, self.encoder_id)
        cached = self._codes
        if cached is None or cached[0] != stamp or (with_phi and cached[4] is None):
            ids, codes, phi = repo.phi_sign_codes(self._db, self.encoder_id, with_phi)
            self._codes = cached = (stamp, ids, codes, repo.hamming_index(codes), phi)
        return cached[1], cached[2], cached[3], cached[4]

    def candidates(
        self, tile_ids: Sequence[int] | np.ndarray, embeddings: bool = True
    ) -> list[Candidate]:
        """The tiles with these ids, in input order; unknown or incomplete ones are left out.
        ``embeddings`` False: geometry only (Φ and the node arrays empty), for neighbours."""
        return repo.fetch_candidates(self._db, self.encoder_id, tile_ids, embeddings)

    def within(self, lat: float, lon: float, radius_m: float) -> np.ndarray:
        """Sorted int64 ids of the tiles whose centre is within ``radius_m`` (geodesic)."""
        return repo.tile_ids_within(self._db, self.encoder_id, lat, lon, radius_m)

    def within_many(
        self,
        circles: Sequence[tuple[float, float, float]],
        orthomosaics: Sequence[int | None] | None = None,
    ) -> list[np.ndarray]:
        """:meth:`within` of every ``(lat, lon, radius_m)``, in one query; ``orthomosaics``
        (one id or None per circle) keeps a circle's tiles of that orthomosaic only."""
        return repo.tile_ids_within_many(self._db, self.encoder_id, circles, orthomosaics)

    def grids_within_many(
        self,
        circles: Sequence[tuple[float, float, float]],
        orthomosaics: Sequence[int | None] | None = None,
    ) -> list[list[TileGrid]]:
        """:meth:`within_many` with each tile's grid place (:class:`TileGrid`), same query."""
        return repo.tiles_within_many(self._db, self.encoder_id, circles, orthomosaics)

    def grid(self, orthomosaic_id: int) -> OrthoGrid | None:
        """The tile ids of a complete orthomosaic by grid cell (:class:`OrthoGrid`), or None.

        Cached: the tiles of a complete orthomosaic never change (a re-ingest or a rebuild
        that changes them makes a new orthomosaic; a deleted one gives no more candidates)."""
        oid = int(orthomosaic_id)
        g = self._grids.get(oid)
        if g is None:
            g = repo.orthomosaic_grid(self._db, self.encoder_id, oid)
            if g is None:
                return None
            self._grids.put(oid, g)
            self._grids.trim()
        return g

    def preload_grids(self) -> int:
        """Load the grids of the store's orthomosaics (the largest first, as many as the grid
        cache keeps) in two queries, instead of one query per orthomosaic as frames meet them;
        returns how many are cached."""
        for g in repo.orthomosaic_grids(self._db, self.encoder_id, GRID_CACHE):
            self._grids.put(int(g.orthomosaic_id), g)
        self._grids.trim()
        return len(self._grids)

    @property
    def features_dir(self) -> Path:
        """Folder of the per-tile local features (inside the encoder's Ω index folder)."""
        return FeatureStore.path_for(self._omega_dir())

    def _omega_dir(self) -> Path:
        from geoloc.store.faiss_store import OmegaIndex

        return OmegaIndex.path_for(self._settings, self.encoder_sha256)

    def _feature_store(self) -> FeatureStore:
        if self._features is None:
            self._features = _open_features(self.features_dir)
        return self._features

    @property
    def feature_spec(self) -> FeatureSpec | None:
        """What the stored local features are; None when this store has none (an older
        database, or ingested with ``--no-features``): verification then reads the rasters."""
        return self._feature_store().spec

    def features(self, tile_ids: Sequence[int] | np.ndarray) -> dict[int, TileKeypoints]:
        """Stored keypoints of these tiles, keyed by id; tiles without (trustworthy) features
        are absent, never an error.

        ``xy`` is in each tile's orthomosaic grid (pixel-centre convention):
        :func:`geoloc.store.tile_features.grid_transform` of the tile's :class:`Candidate` maps
        ``xy + 0.5`` to its CRS (``grid_to_lonlat`` to lon/lat); tiles of one orthomosaic share
        that grid, so a region is the union of neighbouring tiles' keypoints.
        """
        return self._feature_store().get(np.asarray(tile_ids, dtype=np.int64).ravel().tolist())

    def feature_points(self, tile_ids: Sequence[int] | np.ndarray) -> TilePoints:
        """The stored keypoint records of these tiles, not decoded, in the order asked (tiles
        without trustworthy features left out): :meth:`features` for a caller that keeps only
        some keypoints of many tiles and decodes those
        (:meth:`~geoloc.store.tile_features.TilePoints.decode`)."""
        return self._feature_store().points(np.asarray(tile_ids, dtype=np.int64).ravel().tolist())

    def reopen_if_changed(self) -> bool:
        """Re-open the Ω index (and the features) when another process saved them (an ingest
        while this is warm).

        Returns True when a fresh index was loaded. When the saved index cannot be opened the
        one already open keeps answering (warned once until a re-open succeeds).
        """
        feats = self._features
        if feats is not None and feats.changed_on_disk() and self._writing is None:
            try:
                self._features = FeatureStore.open(feats.directory)
            except GeolocError as exc:
                log.warning("features changed on disk but cannot be re-opened, kept: %s", exc)
        index = self._index
        if index is None:
            stamp = repo.orthomosaics_stamp(self._db, self.encoder_id)
            if stamp != self._ortho_stamp:
                self._ortho_stamp, self._layers = stamp, None
            return False
        if not index.changed_on_disk():
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
        self._layers = None  # an ingest may have added an orthomosaic (or a GSD)
        log.info("Ω index changed on disk: re-opened (%d tiles)", len(fresh))
        return True

    # ------------------------------------------------------------------------------- writing
    @contextlib.contextmanager
    def locked(self, *, wait: bool = True) -> Iterator[None]:
        """Hold the database-wide ingest lock (a Postgres session advisory lock).

        Every writer of any encoder takes it, so writes serialise; the lock dies with the
        connection, so a killed process never leaves it held. ``wait=False`` raises
        DatabaseError instead of waiting for another ingest.
        """
        if self._lock is not None:  # re-entrant: recover() inside an explicit locked()
            yield
            return
        stack = contextlib.ExitStack()
        stack.enter_context(repo.ingest_lock(self._db, wait=wait))
        self._lock = stack
        try:
            yield
        finally:
            self._lock = None
            stack.close()

    def _write_index(self) -> OmegaIndex:
        """This encoder's index to write into, loaded fresh from disk on first use after
        :meth:`recover`/:meth:`abort` (another process may have saved it meanwhile)."""
        if not self.has_omega:
            raise IndexError_(
                f"{self._db.url}: the store has no Ω index (ingested with --no-omega): "
                "run `geoloc index rebuild --omega`"
            )
        if self._index is None:
            from geoloc.store.faiss_store import OmegaIndex

            kwargs: dict[str, Any] = {"encoder_id": self.encoder_id}
            if self._omega_dim is not None:
                kwargs["omega_dim"] = self._omega_dim
            self._index = OmegaIndex.open(self._settings, self.encoder_sha256, **kwargs)
        return self._index

    def recover(self) -> None:
        """Undo what dead writers left: delete incomplete orthomosaics, then make every FAISS
        index hold exactly the complete tiles (this encoder's, and any other encoder's that has
        incomplete orthomosaics). Takes the ingest lock unless it is held."""
        from geoloc.store.faiss_store import OmegaIndex

        with self.locked():
            self._index = None
            self._features = None
            _reconcile(self._db, self.encoder_id, self._write_index() if self.has_omega else None)
            _reconcile_features(self._db, self.encoder_id, self._feature_store())
            for other in repo.list_encoders(self._db):
                if other.id == self.encoder_id:
                    continue
                if not repo.incomplete_orthomosaics(self._db, other.id):
                    continue
                sha = other.weights_sha256
                exists = other.has_omega and OmegaIndex.exists(self._settings, sha)
                _reconcile(
                    self._db, other.id, OmegaIndex.open(self._settings, sha) if exists else None
                )
                fdir = FeatureStore.path_for(OmegaIndex.path_for(self._settings, sha))
                if FeatureStore.exists(fdir):
                    _reconcile_features(self._db, other.id, FeatureStore.open(fdir))

    def find(self, sha256: str) -> repo.OrthomosaicRow | None:
        """The orthomosaic of this encoder with this file SHA-256 (any status), or None."""
        return repo.find_orthomosaic(self._db, sha256, self.encoder_id)

    def relink(self, sha256: str, path: str) -> list[repo.Relinked]:
        """Point the stored rows of the file with ``sha256`` (every encoder) at ``path``.

        Nothing is re-encoded: the tiles, Φ and Ω stay as they are. Needs :meth:`locked`.
        """
        self._need_lock("relink")
        return repo.relink_sha256(self._db, sha256, path)

    def relink_prefix(
        self, old_prefix: str, new_prefix: str, *, dry_run: bool = False
    ) -> list[repo.Relinked]:
        """Rewrite raster paths under ``old_prefix`` to ``new_prefix`` in one transaction."""
        return repo.relink_prefix(self._db, old_prefix, new_prefix, dry_run=dry_run)

    def check_rasters(self, *, hash_content: bool = True) -> list[repo.RasterCheck]:
        """Stored rasters that are missing, unreadable or changed (and the ``ok`` ones)."""
        return repo.check_rasters(self._db, hash_content=hash_content)

    def _need_lock(self, what: str) -> None:
        if self._lock is None:
            raise DatabaseError(
                f"{self._db.url}: TileStore.{what} needs the ingest lock (locked())"
            )

    def delete(self, orthomosaic_id: int) -> int:
        """Delete one orthomosaic (rows, then its Ω ids, saved atomically); return tile count."""
        self._need_lock("delete")
        removed = np.asarray(repo.delete_orthomosaic(self._db, int(orthomosaic_id)), np.int64)
        if removed.size:
            if self.has_omega:
                index = self._write_index()
                index.remove(removed)
                index.save()
            feats = self._feature_store()
            if feats.remove(removed):
                feats.save()
        return int(removed.size)

    def begin(self, raster: RasterRecord) -> int:
        """Start writing ``raster``: an ``ingesting`` orthomosaic row; return its id.

        Orthomosaics of this encoder with the same SHA-256 (a forced re-ingest) or at the same
        path with another SHA-256 (the file changed: their tiles would point at pixels no longer
        there) are deleted first.
        """
        self._need_lock("begin")
        if self._writing is not None:
            raise DatabaseError(f"orthomosaic {self._writing}: begin() before commit()/abort()")
        from os.path import abspath

        path = abspath(raster.path)
        for old in repo.list_orthomosaics(self._db, self.encoder_id):
            if old.sha256 == raster.sha256 or (old.path == path and old.sha256 != raster.sha256):
                why = "--force" if old.sha256 == raster.sha256 else "the file changed"
                log.info("replacing orthomosaic %d of %s (%s)", old.id, old.path, why)
                self.delete(int(old.id))
        if self.has_omega:
            self._write_index()
        oid = repo.begin_orthomosaic(
            self._db,
            path=path,
            sha256=raster.sha256,
            encoder_id=self.encoder_id,
            crs=raster.crs,
            width=raster.width,
            height=raster.height,
            gsd_m=raster.gsd_m,
            bounds_lonlat=raster.bounds_lonlat,
            footprint_wkt=raster.footprint_wkt,
            tile_size=raster.tile_size,
            stride=raster.stride,
            target_gsd=raster.target_gsd_m,
        )
        self._writing = int(oid)
        self._writing_stride = int(raster.stride)
        self.write_timings = WriteTimings()
        return int(oid)

    def _current(self, what: str) -> int:
        if self._writing is None:
            raise DatabaseError(f"{self._db.url}: TileStore.{what} outside begin()/commit()")
        return self._writing

    def use_features(self, spec: FeatureSpec) -> FeatureSpec:
        """The spec the features of this store are written with (write side).

        A store that already has features keeps its spec (``spec.max_per_tile`` is then only
        advisory); one without gets ``spec``. IndexError_ when the stored features are of
        another extractor, dimension or version: ``geoloc index rebuild --features`` converts
        them.
        """
        feats = self._feature_store()
        if feats.spec is None or (len(feats) == 0 and not feats.problems):
            feats.reset(spec, self._desc_bits())
            return spec
        if not feats.spec.compatible(spec):
            raise IndexError_(
                f"stored features are {feats.spec.extractor} v{feats.spec.version} "
                f"({feats.spec.dim}-d), this ingest makes {spec.extractor} v{spec.version} "
                f"({spec.dim}-d): run `geoloc index rebuild --features`",
                path=str(feats.directory),
            )
        if feats.spec.max_per_tile != spec.max_per_tile:
            log.warning(
                "the store keeps %d keypoints per tile, not %d: kept its setting "
                "(`geoloc index rebuild --features --max-per-tile N` changes it)",
                feats.spec.max_per_tile,
                spec.max_per_tile,
            )
        return feats.spec

    def add(
        self,
        tiles: Sequence[TileRecord | Any],
        omega: np.ndarray,
        phi: np.ndarray,
        node_areas: np.ndarray,
        node_centroids: np.ndarray,
        *,
        features: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    ) -> list[int]:
        """Add a batch of tiles of the raster being written: rows + Φ by one binary COPY, Ω to
        the in-memory index (when the store keeps one), ``features`` (per tile: keypoints xy in
        *tile* pixels, pixel-centre convention, descriptors, scores; after
        :meth:`use_features`) to the in-memory feature store (both saved by :meth:`commit`).
        Returns the new tile ids."""
        oid = self._current("add")
        t0 = time.perf_counter()
        ids = repo.add_tiles(self._db, oid, self.encoder_id, tiles, phi, node_areas, node_centroids)
        t1 = time.perf_counter()
        if self.has_omega:
            self._write_index().add(np.asarray(ids, dtype=np.int64), omega)
        if features is not None:
            recs = [TileRecord.from_tile(t) for t in tiles]
            st = self._writing_stride
            origins = np.array([(r.col * st, r.row * st) for r in recs], dtype=np.int64)
            self._feature_store().add(ids, origins.reshape(-1, 2), recs[0].tile_size, features)
        self.write_timings.db_s += t1 - t0
        self.write_timings.faiss_add_s += time.perf_counter() - t1
        return ids

    def commit(self, kept: int, skipped: int) -> None:
        """Save the index atomically (when the store keeps Ω) and the features, *then* mark the
        orthomosaic complete (searchable)."""
        oid = self._current("commit")
        if self.has_omega:
            t0 = time.perf_counter()
            self._write_index().save()
            self.write_timings.faiss_save_s = time.perf_counter() - t0
            log.debug("orthomosaic %d: FAISS saved", oid)
        feats = self._features
        if feats is not None and feats.dirty:
            t1 = time.perf_counter()
            feats.save()
            self.write_timings.features_save_s = time.perf_counter() - t1
            log.debug("orthomosaic %d: features saved", oid)
        repo.finish_orthomosaic(self._db, oid, kept, skipped)
        self._writing = None
        log.debug("orthomosaic %d complete", oid)

    def abort(self) -> None:
        """Drop the raster being written: its rows now (or, if that fails too, at the next
        :meth:`recover`); its unsaved Ω additions die with the in-memory index."""
        oid, self._writing = self._writing, None
        self._index = None
        self._features = None
        if oid is not None:
            with contextlib.suppress(Exception):
                repo.delete_orthomosaic(self._db, oid)

    # --------------------------------------------------------------------------- maintenance
    def verify(self) -> VerifyReport:
        """Compare the saved FAISS ids and feature ids with the complete tiles in the database,
        and check every feature file's SHA-256."""
        from geoloc.store.maintenance import verify_index

        return verify_index(self._db, self._settings, repo.get_encoder(self._db, self.encoder_id))

    def tiles_to_readd(self) -> list[tuple[repo.OrthomosaicRow, dict[tuple[int, int], int]]]:
        """Complete orthomosaics with tiles, each with its ``(row, col) -> tile id`` cells: what
        a rebuild must re-encode (the rasters at their paths, unchanged)."""
        by_ortho: dict[int, dict[tuple[int, int], int]] = {}
        ref: TileRef
        for ref in repo.tile_refs(self._db, self.encoder_id):
            by_ortho.setdefault(ref.orthomosaic_id, {})[(ref.row, ref.col)] = ref.tile_id
        return [
            (o, by_ortho[o.id])
            for o in repo.list_orthomosaics(self._db, self.encoder_id)
            if o.status == "complete" and o.id in by_ortho
        ]

    def reset_index(self, *, add_omega: bool = False, **index_kwargs: Any) -> None:
        """Start an empty index for this encoder (replaces the saved one at :meth:`save_index`);
        ``index_kwargs`` are :class:`OmegaIndex` parameters. A store without Ω needs
        ``add_omega`` (it keeps the index from :meth:`save_index` on)."""
        self._need_lock("reset_index")
        from geoloc.store.faiss_store import OmegaIndex

        if not self.has_omega and not add_omega:
            raise NoOmegaIndexError(
                f"{self._db.url}: the store has no Ω index (ingested with --no-omega): "
                "`geoloc index rebuild --omega` adds it"
            )
        self._adding_omega = not self.has_omega
        self.has_omega = True  # the writes of the rebuild go to the new index
        enc = repo.get_encoder(self._db, self.encoder_id)
        self._index = OmegaIndex.create(
            self._settings,
            self.encoder_sha256,
            omega_dim=int(enc.omega_dim),
            encoder_id=self.encoder_id,
            **index_kwargs,
        )

    def readd(self, tile_ids: Sequence[int] | np.ndarray, omega: np.ndarray) -> None:
        """Add Ω of tiles already in the database (after :meth:`reset_index`)."""
        self._need_lock("readd")
        self._write_index().add(np.asarray(tile_ids, dtype=np.int64), omega)

    def reset_features(self, spec: FeatureSpec, *, keep: bool = False) -> FeatureSpec:
        """Start rebuilding the features (replaced at :meth:`save_features`): empty with
        ``spec``, or (``keep``, when the stored spec is the same) keeping the intact features
        of complete tiles. Returns the spec written."""
        self._need_lock("reset_features")
        feats = _open_features(self.features_dir)
        if keep and feats.spec == spec:
            _reconcile_features(self._db, self.encoder_id, feats, save=False)
        else:
            feats.reset(spec, self._desc_bits())
        self._features = feats
        return spec

    def _desc_bits(self) -> int:
        """Bits per descriptor value for features written from scratch (settings, or the
        feature store's default)."""
        bits = self._settings.features_bits
        return DEFAULT_DESC_BITS if bits is None else int(bits)

    def feature_ids(self) -> np.ndarray:
        """Sorted ids of the tiles with intact stored features."""
        return self._feature_store().ids()

    def readd_features(
        self,
        tiles: Sequence[TileRecord | Any],
        tile_ids: Sequence[int],
        stride: int,
        features: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> None:
        """Add features of tiles already in the database (after :meth:`reset_features`);
        ``stride`` is their orthomosaic's grid step."""
        self._need_lock("readd_features")
        recs = [TileRecord.from_tile(t) for t in tiles]
        if not recs:
            return
        origins = np.array([(r.col * stride, r.row * stride) for r in recs], dtype=np.int64)
        self._feature_store().add(tile_ids, origins, recs[0].tile_size, features)

    def save_features(self) -> FeatureStore:
        """Save the features atomically (a feature rebuild's last step); return them."""
        self._need_lock("save_features")
        feats = self._feature_store()
        feats.save()
        return feats

    def save_index(self) -> OmegaIndex:
        """Save the index atomically (a rebuild's last step); return it."""
        self._need_lock("save_index")
        index = self._write_index()
        index.save()
        if self._adding_omega:  # saved first: the flag never names an index not on disk
            repo.set_encoder_omega(self._db, self.encoder_id, True)
            self._adding_omega = False
        return index


def _map_grid(db: Database, encoder_id: int, *, warn: bool) -> tuple[float, int]:
    """(GSD, tile size) of the main GSD layer (the most tiles); (0, 0) if nothing is complete."""
    layers = gsd_layers(repo.list_orthomosaics(db, encoder_id))
    if not layers:
        return 0.0, 0
    if warn and len(layers) > 1:
        log.info(
            "%d GSD layers: %s; frames are searched at each plausible one",
            len(layers),
            ", ".join(f"{la.gsd_m:g} m/px ({la.tiles} tiles)" for la in layers),
        )
    return layers[0].gsd_m, layers[0].tile_px


def _omega_setting(db: Database, encoder_id: int, omega: bool | None) -> bool:
    """Whether the writer keeps the Ω index: the request on a store without complete tiles
    (recorded), else the store's own setting (warned when the request differs)."""
    enc = repo.get_encoder(db, encoder_id)
    if omega is None or bool(omega) == enc.has_omega:
        return enc.has_omega
    if repo.complete_tile_ids(db, encoder_id).size == 0:
        repo.set_encoder_omega(db, encoder_id, bool(omega))
        return bool(omega)
    if omega:
        log.warning(
            "the store of encoder %s has no Ω index: kept without (`geoloc index rebuild "
            "--omega` adds it)",
            enc.name,
        )
    else:
        log.warning(
            "the store of encoder %s keeps its Ω index: kept it (a store with tiles keeps its "
            "setting)",
            enc.name,
        )
    return enc.has_omega


def _open_features(directory: Path) -> FeatureStore:
    """The saved features; none (one warning) when their metadata is unreadable, so a reader
    falls back to the rasters and a writer starts them afresh."""
    try:
        return FeatureStore.open(directory)
    except IndexError_ as exc:
        log.warning("%s", exc)
        return FeatureStore(directory, None)


def _reconcile_features(
    db: Database, encoder_id: int, feats: FeatureStore, *, save: bool = True
) -> None:
    """Drop features of tiles that are not complete tiles in the database (a killed writer's)."""
    if feats.spec is None:
        return
    complete = np.asarray(repo.complete_tile_ids(db, encoder_id), dtype=np.int64)
    stale = np.setdiff1d(feats.ids(), complete)
    if stale.size:
        log.warning("removing features of %d tiles that are not in the database", stale.size)
        feats.remove(stale)
        if save:
            feats.save()


def _reconcile(db: Database, encoder_id: int, index: OmegaIndex | None) -> None:
    """Delete the encoder's incomplete orthomosaics, then drop FAISS ids not in the database."""
    for ortho in repo.incomplete_orthomosaics(db, encoder_id):
        log.warning(
            "cleaning up an interrupted ingest of %s (orthomosaic %d, status %s)",
            ortho.path,
            ortho.id,
            ortho.status,
        )
        repo.delete_orthomosaic(db, int(ortho.id))
    if index is None:
        return
    complete = np.asarray(repo.complete_tile_ids(db, encoder_id), dtype=np.int64)
    in_index = np.asarray(index.ids(), dtype=np.int64)
    stale = np.setdiff1d(in_index, complete)
    if stale.size:
        log.warning("removing %d stale ids from the FAISS index", stale.size)
        index.remove(stale)
        index.save()
    missing = np.setdiff1d(complete, in_index)
    if missing.size:
        log.warning(
            "FAISS lacks %d tiles of complete orthomosaics; run `geoloc index rebuild`",
            missing.size,
        )
