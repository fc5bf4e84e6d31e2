"""A store without its Ω FAISS index (``geoloc ingest --no-omega``): the write unit, recovery,
verify, layer re-reads, the Ω-recall error and adding the index later; on a real Postgres."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.errors import ConfigError, IndexError_, NoOmegaIndexError
from geoloc.store import TileStore
from geoloc.store import repository as repo
from geoloc.store.faiss_store import OmegaIndex
from geoloc.store.tile_features import FeatureSpec

from .helpers import SHA_A, unit
from .test_tile_store import OMEGA_D, _raster, _write, _writer

SPEC = FeatureSpec("fake-xfeat", 8, 16, 1)


def _feats(n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [
        (
            rng.uniform(0, 223, (5, 2)).astype(np.float32),
            rng.standard_normal((5, 8)).astype(np.float32),
            rng.uniform(0, 1, 5).astype(np.float32),
        )
        for _ in range(n)
    ]


def _add(store: TileStore, rng: np.random.Generator, rows: int) -> list[int]:
    """Add ``rows`` x 2 fake tiles with features to the raster being written."""
    from geoloc.store.records import TileRecord

    from .helpers import make_tiles

    tiles = [TileRecord.from_tile(t) for t in make_tiles(rows, 2)]
    n = len(tiles)
    return store.add(
        tiles,
        unit(rng, n, OMEGA_D),
        unit(rng, n, 1024),
        np.full((n, 8), 0.125, np.float32),
        np.zeros((n, 8, 2), np.float32),
        features=_feats(n, rng),
    )


def _ingest_one(
    store: TileStore, rng: np.random.Generator, raster: object = None, rows: int = 2
) -> list[int]:
    """begin/add/commit one fake raster (with features); the tile ids."""
    store.use_features(SPEC)
    store.begin(raster if raster is not None else _raster())  # type: ignore[arg-type]
    ids = _add(store, rng, rows)
    store.commit(len(ids), 0)
    return ids


def test_a_store_without_omega_writes_no_index_and_verifies(pg_settings: Settings) -> None:
    rng = np.random.default_rng(1)
    with _writer(pg_settings, omega=False) as store, store.locked():
        store.recover()
        assert not store.has_omega
        ids = _ingest_one(store, rng)
        assert store.write_timings.faiss_save_s == 0.0
        report = store.verify()
    assert not OmegaIndex.exists(pg_settings, SHA_A)
    assert report.ok and not report.has_omega and report.db_count == len(ids)
    assert report.features_count == len(ids)  # the features are kept and checked all the same
    assert report.as_dict()["has_omega"] is False
    with TileStore.open(pg_settings, encoder_sha256=SHA_A, omega=False) as reader:
        assert not reader.has_omega
        assert sorted(reader.features(ids)) == sorted(ids)
        scores, found = reader.search_phi(unit(rng, 1, 1024), k=3)
        assert found.shape == (1, 3) and set(found[0].tolist()) <= set(ids)
        q = unit(rng, 2, 1024)
        hnsw = reader.search_phi(q, k=4)
        scan = reader.search_phi(q, k=4, scan=True)
        np.testing.assert_array_equal(scan[1], hnsw[1])  # every tile is a candidate here
        np.testing.assert_allclose(scan[0], hnsw[0], atol=1e-6)
        # the candidates re-ranked by Φ codes in memory: the cosines within their rounding,
        # and a tile's own Φ finds that tile first
        mem = reader.search_phi(q, k=4, scan=True, rescore="memory")
        np.testing.assert_allclose(mem[0], hnsw[0], atol=0.01)
        own = np.stack([c.phi for c in reader.candidates(ids[:3])])
        s_own, f_own = reader.search_phi(own, k=2, scan=True, rescore="memory")
        assert f_own[:, 0].tolist() == list(ids[:3])
        assert (s_own[:, 0] > 0.99).all() and (s_own[:, 1] < 0.9).all()
        with pytest.raises(ConfigError, match="rescore"):
            reader.search_phi(q, k=4, scan=True, rescore="disk")
        # another ingest completes: the held sign codes are read again, the new tiles found
        with _writer(pg_settings, omega=False) as store, store.locked():
            more = _ingest_one(store, rng, _raster("/data/other.tif", "e" * 64))
        got = reader.search_phi(q, k=len(ids) + len(more), scan=True)[1]
        assert set(got[0].tolist()) == set(ids) | set(more)
        got = reader.search_phi(q, k=len(ids) + len(more), scan=True, rescore="memory")[1]
        assert set(got[0].tolist()) == set(ids) | set(more)


def test_omega_recall_on_a_store_without_it_names_the_store_and_the_fix(
    pg_settings: Settings,
) -> None:
    rng = np.random.default_rng(2)
    with _writer(pg_settings, omega=False) as store, store.locked():
        _ingest_one(store, rng)
    with pytest.raises(NoOmegaIndexError) as err:
        TileStore.open(pg_settings, encoder_sha256=SHA_A, encoder_name="fake")
    msg = str(err.value)
    assert "\n" not in msg and err.value.exit_code == 2
    assert "fake (aaaaaaaaaaaa)" in msg and "geoloc index rebuild --omega" in msg
    assert "--preset seed" in msg
    with TileStore.open(pg_settings, encoder_sha256=SHA_A, omega=False) as reader:
        with pytest.raises(IndexError_, match="rebuild --omega"):
            reader.search(np.zeros((1, OMEGA_D), np.float32), 3)


def test_recover_and_abort_without_omega(pg_settings: Settings) -> None:
    rng = np.random.default_rng(3)
    with _writer(pg_settings, omega=False) as store, store.locked():
        kept = _ingest_one(store, rng)
        # a crash after the features were saved, before the row became complete
        store.use_features(SPEC)
        store.begin(_raster("/data/other.tif", "e" * 64))
        dead = _add(store, rng, 1)
        store.save_features()
        assert set(dead) <= set(store.feature_ids().tolist())
    with _writer(pg_settings, omega=False) as store:
        assert repo.incomplete_orthomosaics(store.db, store.encoder_id)
        store.recover()
        report = store.verify()
        assert report.ok and report.db_count == len(kept)
        assert not set(dead) & set(store.feature_ids().tolist())
        with store.locked():
            store.begin(_raster("/data/third.tif", "d" * 64))
            _write(store, 1, rng)
            store.abort()
        assert store.verify().ok and store.verify().db_count == len(kept)
        with store.locked():
            assert store.delete(int(repo.list_orthomosaics(store.db)[0].id)) == len(kept)
        assert store.verify().ok and store.verify().db_count == 0
    assert not OmegaIndex.exists(pg_settings, SHA_A)


def test_a_store_with_tiles_keeps_its_setting(
    pg_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(4)
    with _writer(pg_settings, omega=False) as store, store.locked():
        _ingest_one(store, rng)
    with caplog.at_level(logging.WARNING, logger="geoloc.store.tile_store"):
        with _writer(pg_settings, omega=True) as store:
            assert not store.has_omega
    assert any("rebuild --omega" in r.message for r in caplog.records)
    with TileStore.for_registered(pg_settings) as store:
        assert not store.has_omega  # maintenance opens the store as it is
    # a store emptied of tiles takes the next writer's setting
    with _writer(pg_settings, omega=False) as store, store.locked():
        store.delete(int(repo.list_orthomosaics(store.db)[0].id))
    with _writer(pg_settings, omega=True) as store:
        assert store.has_omega
        assert repo.get_encoder(store.db, store.encoder_id).has_omega


def test_rebuild_adds_the_omega_index(pg_settings: Settings) -> None:
    rng = np.random.default_rng(5)
    with _writer(pg_settings, omega=False) as store, store.locked():
        ids = _ingest_one(store, rng)
        with pytest.raises(NoOmegaIndexError, match="rebuild --omega"):
            store.reset_index()
        assert not store.has_omega
        store.reset_index(add_omega=True)
        # not recorded before the index is saved: a crash here leaves the store as it was
        assert not repo.get_encoder(store.db, store.encoder_id).has_omega
        store.readd(ids, unit(rng, len(ids), OMEGA_D))
        store.save_index()
        assert repo.get_encoder(store.db, store.encoder_id).has_omega
        assert store.verify().ok and store.verify().index_count == len(ids)
    with TileStore.open(pg_settings, encoder_sha256=SHA_A) as reader:
        assert reader.index is not None and sorted(reader.index.ids().tolist()) == sorted(ids)
    # from now on the store keeps Ω: an ingest adds to it
    with _writer(pg_settings) as store, store.locked():
        assert store.has_omega
        more = _ingest_one(store, rng, _raster("/data/more.tif", "b" * 64), rows=1)
        assert store.verify().ok and store.verify().index_count == len(ids) + len(more)


def test_a_warm_reader_without_omega_sees_a_new_layer(pg_settings: Settings) -> None:
    from dataclasses import replace

    rng = np.random.default_rng(6)
    with _writer(pg_settings, omega=False) as store, store.locked():
        _ingest_one(store, rng)
    reader = TileStore.open(pg_settings, encoder_sha256=SHA_A, omega=False)
    try:
        assert [la.gsd_m for la in reader.layers] == [0.5]
        assert not reader.reopen_if_changed()
        assert [la.gsd_m for la in reader.layers] == [0.5]
        finer = replace(_raster("/data/fine.tif", "c" * 64), target_gsd_m=0.3)
        with _writer(pg_settings) as store, store.locked():
            _ingest_one(store, rng, finer, rows=3)
        assert not OmegaIndex.exists(pg_settings, SHA_A)  # nothing on disk changed but features
        reader.reopen_if_changed()
        assert sorted(la.gsd_m for la in reader.layers) == [0.3, 0.5]
        # a delete is seen too
        with _writer(pg_settings) as store, store.locked():
            store.delete(int(repo.list_orthomosaics(store.db)[0].id))
        reader.reopen_if_changed()
        assert [la.gsd_m for la in reader.layers] == [0.3]
    finally:
        reader.close()


def test_a_bundle_of_a_store_without_omega_round_trips(
    pg_settings: Settings, pg_server: Any, tmp_path: Path
) -> None:
    from geoloc.ingest.bundle import export_bundle
    from geoloc.store.bundle import import_bundle, verify_bundle

    rng = np.random.default_rng(7)
    with _writer(pg_settings, omega=False) as store, store.locked():
        ids = _ingest_one(store, rng)
    export_bundle(pg_settings, tmp_path / "lean", regions=False)
    files = verify_bundle(tmp_path / "lean")["files"]
    assert "index/features/meta.json" in files and "index/meta.json" not in files
    name = pg_server.create_database()
    try:
        target = Settings(home=tmp_path / "companion", database_url=pg_server.url_for(name))
        import_bundle(target, tmp_path / "lean")
        with TileStore.for_registered(target) as store:
            assert not store.has_omega
            report = store.verify()
            assert report.ok and report.db_count == len(ids) == report.features_count
        with pytest.raises(NoOmegaIndexError):
            TileStore.open(target, encoder_sha256=SHA_A)
    finally:
        pg_server.drop_database(name)
