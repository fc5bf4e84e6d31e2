"""The per-tile feature store: codec, segments, the TileStore write unit, corruption detection."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.store import TileStore
from geoloc.store.database import Database
from geoloc.store.records import RasterRecord
from geoloc.store.tile_features import (
    DEFAULT_DESC_BITS,
    MAX_SEGMENTS,
    XFEAT_SPEC,
    FeatureSpec,
    FeatureStore,
    core_box,
    decode_points,
    encode_points,
)

from .helpers import SHA_A, make_tiles, unit

OMEGA_D = 64
Feat = tuple[np.ndarray, np.ndarray, np.ndarray]


def _feats(rng: np.random.Generator, n_tiles: int, n: int = 40) -> list[Feat]:
    return [
        (
            rng.integers(56, 168, (n, 2)).astype(np.float32),
            unit(rng, n, 64),
            rng.uniform(0.0, 0.4, n).astype(np.float32),
        )
        for _ in range(n_tiles)
    ]


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


def _raster(sha: str, path: str = "/data/fake.tif") -> RasterRecord:
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


def _write(
    settings: Settings, sha: str, rows: int = 3, cols: int = 4, *, seed: int = 0, path: str = ""
) -> tuple[list[int], list[Feat]]:
    """One complete raster of rows x cols synthetic tiles with features; (ids, features)."""
    rng = np.random.default_rng(seed)
    tiles = make_tiles(rows, cols)
    feats = _feats(rng, len(tiles))
    k = 8
    with _writer(settings) as store, store.locked():
        store.recover()
        store.begin(_raster(sha, path or f"/data/{sha[:4]}.tif"))
        store.use_features(XFEAT_SPEC)
        ids = store.add(
            tiles,
            unit(rng, len(tiles), OMEGA_D),
            unit(rng, len(tiles), 1024),
            np.full((len(tiles), k), 1.0 / k, np.float32),
            rng.uniform(0, 1, (len(tiles), k, 2)).astype(np.float32),
            features=feats,
        )
        store.commit(len(tiles), 0)
    return ids, feats


def _reader(settings: Settings) -> TileStore:
    return TileStore.open(settings, encoder_sha256=SHA_A, encoder_name="fake")


def test_codec_round_trip_within_int8_tolerance() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(-0.5, 223.4, (200, 2)).astype(np.float32)
    desc = unit(rng, 200, 64)
    score = rng.uniform(0, 0.4, 200).astype(np.float32)
    recs = encode_points(xy, desc, score, 64, 224)
    assert recs.itemsize == 2 + 2 + 2 + 64  # fixed-point xy, fp16 score, int8 descriptor
    kp = decode_points(recs, 112, 336)
    np.testing.assert_allclose(kp.xy - [112, 336], xy, atol=0.5 / 32 + 1e-4)
    np.testing.assert_allclose(np.linalg.norm(kp.desc, axis=1), 1.0, atol=1e-5)
    assert float((kp.desc * desc).sum(axis=1).min()) > 0.995
    np.testing.assert_allclose(kp.score, score, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize(("bits", "min_cos"), [(4, 0.98), (5, 0.995), (6, 0.998)])
def test_packed_descriptors_round_trip(bits: int, min_cos: float) -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 223, (300, 2)).astype(np.float32)
    desc = unit(rng, 300, 64)
    recs = encode_points(xy, desc, np.zeros(300, np.float32), 64, 224, bits)
    assert recs.itemsize == 6 + 64 * bits // 8  # the descriptor packed at `bits` per value
    kp = decode_points(recs, 0, 0, 64, bits)
    cos = (kp.desc * desc).sum(axis=1)
    assert float(cos.min()) > min_cos
    # the packing itself is exact: decoding gives back the quantised integers
    top = 2 ** (bits - 1) - 1
    q = np.rint(desc / np.abs(desc).max(axis=1, keepdims=True) * top)
    exact = q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(kp.desc, exact, atol=1e-6)
    with pytest.raises(ValueError, match="descriptor bits"):
        encode_points(xy, desc, np.zeros(300, np.float32), 64, 224, 7)


def test_new_store_packs_and_old_int8_store_still_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    feats = _feats(rng, 3, 20)
    new = FeatureStore.open(tmp_path / "new")
    new.reset(XFEAT_SPEC)
    new.add([1, 2, 3], np.zeros((3, 2), np.int64), 224, feats)
    new.save()
    meta = json.loads((tmp_path / "new" / "meta.json").read_text())
    assert meta["desc_bits"] == DEFAULT_DESC_BITS and meta["format"] == 2
    # a format-1 store (int8 descriptors, no desc_bits in its metadata) reads as before, and
    # later adds keep its layout
    old = FeatureStore(tmp_path / "old", None, desc_bits=8)
    old.reset(XFEAT_SPEC, desc_bits=8)
    old.add([1, 2], np.zeros((2, 2), np.int64), 224, feats[:2])
    old.save()
    mp = tmp_path / "old" / "meta.json"
    meta = json.loads(mp.read_text())
    del meta["desc_bits"]
    meta["format"] = 1
    mp.write_text(json.dumps(meta))
    again = FeatureStore.open(tmp_path / "old")
    assert again.desc_bits == 8 and sorted(again.get([1, 2])) == [1, 2]
    again.add([3], np.zeros((1, 2), np.int64), 224, feats[2:])
    again.save()
    third = FeatureStore.open(tmp_path / "old")
    assert third.desc_bits == 8 and third.check() == []
    a, b = third.get([1, 2, 3]), FeatureStore.open(tmp_path / "new").get([1, 2, 3])
    for tid in (1, 2, 3):
        np.testing.assert_array_equal(a[tid].xy, b[tid].xy)
        assert float((a[tid].desc * b[tid].desc).sum(axis=1).min()) > 0.998
    # a packed store is smaller for the same keypoints
    assert (tmp_path / "new" / "meta.json").is_file()
    new_pts = sum(p.stat().st_size for p in (tmp_path / "new").glob("points.*"))
    old_pts = sum(p.stat().st_size for p in (tmp_path / "old").glob("points.*"))
    assert new_pts < old_pts


def test_core_cells_partition_the_grid() -> None:
    rows, cols, ts, st = 4, 5, 224, 112
    cover = np.zeros((st * (rows - 1) + ts, st * (cols - 1) + ts), np.int32)
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = core_box(r, c, rows, cols, ts, st)
            cover[r * st + y0 : r * st + y1, c * st + x0 : c * st + x1] += 1
    assert (cover == 1).all()  # every grid pixel in exactly one core
    assert core_box(0, 0, 1, 1, 224, 224) == (0, 0, 224, 224)


def test_store_round_trip_ids_xy_and_limit(pg_settings: Settings, database: Database) -> None:
    ids, feats = _write(pg_settings, "1" * 64)
    with _reader(pg_settings) as store:
        assert store.feature_spec == XFEAT_SPEC
        got = store.features([*ids, 987_654])
        assert sorted(got) == sorted(ids)
        for tid, (xy, desc, score) in zip(ids, feats, strict=True):
            c = store.candidates([tid])[0]
            kp = got[tid]
            # best first by the stored (float16) score
            stored = score.astype(np.float16).astype(np.float32)
            order = np.argsort(-stored, kind="stable")[: XFEAT_SPEC.max_per_tile]
            # xy in the orthomosaic grid: tile pixels + (col, row) * stride
            np.testing.assert_allclose(kp.xy, xy[order] + [c.col * 112, c.row * 112], atol=1.0 / 64)
            assert float((kp.desc * desc[order]).sum(axis=1).min()) > 0.995
        assert store.verify().ok


def test_segments_append_compact_and_remove(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    fs = FeatureStore.open(tmp_path / "features")
    assert fs.spec is None and len(fs) == 0
    fs.reset(XFEAT_SPEC)
    for s in range(MAX_SEGMENTS + 3):  # one save per "raster": one new segment each
        fs.add([10 * s, 10 * s + 1], np.array([[0, 0], [112, 0]]), 224, _feats(rng, 2, 5))
        fs.save()
    again = FeatureStore.open(tmp_path / "features")
    assert len(again) == 2 * (MAX_SEGMENTS + 3) and again.info()["segments"] <= MAX_SEGMENTS
    before = again.get([40, 41, 180])
    assert again.remove([41, 999]) == 1
    again.save()
    third = FeatureStore.open(tmp_path / "features")
    assert 41 not in third.ids() and 40 in third.ids()
    np.testing.assert_array_equal(third.get([40])[40].xy, before[40].xy)
    np.testing.assert_array_equal(third.get([180])[180].desc, before[180].desc)
    assert third.check() == []
    names = {p.name for p in (tmp_path / "features").iterdir()}
    listed = json.loads((tmp_path / "features" / "meta.json").read_text())["segments"]
    assert names == {"meta.json", *(e["tiles"] for e in listed), *(e["points"] for e in listed)}


def test_points_come_in_the_order_asked_across_segments(tmp_path: Path) -> None:
    """The undecoded records of tiles of several segments come tile after tile in the order
    the ids were asked (absent ids left out), and decode to what ``get`` gives."""
    rng = np.random.default_rng(3)
    fs = FeatureStore.open(tmp_path / "features")
    fs.reset(XFEAT_SPEC)
    for s in range(3):  # three saves: three segments
        fs.add([10 * s, 10 * s + 1], np.array([[0, 0], [112, 0]]), 224, _feats(rng, 2, 5 + s))
        fs.save()
    fs = FeatureStore.open(tmp_path / "features")
    assert fs.info()["segments"] == 3
    ask = [21, 0, 999, 11, 1, 20]
    pts = fs.points(ask)
    assert pts.ids.tolist() == [21, 0, 11, 1, 20]
    assert pts.index.tolist() == [0, 1, 3, 4, 5]
    assert pts.counts.tolist() == [7, 5, 6, 5, 7]
    got = fs.get(ask)
    kp = pts.decode()
    ends = np.cumsum(pts.counts)
    for tid, e, c in zip(pts.ids.tolist(), ends.tolist(), pts.counts.tolist(), strict=True):
        np.testing.assert_array_equal(kp.xy[e - c : e], got[tid].xy)
        np.testing.assert_array_equal(kp.desc[e - c : e], got[tid].desc)
    np.testing.assert_array_equal(pts.xy(), kp.xy)
    some = np.array([3, 7, 20])
    np.testing.assert_array_equal(pts.decode(some).desc, kp.desc[some])
    np.testing.assert_array_equal(pts.decode(some).xy, kp.xy[some])
    assert len(fs.points([999]).ids) == 0


def test_delete_and_recover_keep_features_with_the_tiles(
    pg_settings: Settings, database: Database
) -> None:
    ids_a, _ = _write(pg_settings, "1" * 64)
    ids_b, _ = _write(pg_settings, "2" * 64, seed=1)
    with _writer(pg_settings) as store, store.locked():
        oid = store.find("1" * 64)
        assert oid is not None
        store.delete(int(oid.id))
    with _reader(pg_settings) as store:
        assert sorted(store.features(ids_a + ids_b)) == sorted(ids_b)
        assert store.verify().ok
    # an ingest that dies after its features were saved but before its row is complete
    rng = np.random.default_rng(5)
    tiles = make_tiles(2, 2)
    w = _writer(pg_settings)
    with w.locked():
        w.begin(_raster("3" * 64))
        w.use_features(XFEAT_SPEC)
        dead = w.add(
            tiles,
            unit(rng, 4, OMEGA_D),
            unit(rng, 4, 1024),
            np.full((4, 8), 0.125, np.float32),
            np.zeros((4, 8, 2), np.float32),
            features=_feats(rng, 4),
        )
        w.index.save()  # type: ignore[union-attr]
        w._features.save()  # type: ignore[union-attr]  # the state a kill before finish leaves
    w.db.dispose()  # the process is gone: its lock with it
    fdir = FeatureStore.path_for(Path(pg_settings.index_dir) / SHA_A)
    assert set(dead) <= set(FeatureStore.open(fdir).ids().tolist())
    with _writer(pg_settings) as store:
        store.recover()
        report = store.verify()
    assert report.ok, report.as_dict()
    assert not set(dead) & set(FeatureStore.open(fdir).ids().tolist())


def _points_file(settings: Settings) -> Path:
    fdir = FeatureStore.path_for(Path(settings.index_dir) / SHA_A)
    meta = json.loads((fdir / "meta.json").read_text())
    return fdir / meta["segments"][0]["points"]


def test_flipped_bytes_are_detected_not_trusted(
    pg_settings: Settings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    ids, _ = _write(pg_settings, "1" * 64)
    p = _points_file(pg_settings)
    raw = bytearray(p.read_bytes())
    raw[-100] ^= 0xFF  # inside the last tile's points
    p.write_bytes(bytes(raw))
    with _reader(pg_settings) as store, caplog.at_level(logging.WARNING):
        got = store.features(ids)
        got_again = store.features(ids)
        report = store.verify()
    assert ids[-1] not in got and sorted(got) == sorted(ids[:-1]) == sorted(got_again)
    assert sum("fail their checksum" in r.getMessage() for r in caplog.records) == 1
    assert not report.ok
    reason = report.reason()
    assert "\n" not in reason and p.name in reason and "SHA-256" in reason
    assert "rebuild --features" in reason


def test_truncated_file_leaves_its_segment_untrusted(
    pg_settings: Settings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    ids_a, _ = _write(pg_settings, "1" * 64)
    ids_b, _ = _write(pg_settings, "2" * 64, seed=1)
    p = _points_file(pg_settings)  # the first raster's segment
    p.write_bytes(p.read_bytes()[:-70])
    with _reader(pg_settings) as store, caplog.at_level(logging.WARNING):
        got = store.features(ids_a + ids_b)
        report = store.verify()
    assert sorted(got) == sorted(ids_b)  # the intact segment still answers
    warned = [r.getMessage() for r in caplog.records if "wrong size" in r.getMessage()]
    assert len(warned) == 1 and p.name in warned[0]
    assert not report.ok and "wrong size" in report.reason()
    assert report.as_dict()["features"]["missing_count"] == len(ids_a)


def test_unreadable_meta_reads_as_no_features(
    pg_settings: Settings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    ids, _ = _write(pg_settings, "1" * 64)
    meta = _points_file(pg_settings).parent / "meta.json"
    meta.write_text("{not json")
    with _reader(pg_settings) as store, caplog.at_level(logging.WARNING):
        assert store.feature_spec is None and store.features(ids) == {}
        report = store.verify()
    assert any("unreadable feature store metadata" in r.getMessage() for r in caplog.records)
    assert not report.ok and "meta.json" in report.reason()


def test_incompatible_spec_is_refused(pg_settings: Settings, database: Database) -> None:
    from geoloc.errors import IndexError_

    _write(pg_settings, "1" * 64)
    other = FeatureSpec(extractor="xfeat", dim=64, max_per_tile=64, version=2)
    with _writer(pg_settings) as store, store.locked():
        with pytest.raises(IndexError_, match="rebuild --features"):
            store.use_features(other)
        assert store.use_features(XFEAT_SPEC.with_max(10)) == XFEAT_SPEC  # keeps its own
    assert XFEAT_SPEC.compatible(XFEAT_SPEC.with_max(10)) and not XFEAT_SPEC.compatible(other)
    assert not XFEAT_SPEC.compatible(None)


def test_warm_reader_sees_features_saved_later(pg_settings: Settings, database: Database) -> None:
    ids_a, _ = _write(pg_settings, "1" * 64)
    with _reader(pg_settings) as store:
        assert sorted(store.features(ids_a)) == sorted(ids_a)
        ids_b, _ = _write(pg_settings, "2" * 64, seed=1)
        assert store.features(ids_b) == {}
        assert store.reopen_if_changed()
        assert sorted(store.features(ids_b)) == sorted(ids_b)
