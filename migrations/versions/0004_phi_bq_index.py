"""Φ bytes per tile: a binary-quantized HNSW index, Φ in the row, 7-decimal tile footprints

The halfvec HNSW index held a second copy of every Φ (about 2.7 KB per tile); the index over
``binary_quantize(phi)`` holds its 1,024 sign bits (about 0.4 KB per tile) and a search
re-ranks its Hamming neighbours by the halfvec cosine, which kept Φ recall@50 on the scale
database. Φ was TOASTed out of line (halfvec's default storage) as two chunks per tile; PLAIN
keeps it in the row, and MAIN keeps the node arrays there with it. Tile footprints drop the digits below 1e-7 degree (about 1 cm).

Existing rows keep their layout until they are rewritten (``VACUUM FULL tile_embeddings``
moves Φ into the rows; the space of the old index is freed at once).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 18:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BQ = '(binary_quantize(phi)::bit(1024))'


def upgrade() -> None:
    op.drop_index('ix_tile_embeddings_phi_hnsw', table_name='tile_embeddings')
    op.execute(
        f'CREATE INDEX ix_tile_embeddings_phi_bq ON tile_embeddings USING hnsw ({BQ} '
        'bit_hamming_ops) WITH (m = 16, ef_construction = 64)'
    )
    op.execute('ALTER TABLE tile_embeddings ALTER COLUMN phi SET STORAGE PLAIN')
    # a row with Φ inline is past the TOAST threshold: the small node arrays would each be moved
    # out of line (a TOAST row and index entry apiece) unless MAIN keeps them in the row
    op.execute('ALTER TABLE tile_embeddings ALTER COLUMN node_areas SET STORAGE MAIN')
    op.execute('ALTER TABLE tile_embeddings ALTER COLUMN node_centroids SET STORAGE MAIN')
    # truncates (not rounds) beyond 7 decimals: at most 1e-7 degree, as new rows are written
    op.execute(
        "UPDATE tiles SET footprint_wkt = regexp_replace(footprint_wkt, '(\\.[0-9]{7})[0-9]+', "
        "'\\1', 'g') WHERE footprint_wkt ~ '\\.[0-9]{8}'"
    )


def downgrade() -> None:
    op.execute('ALTER TABLE tile_embeddings ALTER COLUMN node_centroids SET STORAGE EXTENDED')
    op.execute('ALTER TABLE tile_embeddings ALTER COLUMN node_areas SET STORAGE EXTENDED')
    op.execute('ALTER TABLE tile_embeddings ALTER COLUMN phi SET STORAGE EXTERNAL')
    op.drop_index('ix_tile_embeddings_phi_bq', table_name='tile_embeddings')
    op.create_index(
        'ix_tile_embeddings_phi_hnsw',
        'tile_embeddings',
        ['phi'],
        unique=False,
        postgresql_using='hnsw',
        postgresql_with={'m': 16, 'ef_construction': 64},
        postgresql_ops={'phi': 'halfvec_cosine_ops'},
    )
