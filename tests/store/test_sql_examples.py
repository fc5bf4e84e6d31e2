"""The SQL examples of docs/sql.md run, answer correctly, and the k-NN uses the HNSW index."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pgvector import HalfVector

from geoloc.store.database import Database

from .helpers import ingest_fake, make_tiles, register_encoder, unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"


def sql_blocks() -> list[str]:
    """The ```sql blocks of docs/sql.md."""
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


def to_psycopg(sql: str) -> str:
    """psql variables (:name, :'name') -> psycopg2 named parameters."""
    sql = re.sub(r":'(\w+)'", r"%(\1)s", sql)
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


def run(db: Database, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        rows: list[tuple[Any, ...]] = []
        for stmt in [s.strip() for s in to_psycopg(sql).split(";") if s.strip()]:
            cur.execute(stmt, params)
            if cur.description is not None:
                rows = list(cur.fetchall())
        raw.commit()
        return rows
    finally:
        raw.close()


@pytest.fixture
def filled(database: Database) -> tuple[Database, list[int], np.ndarray, list[Any]]:
    enc = register_encoder(database)
    rng = np.random.default_rng(7)
    tiles = make_tiles(12, 25)
    phi = unit(rng, len(tiles), 1024)
    _, ids = ingest_fake(database, enc, tiles, phi)
    return database, ids, phi, tiles


def test_doc_has_the_four_examples() -> None:
    assert len(sql_blocks()) >= 4


def test_similar_to_a_tile(filled: Any) -> None:
    db, ids, phi, _ = filled
    rows = run(db, sql_blocks()[0], {"tile_id": ids[40]})
    sims = phi @ phi[40]
    order = [i for i in np.argsort(-sims) if i != 40][:10]
    assert [r[0] for r in rows] == [ids[i] for i in order]


def test_similar_within_bbox(filled: Any) -> None:
    db, ids, phi, tiles = filled
    box = {"min_lat": 60.445, "max_lat": 60.448, "min_lon": 22.252, "max_lon": 22.258}
    rows = run(db, sql_blocks()[1], {"tile_id": ids[3], **box})
    inside = [
        i
        for i, t in enumerate(tiles)
        if box["min_lat"] <= t.center_lat <= box["max_lat"]
        and box["min_lon"] <= t.center_lon <= box["max_lon"]
    ]
    assert len(inside) > 10
    sims = phi[inside] @ phi[3]
    expected = [ids[inside[i]] for i in np.argsort(-sims)[:10]]
    assert [r[0] for r in rows] == expected


def test_tiles_per_orthomosaic(filled: Any) -> None:
    db, ids, _, tiles = filled
    rows = run(db, sql_blocks()[2], {})
    assert len(rows) == 1
    oid, path, status, count, area_km2 = rows[0][:5]
    assert status == "complete" and count == len(ids)
    assert float(area_km2) == pytest.approx(
        len(ids) * (tiles[0].tile_size * 0.5) ** 2 / 1e6, abs=1e-3
    )


def test_nearest_to_a_query_vector(filled: Any) -> None:
    db, ids, phi, _ = filled
    rng = np.random.default_rng(8)
    q = phi[100] + 0.2 * unit(rng, 1, 1024)[0]
    rows = run(db, sql_blocks()[3], {"q": HalfVector(q).to_text()})
    sims = phi @ (q / np.linalg.norm(q))
    assert [r[0] for r in rows] == [ids[i] for i in np.argsort(-sims)[:10]]
    assert rows[0][0] == ids[100]


@pytest.mark.parametrize("which", ["plain", "doc"])
def test_knn_query_uses_the_hnsw_index(filled: Any, which: str) -> None:
    db, _, phi, _ = filled
    if which == "plain":
        sql = (
            "SELECT tile_id FROM tile_embeddings ORDER BY binary_quantize(phi)::bit(1024) <~> "
            "binary_quantize(CAST(%(q)s AS halfvec)) LIMIT 10"
        )
    else:
        sql = to_psycopg(sql_blocks()[3]).strip().rstrip(";").split(";")[-1]
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("ANALYZE")
        # 300 rows are cheaper to scan than to search: make the planner show its index choice
        cur.execute("SET enable_seqscan = off")
        cur.execute("EXPLAIN " + sql, {"q": HalfVector(phi[0]).to_text()})
        plan = "\n".join(r[0] for r in cur.fetchall())
    finally:
        raw.close()
    assert "Index Scan using ix_tile_embeddings_phi_bq" in plan, re.sub(r"\[[^]]*\]", "[..]", plan)


def test_size_query_runs(filled: Any) -> None:
    db, _, _, _ = filled
    rows = run(db, sql_blocks()[4], {})
    assert {r[0] for r in rows} == {
        "tiles",
        "tile_embeddings",
        "ix_tile_embeddings_phi_bq",
        "ix_tiles_center",
    }
