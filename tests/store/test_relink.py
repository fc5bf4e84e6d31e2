"""Rasters that move (relink on re-ingest, ``db relink``, ``db check``) and locating around a
missing raster, against a real Postgres and the real default encoder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.ingest import ingest
from tests.conftest import crop_sample
from tests.ingest.test_ingest_db import db_state, run_cli
from tests.localize.conftest import truth_lonlat, write_jpeg
from tests.localize.views import sample_rgb, view

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def encoder() -> Any:
    """The default encoder, loaded once per module and optimised for inference."""
    from geoloc.models import load_encoder

    enc = load_encoder("sgmnet")
    enc.optimize_for_inference()
    return enc


class NoEncode:
    """The real encoder's identity (name, weights, dims) with an ``encode`` that must not run."""

    def __init__(self, enc: Any) -> None:
        self._enc = enc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._enc, name)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("encode called during a relink")


def test_moved_raster_reingest_relinks_without_encoding(
    pg_settings: Settings, database: Any, tmp_path: Path, encoder: Any
) -> None:
    a = crop_sample(tmp_path / "a" / "map.tif", 0, 0, 700, 500)
    (first,) = ingest([a], encoder=encoder, settings=pg_settings, progress=False)
    assert first.status == "ingested"
    before = db_state(database, pg_settings, encoder)

    b = tmp_path / "b" / "map.tif"
    b.parent.mkdir()
    shutil.move(a, b)
    (again,) = ingest([b], encoder=NoEncode(encoder), settings=pg_settings, progress=False)
    assert again.status == "relinked", again.message
    assert again.id == first.id and again.tiles_kept == first.tiles_kept
    assert "relinked" in (again.message or "") and str(a) in (again.message or "")
    after = db_state(database, pg_settings, encoder)
    assert [o.path for o in after["orthos"]] == [str(b)]
    np.testing.assert_array_equal(after["complete_ids"], before["complete_ids"])
    np.testing.assert_array_equal(after["faiss_ids"], before["faiss_ids"])

    # the same file again at its (new) stored path is the usual no-op
    (same,) = ingest([b], encoder=NoEncode(encoder), settings=pg_settings, progress=False)
    assert same.status == "skipped"


def test_relink_by_prefix_and_check(
    pg_settings: Settings,
    database: Any,
    tmp_path: Path,
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from geoloc.store import repository as repo

    old = tmp_path / "data"
    rasters = [
        crop_sample(old / "x.tif", 0, 0, 600, 450),
        crop_sample(old / "sub" / "y.tif", 700, 0, 600, 450),
        # a sibling folder sharing the prefix as a string, not as a path: never relinked
        crop_sample(tmp_path / "data2" / "z.tif", 1400, 0, 600, 450),
    ]
    res = ingest(rasters, encoder=encoder, settings=pg_settings, progress=False)
    assert [r.status for r in res] == ["ingested"] * 3
    capsys.readouterr()
    assert run_cli(monkeypatch, pg_settings, "db", "check") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True

    new = tmp_path / "moved"
    shutil.move(old, new)
    assert run_cli(monkeypatch, pg_settings, "db", "check") == 1
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["ok"] is False and report["rasters"] == 3
    assert {(p["path"], p["status"]) for p in report["problems"]} == {
        (str(rasters[0]), "missing"),
        (str(rasters[1]), "missing"),
    }
    assert "geoloc db relink" in out.err

    assert run_cli(monkeypatch, pg_settings, "db", "relink", str(old), str(new), "--dry-run") == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] is True and len(dry["relinked"]) == 2
    assert sorted(o.path for o in repo.list_orthomosaics(database)) == sorted(map(str, rasters))

    assert run_cli(monkeypatch, pg_settings, "db", "relink", str(old), str(new)) == 0
    done = json.loads(capsys.readouterr().out)
    assert {(c["old_path"], c["new_path"]) for c in done["relinked"]} == {
        (str(rasters[0]), str(new / "x.tif")),
        (str(rasters[1]), str(new / "sub" / "y.tif")),
    }
    assert sorted(o.path for o in repo.list_orthomosaics(database)) == sorted(
        [str(new / "x.tif"), str(new / "sub" / "y.tif"), str(rasters[2])]
    )
    assert run_cli(monkeypatch, pg_settings, "db", "check") == 0
    capsys.readouterr()

    # content that no longer matches its SHA-256 is reported as changed
    with open(new / "x.tif", "ab") as f:
        f.write(b"\0")
    assert run_cli(monkeypatch, pg_settings, "db", "check") == 1
    (prob,) = json.loads(capsys.readouterr().out)["problems"]
    assert prob["path"] == str(new / "x.tif") and prob["status"] == "changed"
    # --quick only looks for the files: all there
    assert run_cli(monkeypatch, pg_settings, "db", "check", "--quick") == 0


def test_missing_raster_among_several_answers_from_the_others(
    pg_settings: Settings, tmp_path: Path, encoder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m

    # two overlapping crops of the sample: the frame lies on both. Without stored local features
    # verification reads the rasters' pixels, so the missing one costs its own candidates.
    first = crop_sample(tmp_path / "one.tif", 0, 0, 1300, 900)
    second = crop_sample(tmp_path / "two.tif", 600, 0, 1300, 900)
    res = ingest(
        [first, second], encoder=encoder, settings=pg_settings, progress=False, features=False
    )
    assert [r.status for r in res] == ["ingested"] * 2
    cx, cy = 1000.0, 450.0
    frame = write_jpeg(tmp_path / "f.jpg", view(sample_rgb(), cx, cy, 400))
    lon, lat = truth_lonlat(cx, cy)

    with Localizer.open(pg_settings, encoder=encoder, preset="accurate") as lz:
        both = lz.locate(frame, gsd=0.28)
    assert both.status == "ok" and both.orthomosaic in (str(first), str(second))
    answered = Path(str(both.orthomosaic))
    other = second if answered == first else first
    answered.rename(tmp_path / "gone.tif")

    caplog.set_level(logging.WARNING, logger="geoloc")
    with Localizer.open(pg_settings, encoder=encoder, preset="accurate") as lz:
        fix = lz.locate(frame, gsd=0.28)
        again = lz.locate(frame, gsd=0.28)
    assert fix.status == "ok", fix.message
    assert fix.orthomosaic == str(other)
    assert fix.lon is not None and fix.lat is not None
    assert geodesic_distance_m(fix.lon, fix.lat, lon, lat) < 5.0
    assert again.status == "ok" and again.orthomosaic == str(other)
    warned = [r.getMessage() for r in caplog.records if str(answered) in r.getMessage()]
    assert len(warned) == 1, warned  # one warning per raster, not per candidate or frame
    assert "geoloc db relink" in warned[0] and "geoloc db check" in warned[0]


def test_eval_records_a_frames_error_and_goes_on(
    pg_settings: Settings, tmp_path: Path, encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoloc.evaluation.frames import ablation_configs, evaluate_frames

    r = crop_sample(tmp_path / "m.tif", 0, 0, 900, 700)
    (res,) = ingest([r], encoder=encoder, settings=pg_settings, progress=False)
    assert res.status == "ingested"
    q = tmp_path / "q"
    q.mkdir()
    write_jpeg(q / "good.jpg", view(sample_rgb(), 450.0, 350.0, 400))
    (q / "broken.jpg").write_bytes(b"not a jpeg")
    lon, lat = truth_lonlat(450.0, 350.0)
    truth = tmp_path / "truth.csv"
    truth.write_text(f"name,lat,lon\nbroken.jpg,{lat},{lon}\ngood.jpg,{lat},{lon}\n")
    monkeypatch.setenv("GEOLOC_HOME", str(pg_settings.home))
    assert pg_settings.database_url is not None
    monkeypatch.setenv("GEOLOC_DATABASE_URL", pg_settings.database_url)
    name, cfg = next(iter(ablation_configs().items()))
    out = evaluate_frames({name: cfg}, q, truth)
    broken, good = out["answers"][name]
    assert broken["status"] == "error" and "broken.jpg" in broken["message"]
    assert good["status"] == "ok"
    assert out["results"][name]["frame_errors"] == 1


def test_missing_raster_with_stored_features_still_answers(
    pg_settings: Settings, tmp_path: Path, encoder: Any
) -> None:
    """With per-tile features in the store, verification needs no pixels: a raster moved away
    after ingest still answers from its own tiles (only the photometric check is skipped)."""
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m

    only = crop_sample(tmp_path / "one.tif", 0, 0, 1300, 900)
    res = ingest([only], encoder=encoder, settings=pg_settings, progress=False)
    assert [r.status for r in res] == ["ingested"]
    cx, cy = 600.0, 450.0
    frame = write_jpeg(tmp_path / "f.jpg", view(sample_rgb(), cx, cy, 400))
    lon, lat = truth_lonlat(cx, cy)
    only.rename(tmp_path / "gone.tif")
    with Localizer.open(pg_settings, encoder=encoder, preset="accurate") as lz:
        fix = lz.locate(frame, gsd=0.28)
    assert fix.status == "ok", fix.message
    assert fix.orthomosaic == str(only)
    assert fix.lon is not None and fix.lat is not None
    assert geodesic_distance_m(fix.lon, fix.lat, lon, lat) < 5.0
