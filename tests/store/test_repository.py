"""Repository round trips: encoders, orthomosaic lifecycle, tiles + Φ, radius queries, locking."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from geoloc.errors import DatabaseError
from geoloc.quantize import INT8_UNIT
from geoloc.store import repository as repo
from geoloc.store.database import Database
from tiling.crs import geodesic_distance_m

from .helpers import SHA_A, K, ingest_fake, make_tiles, register_encoder, unit


def test_encoder_registration_is_idempotent(database: Database) -> None:
    a = register_encoder(database)
    assert register_encoder(database) == a
    b = register_encoder(database, sha="b" * 64)
    assert b != a
    assert repo.find_encoder(database, SHA_A[:12]) is not None
    assert repo.find_encoder(database, "c" * 64) is None
    assert repo.find_encoder(database, "________") is None  # not a LIKE pattern
    assert repo.find_encoder(database, "%" * 8) is None
    with pytest.raises(DatabaseError, match="phi_dim"):
        register_encoder(database, sha="d" * 64, phi_dim=5000)
    with pytest.raises(DatabaseError, match="registered with dims"):
        repo.get_or_create_encoder(database, "fake", {}, SHA_A, omega_dim=65, phi_dim=1024)


def test_add_and_fetch_candidates_round_trip(database: Database) -> None:
    enc = register_encoder(database, phi_dim=700)  # narrower Φ is zero-padded and cut back
    tiles = make_tiles(3, 4)
    rng = np.random.default_rng(0)
    phi = unit(rng, len(tiles), 700)
    oid, ids = ingest_fake(database, enc, tiles, phi)
    assert len(ids) == 12 and len(set(ids)) == 12
    order = [ids[5], ids[0], 999_999, ids[11]]
    rows = repo.fetch_candidates(database, enc, order)
    assert [r.tile_id for r in rows] == [ids[5], ids[0], ids[11]]
    r = rows[0]
    t = tiles[5]
    assert (r.row, r.col) == (t.row, t.col)
    assert r.center_lat == pytest.approx(t.center_lat) and r.center_lon == pytest.approx(
        t.center_lon
    )
    assert r.raster_path == "/data/fake.tif" and r.crs == "EPSG:32634" and r.gsd_m == 0.5
    assert r.window == (t.window.col_off, t.window.row_off, 224.0, 224.0)
    assert r.transform == t.transform
    assert r.phi.dtype == np.float32 and r.phi.shape == (700,)
    np.testing.assert_allclose(r.phi, phi[5], atol=1e-3)  # halfvec precision
    assert r.node_areas.shape == (K,) and r.node_centroids.shape == (K, 2)
    assert r.footprint_wkt.startswith("POLYGON")
    # geometry only (a neighbour's record): the same fields, no Φ or nodes
    (g,) = repo.fetch_candidates(database, enc, [ids[5]], embeddings=False)
    assert (g.tile_id, g.row, g.col, g.transform, g.window) == (
        r.tile_id, r.row, r.col, r.transform, r.window
    )  # fmt: skip
    assert g.phi.shape == (0,) and g.node_areas.shape == (0,) and g.node_centroids.shape == (0, 2)
    o = repo.get_orthomosaic(database, oid)
    assert o is not None and o.status == "complete" and o.tiles_kept == 12 and o.tiles_skipped == 3
    assert o.finished_at is not None


def test_incomplete_orthomosaics_are_never_searched(database: Database) -> None:
    enc = register_encoder(database)
    rng = np.random.default_rng(1)
    _, done = ingest_fake(database, enc, make_tiles(2, 2), unit(rng, 4, 1024))
    oid, pending = ingest_fake(
        database, enc, make_tiles(2, 2, lat0=60.5), unit(rng, 4, 1024), sha="e" * 64, complete=False
    )
    assert repo.complete_tile_ids(database, enc).tolist() == sorted(done)
    assert repo.fetch_candidates(database, enc, pending) == []
    assert [o.id for o in repo.incomplete_orthomosaics(database, enc)] == [oid]
    repo.fail_orthomosaic(database, oid, "boom")
    o = repo.get_orthomosaic(database, oid)
    assert o is not None and o.status == "failed" and o.error == "boom"
    assert repo.delete_orthomosaic(database, oid) == sorted(pending)
    assert repo.incomplete_orthomosaics(database, enc) == []
    # another encoder sees nothing
    other = register_encoder(database, sha="b" * 64)
    assert repo.complete_tile_ids(database, other).size == 0


def test_tile_ids_within_radius_is_exact_geodesic(database: Database) -> None:
    enc = register_encoder(database)
    tiles = make_tiles(8, 8)  # ~55 m x ~27 m spacing
    oid, ids = ingest_fake(database, enc, tiles, unit(np.random.default_rng(2), 64, 1024))
    lat, lon = 60.448, 22.252
    lons = np.array([t.center_lon for t in tiles])
    lats = np.array([t.center_lat for t in tiles])
    d = geodesic_distance_m(lons, lats, np.full_like(lons, lon), np.full_like(lats, lat))
    for radius in (0.0, 40.0, 120.0, 300.0, 5000.0):
        expected = sorted(np.asarray(ids)[np.asarray(d) <= radius].tolist())
        got = repo.tile_ids_within(database, enc, lat, lon, radius).tolist()
        assert got == expected, radius
    assert 0 < len(repo.tile_ids_within(database, enc, lat, lon, 120.0)) < 64
    with pytest.raises(DatabaseError):
        repo.tile_ids_within(database, enc, lat, lon, -1.0)
    # many circles in one query: each as asked alone, in order (an empty one included)
    circles = [
        (t.center_lat, t.center_lon, r)
        for t, r in zip(tiles[::9], (30.0, 80.0, 0.0, 250.0) * 2, strict=True)
    ]
    circles.append((-40.0, 100.0, 500.0))  # nowhere near a tile
    many = repo.tile_ids_within_many(database, enc, circles)
    assert len(many) == len(circles) and many[-1].size == 0
    for (la, lo, r), got_many in zip(circles, many, strict=True):
        dd = geodesic_distance_m(lons, lats, np.full_like(lons, lo), np.full_like(lats, la))
        assert got_many.tolist() == sorted(np.asarray(ids)[np.asarray(dd) <= r].tolist())
    assert any(len(m) > 1 for m in many)
    assert repo.tile_ids_within_many(database, enc, []) == []
    # restricted to an orthomosaic: the same tiles for their own, none for another
    own = repo.tile_ids_within_many(database, enc, circles, [oid] * len(circles))
    assert [m.tolist() for m in own] == [m.tolist() for m in many]
    other = repo.tile_ids_within_many(database, enc, circles, [oid + 1, *[None] * 8])
    assert other[0].size == 0 and [m.tolist() for m in other[1:]] == [m.tolist() for m in many[1:]]
    with pytest.raises(ValueError):
        repo.tile_ids_within_many(database, enc, circles, [oid])


def test_orthomosaic_grid_holds_every_tile_by_cell(database: Database) -> None:
    """An orthomosaic's grid: each tile's id at its (row, col), -1 where no tile was kept;
    None for an orthomosaic that is not complete or is another encoder's."""
    enc = register_encoder(database, sha="9" * 64)
    tiles = [t for t in make_tiles(5, 7) if (t.row, t.col) != (2, 3)]  # one cell without a tile
    phi = unit(np.random.default_rng(3), len(tiles), 1024)
    oid, ids = ingest_fake(database, enc, tiles, phi, sha="1" * 64)
    g = repo.orthomosaic_grid(database, enc, oid)
    assert g is not None and g.ids.shape == (5, 7) and g.orthomosaic_id == oid
    assert (g.stride, g.tile_size) == (112, 224)
    assert g.ids[2, 3] == -1 and (g.ids >= 0).sum() == len(tiles)
    for t, i in zip(tiles, ids, strict=True):
        assert g.ids[t.row, t.col] == i
    assert repo.orthomosaic_grid(database, enc + 1, oid) is None
    assert repo.orthomosaic_grid(database, enc, oid + 1000) is None
    part, _ = ingest_fake(
        database,
        enc,
        make_tiles(2, 2),
        unit(np.random.default_rng(4), 4, 1024),
        sha="2" * 64,
        complete=False,
    )
    assert repo.orthomosaic_grid(database, enc, part) is None


def test_knn_phi_matches_exact_cosine(database: Database) -> None:
    enc = register_encoder(database)
    rng = np.random.default_rng(3)
    tiles = make_tiles(10, 20)
    phi = unit(rng, len(tiles), 1024)
    _, ids = ingest_fake(database, enc, tiles, phi)
    q = phi[17] + 0.3 * unit(rng, 1, 1024)[0]
    got = repo.knn_phi(database, enc, q, k=10, ef_search=200)
    sims = phi @ (q / np.linalg.norm(q))
    expected = np.asarray(ids)[np.argsort(-sims)[:10]].tolist()
    assert [g[0] for g in got] == expected
    assert got[0][0] == ids[17]


def test_knn_phi_many_batches_headings_and_restricts_exactly(database: Database) -> None:
    """Several queries in one call give what one query each gives; a restriction returns only
    the allowed tiles, in exact cosine order, however far they are from the query."""
    enc = register_encoder(database)
    rng = np.random.default_rng(4)
    tiles = make_tiles(10, 20)
    phi = unit(rng, len(tiles), 1024)
    _, ids = ingest_fake(database, enc, tiles, phi)
    q = np.stack([phi[5] + 0.2 * unit(rng, 1, 1024)[0], phi[150] + 0.2 * unit(rng, 1, 1024)[0]])
    many = repo.knn_phi_many(database, enc, q, k=8, ef_search=200)
    assert [[t for t, _ in h] for h in many] == [
        [t for t, _ in repo.knn_phi(database, enc, row, k=8, ef_search=200)] for row in q
    ]
    assert many[0][0][0] == ids[5] and many[1][0][0] == ids[150]
    # the allowed tiles are the ones LEAST like query 0: an index scan would not reach them
    sims = phi @ (q[0] / np.linalg.norm(q[0]))
    far = np.asarray(ids)[np.argsort(sims)[:12]]
    got = repo.knn_phi_many(database, enc, q, k=5, allowed_ids=far)
    order = np.argsort(-sims[np.argsort(sims)[:12]])[:5]
    assert [t for t, _ in got[0]] == far[order].tolist()
    assert all(t in set(far.tolist()) for h in got for t, _ in h)
    d0 = 1.0 - float(sims[list(ids).index(got[0][0][0])])
    assert got[0][0][1] == pytest.approx(d0, abs=2e-3)  # halfvec rounding
    assert repo.knn_phi_many(database, enc, q, k=5, allowed_ids=np.zeros(0)) == [[], []]


def test_phi_sign_codes_are_the_halfvec_signs_of_complete_tiles(database: Database) -> None:
    enc = register_encoder(database)
    rng = np.random.default_rng(7)
    phi = unit(rng, 12, 1024)
    phi[0, :5] = [1e-9, -1e-9, 0.0, 0.5, -0.5]  # below halfvec's smallest value: stored as 0
    _, ids = ingest_fake(database, enc, make_tiles(3, 4), phi)
    ingest_fake(database, enc, make_tiles(1, 2, lat0=60.5), unit(rng, 2, 1024), sha="e" * 64,
                complete=False)  # fmt: skip
    got_ids, codes, none = repo.phi_sign_codes(database, enc)
    assert got_ids.tolist() == sorted(ids) and codes.shape == (12, 128) and none is None
    order = np.argsort(ids)
    expected = np.packbits(phi[order].astype(np.float16) > 0, axis=1)
    np.testing.assert_array_equal(codes, expected)
    assert np.unpackbits(codes[int(np.argmin(ids))][:1])[:5].tolist() == [0, 0, 0, 1, 0]
    # with Φ's int8 codes: the same rows, each code the unit Φ times 127, rounded
    ids2, codes2, phi_codes = repo.phi_sign_codes(database, enc, with_phi=True)
    assert ids2.tolist() == got_ids.tolist()
    np.testing.assert_array_equal(codes2, codes)
    assert phi_codes is not None and phi_codes.dtype == np.int8 and phi_codes.shape == (12, 1024)
    h = phi[order].astype(np.float16).astype(np.float32)
    want = h / np.linalg.norm(h, axis=1, keepdims=True) * INT8_UNIT
    assert np.abs(phi_codes - want).max() <= 0.5 + 1e-3


def test_knn_phi_scan_is_the_hamming_nearest_reranked_by_cosine(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every tile a candidate the scan is the exact cosine order; with few candidates it
    re-ranks exactly the Hamming-nearest ones; a restriction is honoured however far."""
    enc = register_encoder(database)
    rng = np.random.default_rng(8)
    tiles = make_tiles(10, 20)
    phi = unit(rng, len(tiles), 1024)
    _, ids = ingest_fake(database, enc, tiles, phi)
    ids_a = np.asarray(ids)
    cids, codes, phi_codes = repo.phi_sign_codes(database, enc, with_phi=True)
    assert phi_codes is not None
    q = np.stack([phi[5] + 0.2 * unit(rng, 1, 1024)[0], phi[150] + 0.2 * unit(rng, 1, 1024)[0]])
    got = repo.knn_phi_scan(database, enc, q, 8, cids, codes)
    mem = repo.knn_phi_scan(database, enc, q, 8, cids, codes, phi=phi_codes)
    for h in range(2):
        sims = phi @ (q[h] / np.linalg.norm(q[h]))
        assert [t for t, _ in got[h]] == ids_a[np.argsort(-sims)[:8]].tolist()
        assert got[h][0][1] == pytest.approx(1.0 - float(sims.max()), abs=2e-3)
        # re-ranked by the int8 codes in memory: the same nearest, every distance within the
        # codes' rounding of the exact one, in order
        assert mem[h][0][0] == got[h][0][0]
        exact = {int(t): 1.0 - float(s) for t, s in zip(ids_a, sims, strict=True)}
        assert all(abs(d - exact[t]) < 0.01 for t, d in mem[h])
        assert [d for _, d in mem[h]] == sorted(d for _, d in mem[h])
    assert got[0][0][0] == ids[5] and got[1][0][0] == ids[150]
    # the same scan in FAISS's binary index
    hamming = repo.hamming_index(codes)
    assert hamming.ntotal == len(cids)
    assert repo.knn_phi_scan(database, enc, q, 8, cids, codes, hamming=hamming) == got
    # 30 candidates: the 30 nearest by Hamming distance of the signs, then by cosine
    monkeypatch.setattr(repo, "PHI_BQ_CANDIDATES", 30)
    few = repo.knn_phi_scan(database, enc, q[:1], 10, cids, codes)[0]
    qb = np.packbits(q[0].astype(np.float16) > 0)
    ham = np.unpackbits(codes ^ qb, axis=1).sum(axis=1)
    within = set(cids[ham <= np.sort(ham)[29]].tolist())  # the 30 nearest (and their ties)
    assert len(few) == 10 and {t for t, _ in few} <= within
    assert [d for _, d in few] == sorted(d for _, d in few)
    few_f = repo.knn_phi_scan(database, enc, q[:1], 10, cids, codes, hamming=hamming)[0]
    assert len(few_f) == 10 and {t for t, _ in few_f} <= within
    # the allowed tiles are the ones LEAST like query 0
    sims = phi @ (q[0] / np.linalg.norm(q[0]))
    far = ids_a[np.argsort(sims)[:12]]
    got = repo.knn_phi_scan(database, enc, q, 5, cids, codes, allowed_ids=far)
    assert [t for t, _ in got[0]] == far[np.argsort(-sims[np.argsort(sims)[:12]])[:5]].tolist()
    assert all(t in set(far.tolist()) for h in got for t, _ in h)
    mem = repo.knn_phi_scan(database, enc, q, 5, cids, codes, allowed_ids=far, phi=phi_codes)
    assert all(len(h) == 5 and t in set(far.tolist()) for h in mem for t, _ in h)
    none = repo.knn_phi_scan(database, enc, q, 5, cids, codes, allowed_ids=np.zeros(0))
    assert none == [[], []]


def test_ingest_lock_serialises_writers(database: Database) -> None:
    events: list[str] = []
    inside = threading.Event()

    def second() -> None:
        with repo.ingest_lock(database):
            events.append("second")

    with repo.ingest_lock(database):
        events.append("first-in")
        th = threading.Thread(target=second)
        th.start()
        time.sleep(0.5)  # the second writer must still be waiting
        with pytest.raises(DatabaseError, match="another ingest"):
            with repo.ingest_lock(database, wait=False):
                pass
        inside.set()
        events.append("first-out")
    th.join(timeout=10)
    assert events == ["first-in", "first-out", "second"]


def test_halfvec_literals_bring_every_float16_back_exactly() -> None:
    # every finite float16 value, in rows of 1,024
    every = np.arange(65536, dtype=np.uint16).view(np.float16)
    every = every[np.isfinite(every)]
    rows = np.resize(every, (len(every) + 1023) // 1024 * 1024).reshape(-1, 1024)
    lits = repo.halfvec_literals(rows.astype(np.float32))
    assert len(lits) == rows.shape[0] and all(s[0] == "[" and s[-1] == "]" for s in lits)
    back = np.array([[float(x) for x in s[1:-1].split(",")] for s in lits]).astype(np.float16)
    assert np.array_equal(back.view(np.uint16), rows.view(np.uint16))  # bit for bit, -0 too
