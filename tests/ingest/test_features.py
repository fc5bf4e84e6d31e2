"""Per-tile local features written by ingest: round trip, grid frame, --no-features, rebuild."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.ingest import ingest
from tests.ingest.test_ingest_db import _env, run_cli


def _store(settings: Settings, enc: Any) -> Any:
    from geoloc.store import TileStore

    return TileStore.open(settings, encoder_sha256=enc.weights_sha256, encoder_name=enc.name)


def test_features_round_trip_in_the_grid_frame(
    pg_settings: Settings, crops: dict[str, Path], encoder: Any
) -> None:
    from geoloc.ingest.features import extract_tile_features
    from geoloc.store.tile_features import XFEAT_SPEC, core_box, grid_origin, grid_to_lonlat
    from tiling import TilingPolicy, open_raster

    (res,) = ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    assert res.status == "ingested", res.message
    with _store(pg_settings, encoder) as store:
        assert store.feature_spec == XFEAT_SPEC
        ids = np.sort(store.within(0.0, 0.0, 1e8))
        assert ids.size == res.tiles_kept
        feats = store.features([*ids.tolist(), 10**9])  # an unknown id is simply absent
        assert sorted(feats) == ids.tolist()
        cands = {c.tile_id: c for c in store.candidates(ids)}
    with open_raster(crops["a"]) as r:
        cfg, _ = TilingPolicy(tile_size=224).resolve(r)
        grid = r.grid(cfg)
        tiles = {(t.row, t.col): t for t in r.tiles(cfg)}
    st = grid.stride
    total = 0
    for tid, kp in feats.items():
        c = cands[tid]
        assert kp.xy.dtype == kp.desc.dtype == kp.score.dtype == np.float32
        assert kp.desc.shape == (len(kp), XFEAT_SPEC.dim) and 0 < len(kp) <= XFEAT_SPEC.max_per_tile
        np.testing.assert_allclose(np.linalg.norm(kp.desc, axis=1), 1.0, atol=1e-5)
        # the grid origin from the stored record is the tile's (col, row) * stride
        np.testing.assert_allclose(grid_origin(c), (c.col * st, c.row * st), atol=1e-6)
        # keypoints lie in the tile's core cell, in grid pixels
        x0, y0, x1, y1 = core_box(c.row, c.col, grid.rows, grid.cols, 224, st)
        local = kp.xy - np.array([c.col * st, c.row * st], np.float32)
        assert (local[:, 0] >= x0).all() and (local[:, 0] < x1).all()
        assert (local[:, 1] >= y0).all() and (local[:, 1] < y1).all()
        # the same extraction on the tile's pixels gives the stored keypoints back (int8
        # descriptors: cosine to the float ones near 1)
        t = tiles[(c.row, c.col)]
        xy, desc, score = extract_tile_features(
            np.transpose(t.pixels, (1, 2, 0)), t.mask, spec=XFEAT_SPEC, box=(x0, y0, x1, y1)
        )
        np.testing.assert_allclose(local, xy, atol=1.0 / 32)
        assert float((kp.desc * desc).sum(axis=1).min()) > 0.99
        np.testing.assert_allclose(kp.score, score, rtol=1e-2, atol=1e-4)
        # a grid point maps through the grid transform like the tile pixel it is
        lonlat = grid_to_lonlat(c, kp.xy[:1])[0]
        lon, lat = c.to_lonlat(float(local[0, 0]) + 0.5, float(local[0, 1]) + 0.5)
        np.testing.assert_allclose(lonlat, (lon, lat), atol=1e-9)
        total += len(kp)
    # the cores do not overlap: no grid point is stored twice
    all_xy = np.concatenate([np.round(f.xy * 32) for f in feats.values()])
    assert np.unique(all_xy, axis=0).shape[0] == total


def test_neighbouring_tiles_share_one_frame(
    pg_settings: Settings, crops: dict[str, Path], encoder: Any
) -> None:
    from geoloc.store.tile_features import grid_transform

    ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    with _store(pg_settings, encoder) as store:
        cands = store.candidates(np.sort(store.within(0.0, 0.0, 1e8)))
    t0 = grid_transform(cands[0])
    for c in cands[1:]:
        np.testing.assert_allclose(tuple(grid_transform(c))[:6], tuple(t0)[:6], atol=1e-6)


def test_no_features_option_and_setting(
    pg_settings: Settings, crops: dict[str, Path], encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (res,) = ingest(
        [crops["a"]], encoder=encoder, settings=pg_settings, progress=False, features=False
    )
    assert res.status == "ingested"
    with _store(pg_settings, encoder) as store:
        assert store.feature_spec is None
        assert store.features(store.within(0.0, 0.0, 1e8)) == {}
        assert store.verify().ok  # a store without features has nothing to disagree
    monkeypatch.setenv("GEOLOC_FEATURES", "off")
    assert Settings.from_env().features is False
    monkeypatch.setenv("GEOLOC_FEATURES", "1")
    monkeypatch.setenv("GEOLOC_FEATURES_MAX", "32")
    assert Settings.from_env().features is True and Settings.from_env().features_max == 32


def test_features_max_is_kept_and_rebuild_changes_it(
    pg_settings: Settings,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False, features_max=8)
    # a second raster asking for another budget gets the store's
    ingest([crops["b"]], encoder=encoder, settings=pg_settings, progress=False, features_max=16)
    with _store(pg_settings, encoder) as store:
        assert store.feature_spec is not None and store.feature_spec.max_per_tile == 8
        ids = store.within(0.0, 0.0, 1e8)
        assert max(len(k) for k in store.features(ids).values()) == 8
    capsys.readouterr()
    assert (
        run_cli(monkeypatch, pg_settings, "index", "rebuild", "--features", "--max-per-tile", "20")
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["features"]["count"] == ids.size
    with _store(pg_settings, encoder) as store:
        assert store.feature_spec is not None and store.feature_spec.max_per_tile == 20
        assert max(len(k) for k in store.features(ids).values()) == 20
    assert run_cli(monkeypatch, pg_settings, "index", "info") == 0
    info = json.loads(capsys.readouterr().out)["features"]
    assert info["tiles"] == ids.size and info["spec"]["max_per_tile"] == 20
    assert info["bytes_per_tile"] <= 32 + 70 * 20 + 200  # records + headers, amortised


def test_tiles_without_features_fail_verify_until_rebuilt(
    pg_settings: Settings,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    (b,) = ingest(
        [crops["b"]], encoder=encoder, settings=pg_settings, progress=False, features=False
    )
    capsys.readouterr()
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{b.tiles_kept} tiles without" in err
    assert "rebuild --features" in err
    assert run_cli(monkeypatch, pg_settings, "index", "rebuild", "--features", "--missing") == 0
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 0
    _env(monkeypatch, pg_settings)
