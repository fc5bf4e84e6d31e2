"""Ingest against a real Postgres (store fixtures) and the real default encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.ingest import ingest


def _env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("GEOLOC_HOME", str(settings.home))
    assert settings.database_url is not None
    monkeypatch.setenv("GEOLOC_DATABASE_URL", settings.database_url)


def run_cli(monkeypatch: pytest.MonkeyPatch, settings: Settings, *args: str) -> int:
    """Run ``geoloc ARGS`` in-process against ``settings``; return its exit code."""
    from geoloc.cli.main import main

    _env(monkeypatch, settings)
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0)


def expected_tiles(path: Path, enc: Any) -> int:
    """What the tiler keeps for ``path`` at the ingest defaults (independent of ingest)."""
    from tiling import TilingPolicy, open_raster

    with open_raster(path) as r:
        cfg, _ = TilingPolicy(tile_size=int(enc.input_size)).resolve(r)
        kept, _ = r.count_tiles(cfg)
    return int(kept)


def db_state(database: Any, settings: Settings, enc: Any) -> dict[str, Any]:
    """Orthomosaics, tile ids of complete ones, and FAISS ids for the encoder."""
    from geoloc.store import OmegaIndex
    from geoloc.store import repository as repo

    enc_row = repo.find_encoder(database, enc.weights_sha256, enc.name)
    if enc_row is None:
        return {"orthos": [], "complete_ids": np.zeros(0, np.int64), "faiss_ids": None}
    orthos = repo.list_orthomosaics(database, enc_row.id)
    complete = np.sort(repo.complete_tile_ids(database, enc_row.id))
    index = OmegaIndex.open(settings, enc.weights_sha256)
    return {
        "encoder_id": enc_row.id,
        "orthos": orthos,
        "complete_ids": complete,
        "faiss_ids": np.sort(np.asarray(index.ids(), dtype=np.int64)),
    }


def assert_consistent(
    st: dict[str, Any], monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """FAISS holds exactly the tiles of complete orthomosaics, and ``index verify`` agrees."""
    np.testing.assert_array_equal(st["faiss_ids"], st["complete_ids"])
    assert run_cli(monkeypatch, settings, "index", "verify") == 0


def test_ingest_counts_and_consistency(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tiling import TilingPolicy, open_raster

    (res,) = ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    assert res.status == "ingested", res.message
    n = expected_tiles(crops["a"], encoder)
    assert res.tiles_kept == n > 0
    with open_raster(crops["a"]) as r:
        cfg, _ = TilingPolicy(tile_size=224).resolve(r)
        grid_gsd = r.grid(cfg).gsd_m
    # the policy's grid: this 280 m x 196 m crop is too small for 0.5 m/px, so native pixels
    assert cfg.gsd is None and res.gsd_m == pytest.approx(grid_gsd) and res.stride_px == 112
    st = db_state(database, pg_settings, encoder)
    (ortho,) = st["orthos"]
    assert ortho.status == "complete" and ortho.id == res.id
    assert (ortho.tiles_kept, ortho.tiles_skipped) == (res.tiles_kept, res.tiles_skipped)
    assert ortho.target_gsd_m is None and ortho.stride == 112  # None: native, as rebuild reads
    assert len(st["complete_ids"]) == n
    assert_consistent(st, monkeypatch, pg_settings)


def test_tiles_and_ingest_lay_the_same_grid(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``geoloc tiles RASTER`` and ``geoloc ingest RASTER`` (defaults) give the same tiles."""
    from geoloc.store import repository as repo

    capsys.readouterr()
    assert run_cli(monkeypatch, pg_settings, "tiles", str(crops["b"]), "--no-progress") == 0
    features = json.loads(capsys.readouterr().out)["features"]
    listed = {
        (f["properties"]["row"], f["properties"]["col"]): (
            f["properties"]["center_lon"],
            f["properties"]["center_lat"],
        )
        for f in features
    }
    (res,) = ingest([crops["b"]], encoder=encoder, settings=pg_settings, progress=False)
    assert res.status == "ingested" and res.tiles_kept == len(listed) > 0
    enc_id = db_state(database, pg_settings, encoder)["encoder_id"]
    stored = repo.fetch_candidates(database, enc_id, repo.complete_tile_ids(database, enc_id))
    assert {(c.row, c.col) for c in stored} == set(listed)
    for c in stored:
        lon, lat = listed[(c.row, c.col)]
        assert (c.center_lon, c.center_lat) == (
            pytest.approx(lon, abs=1e-9),
            pytest.approx(lat, abs=1e-9),
        )


@pytest.mark.slow
def test_reingest_is_noop_and_force_replaces(
    pg_settings: Settings, database: Any, crops: dict[str, Path], encoder: Any
) -> None:
    (first,) = ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    before = db_state(database, pg_settings, encoder)
    (again,) = ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    assert again.status == "skipped" and again.id == first.id
    assert "already ingested" in (again.message or "") and "--force" in (again.message or "")
    after = db_state(database, pg_settings, encoder)
    np.testing.assert_array_equal(after["complete_ids"], before["complete_ids"])
    np.testing.assert_array_equal(after["faiss_ids"], before["faiss_ids"])

    # A copy under another name has the same bytes, hence the same SHA-256: skipped too.
    copy = crops["a"].parent / "copy of a.tif"
    shutil.copy(crops["a"], copy)
    (dup,) = ingest([copy], encoder=encoder, settings=pg_settings, progress=False)
    assert dup.status == "skipped" and dup.id == first.id

    (forced,) = ingest(
        [crops["a"]], encoder=encoder, settings=pg_settings, progress=False, force=True
    )
    assert forced.status == "ingested" and forced.id != first.id
    assert forced.tiles_kept == first.tiles_kept
    st = db_state(database, pg_settings, encoder)
    assert [o.id for o in st["orthos"]] == [forced.id]
    assert len(st["complete_ids"]) == first.tiles_kept
    assert not set(st["complete_ids"]) & set(before["complete_ids"])  # old tiles are gone
    np.testing.assert_array_equal(st["faiss_ids"], st["complete_ids"])


@pytest.mark.slow
def test_bad_raster_in_a_batch_is_reported_and_others_continue(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "not a raster.tif"
    bad.write_text("hello, I am text\n")
    half = tmp_path / "truncated.tif"
    data = crops["b"].read_bytes()
    half.write_bytes(data[: len(data) // 2])
    missing = tmp_path / "missing.tif"
    code = run_cli(
        monkeypatch,
        pg_settings,
        "ingest",
        str(bad),
        str(crops["b"]),
        str(missing),
        str(half),
        "--no-progress",
    )
    out, err = capsys.readouterr()
    assert code == 1
    summary = {Path(r["path"]).name: r for r in json.loads(out)}
    assert summary["crop_b.tif"]["status"] == "ingested"
    for name in ("not a raster.tif", "missing.tif", "truncated.tif"):
        assert summary[name]["status"] == "failed"
        assert name in summary[name]["message"]
        assert "\n" not in summary[name]["message"]
    assert "Traceback" not in err
    assert "3 of 4 inputs failed" in err
    # Only the good raster is in the database, complete, and FAISS agrees.
    from geoloc.models import load_encoder

    enc = load_encoder("sgmnet")
    st = db_state(database, pg_settings, enc)
    assert [o.path for o in st["orthos"]] == [str(crops["b"])]
    assert st["orthos"][0].status == "complete"
    assert_consistent(st, monkeypatch, pg_settings)


@pytest.mark.slow
def test_recovers_a_run_killed_after_the_faiss_save(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worst crash point: tiles written and Ω saved in FAISS, status still ``ingesting``."""
    from geoloc.ingest.stream import batches  # the same batching as ingest
    from geoloc.store import OmegaIndex
    from geoloc.store import repository as repo
    from tiling import TileConfig, open_raster

    (ok,) = ingest([crops["b"]], encoder=encoder, settings=pg_settings, progress=False)
    enc_id = repo.get_or_create_encoder(
        database,
        name=encoder.name,
        config=encoder.config(),
        weights_sha256=encoder.weights_sha256,
        omega_dim=int(encoder.omega_dim),
        phi_dim=int(encoder.phi_dim),
    )
    from geoloc.ingest import sha256_file

    with open_raster(crops["a"]) as r:
        cfg = TileConfig(224, 112, 0.5, 0.5)
        oid = repo.begin_orthomosaic(
            database,
            path=str(crops["a"]),
            sha256=sha256_file(crops["a"]),
            encoder_id=enc_id,
            raster=r,
            tile_size=224,
            stride=112,
            target_gsd=0.5,
        )
        index = OmegaIndex.open(pg_settings, encoder.weights_sha256)
        batch = next(iter(batches(r, cfg, r.grid(cfg).cols, 4)))
        out = encoder.encode(batch.pixels)
        ids = repo.add_tiles(
            database,
            oid,
            enc_id,
            batch.tiles,
            np.asarray(out.phi),
            np.asarray(out.node_areas),
            np.asarray(out.node_centroids),
        )
        index.add(np.asarray(ids, np.int64), np.asarray(out.omega, np.float32))
        index.save()
    # The crash left FAISS with ids of an incomplete orthomosaic: verify must see it.
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 1
    st = db_state(database, pg_settings, encoder)
    assert {o.status for o in st["orthos"]} == {"complete", "ingesting"}

    (redo,) = ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    assert redo.status == "ingested" and redo.id != oid
    st = db_state(database, pg_settings, encoder)
    assert sorted(o.id for o in st["orthos"]) == sorted([ok.id, redo.id])
    assert all(o.status == "complete" for o in st["orthos"])
    assert len(st["complete_ids"]) == ok.tiles_kept + redo.tiles_kept
    assert not set(ids) & set(st["faiss_ids"])
    assert_consistent(st, monkeypatch, pg_settings)


def test_ctrl_c_rolls_back_the_raster(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (ok,) = ingest([crops["b"]], encoder=encoder, settings=pg_settings, progress=False)
    before = db_state(database, pg_settings, encoder)
    calls = {"n": 0}
    real_encode = encoder.encode

    def interrupted(images: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_encode(images)

    monkeypatch.setattr(encoder, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False, batch_size=2)
    monkeypatch.undo()
    after = db_state(database, pg_settings, encoder)
    assert [o.id for o in after["orthos"]] == [ok.id]  # no trace of the interrupted raster
    np.testing.assert_array_equal(after["complete_ids"], before["complete_ids"])
    np.testing.assert_array_equal(after["faiss_ids"], before["faiss_ids"])


@pytest.mark.slow
def test_changed_file_at_the_same_path_replaces_its_orthomosaic(
    pg_settings: Settings, database: Any, crops: dict[str, Path], encoder: Any, tmp_path: Path
) -> None:
    target = tmp_path / "ortho.tif"
    shutil.copy(crops["a"], target)
    (first,) = ingest([target], encoder=encoder, settings=pg_settings, progress=False)
    shutil.copy(crops["b"], target)  # new content, same path
    (second,) = ingest([target], encoder=encoder, settings=pg_settings, progress=False)
    assert second.status == "ingested" and second.sha256 != first.sha256
    st = db_state(database, pg_settings, encoder)
    assert [(o.id, o.sha256) for o in st["orthos"]] == [(second.id, second.sha256)]
    assert len(st["complete_ids"]) == second.tiles_kept
    np.testing.assert_array_equal(st["faiss_ids"], st["complete_ids"])


def test_recovery_also_cleans_another_encoders_interrupted_ingest(
    pg_settings: Settings, database: Any, crops: dict[str, Path], encoder: Any
) -> None:
    """An ``ingesting`` row left by a run with another encoder is removed by the next ingest."""
    from geoloc.store import repository as repo
    from tiling import open_raster

    other_id = repo.get_or_create_encoder(
        database,
        name="other",
        config={},
        weights_sha256="0" * 64,
        omega_dim=int(encoder.omega_dim),
        phi_dim=int(encoder.phi_dim),
    )
    with open_raster(crops["a"]) as r:
        dead = repo.begin_orthomosaic(
            database, path=str(crops["a"]), sha256="f" * 64, encoder_id=other_id, raster=r
        )
    (res,) = ingest([crops["b"]], encoder=encoder, settings=pg_settings, progress=False)
    assert res.status == "ingested"
    assert repo.get_orthomosaic(database, dead) is None
    assert [o.id for o in repo.list_orthomosaics(database)] == [res.id]
