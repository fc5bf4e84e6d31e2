"""drop tile_embeddings.faiss_id: the FAISS id of a tile's Ω is its tile id

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_column('tile_embeddings', 'faiss_id')


def downgrade() -> None:
    # every row wrote faiss_id = tile_id, so the column is restored exactly
    op.add_column('tile_embeddings', sa.Column('faiss_id', sa.BigInteger(), nullable=True))
    op.execute('UPDATE tile_embeddings SET faiss_id = tile_id')
    op.alter_column('tile_embeddings', 'faiss_id', nullable=False)
