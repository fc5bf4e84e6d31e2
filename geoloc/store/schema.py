"""SQLAlchemy 2 ORM of the tile database: the single source of truth for the schema.

Tables: ``encoders``, ``orthomosaics`` (one row per raster *and* encoder, with its ingest status),
``tiles`` (one row per kept tile, with what is needed to re-read its pixels) and
``tile_embeddings`` (Φ as ``halfvec(1024)`` with an HNSW index over its sign bits, node areas
and centroids).

Φ is stored as ``halfvec`` rather than ``vector``: half the bytes, and cosine k-NN recall is
unchanged at float16 precision (``benchmarks/store.py`` measures both). The HNSW index holds
``binary_quantize(phi)`` (:data:`PHI_BQ`, 1 bit per dimension); a search takes the nearest by
Hamming distance and re-ranks them by the halfvec cosine (:func:`repository.knn_phi_many`).
Φ narrower than :data:`PHI_DIM` is zero-padded (cosine unchanged). The FAISS id of a tile's Ω is
its tile id, so no column maps one to the other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Width of the ``tile_embeddings.phi`` column (HNSW on halfvec indexes up to 4,000 dims).
PHI_DIM = 1024

#: The expression the Φ HNSW index is built on (sign bits); queries must repeat it exactly.
PHI_BQ = "(binary_quantize(phi)::bit(1024))"  # a literal: SQL is built from constants only
assert PHI_BQ == f"(binary_quantize(phi)::bit({PHI_DIM}))"

#: Ingest states of an orthomosaic; only ``complete`` ones are ever searched.
STATUSES = ("ingesting", "complete", "failed")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable Alembic diffs)."""

    metadata = MetaData(naming_convention=NAMING)


class Encoder(Base):
    """A registered encoder: name + weights SHA-256 identify what produced the embeddings."""

    __tablename__ = "encoders"
    __table_args__ = (UniqueConstraint("name", "weights_sha256", name="name_weights"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    omega_dim: Mapped[int] = mapped_column(Integer)
    phi_dim: Mapped[int] = mapped_column(Integer)
    # whether the store keeps this encoder's Ω FAISS index: only Ω recall (the ``seed`` preset)
    # reads it, so an ingest may leave it out (``--no-omega``) and a rebuild may add it later
    has_omega: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Orthomosaic(Base):
    """One ingested raster for one encoder (the same file can be ingested per encoder)."""

    __tablename__ = "orthomosaics"
    __table_args__ = (
        UniqueConstraint("sha256", "encoder_id", name="sha_encoder"),
        CheckConstraint("status IN ('ingesting', 'complete', 'failed')", name="status"),
        Index("ix_orthomosaics_bounds", "min_lat", "max_lat", "min_lon", "max_lon"),
        Index("ix_orthomosaics_encoder_status", "encoder_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    encoder_id: Mapped[int] = mapped_column(ForeignKey("encoders.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)  # absolute path of the raster
    sha256: Mapped[str] = mapped_column(String(64))
    crs: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    gsd_m: Mapped[float] = mapped_column(Double)
    min_lon: Mapped[float] = mapped_column(Double)
    min_lat: Mapped[float] = mapped_column(Double)
    max_lon: Mapped[float] = mapped_column(Double)
    max_lat: Mapped[float] = mapped_column(Double)
    footprint_wkt: Mapped[str] = mapped_column(Text)
    tile_size: Mapped[int] = mapped_column(Integer)
    stride: Mapped[int] = mapped_column(Integer)
    # the GSD the tiles were resampled to; NULL: the native pixels were tiled as they are
    target_gsd_m: Mapped[float | None] = mapped_column(Double, nullable=True)
    status: Mapped[str] = mapped_column(String(16), server_default="ingesting")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    tiles_kept: Mapped[int] = mapped_column(Integer, server_default="0")
    tiles_skipped: Mapped[int] = mapped_column(Integer, server_default="0")


class TileRow(Base):
    """One kept tile: grid position, geography and the source window to re-read its pixels."""

    __tablename__ = "tiles"
    __table_args__ = (
        UniqueConstraint("orthomosaic_id", "row", "col", name="grid_cell"),
        Index("ix_tiles_center", "center_lat", "center_lon"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    orthomosaic_id: Mapped[int] = mapped_column(ForeignKey("orthomosaics.id", ondelete="CASCADE"))
    row: Mapped[int] = mapped_column(Integer)
    col: Mapped[int] = mapped_column(Integer)
    center_lat: Mapped[float] = mapped_column(Double)
    center_lon: Mapped[float] = mapped_column(Double)
    footprint_wkt: Mapped[str] = mapped_column(Text)
    gsd_m: Mapped[float] = mapped_column(Double)
    valid_fraction: Mapped[float] = mapped_column(REAL)
    # Source-pixel window (col_off, row_off, width, height; fractional when resampled) and the
    # affine transform (a, b, c, d, e, f) of the tile's output pixels in the raster CRS.
    window: Mapped[list[float]] = mapped_column(ARRAY(Double))
    transform: Mapped[list[float]] = mapped_column(ARRAY(Double))
    tile_size: Mapped[int] = mapped_column(Integer)


class TileEmbedding(Base):
    """Φ of one tile for one encoder, plus the node areas / centroids used by the re-ranker."""

    __tablename__ = "tile_embeddings"
    __table_args__ = (
        # HNSW over the sign bits of Φ (128 B per tile instead of the 2 KiB halfvec): recall
        # takes the nearest by Hamming distance and re-ranks them by the halfvec cosine
        Index(
            "ix_tile_embeddings_phi_bq",
            text("(binary_quantize(phi)::bit(1024))"),  # PHI_BQ, spelled out: SQL from constants
            postgresql_using="hnsw",
            postgresql_with={"m": 16, "ef_construction": 64},
            postgresql_ops={PHI_BQ: "bit_hamming_ops"},
        ),
        Index("ix_tile_embeddings_encoder", "encoder_id"),
    )

    tile_id: Mapped[int] = mapped_column(
        ForeignKey("tiles.id", ondelete="CASCADE"), primary_key=True
    )
    encoder_id: Mapped[int] = mapped_column(
        ForeignKey("encoders.id", ondelete="CASCADE"), primary_key=True
    )
    # storage PLAIN (migration 0004): in the row, not a TOAST chunk pair per tile
    phi: Mapped[Any] = mapped_column(HALFVEC(PHI_DIM))
    node_areas: Mapped[list[float]] = mapped_column(ARRAY(REAL))
    node_centroids: Mapped[list[float]] = mapped_column(ARRAY(REAL))  # K x 2 flattened (x, y)
