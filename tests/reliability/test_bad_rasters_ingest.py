"""Bad rasters through ``geoloc ingest`` (fakes of tests/data/rasters/data.py), on a copy of the
ingested base: each fails alone with exit 1 and a message naming the file, and leaves the
database rows and the FAISS index exactly as they were; odd-but-valid ones (16-bit, 1-band,
5-band, NaN, a hostile file name) are ingested; in a batch the good ones still go in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geoloc.config import Settings
from tests.data.rasters.data import generate
from tests.reliability.conftest import Result, run_sub, snapshot

BAD = [
    "zero_bytes",
    "truncated",
    "jpeg_as_tif",
    "text_file",
    "no_crs",
    "identity",
    "rotated",
    "one_px",  # a valid raster, but no tile of it can be kept: nothing to ingest
    "all_nodata",
    "all_nan",
    "missing_source_vrt",
]
ODD_VALID = ["uint16", "gray", "five_band", "float_nan"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every fake raster, plus ``missing`` (no such path) and ``empty_dir`` (no raster in it)."""
    d = tmp_path_factory.mktemp("rel-rasters")
    out = generate(d / "r")
    out["missing"] = d / "no such raster.tif"
    empty = d / "empty dir"
    empty.mkdir()
    (empty / "readme.txt").write_text("no rasters here\n")
    out["empty_dir"] = empty
    return out


def _rows(res: Result) -> list[dict[str, Any]]:
    return list(json.loads(res.out)) if res.out.strip() else []


def test_each_bad_raster_fails_alone_and_changes_nothing(
    clone: Callable[[], Settings], fake: dict[str, Path], cli: Callable[..., Result]
) -> None:
    settings = clone()
    before = snapshot(settings)
    assert before["verify:sgmnet"] is True and before["tiles"] > 0
    for name in [*BAD, "missing", "empty_dir"]:
        path = fake[name]
        res = cli(settings, "ingest", str(path), "--no-progress")
        assert res.code == 1, (name, res.out, res.err)
        assert "Traceback" not in res.err and "internal error" not in res.err, res.err
        assert "geoloc: error: 1 of 1 inputs failed" in res.err
        (row,) = _rows(res)
        assert row["status"] == "failed" and row["tiles_kept"] == 0, (name, row)
        msg = row["message"]
        assert msg.startswith(f"{path}: ") and "\n" not in msg, (name, msg)
        assert snapshot(settings) == before, name  # rows, statuses, FAISS ids, verify


def _ingest_ok(
    settings: Settings, cli: Callable[..., Result], paths: list[str]
) -> list[dict[str, Any]]:
    before = snapshot(settings)
    res = cli(settings, "ingest", *paths, "--no-progress")
    assert res.code == 0, res.err
    rows = _rows(res)
    assert [r["status"] for r in rows] == ["ingested"] * len(paths), rows
    after = snapshot(settings)
    added = sum(r["tiles_kept"] for r in rows)
    assert all(r["tiles_kept"] > 0 for r in rows)
    assert after["tiles"] == after["tile_embeddings"] == before["tiles"] + added
    assert after["orthomosaics"] == before["orthomosaics"] + len(paths)
    assert after["verify:sgmnet"] is True
    return rows


@pytest.mark.slow
def test_odd_rasters_are_ingested(
    clone: Callable[[], Settings], fake: dict[str, Path], cli: Callable[..., Result]
) -> None:
    """16-bit, 1-band, 5-band and NaN-holed rasters go in, FAISS in step with the database."""
    _ingest_ok(clone(), cli, [str(fake[n]) for n in ODD_VALID])


def test_hostile_file_name_is_ingested_and_tables_survive(
    clone: Callable[[], Settings], fake: dict[str, Path], cli: Callable[..., Result]
) -> None:
    """A raster named with spaces, quotes, unicode and ``'; DROP TABLE tiles; --`` goes in; the
    path is stored byte for byte and every table is still there."""
    from sqlalchemy import text

    from geoloc.store import open_database

    settings = clone()
    rows = _ingest_ok(settings, cli, [str(fake["odd_name"])])
    db = open_database(settings)
    try:
        with db.engine.connect() as conn:
            stored = conn.execute(
                text("SELECT path FROM orthomosaics WHERE sha256 = :s"),
                {"s": next(r["sha256"] for r in rows if r["path"] == str(fake["odd_name"]))},
            ).scalar_one()
            tables = set(
                conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                ).scalars()
            )
    finally:
        db.dispose()
    assert stored == str(fake["odd_name"].resolve())
    assert "'; DROP TABLE tiles; --" in stored
    assert {"encoders", "orthomosaics", "tiles", "tile_embeddings"} <= tables


@pytest.mark.slow
def test_batch_in_a_real_process(
    clone: Callable[[], Settings], fake: dict[str, Path], tmp_path: Path
) -> None:
    """One ``geoloc ingest`` process over bad rasters and one good one: the good one ingested,
    each bad one named on exactly one stderr line, exit 1, no traceback."""
    settings = clone()
    before = snapshot(settings)
    bad = ["truncated", "text_file", "no_crs", "missing_source_vrt", "missing"]
    args = [str(fake[n]) for n in bad[:2]] + [str(fake["uint16"])] + [str(fake[n]) for n in bad[2:]]
    res = run_sub(settings, "ingest", *args, "--no-progress")
    assert res.code == 1, res.err
    assert "Traceback" not in res.err
    rows = {r["path"]: r for r in _rows(res)}
    assert rows[str(fake["uint16"])]["status"] == "ingested"
    for n in bad:
        assert rows[str(fake[n])]["status"] == "failed"
        assert sum(str(fake[n]) in line for line in res.err_lines) == 1, (n, res.err)
    assert f"geoloc: error: {len(bad)} of {len(bad) + 1} inputs failed" in res.err
    after = snapshot(settings)
    assert after["tiles"] == before["tiles"] + rows[str(fake["uint16"])]["tiles_kept"]
    assert after["verify:sgmnet"] is True
