"""geoloc against an external Postgres (``GEOLOC_DATABASE_URL``): a separate server on a loopback
TCP port with scram-sha-256 passwords, driven through the real CLI in separate processes.

Covers what the embedded default never exercises: an explicit ``geoloc db upgrade``, TCP
connections with a password, ``geoloc sql`` over them, a wrong password, and the server going
away under a running ingest (an operator's restart) followed by a resumed ingest.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, SAMPLE_RASTER, crop_sample
from tests.external_pg.conftest import Result, geoloc, start_geoloc
from tests.fixtures_extpg import ExternalPostgres

pytestmark = pytest.mark.slow

FRAMES = REPO / "data" / "sample" / "frames"
#: A locate through the external database must be as good as through the embedded one (the demo
#: places frame_00 within a metre or so); 5 m leaves room for nothing but a real match.
LOCATE_TOLERANCE_M = 5.0


def _truth(name: str) -> dict[str, float]:
    with (FRAMES / "truth.csv").open() as f:
        for row in csv.DictReader(f):
            if row["name"] == name:
                return {k: float(row[k]) for k in ("lat", "lon", "gsd_m")}
    raise KeyError(name)


def _metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance (a spherical Earth is plenty at metre scale)."""
    r = 6_371_008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def _scalar(url: str, sql: str) -> Any:
    """One value of a fixed test query, over a fresh connection."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


@dataclass
class Ingested:
    """The sample ingested through the external URL: GEOLOC_HOME, URL and the CLI results."""

    home: Path
    url: str
    upgrade: Result
    ingest: Result


@pytest.fixture(scope="module")
def ingested(
    external_pg: ExternalPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ingested]:
    """``geoloc db upgrade`` then ``geoloc ingest`` of the bundled sample, through the URL."""
    home = tmp_path_factory.mktemp("extpg-home")
    url = external_pg.url()
    upgrade = geoloc(home, url, "db", "upgrade")
    ingest = geoloc(home, url, "ingest", str(SAMPLE_RASTER), "--no-progress")
    yield Ingested(home, url, upgrade, ingest)


def test_upgrade_migrates_the_external_database_to_head(ingested: Ingested) -> None:
    assert ingested.upgrade.code == 0, ingested.upgrade.err
    status = geoloc(ingested.home, ingested.url, "db", "status")
    assert status.code == 0, status.err
    st = json.loads(status.out)
    assert st["embedded"] is False and st["reachable"] is True and st["at_head"] is True
    port = ingested.url.rsplit(":", 1)[1].split("/")[0]
    assert st["url"] == f"postgresql+psycopg2://geoloc:***@127.0.0.1:{port}/geoloc"


def test_ingest_writes_tiles_to_the_external_database(ingested: Ingested) -> None:
    assert ingested.ingest.code == 0, ingested.ingest.err
    (res,) = json.loads(ingested.ingest.out)
    assert res["status"] == "ingested" and res["tiles_kept"] > 0, res
    tiles = _scalar(ingested.url, "SELECT count(*) FROM tiles")
    assert tiles == res["tiles_kept"]
    status = _scalar(ingested.url, "SELECT string_agg(status, ',') FROM orthomosaics")
    assert status == "complete"
    # Nothing went to an embedded server: GEOLOC_HOME holds the FAISS index only.
    assert not (ingested.home / "pgdata").exists()
    verify = geoloc(ingested.home, ingested.url, "index", "verify")
    assert verify.code == 0, verify.err
    assert json.loads(verify.out)["ok"] is True


def test_locate_answers_through_the_external_database(ingested: Ingested) -> None:
    assert ingested.ingest.code == 0, ingested.ingest.err
    truth = _truth("frame_00.jpg")
    frame = FRAMES / "frame_00.jpg"
    res = geoloc(ingested.home, ingested.url, "locate", str(frame), "--gsd", str(truth["gsd_m"]))
    assert res.code == 0, res.err
    (fix,) = [json.loads(line) for line in res.out.splitlines() if line.strip()]
    assert fix["status"] == "ok", fix
    err_m = _metres(fix["lat"], fix["lon"], truth["lat"], truth["lon"])
    assert err_m < LOCATE_TOLERANCE_M, (err_m, fix)


def test_sql_reads_the_external_database_and_is_read_only_by_default(ingested: Ingested) -> None:
    assert ingested.ingest.code == 0, ingested.ingest.err
    (res,) = json.loads(ingested.ingest.out)
    rows = geoloc(
        ingested.home,
        ingested.url,
        "sql",
        "SELECT status, tiles_kept AS n FROM orthomosaics ORDER BY id",
    )
    assert rows.code == 0, rows.err
    assert [json.loads(x) for x in rows.out.splitlines()] == [
        {"status": "complete", "n": res["tiles_kept"]}
    ]
    counted = geoloc(
        ingested.home, ingested.url, "sql", "--format", "csv", "SELECT count(*) AS n FROM tiles"
    )
    assert counted.code == 0, counted.err
    assert counted.out.split() == ["n", str(res["tiles_kept"])]

    refused = geoloc(ingested.home, ingested.url, "sql", "DELETE FROM tiles")
    assert refused.code == 1, (refused.out, refused.err)
    assert len(refused.errors) == 1 and "Traceback" not in refused.err, refused.err
    assert ingested.url.split("@")[0].split(":")[-1] not in refused.err  # the password
    assert _scalar(ingested.url, "SELECT count(*) FROM tiles") == res["tiles_kept"]


@pytest.mark.parametrize("command", ["db upgrade", "ingest", "locate"])
def test_wrong_password_is_one_line_with_the_password_masked(
    external_pg: ExternalPostgres, tmp_path: Path, command: str
) -> None:
    wrong = "Wr0ng-s3cret"
    url = external_pg.url(password=wrong)
    args = {
        "db upgrade": ["db", "upgrade"],
        "ingest": ["ingest", str(SAMPLE_RASTER), "--no-progress"],
        "locate": ["locate", str(FRAMES / "frame_00.jpg")],
    }[command]
    res = geoloc(tmp_path / "home", url, *args)
    assert res.code == 1, (res.out, res.err)
    assert wrong not in res.err and wrong not in res.out and external_pg.password not in res.err
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    assert len(res.errors) == 1, res.err
    (line,) = res.errors
    assert "password authentication failed" in line, line
    assert f"geoloc:***@127.0.0.1:{external_pg.port}/geoloc" in line, line


def test_server_restart_mid_ingest_fails_clearly_then_resumes(
    external_pg: ExternalPostgres, tmp_path: Path
) -> None:
    """The server is stopped (fast shutdown: sessions cut) while an ingest is writing batches.

    The ingest exits 1 with one error line; the raster ingested before is intact; after the
    restart the same command completes and ``geoloc index verify`` passes.
    """
    url = external_pg.create_database("geoloc_restart")
    home = tmp_path / "home"
    first = crop_sample(tmp_path / "first.tif", 500, 150, 1000, 800)
    # The whole sample on a finer grid in small batches: ~80 committed batches to cut into, so
    # the server goes down while batches are still being written.
    second = tmp_path / "second.tif"
    shutil.copyfile(SAMPLE_RASTER, second)
    ingest_second = ["ingest", str(second), "--gsd", "0.2", "--batch-size", "4", "--no-progress"]
    try:
        assert geoloc(home, url, "db", "upgrade").code == 0
        done = geoloc(home, url, "ingest", str(first), "--no-progress")
        assert done.code == 0, done.err
        first_tiles = _scalar(url, "SELECT count(*) FROM tiles")
        assert isinstance(first_tiles, int) and first_tiles > 0

        run = start_geoloc(home, url, *ingest_second)
        run.wait_for(
            lambda: int(_scalar(url, "SELECT count(*) FROM tiles")) > first_tiles,
            "the first batch of the second raster",
            timeout=240,
        )
        external_pg.stop("fast")
        failed = run.finish()
        assert failed.code == 1, (failed.out, failed.err)
        assert "Traceback" not in failed.err and "internal error" not in failed.err, failed.err
        assert failed.errors == ["geoloc: error: 1 of 1 inputs failed"], failed.err
        # The reason: one log line naming the raster and the lost connection, no SQL dump.
        reasons = [x for x in failed.err.splitlines() if x.startswith("ERROR ")]
        assert len(reasons) == 1 and str(second) in reasons[0], failed.err
        assert "connection" in reasons[0] or "server" in reasons[0], reasons[0]
        assert "[SQL:" not in failed.err, failed.err
        assert external_pg.password not in failed.err

        external_pg.start()
        external_pg.wait_ready()
        again = geoloc(home, url, *ingest_second)
        assert again.code == 0, again.err
        (res,) = json.loads(again.out)
        assert res["status"] == "ingested", res
        statuses = _scalar(url, "SELECT string_agg(status, ',' ORDER BY id) FROM orthomosaics")
        assert statuses == "complete,complete"
        total = _scalar(url, "SELECT count(*) FROM tiles")
        assert total == first_tiles + res["tiles_kept"]
        verify = geoloc(home, url, "index", "verify")
        assert verify.code == 0, verify.err
        assert json.loads(verify.out)["ok"] is True
    finally:
        if not external_pg.running():
            external_pg.start()
        external_pg.admin('DROP DATABASE IF EXISTS "geoloc_restart" WITH (FORCE)')
