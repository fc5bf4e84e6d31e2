"""Typed data access over the tile database: parameterized SQL only, bulk writes by binary COPY.

Every function takes an open :class:`~geoloc.store.database.Database`. Only tiles of orthomosaics
whose status is ``complete`` are returned by the search-side helpers
(:func:`complete_tile_ids`, :func:`fetch_candidates`, :func:`tile_ids_within`, :func:`knn_phi`,
:func:`phi_of`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.exc import DBAPIError

from geoloc.errors import DatabaseError
from geoloc.quantize import INT8_UNIT, unit_int8
from geoloc.store import codec
from geoloc.store.records import (
    Candidate,
    OrthoGrid,
    TileGrid,
    TileRecord,
    TileRef,
    crs_text,
    geodesic_m,
)
from geoloc.store.schema import (
    PHI_BQ,
    PHI_DIM,
    STATUSES,
    Encoder,
    Orthomosaic,
    TileEmbedding,
    TileRow,
)

if TYPE_CHECKING:
    from geoloc.store.database import Database

log = logging.getLogger(__name__)

#: Key of the Postgres advisory lock that serialises ingests (any constant bigint).
INGEST_LOCK_KEY = 0x6765_6F6C_6F63  # "geoloc"


# --------------------------------------------------------------------------------------------
# records
@dataclass(frozen=True)
class EncoderRow:
    """A registered encoder."""

    id: int
    name: str
    config: dict[str, Any]
    weights_sha256: str
    omega_dim: int
    phi_dim: int
    created_at: datetime | None
    #: the store keeps this encoder's Ω FAISS index (``geoloc ingest --omega``)
    has_omega: bool = True


@dataclass(frozen=True)
class OrthomosaicRow:
    """An orthomosaic as stored (one per raster file and encoder)."""

    id: int
    encoder_id: int
    path: str
    sha256: str
    crs: str
    width: int
    height: int
    gsd_m: float
    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float
    footprint_wkt: str
    tile_size: int
    stride: int
    target_gsd_m: float | None
    status: str
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    tiles_kept: int
    tiles_skipped: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (timestamps as ISO strings)."""
        d = dict(self.__dict__)
        for k in ("started_at", "finished_at"):
            d[k] = d[k].isoformat() if d[k] is not None else None
        return d


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


# --------------------------------------------------------------------------------------------
# encoders
def get_or_create_encoder(
    db: Database,
    name: str,
    config: dict[str, Any],
    weights_sha256: str,
    omega_dim: int,
    phi_dim: int,
    has_omega: bool = True,
) -> int:
    """Id of the encoder ``(name, weights_sha256)``, registering it on first use (keeping an Ω
    index when ``has_omega``; an existing row keeps its setting)."""
    if not 0 < phi_dim <= PHI_DIM:
        raise DatabaseError(
            f"encoder {name}: phi_dim {phi_dim} is not in 1..{PHI_DIM} (tile_embeddings.phi width)"
        )
    with db.engine.begin() as conn:
        row = conn.execute(
            _text(
                "INSERT INTO encoders (name, config, weights_sha256, omega_dim, phi_dim, "
                "has_omega) VALUES (:n, CAST(:c AS jsonb), :s, :o, :p, :h) "
                "ON CONFLICT (name, weights_sha256) DO NOTHING RETURNING id"
            ),
            {
                "n": name,
                "c": json.dumps(config),
                "s": weights_sha256,
                "o": omega_dim,
                "p": phi_dim,
                "h": bool(has_omega),
            },
        ).first()
        if row is None:
            row = conn.execute(
                _text(
                    "SELECT id, omega_dim, phi_dim FROM encoders "
                    "WHERE name = :n AND weights_sha256 = :s"
                ),
                {"n": name, "s": weights_sha256},
            ).one()
            if (row.omega_dim, row.phi_dim) != (omega_dim, phi_dim):
                raise DatabaseError(
                    f"encoder {name} ({weights_sha256[:12]}) is registered with dims "
                    f"{row.omega_dim}/{row.phi_dim}, not {omega_dim}/{phi_dim}"
                )
    return int(row.id)


def _encoder(row: Any) -> EncoderRow:
    return EncoderRow(
        id=int(row.id),
        name=row.name,
        config=dict(row.config or {}),
        weights_sha256=row.weights_sha256,
        omega_dim=int(row.omega_dim),
        phi_dim=int(row.phi_dim),
        created_at=row.created_at,
        has_omega=bool(row.has_omega),
    )


def set_encoder_omega(db: Database, encoder_id: int, has_omega: bool) -> None:
    """Record whether the store keeps this encoder's Ω index (after the index is saved, or
    before it is deleted: the flag never claims an index that is not on disk)."""
    with db.engine.begin() as conn:
        conn.execute(
            _text("UPDATE encoders SET has_omega = :h WHERE id = :i"),
            {"h": bool(has_omega), "i": encoder_id},
        )


def orthomosaics_stamp(db: Database, encoder_id: int) -> tuple[int, int, str]:
    """(count, highest id, latest finish) of this encoder's complete orthomosaics: changes
    whenever an ingest completes or a delete removes one (a warm reader's re-read signal)."""
    with db.engine.connect() as conn:
        row = conn.execute(
            _text(
                "SELECT count(*) AS n, coalesce(max(id), 0) AS top, "
                "coalesce(max(finished_at)::text, '') AS last FROM orthomosaics "
                "WHERE encoder_id = :e AND status = 'complete'"
            ),
            {"e": encoder_id},
        ).one()
    return int(row.n), int(row.top), str(row.last)


def list_encoders(db: Database) -> list[EncoderRow]:
    """Every registered encoder, oldest first."""
    with db.engine.connect() as conn:
        rows = conn.execute(_text("SELECT * FROM encoders ORDER BY id")).all()
    return [_encoder(r) for r in rows]


def get_encoder(db: Database, encoder_id: int) -> EncoderRow:
    """The encoder with this id (DatabaseError if unknown)."""
    with db.engine.connect() as conn:
        row = conn.execute(_text("SELECT * FROM encoders WHERE id = :i"), {"i": encoder_id}).first()
    if row is None:
        raise DatabaseError(f"{db.url}: no encoder with id {encoder_id}")
    return _encoder(row)


def find_encoder(db: Database, weights_sha256: str, name: str | None = None) -> EncoderRow | None:
    """The encoder with these weights (a SHA-256 prefix of >= 8 characters is accepted)."""
    if len(weights_sha256) < 8:
        raise DatabaseError(f"encoder weights SHA-256 prefix too short: {weights_sha256!r}")
    prefix = weights_sha256.lower()
    if any(c not in "0123456789abcdef" for c in prefix):
        return None  # not hexadecimal: cannot be (a prefix of) a SHA-256
    sql = "SELECT * FROM encoders WHERE left(weights_sha256, :n) = :s"
    params: dict[str, Any] = {"s": prefix, "n": len(prefix)}
    if name is not None:
        sql += " AND name = :name"
        params["name"] = name
    with db.engine.connect() as conn:
        rows = conn.execute(_text(sql + " ORDER BY id"), params).all()
    if len(rows) > 1:
        raise DatabaseError(f"encoder weights prefix {weights_sha256!r} is ambiguous")
    return _encoder(rows[0]) if rows else None


# --------------------------------------------------------------------------------------------
# orthomosaics
def _ortho(row: Any) -> OrthomosaicRow:
    return OrthomosaicRow(**{k: getattr(row, k) for k in OrthomosaicRow.__dataclass_fields__})


def find_orthomosaic(db: Database, sha256: str, encoder_id: int) -> OrthomosaicRow | None:
    """The orthomosaic of the file with this SHA-256 for this encoder (any status), or None."""
    with db.engine.connect() as conn:
        row = conn.execute(
            _text("SELECT * FROM orthomosaics WHERE sha256 = :s AND encoder_id = :e"),
            {"s": sha256, "e": encoder_id},
        ).first()
    return _ortho(row) if row is not None else None


def get_orthomosaic(db: Database, orthomosaic_id: int) -> OrthomosaicRow | None:
    """The orthomosaic with this id, or None."""
    with db.engine.connect() as conn:
        row = conn.execute(
            _text("SELECT * FROM orthomosaics WHERE id = :i"), {"i": orthomosaic_id}
        ).first()
    return _ortho(row) if row is not None else None


def list_orthomosaics(db: Database, encoder_id: int | None = None) -> list[OrthomosaicRow]:
    """Orthomosaics (of one encoder, or all), oldest first."""
    sql = "SELECT * FROM orthomosaics"
    params: dict[str, Any] = {}
    if encoder_id is not None:
        sql += " WHERE encoder_id = :e"
        params["e"] = encoder_id
    with db.engine.connect() as conn:
        rows = conn.execute(_text(sql + " ORDER BY id"), params).all()
    return [_ortho(r) for r in rows]


def begin_orthomosaic(
    db: Database,
    *,
    path: str,
    sha256: str,
    encoder_id: int,
    raster: Any | None = None,
    crs: str | None = None,
    width: int | None = None,
    height: int | None = None,
    gsd_m: float | None = None,
    bounds_lonlat: tuple[float, float, float, float] | None = None,
    footprint_wkt: str | None = None,
    tile_size: int = 224,
    stride: int = 112,
    target_gsd: float | None = None,
    status: str = "ingesting",
) -> int:
    """Insert an orthomosaic row (status ``ingesting`` by default) and return its id.

    Geometry comes from ``raster`` (shaped like a ``tiling.Raster``) unless given explicitly:
    ``crs``, ``width``, ``height``, ``gsd_m``, ``bounds_lonlat`` (west, south, east, north),
    ``footprint_wkt``. ``path`` is stored as an absolute path.
    """
    import os

    if status not in STATUSES:
        raise DatabaseError(f"{path}: bad orthomosaic status {status!r}")
    if raster is not None:
        crs = crs if crs is not None else crs_text(raster.crs)
        width = width if width is not None else int(raster.width)
        height = height if height is not None else int(raster.height)
        gsd_m = gsd_m if gsd_m is not None else float(raster.gsd_m)
        bounds_lonlat = bounds_lonlat or tuple(float(v) for v in raster.bounds_lonlat)  # type: ignore[assignment]
        footprint_wkt = footprint_wkt or raster.footprint_lonlat.wkt
    missing = [
        k
        for k, v in {
            "crs": crs,
            "width": width,
            "height": height,
            "gsd_m": gsd_m,
            "bounds_lonlat": bounds_lonlat,
        }.items()
        if v is None
    ]
    if missing:
        raise DatabaseError(f"{path}: begin_orthomosaic needs a raster or {', '.join(missing)}")
    assert bounds_lonlat is not None
    w, s, e, n = bounds_lonlat
    if footprint_wkt is None:
        footprint_wkt = f"POLYGON (({w} {s}, {e} {s}, {e} {n}, {w} {n}, {w} {s}))"
    from sqlalchemy.exc import IntegrityError

    try:
        with db.engine.begin() as conn:
            oid = conn.execute(
                _text(
                    "INSERT INTO orthomosaics (encoder_id, path, sha256, crs, width, height, gsd_m,"
                    " min_lon, min_lat, max_lon, max_lat, footprint_wkt, tile_size, stride,"
                    " target_gsd_m, status) VALUES (:enc, :path, :sha, :crs, :w, :h, :gsd,"
                    " :w0, :s0, :e0, :n0, :fp, :ts, :st, :tg, :status) RETURNING id"
                ),
                {
                    "enc": encoder_id,
                    "path": os.path.abspath(path),
                    "sha": sha256,
                    "crs": crs,
                    "w": width,
                    "h": height,
                    "gsd": gsd_m,
                    "w0": w,
                    "s0": s,
                    "e0": e,
                    "n0": n,
                    "fp": footprint_wkt,
                    "ts": tile_size,
                    "st": stride,
                    "tg": target_gsd,
                    "status": status,
                },
            ).scalar_one()
    except IntegrityError as exc:
        raise DatabaseError(
            f"{path}: already in the database for encoder {encoder_id} (sha256 {sha256[:12]})"
        ) from exc
    return int(oid)


def finish_orthomosaic(db: Database, orthomosaic_id: int, kept: int, skipped: int) -> None:
    """Mark an orthomosaic ``complete`` with its tile counts."""
    with db.engine.begin() as conn:
        n = conn.execute(
            _text(
                "UPDATE orthomosaics SET status = 'complete', finished_at = now(), "
                "tiles_kept = :k, tiles_skipped = :s, error = NULL WHERE id = :i"
            ),
            {"k": kept, "s": skipped, "i": orthomosaic_id},
        ).rowcount
    if n != 1:
        raise DatabaseError(f"{db.url}: no orthomosaic with id {orthomosaic_id}")


def fail_orthomosaic(db: Database, orthomosaic_id: int, error: str = "") -> None:
    """Mark an orthomosaic ``failed`` (its tiles are never searched)."""
    with db.engine.begin() as conn:
        conn.execute(
            _text(
                "UPDATE orthomosaics SET status = 'failed', finished_at = now(), error = :m "
                "WHERE id = :i"
            ),
            {"m": error or None, "i": orthomosaic_id},
        )


def delete_orthomosaic(db: Database, orthomosaic_id: int) -> list[int]:
    """Delete an orthomosaic with its tiles and embeddings; return the removed tile ids."""
    with db.engine.begin() as conn:
        ids = conn.execute(
            _text("DELETE FROM tiles WHERE orthomosaic_id = :i RETURNING id"),
            {"i": orthomosaic_id},
        ).scalars()
        removed = sorted(int(i) for i in ids)
        conn.execute(_text("DELETE FROM orthomosaics WHERE id = :i"), {"i": orthomosaic_id})
    return removed


def incomplete_orthomosaics(db: Database, encoder_id: int) -> list[OrthomosaicRow]:
    """Orthomosaics of this encoder whose status is not ``complete`` (interrupted or failed)."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            _text(
                "SELECT * FROM orthomosaics "
                "WHERE encoder_id = :e AND status <> 'complete' ORDER BY id"
            ),
            {"e": encoder_id},
        ).all()
    return [_ortho(r) for r in rows]


# --------------------------------------------------------------------------------------------
# tiles: binary COPY
def pad_phi(phi: np.ndarray) -> np.ndarray:
    """Φ as float32 ``(n, PHI_DIM)``: zero-padded on the right (cosine is unchanged)."""
    phi = np.asarray(phi, dtype=np.float32)
    if phi.ndim != 2 or phi.shape[1] > PHI_DIM:
        raise DatabaseError(f"phi must be (n, <= {PHI_DIM}), got shape {phi.shape}")
    if phi.shape[1] == PHI_DIM:
        return phi
    out = np.zeros((phi.shape[0], PHI_DIM), dtype=np.float32)
    out[:, : phi.shape[1]] = phi
    return out


def add_tiles(
    db: Database,
    orthomosaic_id: int,
    encoder_id: int,
    tiles: Sequence[TileRecord | Any],
    phi: np.ndarray,
    node_areas: np.ndarray,
    node_centroids: np.ndarray,
) -> list[int]:
    """Insert tiles and their embeddings in one transaction (binary COPY); return tile ids.

    ``tiles`` are :class:`TileRecord` (or tiles they are made from, see
    :meth:`TileRecord.from_tile`); ``phi`` is ``(n, phi_dim)``; ``node_areas`` ``(n, K)``;
    ``node_centroids`` ``(n, K, 2)``. The FAISS id of each tile's Ω is its tile id. A duplicate
    ``(orthomosaic, row, col)`` raises :class:`DatabaseError`.
    """
    n = len(tiles)
    if n == 0:
        return []
    records = [TileRecord.from_tile(t) for t in tiles]
    phi_p = pad_phi(phi)
    areas = np.asarray(node_areas, dtype=np.float32).reshape(n, -1)
    cents = np.asarray(node_centroids, dtype=np.float32).reshape(n, -1)
    if phi_p.shape[0] != n:
        raise DatabaseError(f"add_tiles: {n} tiles but {phi_p.shape[0]} phi rows")
    import psycopg2
    from sqlalchemy.exc import DBAPIError

    try:
        with db.engine.begin() as conn:
            ids = [
                int(i)
                for i in conn.execute(
                    _text("SELECT nextval('tiles_id_seq') FROM generate_series(1, :n)"), {"n": n}
                ).scalars()
            ]
            fields = TileRecord.__dataclass_fields__
            tile_rows = [
                {
                    **{f: getattr(rec, f) for f in fields},
                    "id": tid,
                    "orthomosaic_id": orthomosaic_id,
                    "transform": tuple(rec.transform)[:6],  # stored: the six affine terms
                }
                for tid, rec in zip(ids, records, strict=True)
            ]
            emb_rows = [
                {
                    "tile_id": tid,
                    "encoder_id": encoder_id,
                    "phi": phi_p[i],
                    "node_areas": areas[i],
                    "node_centroids": cents[i],
                }
                for i, tid in enumerate(ids)
            ]
            cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                codec.copy_rows(cur, TileRow.__table__, tile_rows)  # type: ignore[arg-type]
                codec.copy_rows(cur, TileEmbedding.__table__, emb_rows)  # type: ignore[arg-type]
            finally:
                cur.close()
    except (DBAPIError, psycopg2.Error) as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()
        raise DatabaseError(
            f"orthomosaic {orthomosaic_id}: cannot insert {n} tiles: {first[0] if first else exc}"
        ) from exc
    return ids


# --------------------------------------------------------------------------------------------
# reads
def complete_tile_ids(db: Database, encoder_id: int) -> np.ndarray:
    """Sorted int64 ids (= FAISS ids) of every tile of the encoder's complete orthomosaics."""
    with db.engine.connect() as conn:
        ids = conn.execute(
            _text(
                "SELECT e.tile_id FROM tile_embeddings e JOIN tiles t ON t.id = e.tile_id "
                "JOIN orthomosaics o ON o.id = t.orthomosaic_id "
                "WHERE e.encoder_id = :e AND o.status = 'complete' ORDER BY e.tile_id"
            ),
            {"e": encoder_id},
        ).scalars()
        return np.fromiter((int(i) for i in ids), dtype=np.int64)


def tile_ids_of_orthomosaics(
    db: Database, encoder_id: int, orthomosaic_ids: Sequence[int]
) -> np.ndarray:
    """Sorted int64 ids of the encoder's tiles of these complete orthomosaics."""
    from sqlalchemy import any_, bindparam, select
    from sqlalchemy.dialects.postgresql import ARRAY, BIGINT

    t, o, e = TileRow.__table__, Orthomosaic.__table__, TileEmbedding.__table__
    stmt = (
        select(t.c.id)
        .join_from(t, o, o.c.id == t.c.orthomosaic_id)
        .join(e, (e.c.tile_id == t.c.id) & (e.c.encoder_id == bindparam("e")))
        .where(
            o.c.id == any_(bindparam("o", type_=ARRAY(BIGINT))),
            o.c.status == "complete",
        )
        .order_by(t.c.id)
    )
    with db.engine.connect() as conn:
        ids = conn.execute(stmt, {"e": encoder_id, "o": [int(i) for i in orthomosaic_ids]})
        return np.fromiter((int(i) for i in ids.scalars()), dtype=np.int64)


_NO_PHI = np.zeros(0, dtype=np.float32)
_NO_PHI.flags.writeable = False


def _phi_send(col: Any) -> Any:
    """``halfvec_send(col) AS phi``: the column in pgvector's binary form (2-byte dimension,
    2 unused bytes, big-endian half floats), decoded by :func:`halfvec_bytes`; pgvector's
    text form costs a Python float() per value."""
    from sqlalchemy import LargeBinary, func

    return func.halfvec_send(col, type_=LargeBinary).label("phi")


def halfvec_bytes(raw: Any) -> np.ndarray:
    """A ``halfvec_send`` value as float32 ``(dim,)``."""
    b = bytes(raw)
    dim = int.from_bytes(b[:2], "big")
    return np.frombuffer(b, dtype=">f2", count=dim, offset=4).astype(np.float32)


def _halfvec_rows(raws: Sequence[Any]) -> np.ndarray:
    """``halfvec_send`` values of the ``halfvec(PHI_DIM)`` column as float32 rows, one decode."""
    buf = b"".join(bytes(r) for r in raws)
    if len(buf) != len(raws) * (4 + 2 * PHI_DIM):
        raise DatabaseError(f"phi values are not all halfvec({PHI_DIM})")
    return np.frombuffer(buf, dtype=">f2").reshape(len(raws), 2 + PHI_DIM)[:, 2:].astype(np.float32)


def fetch_candidates(
    db: Database,
    encoder_id: int,
    tile_ids: Sequence[int] | np.ndarray,
    embeddings: bool = True,
) -> list[Candidate]:
    """Geometry, raster, Φ and nodes of these tiles (complete orthomosaics only), in input order.

    Ids that are unknown, of another encoder, or of an incomplete orthomosaic are left out.
    ``embeddings`` False leaves Φ and the node arrays empty (``(0,)``, ``(0,)``, ``(0, 2)``):
    the records of a candidate's neighbours need only their geometry, and Φ is most of a
    row's bytes.
    """
    ids = [int(i) for i in np.asarray(tile_ids, dtype=np.int64).ravel()]
    if not ids:
        return []
    from affine import Affine
    from sqlalchemy import any_, bindparam, select
    from sqlalchemy.dialects.postgresql import ARRAY, BIGINT

    t, o = TileRow.__table__, Orthomosaic.__table__
    e, en = TileEmbedding.__table__, Encoder.__table__
    # every tiles column (the schema's list) + what a candidate needs from the other tables;
    # phi in its binary form (:func:`halfvec_bytes`)
    stmt = (
        select(
            *t.columns,
            o.c.path.label("raster_path"),
            o.c.crs,
            en.c.phi_dim,
            *((_phi_send(e.c.phi), e.c.node_areas, e.c.node_centroids) if embeddings else ()),
        )
        .join_from(t, o, o.c.id == t.c.orthomosaic_id)
        .join(e, (e.c.tile_id == t.c.id) & (e.c.encoder_id == bindparam("e")))
        .join(en, en.c.id == e.c.encoder_id)
        .where(t.c.id == any_(bindparam("ids", type_=ARRAY(BIGINT))), o.c.status == "complete")
    )
    with db.engine.connect() as conn:
        rows = conn.execute(stmt, {"e": encoder_id, "ids": ids}).all()
    by_id: dict[int, Candidate] = {}
    for r in rows:
        m = r._mapping
        if embeddings:
            phi = halfvec_bytes(m["phi"])[: int(m["phi_dim"])]
            areas = np.asarray(m["node_areas"], dtype=np.float32)
            cents = np.asarray(m["node_centroids"], dtype=np.float32).reshape(len(areas), 2)
        else:
            phi, areas, cents = _NO_PHI, _NO_PHI, _NO_PHI.reshape(0, 2)
        by_id[int(m["id"])] = Candidate(
            tile_id=int(m["id"]),
            orthomosaic_id=int(m["orthomosaic_id"]),
            row=int(m["row"]),
            col=int(m["col"]),
            center_lat=float(m["center_lat"]),
            center_lon=float(m["center_lon"]),
            gsd_m=float(m["gsd_m"]),
            valid_fraction=float(m["valid_fraction"]),
            tile_size=int(m["tile_size"]),
            raster_path=str(m["raster_path"]),
            crs=str(m["crs"]),
            transform=Affine(*(float(v) for v in m["transform"][:6])),
            window=tuple(float(v) for v in m["window"]),  # type: ignore[arg-type]
            footprint_wkt=str(m["footprint_wkt"]),
            phi=phi,
            node_areas=areas,
            node_centroids=cents,
        )
    return [by_id[i] for i in ids if i in by_id]


def tile_ids_within(
    db: Database, encoder_id: int, lat: float, lon: float, radius_m: float
) -> np.ndarray:
    """Sorted int64 ids of the encoder's complete tiles whose centre is within ``radius_m``.

    A bounding box on the indexed ``(center_lat, center_lon)`` columns prefilters; the exact
    geodesic distance (WGS84) decides.
    """
    return tile_ids_within_many(db, encoder_id, [(lat, lon, radius_m)])[0]


def orthomosaic_grid(db: Database, encoder_id: int, orthomosaic_id: int) -> OrthoGrid | None:
    """The tile ids of a complete orthomosaic of this encoder by grid cell, or None (unknown,
    another encoder's, not complete)."""
    with db.engine.connect() as conn:
        o = conn.execute(
            _text(
                "SELECT stride, tile_size FROM orthomosaics"
                " WHERE id = :o AND encoder_id = :e AND status = 'complete'"
            ),
            {"o": int(orthomosaic_id), "e": int(encoder_id)},
        ).first()
        if o is None:
            return None
        rows = conn.execute(
            _text("SELECT row, col, id FROM tiles WHERE orthomosaic_id = :o"),
            {"o": int(orthomosaic_id)},
        ).all()
    rc = np.asarray([(r.row, r.col, r.id) for r in rows], dtype=np.int64).reshape(-1, 3)
    return _ortho_grid(int(orthomosaic_id), rc, int(o.stride), int(o.tile_size))


def _ortho_grid(orthomosaic_id: int, rc: np.ndarray, stride: int, tile_size: int) -> OrthoGrid:
    """The grid of an orthomosaic from its tiles' ``(row, col, id)`` rows."""
    shape = (int(rc[:, 0].max()) + 1, int(rc[:, 1].max()) + 1) if len(rc) else (0, 0)
    ids = np.full(shape, -1, dtype=np.int64)
    ids[rc[:, 0], rc[:, 1]] = rc[:, 2]
    return OrthoGrid(orthomosaic_id, ids, stride, tile_size)


def orthomosaic_grids(db: Database, encoder_id: int, limit: int) -> list[OrthoGrid]:
    """:func:`orthomosaic_grid` of up to ``limit`` complete orthomosaics of this encoder (the
    largest first) in two queries: what a localizer loads before its first frame."""
    from sqlalchemy import bindparam
    from sqlalchemy.dialects.postgresql import ARRAY, BIGINT

    with db.engine.connect() as conn:
        orthos = conn.execute(
            _text(
                "SELECT o.id, o.stride, o.tile_size FROM orthomosaics o"
                " WHERE o.encoder_id = :e AND o.status = 'complete'"
                " ORDER BY (SELECT count(*) FROM tiles t WHERE t.orthomosaic_id = o.id) DESC,"
                " o.id LIMIT :n"
            ),
            {"e": int(encoder_id), "n": max(0, int(limit))},
        ).all()
        if not orthos:
            return []
        stmt = _text(
            "SELECT orthomosaic_id, row, col, id FROM tiles WHERE orthomosaic_id = ANY(:o)"
        ).bindparams(bindparam("o", type_=ARRAY(BIGINT)))
        rows = conn.execute(stmt, {"o": [int(o.id) for o in orthos]}).all()
    a = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    return [
        _ortho_grid(int(o.id), a[a[:, 0] == int(o.id), 1:], int(o.stride), int(o.tile_size))
        for o in orthos
    ]


def tile_ids_within_many(
    db: Database,
    encoder_id: int,
    circles: Sequence[tuple[float, float, float]],
    orthomosaics: Sequence[int | None] | None = None,
) -> list[np.ndarray]:
    """:func:`tile_ids_within` of every ``(lat, lon, radius_m)`` in one query (one array per
    circle, in order): a verification chunk's neighbourhoods cost one round trip.

    ``orthomosaics`` (one id or None per circle) keeps a circle's tiles of that orthomosaic
    only: a candidate's region is cut from its own raster, and other rasters (other GSD layers
    of the same place) would at least double the rows.
    """
    return [
        np.asarray([g.tile_id for g in grids], dtype=np.int64)
        for grids in tiles_within_many(db, encoder_id, circles, orthomosaics)
    ]


def tiles_within_many(
    db: Database,
    encoder_id: int,
    circles: Sequence[tuple[float, float, float]],
    orthomosaics: Sequence[int | None] | None = None,
) -> list[list[TileGrid]]:
    """:func:`tile_ids_within_many` with each tile's grid place (:class:`TileGrid`, by id):
    the same query, so a region's neighbours need no second one for their records."""
    if orthomosaics is not None and len(orthomosaics) != len(circles):
        raise ValueError("tiles_within_many: one orthomosaic (or None) per circle")
    boxes = []
    for lat, lon, radius_m in circles:
        if radius_m < 0 or not math.isfinite(radius_m):
            raise DatabaseError(
                f"radius must be a finite non-negative number of metres: {radius_m}"
            )
        dlat = radius_m / 110_574.0 * 1.01 + 1e-9
        coslat = math.cos(math.radians(min(89.9, abs(lat) + dlat)))
        dlon = min(180.0, radius_m / (111_320.0 * max(coslat, 1e-6)) * 1.01 + 1e-9)
        boxes.append((lat - dlat, lat + dlat, lon - dlon, lon + dlon))
    if not boxes:
        return []
    lat0, lat1, lon0, lon1 = ([float(b[k]) for b in boxes] for k in range(4))
    oids = [None if o is None else int(o) for o in (orthomosaics or [None] * len(boxes))]
    with db.engine.connect() as conn:
        rows = conn.execute(
            _text(
                "SELECT q.i, t.id, t.center_lon, t.center_lat, t.orthomosaic_id, t.row, t.col,"
                " t.tile_size, t.window"
                " FROM unnest(CAST(:lat0 AS double precision[]),"
                " CAST(:lat1 AS double precision[]), CAST(:lon0 AS double precision[]),"
                " CAST(:lon1 AS double precision[]), CAST(:oid AS bigint[])) WITH ORDINALITY"
                " AS q(lat0, lat1, lon0, lon1, oid, i)"
                # one index range scan per box: joined plainly, the planner estimates the
                # unnest at a few rows and filters a sequential scan of every tile instead
                # (OFFSET 0 keeps the subquery from being flattened into that join)
                " CROSS JOIN LATERAL (SELECT t.id, t.center_lon, t.center_lat, t.orthomosaic_id,"
                " t.row, t.col, t.tile_size, t.window"
                " FROM tiles t WHERE t.center_lat BETWEEN q.lat0 AND q.lat1"
                " AND t.center_lon BETWEEN q.lon0 AND q.lon1"
                " AND (q.oid IS NULL OR t.orthomosaic_id = q.oid) OFFSET 0) t"
                " JOIN orthomosaics o ON o.id = t.orthomosaic_id"
                " JOIN tile_embeddings e ON e.tile_id = t.id AND e.encoder_id = :e"
                " WHERE o.status = 'complete'"
            ),
            {
                "e": encoder_id,
                "lat0": lat0,
                "lat1": lat1,
                "lon0": lon0,
                "lon1": lon1,
                "oid": oids,
            },
        ).all()
    out: list[list[TileGrid]] = [[] for _ in circles]
    if not rows:
        return out
    arr = np.asarray([(r.i, r.id, r.center_lon, r.center_lat) for r in rows], dtype=np.float64)
    which = arr[:, 0].astype(np.int64) - 1
    clat = np.array([c[0] for c in circles], dtype=np.float64)[which]
    clon = np.array([c[1] for c in circles], dtype=np.float64)[which]
    rad = np.array([c[2] for c in circles], dtype=np.float64)[which]
    inside = geodesic_m(arr[:, 2], arr[:, 3], clon, clat) <= rad
    grids: dict[int, TileGrid] = {}
    for r, ok in zip(rows, inside.tolist(), strict=True):
        if not ok:
            continue
        tid = int(r.id)
        g = grids.get(tid)
        if g is None:
            x0, y0, ww, wh = (float(v) for v in r.window)
            w = (x0, y0, ww, wh)
            g = grids[tid] = TileGrid(
                tid,
                int(r.orthomosaic_id),
                int(r.row),
                int(r.col),
                int(r.tile_size),
                w,
            )
        out[int(r.i) - 1].append(g)
    for lst in out:
        lst.sort(key=lambda g: g.tile_id)
    return out


#: Restrictions up to this many tiles are scored exactly (their Φ fetched), not by the HNSW
#: index, whose filtered scan can stop before it reaches the few allowed tiles.
EXACT_PHI_MAX = 2_048


#: Nearest tiles by Hamming distance of Φ's sign bits that a global search re-ranks by the
#: halfvec cosine: enough that the re-ranked top 50 keeps the recall of an exact search.
PHI_BQ_CANDIDATES = 400
# knn_phi_many spells the index expression out on the ``e`` alias (its SQL is constants only)
assert PHI_BQ.replace("phi", "e.phi") == "(binary_quantize(e.phi)::bit(1024))"


def knn_phi(
    db: Database,
    encoder_id: int,
    query: np.ndarray,
    k: int = 10,
    ef_search: int = 100,
    allowed_ids: np.ndarray | None = None,
) -> list[tuple[int, float]]:
    """The ``k`` complete tiles nearest to ``query`` by Φ cosine distance (HNSW index).

    Returns ``(tile_id, cosine_distance)`` pairs, nearest first. ``allowed_ids`` restricts the
    search to those tiles.
    """
    return knn_phi_many(
        db, encoder_id, np.asarray(query).reshape(1, -1), k, ef_search, allowed_ids
    )[0]


def knn_phi_many(
    db: Database,
    encoder_id: int,
    queries: np.ndarray,
    k: int = 10,
    ef_search: int = 100,
    allowed_ids: np.ndarray | None = None,
) -> list[list[tuple[int, float]]]:
    """:func:`knn_phi` of each row of ``queries`` (one transaction for all of them).

    Without a restriction the HNSW index over Φ's sign bits gives the
    :data:`PHI_BQ_CANDIDATES` nearest by Hamming distance (``ef_search`` raised to match), which
    are re-ranked by the halfvec cosine; a restriction of up to :data:`EXACT_PHI_MAX` tiles is
    scored exactly, a larger one by the index with its filter.
    """
    q = pad_phi(np.asarray(queries, dtype=np.float32).reshape(len(queries), -1))
    if allowed_ids is not None:
        allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
        if allowed.size == 0:
            return [[] for _ in range(q.shape[0])]
        if allowed.size <= EXACT_PHI_MAX:
            return _exact_phi(db, encoder_id, q, k, allowed)
    from pgvector import HalfVector
    from pgvector.sqlalchemy import HALFVEC
    from sqlalchemy import bindparam
    from sqlalchemy.dialects.postgresql import ARRAY, BIGINT

    # the inner ORDER BY repeats the index expression (schema.PHI_BQ on ``e.phi``) so the HNSW
    # index answers it; the SQL is string constants only, every value is a parameter
    sql = (
        "SELECT c.tile_id, c.phi <=> CAST(:q AS halfvec) AS d FROM ("
        " SELECT e.tile_id, e.phi FROM tile_embeddings e"
        " JOIN tiles t ON t.id = e.tile_id JOIN orthomosaics o ON o.id = t.orthomosaic_id"
        " WHERE e.encoder_id = :e AND o.status = 'complete'"
    )
    if allowed_ids is not None:
        sql += " AND e.tile_id = ANY(:ids)"
    sql += (
        " ORDER BY (binary_quantize(e.phi)::bit(1024))"
        " <~> binary_quantize(CAST(:q AS halfvec)) LIMIT :n"
        ") c ORDER BY d, c.tile_id LIMIT :k"
    )
    stmt = _text(sql).bindparams(bindparam("q", type_=HALFVEC(PHI_DIM)))
    if allowed_ids is not None:
        stmt = stmt.bindparams(bindparam("ids", type_=ARRAY(BIGINT)))
    n = max(int(k), PHI_BQ_CANDIDATES)
    params: dict[str, Any] = {"e": encoder_id, "k": int(k), "n": n}
    if allowed_ids is not None:
        params["ids"] = [int(i) for i in allowed]
    out: list[list[tuple[int, float]]] = []
    with db.engine.begin() as conn:
        ef = str(min(max(int(ef_search), n), 1000))  # pgvector's ef_search ceiling is 1,000
        conn.execute(_text("SELECT set_config('hnsw.ef_search', :v, true)"), {"v": ef})
        conn.execute(_text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
        for row in q:
            rows = conn.execute(stmt, {**params, "q": HalfVector(row)}).all()
            out.append([(int(r.tile_id), float(r.d)) for r in rows])
    return out


def phi_sign_codes(
    db: Database, encoder_id: int, with_phi: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(ids int64 ``(n,)``, Φ's sign bits uint8 ``(n, PHI_DIM // 8)``, Φ codes or None) of this
    encoder's tiles of complete orthomosaics, by id: the codes the HNSW index over
    :data:`PHI_BQ` holds (bit i set when Φ_i > 0, first dimension in the first byte's high
    bit), for a scan in memory. ``with_phi``: also each tile's Φ as int8 codes of its unit
    vector (:func:`geoloc.quantize.unit_int8`, ``(n, PHI_DIM)``, 1 KiB per tile), read in
    batches, for a re-rank in memory: a cosine from them is the halfvec's within a few
    thousandths, enough to pick the re-ranked candidates (the rerank stage scores them exactly)."""
    # bit_send: the bit string's binary wire form, a 4-byte bit count then the bytes
    sql = "SELECT e.tile_id, bit_send(binary_quantize(e.phi)::bit(1024)) AS b"
    if with_phi:
        sql += ", halfvec_send(e.phi) AS phi"
    sql += (
        " FROM tile_embeddings e JOIN tiles t ON t.id = e.tile_id"
        " JOIN orthomosaics o ON o.id = t.orthomosaic_id"
        " WHERE e.encoder_id = :e AND o.status = 'complete' ORDER BY e.tile_id"
    )
    width = PHI_DIM // 8
    ids_l: list[np.ndarray] = []
    codes_l: list[np.ndarray] = []
    phi_l: list[np.ndarray] = []
    with db.engine.connect() as conn:
        # batches: Φ of 100k tiles is 200 MB on the wire, its codes half that in memory
        result = conn.execution_options(stream_results=True, yield_per=4096).execute(
            _text(sql), {"e": encoder_id}
        )
        for rows in result.partitions():
            ids_l.append(np.fromiter((r.tile_id for r in rows), dtype=np.int64, count=len(rows)))
            raw = b"".join(bytes(r.b)[4:] for r in rows)
            codes_l.append(np.frombuffer(raw, dtype=np.uint8).reshape(len(rows), width).copy())
            if with_phi:
                phi_l.append(unit_int8(_halfvec_rows([r.phi for r in rows])))
    if not ids_l:
        empty = np.zeros((0, PHI_DIM), np.int8) if with_phi else None
        return np.zeros(0, np.int64), np.zeros((0, width), np.uint8), empty
    ids, codes = np.concatenate(ids_l), np.concatenate(codes_l)
    return ids, codes, np.concatenate(phi_l) if with_phi else None


def hamming_index(codes: np.ndarray) -> Any:
    """A FAISS exact binary index over ``codes`` (from :func:`phi_sign_codes`; row j = label j):
    :func:`knn_phi_scan`'s Hamming scan in FAISS's popcount kernels."""
    import faiss

    index = faiss.IndexBinaryFlat(int(codes.shape[1]) * 8)
    if codes.shape[0]:
        index.add(np.ascontiguousarray(codes, dtype=np.uint8))
    return index


def halfvec_literals(rows: np.ndarray) -> list[str]:
    """pgvector ``halfvec`` text literals of these rows, rounded to float16 first (5 significant
    digits bring every float16 back exactly)."""
    h = np.asarray(rows, dtype=np.float32).astype(np.float16).astype(np.float32)
    buf = io.StringIO()
    np.savetxt(buf, h.reshape(len(h), -1), fmt="%.5g", delimiter=",")
    return ["[" + line + "]" for line in buf.getvalue().splitlines()]


def knn_phi_scan(
    db: Database,
    encoder_id: int,
    queries: np.ndarray,
    k: int,
    ids: np.ndarray,
    codes: np.ndarray,
    allowed_ids: np.ndarray | None = None,
    hamming: Any = None,
    phi: np.ndarray | None = None,
) -> list[list[tuple[int, float]]]:
    """:func:`knn_phi_many` with its Hamming prefilter as an exact scan of ``codes`` (from
    :func:`phi_sign_codes`) in memory instead of the HNSW index: per query the
    :data:`PHI_BQ_CANDIDATES` nearest codes (among ``allowed_ids`` if given), re-ranked by the
    halfvec cosine in Postgres (only the ``k`` best come back), all queries in one statement;
    with ``phi`` (the rows' int8 codes from :func:`phi_sign_codes`) re-ranked by their cosine
    in memory instead.

    An exact scan finds the Hamming-nearest the index's graph walk can miss, and a restriction
    makes it cheaper, never less exact. The scan runs in FAISS's binary index: ``hamming``
    (from :func:`hamming_index` over the same ``codes``, kept by the caller) for an
    unrestricted one, else one over the allowed rows."""
    q = pad_phi(np.asarray(queries, dtype=np.float32).reshape(len(queries), -1))
    if ids.size == 0 or q.shape[0] == 0:
        return [[] for _ in range(q.shape[0])]
    # the stored codes are of the halfvec: quantize the query the same way first
    qbits = np.packbits(q.astype(np.float16) > 0, axis=1)
    searched = None  # positions in ``ids`` of the rows searched (None: all of them)
    if allowed_ids is not None:
        searched = np.flatnonzero(np.isin(ids, np.asarray(allowed_ids, np.int64)))
        hamming = hamming_index(codes[searched])  # a copy of the allowed rows' codes only
    elif hamming is None:
        hamming = hamming_index(codes)
    n = min(max(int(k), PHI_BQ_CANDIDATES), int(hamming.ntotal))
    if n == 0:
        return [[] for _ in range(q.shape[0])]
    _d, found = hamming.search(qbits, n)
    tops = [r[r >= 0] if searched is None else searched[r[r >= 0]] for r in found]
    if phi is not None:
        return _rescore_in_memory(q, ids, phi, tops, int(k))
    qi = [i + 1 for i, top in enumerate(tops) for _ in range(top.size)]
    if not qi:
        return [[] for _ in range(q.shape[0])]
    # one statement for every query: each query vector cast once (a materialized CTE), its
    # candidates scored and the k best per query kept by a window
    stmt = _text(
        "WITH c AS MATERIALIZED (SELECT i, CAST(v AS halfvec) AS v"
        " FROM unnest(CAST(:qs AS text[])) WITH ORDINALITY AS u(v, i)),"
        " s AS (SELECT p.i, p.tile_id, e.phi <=> c.v AS d"
        " FROM unnest(CAST(string_to_array(:qi, ',') AS bigint[]),"
        " CAST(string_to_array(:ids, ',') AS bigint[])) AS p(i, tile_id)"
        " JOIN c ON c.i = p.i"
        " JOIN tile_embeddings e ON e.encoder_id = :e AND e.tile_id = p.tile_id)"
        " SELECT i, tile_id, d FROM (SELECT s.*, row_number() OVER"
        " (PARTITION BY i ORDER BY d, tile_id) AS r FROM s) ranked"
        " WHERE r <= :k ORDER BY i, r"
    )
    # thousands of (query, tile) pairs: as two comma-separated strings, not two bound arrays
    # (the driver quotes an array element by element, and the server parses and plans the
    # long literal: half the statement's time)
    params = {
        "qs": halfvec_literals(q),
        "qi": ",".join(map(str, qi)),
        "ids": ",".join(map(str, ids[np.concatenate(tops)].tolist())),
        "e": encoder_id,
        "k": int(k),
    }
    with db.engine.connect() as conn:
        rows = conn.execute(stmt, params).all()
    out: list[list[tuple[int, float]]] = [[] for _ in range(q.shape[0])]
    for r in rows:
        out[int(r.i) - 1].append((int(r.tile_id), float(r.d)))
    return out


def _rescore_in_memory(
    q: np.ndarray, ids: np.ndarray, phi: np.ndarray, tops: list[np.ndarray], k: int
) -> list[list[tuple[int, float]]]:
    """Per query the ``k`` of its candidate rows ``tops`` nearest by the cosine of their Φ
    codes ``phi``: ``(tile_id, cosine distance)``, nearest first, ties by id (as in SQL)."""
    # the query as the stored Φ is: rounded to float16 first
    qn = q.astype(np.float16).astype(np.float32)
    qn /= np.maximum(np.linalg.norm(qn, axis=1, keepdims=True), 1e-12)
    out: list[list[tuple[int, float]]] = []
    for row, top in zip(qn, tops, strict=True):
        if top.size == 0:
            out.append([])
            continue
        d = 1.0 - (phi[top].astype(np.float32) @ row) / INT8_UNIT
        tid = ids[top]
        order = np.lexsort((tid, d))[:k]
        out.append([(int(t), float(x)) for t, x in zip(tid[order], d[order], strict=True)])
    return out


def _exact_phi(
    db: Database, encoder_id: int, q: np.ndarray, k: int, allowed: np.ndarray
) -> list[list[tuple[int, float]]]:
    """Exact cosine distances of ``q`` to the Φ of the allowed complete tiles."""
    ids, phi = phi_of(db, encoder_id, allowed)
    if ids.size == 0:
        return [[] for _ in range(q.shape[0])]
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    pn = phi / np.maximum(np.linalg.norm(phi, axis=1, keepdims=True), 1e-12)
    d = 1.0 - qn @ pn.T
    kk = min(int(k), ids.size)
    out = []
    for row in d:
        top = np.argpartition(row, kk - 1)[:kk] if kk < ids.size else np.arange(ids.size)
        top = top[np.lexsort((ids[top], row[top]))]
        out.append([(int(ids[j]), float(row[j])) for j in top])
    return out


def phi_of(
    db: Database, encoder_id: int, tile_ids: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, Φ as float32 ``(n, PHI_DIM)``) of those tiles of complete orthomosaics, by id."""
    from sqlalchemy import any_, bindparam, literal_column, select
    from sqlalchemy.dialects.postgresql import ARRAY, BIGINT

    t, o, e = TileRow.__table__, Orthomosaic.__table__, TileEmbedding.__table__
    stmt = (
        select(e.c.tile_id, _phi_send(e.c.phi))
        .join_from(e, t, t.c.id == e.c.tile_id)
        .join(o, o.c.id == t.c.orthomosaic_id)
        .where(
            e.c.encoder_id == bindparam("e"),
            o.c.status == literal_column("'complete'"),
            e.c.tile_id == any_(bindparam("ids", type_=ARRAY(BIGINT))),
        )
        .order_by(e.c.tile_id)
    )
    ids = [int(i) for i in np.asarray(tile_ids, dtype=np.int64).ravel()]
    with db.engine.connect() as conn:
        rows = conn.execute(stmt, {"e": encoder_id, "ids": ids}).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, PHI_DIM), dtype=np.float32)
    return (
        np.array([r.tile_id for r in rows], dtype=np.int64),
        _halfvec_rows([r.phi for r in rows]),
    )


def tile_refs(db: Database, encoder_id: int, complete_only: bool = True) -> list[TileRef]:
    """The grid cell of every tile of the encoder (ordered by orthomosaic, then id)."""
    sql = (
        "SELECT t.id, t.orthomosaic_id, t.row, t.col FROM tiles t"
        " JOIN orthomosaics o ON o.id = t.orthomosaic_id WHERE o.encoder_id = :e"
    )
    if complete_only:
        sql += " AND o.status = 'complete'"
    with db.engine.connect() as conn:
        rows = conn.execute(_text(sql + " ORDER BY t.orthomosaic_id, t.id"), {"e": encoder_id})
        return [TileRef(int(r.id), int(r.orthomosaic_id), int(r.row), int(r.col)) for r in rows]


# --------------------------------------------------------------------------------------------
# summaries
def counts(conn: Any) -> dict[str, Any]:
    """Row counts and size of the database on an open connection (``geoloc db status``)."""
    return {
        "encoders": conn.execute(_text("SELECT count(*) FROM encoders")).scalar(),
        "orthomosaics": {
            r.status: r.n
            for r in conn.execute(
                _text("SELECT status, count(*) AS n FROM orthomosaics GROUP BY status")
            )
        },
        "tiles": conn.execute(_text("SELECT count(*) FROM tiles")).scalar(),
        "database_bytes": conn.execute(
            _text("SELECT pg_database_size(current_database())")
        ).scalar(),
    }


def complete_raster_paths(db: Database) -> list[str]:
    """Distinct raster paths of the complete orthomosaics (any encoder), sorted."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            _text("SELECT DISTINCT path FROM orthomosaics WHERE status = 'complete' ORDER BY path")
        ).all()
    return [str(r[0]) for r in rows]


def max_tile_step_m(db: Database) -> float | None:
    """The largest tile step on the ground (stride x GSD, m) of the complete orthomosaics."""
    with db.engine.connect() as conn:
        v = conn.execute(
            _text(
                "SELECT max(stride * coalesce(target_gsd_m, gsd_m)) FROM orthomosaics "
                "WHERE status = 'complete'"
            )
        ).scalar()
    return float(v) if v is not None else None


# --------------------------------------------------------------------------------------------
# locking
@contextmanager
def ingest_lock(db: Database, *, wait: bool = True) -> Iterator[None]:
    """Hold the database-wide ingest lock (a Postgres session advisory lock).

    A second ingest waits (logging a message) until the first releases it; with
    ``wait=False`` it raises :class:`DatabaseError` instead. The lock dies with the
    connection, so a killed process never leaves it held.
    """
    conn = db.engine.connect()
    try:
        got = conn.execute(
            _text("SELECT pg_try_advisory_lock(:k)"), {"k": INGEST_LOCK_KEY}
        ).scalar()
        conn.commit()
        if not got:
            if not wait:
                raise DatabaseError(f"{db.url}: another ingest is running (ingest lock held)")
            log.warning("another ingest is running on %s; waiting for it to finish", db.url)
            conn.execute(_text("SELECT pg_advisory_lock(:k)"), {"k": INGEST_LOCK_KEY})
            conn.commit()
        try:
            yield
        finally:
            try:
                conn.execute(_text("SELECT pg_advisory_unlock(:k)"), {"k": INGEST_LOCK_KEY})
                conn.commit()
            except DBAPIError:
                # The connection died (server gone): the lock died with it, and raising here
                # would hide the error that got us here.
                log.debug("ingest lock: connection lost before unlock", exc_info=True)
    finally:
        try:
            conn.close()
        except DBAPIError:
            log.debug("ingest lock: closing a dead connection", exc_info=True)


# --------------------------------------------------------------------------------------------
# rasters that move
@dataclass(frozen=True)
class Relinked:
    """One orthomosaic row whose stored raster path was rewritten."""

    orthomosaic_id: int
    old_path: str
    new_path: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"id": self.orthomosaic_id, "old_path": self.old_path, "new_path": self.new_path}


def relink_sha256(db: Database, sha256: str, new_path: str) -> list[Relinked]:
    """Point every orthomosaic (any encoder) of the file with ``sha256`` at ``new_path``.

    The file's content is what the tiles were cut from, so every encoder's rows move together.
    """
    new = os.path.abspath(new_path)
    with db.engine.begin() as conn:
        rows = conn.execute(
            _text("SELECT id, path FROM orthomosaics WHERE sha256 = :s AND path <> :p ORDER BY id"),
            {"s": sha256, "p": new},
        ).all()
        for r in rows:
            conn.execute(
                _text("UPDATE orthomosaics SET path = :p WHERE id = :i"), {"p": new, "i": r.id}
            )
    return [Relinked(int(r.id), str(r.path), new) for r in rows]


def _under(path: str, prefix: str) -> bool:
    """``path`` equals ``prefix`` or lies below it (whole path components only)."""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def relink_prefix(
    db: Database, old_prefix: str, new_prefix: str, *, dry_run: bool = False
) -> list[Relinked]:
    """Rewrite stored raster paths under ``old_prefix`` to lie under ``new_prefix``, in one
    transaction; return what changed (or would change, with ``dry_run``).

    Prefixes match whole path components: ``/data/a`` moves ``/data/a/x.tif``, not ``/data/ab``.
    """
    old = os.path.abspath(old_prefix)
    new = os.path.abspath(new_prefix)
    changed: list[Relinked] = []
    with db.engine.begin() as conn:
        rows = conn.execute(
            _text("SELECT id, path FROM orthomosaics WHERE left(path, :n) = :p ORDER BY id"),
            {"n": len(old), "p": old},
        ).all()
        for r in rows:
            path = str(r.path)
            if not _under(path, old):
                continue
            target = new + path[len(old) :]
            changed.append(Relinked(int(r.id), path, target))
            if not dry_run:
                conn.execute(
                    _text("UPDATE orthomosaics SET path = :p WHERE id = :i"),
                    {"p": target, "i": r.id},
                )
    return changed


@dataclass(frozen=True)
class RasterCheck:
    """State of one stored raster: ``ok``, ``missing``, ``unreadable``, ``changed``, or
    ``bundle`` (an imported bundle's region folder stands in for it)."""

    path: str
    sha256: str
    status: str
    orthomosaic_ids: tuple[int, ...]
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "status": self.status,
            "orthomosaic_ids": list(self.orthomosaic_ids),
            "message": self.message,
        }


def check_rasters(db: Database, *, hash_content: bool = True) -> list[RasterCheck]:
    """Every stored raster path, with whether the file is there and still has its SHA-256.

    ``hash_content=False`` only checks that the files exist and can be opened for reading.
    """
    from geoloc.store.bundle import is_region_folder
    from geoloc.store.hashing import sha256_file

    with db.engine.connect() as conn:
        rows = conn.execute(
            _text(
                "SELECT path, sha256, array_agg(id ORDER BY id) AS ids FROM orthomosaics "
                "GROUP BY path, sha256 ORDER BY path"
            )
        ).all()
    out: list[RasterCheck] = []
    for r in rows:
        path, sha, ids = str(r.path), str(r.sha256), tuple(int(i) for i in r.ids)
        if is_region_folder(path):
            # imported from a bundle: the verification regions stand in for the raster
            out.append(RasterCheck(path, sha, "bundle", ids, f"{path}: bundle regions"))
            continue
        if not os.path.exists(path):
            out.append(RasterCheck(path, sha, "missing", ids, f"{path}: no such file"))
            continue
        try:
            if hash_content:
                actual = sha256_file(path)
            else:
                with open(path, "rb") as f:
                    f.read(1)
                actual = sha
        except OSError as exc:
            out.append(RasterCheck(path, sha, "unreadable", ids, f"{path}: {exc.strerror or exc}"))
            continue
        if actual != sha:
            msg = f"{path}: content changed (sha256 {actual[:12]}, stored {sha[:12]})"
            out.append(RasterCheck(path, sha, "changed", ids, msg))
        else:
            out.append(RasterCheck(path, sha, "ok", ids))
    return out
