"""TileStore: open errors, Ω search, Φ k-NN, candidates, radius, index re-open; the write unit
(begin/add/commit/abort, recover, verify); its imports."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pyproj import Transformer

from geoloc.config import Settings
from geoloc.errors import DatabaseError, EmptyDatabaseError, EncoderMismatchError, IndexError_
from geoloc.store import Candidate, TileStore
from geoloc.store import repository as repo
from geoloc.store.database import Database
from geoloc.store.faiss_store import OmegaIndex
from geoloc.store.records import RasterRecord, TileRecord

from .helpers import SHA_A, ingest_fake, make_tiles, register_encoder, unit

OMEGA_D = 64


def _populate(settings: Settings, database: Database) -> tuple[list[int], np.ndarray, np.ndarray]:
    """12 complete tiles of encoder SHA_A with Φ and a saved Ω index; (ids, Φ, Ω)."""
    enc = register_encoder(database)
    rng = np.random.default_rng(3)
    tiles = make_tiles(3, 4)
    phi = unit(rng, len(tiles), 1024)
    _, ids = ingest_fake(database, enc, tiles, phi)
    omega = unit(rng, len(tiles), OMEGA_D)
    index = OmegaIndex.open(settings, SHA_A, omega_dim=OMEGA_D)
    index.add(np.asarray(ids, dtype=np.int64), omega)
    index.save()
    return ids, phi, omega


def test_open_empty_database_and_other_encoder(pg_settings: Settings, database: Database) -> None:
    with pytest.raises(EmptyDatabaseError, match="geoloc ingest"):
        TileStore.open(pg_settings, encoder_sha256=SHA_A, encoder_name="fake")
    _populate(pg_settings, database)
    with pytest.raises(EncoderMismatchError, match=r"fake \(aaaaaaaaaaaa\)"):
        TileStore.open(pg_settings, encoder_sha256="b" * 64, encoder_name="fake")


def test_read_side_round_trip(pg_settings: Settings, database: Database) -> None:
    ids, phi, omega = _populate(pg_settings, database)
    with TileStore.open(pg_settings, encoder_sha256=SHA_A, encoder_name="fake") as store:
        assert store.map_gsd_m == 0.5 and store.tile_px == 224
        assert store.encoder_id == register_encoder(database)

        scores, found = store.search(omega[[2, 7]], k=3, allowed_ids=None)
        assert scores.shape == found.shape == (2, 3)
        assert found[:, 0].tolist() == [ids[2], ids[7]]
        allowed = np.asarray([ids[0], ids[1]], dtype=np.int64)
        scores, found = store.search(omega[[5]], k=3, allowed_ids=allowed)
        assert set(found[0, :2].tolist()) == set(allowed.tolist())
        assert found[0, 2] == -1 and np.isneginf(scores[0, 2])

        hits = store.knn_phi(phi[4], k=2)
        assert hits[0][0] == ids[4] and hits[0][1] == pytest.approx(0.0, abs=1e-3)

        cands = store.candidates([ids[9], 123_456, ids[1]])
        assert [c.tile_id for c in cands] == [ids[9], ids[1]]
        c = cands[0]
        assert isinstance(c, Candidate) and (c.row, c.col) == (2, 1)
        assert c.crs == "EPSG:32634" and c.raster_path == "/data/fake.tif"
        assert c.phi.shape == (1024,) and c.node_centroids.shape == (8, 2)

        near = store.within(c.center_lat, c.center_lon, 1.0)
        assert near.dtype == np.int64 and near.tolist() == [ids[9]]
        assert store.within(c.center_lat, c.center_lon, 1e6).tolist() == sorted(ids)


def test_candidate_to_lonlat_maps_tile_pixels_through_its_transform(
    pg_settings: Settings, database: Database
) -> None:
    ids, _, _ = _populate(pg_settings, database)
    with TileStore.open(pg_settings, encoder_sha256=SHA_A, omega=False) as store:
        c = store.candidates([ids[6]])[0]
        to_ll = Transformer.from_crs("EPSG:32634", "EPSG:4326", always_xy=True)
        for x_px, y_px in [(0.0, 0.0), (112.0, 112.0), (224.0, 10.5)]:
            e, n = c.transform @ (x_px, y_px)
            want = to_ll.transform(e, n)
            assert c.to_lonlat(x_px, y_px) == pytest.approx(want, abs=1e-9)
        # one output pixel is 0.5 m east: the longitude grows, the latitude stays
        lon0, lat0 = c.to_lonlat(0.0, 0.0)
        lon1, lat1 = c.to_lonlat(1.0, 0.0)
        assert lon1 > lon0 and lat1 == pytest.approx(lat0, abs=1e-6)


def test_omega_false_needs_no_index(pg_settings: Settings, database: Database) -> None:
    enc = register_encoder(database)
    tiles = make_tiles(1, 2)
    ingest_fake(database, enc, tiles, unit(np.random.default_rng(0), 2, 1024))
    with pytest.raises(IndexError_, match="index rebuild"):
        TileStore.open(pg_settings, encoder_sha256=SHA_A)
    with TileStore.open(pg_settings, encoder_sha256=SHA_A, omega=False) as store:
        assert store.index is None
        assert not store.reopen_if_changed()
        with pytest.raises(IndexError_, match="omega=False"):
            store.search(np.zeros((1, OMEGA_D), np.float32), 3, None)


def test_reopen_if_changed_sees_another_writers_save(
    pg_settings: Settings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    ids, _, omega = _populate(pg_settings, database)
    store = TileStore.open(pg_settings, encoder_sha256=SHA_A, encoder_name="fake")
    try:
        assert not store.reopen_if_changed()
        writer = OmegaIndex.open(pg_settings, SHA_A, mmap=False)
        writer.remove(np.asarray(ids[:6], dtype=np.int64))
        writer.save()
        before = store.index
        assert store.reopen_if_changed()
        assert store.index is not before and store.index is not None and len(store.index) == 6
        _, found = store.search(omega[[0]], k=12, allowed_ids=None)
        assert ids[0] not in found[0].tolist()

        writer.add(np.asarray(ids[:6], dtype=np.int64), omega[:6])
        writer.save()
        meta = OmegaIndex.path_for(pg_settings, SHA_A) / "meta.json"
        meta.write_text("{ not json")  # a save this reader cannot load: keep the open index
        with caplog.at_level(logging.WARNING, logger="geoloc.store.tile_store"):
            assert not store.reopen_if_changed()
            assert not store.reopen_if_changed()
        assert len(store.index) == 6
        assert sum("cannot be re-opened" in r.message for r in caplog.records) == 1
    finally:
        store.close()


# ------------------------------------------------------------------------------ write side
def _writer(settings: Settings, *, omega: bool = True) -> TileStore:
    return TileStore.for_encoder(
        settings,
        name="fake",
        config={"k": 8},
        weights_sha256=SHA_A,
        omega_dim=OMEGA_D,
        phi_dim=1024,
        omega=omega,
    )


def _raster(path: str = "/data/fake.tif", sha: str = "f" * 64) -> RasterRecord:
    return RasterRecord(
        path=path,
        sha256=sha,
        crs="EPSG:32634",
        width=1000,
        height=800,
        gsd_m=0.5,
        bounds_lonlat=(22.25, 60.44, 22.26, 60.45),
        footprint_wkt="POLYGON ((22.25 60.44, 22.26 60.44, 22.26 60.45, 22.25 60.45, 22.25 60.44))",
        tile_size=224,
        stride=112,
        target_gsd_m=0.5,
    )


def _write(store: TileStore, n_rows: int, rng: np.random.Generator) -> list[int]:
    tiles = [TileRecord.from_tile(t) for t in make_tiles(n_rows, 2)]
    n = len(tiles)
    return store.add(
        tiles,
        unit(rng, n, OMEGA_D),
        unit(rng, n, 1024),
        np.full((n, 8), 0.125, np.float32),
        np.zeros((n, 8, 2), np.float32),
    )


def test_begin_add_commit_is_one_unit(pg_settings: Settings) -> None:
    rng = np.random.default_rng(5)
    with _writer(pg_settings) as store:
        with pytest.raises(DatabaseError, match="ingest lock"):
            store.begin(_raster())
        with store.locked():
            store.recover()
            oid = store.begin(_raster())
            ids = _write(store, 2, rng)
            # not complete yet: neither a reader of the database nor of the saved index sees it
            assert repo.complete_tile_ids(store.db, store.encoder_id).size == 0
            assert not OmegaIndex.exists(pg_settings, SHA_A)
            store.commit(kept=len(ids), skipped=1)
        assert store.write_timings.faiss_save_s > 0
        assert store.verify().ok
    with TileStore.open(pg_settings, encoder_sha256=SHA_A) as reader:
        assert sorted(c.tile_id for c in reader.candidates(ids)) == sorted(ids)
        assert reader.index is not None and sorted(reader.index.ids().tolist()) == sorted(ids)
        o = repo.get_orthomosaic(reader.db, oid)
        assert o is not None and (o.status, o.tiles_kept, o.tiles_skipped) == ("complete", 4, 1)


def test_abort_and_recover_leave_only_complete_tiles(pg_settings: Settings) -> None:
    rng = np.random.default_rng(6)
    with _writer(pg_settings) as store, store.locked():
        store.recover()
        store.begin(_raster())
        kept = _write(store, 1, rng)
        store.commit(len(kept), 0)
        # an aborted raster leaves no row and no Ω
        store.begin(_raster("/data/other.tif", "e" * 64))
        _write(store, 2, rng)
        store.abort()
        assert store.verify().ok and store.verify().db_count == len(kept)
        # a "crash" after the index was saved with Ω of an incomplete raster
        store.begin(_raster("/data/third.tif", "d" * 64))
        dead = _write(store, 1, rng)
        assert store.index is not None
        store.index.save()
    with _writer(pg_settings) as store:
        report = store.verify()
    assert not report.ok and sorted(report.extra_in_index) == sorted(dead)
    with _writer(pg_settings) as store:
        store.recover()  # takes the lock itself
        report = store.verify()
        assert report.ok and report.db_count == len(kept)
        assert [o.path for o in repo.list_orthomosaics(store.db)] == ["/data/fake.tif"]


def test_begin_replaces_the_same_content_and_a_changed_file(pg_settings: Settings) -> None:
    rng = np.random.default_rng(7)
    with _writer(pg_settings) as store, store.locked():
        first = store.begin(_raster())
        _write(store, 1, rng)
        store.commit(2, 0)
        again = store.begin(_raster())  # same SHA-256 (a forced re-ingest)
        ids = _write(store, 1, rng)
        store.commit(2, 0)
        changed = store.begin(_raster(sha="c" * 64))  # same path, new content
        new_ids = _write(store, 2, rng)
        store.commit(4, 0)
        orthos = repo.list_orthomosaics(store.db)
        assert [o.id for o in orthos] == [changed] and first != again != changed
        assert store.verify().ok
        assert store.index is not None
        assert sorted(store.index.ids().tolist()) == sorted(new_ids)
        assert not set(ids) & set(store.index.ids().tolist())


def test_store_imports_neither_models_nor_tiling() -> None:
    import subprocess
    import sys

    # geoloc.errors is the shared base of every package: what it loads is not the store's doing
    code = (
        "import sys\n"
        "import geoloc.errors\n"
        "before = set(sys.modules)\n"
        "import geoloc.store, geoloc.store.tile_store, geoloc.store.repository, "
        "geoloc.store.maintenance, geoloc.store.sql, geoloc.store.codec, geoloc.store.records\n"
        "bad = sorted(m for m in set(sys.modules) - before if m == 'tiling' or m.startswith(("
        "'tiling.', 'geoloc.models', 'geoloc.localize', 'geoloc.ingest')))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
