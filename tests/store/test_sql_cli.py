"""``geoloc sql`` (one statement, JSON lines or CSV, read-only by default) and ``geoloc db url``."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.store import embedded
from geoloc.store.database import Database

from .helpers import ingest_fake, make_tiles, register_encoder, unit


class _Cli:
    """``geoloc ARGS`` in-process through ``main`` (its error handling and exit codes)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        from geoloc.cli.main import main

        self.capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        out = self.capsys.readouterr()
        return int(exc.value.code or 0), out.out, out.err


@pytest.fixture
def cli(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> _Cli:
    monkeypatch.setenv("GEOLOC_HOME", str(pg_settings.home))
    monkeypatch.setenv("GEOLOC_DATABASE_URL", pg_settings.database_url or "")
    return _Cli(capsys)


def _sql(cli: _Cli, *args: str) -> tuple[int, str, str]:
    return cli("sql", *args)


def test_sql_prints_json_lines_and_csv(cli: _Cli, database: Database) -> None:
    enc = register_encoder(database)
    ingest_fake(database, enc, make_tiles(2, 3), unit(np.random.default_rng(0), 6, 1024))
    code, out, _ = _sql(
        cli, "SELECT id, row, col, valid_fraction, transform FROM tiles ORDER BY id;"
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["row"], r["col"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert rows[1]["valid_fraction"] == pytest.approx(0.99) and len(rows[0]["transform"]) == 6
    code, out, _ = _sql(
        cli,
        "SELECT status, count(*) AS n, min(finished_at) AS t FROM orthomosaics GROUP BY status",
        "--format",
        "csv",
    )
    assert code == 0
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["status", "n", "t"] and table[1][:2] == ["complete", "1"]
    assert table[1][2].startswith("20")  # ISO timestamp
    code, out, _ = _sql(cli, "SELECT '50%' AS pct, NULL AS nothing")  # % is literal
    assert code == 0 and json.loads(out) == {"pct": "50%", "nothing": None}


def test_sql_is_read_only_unless_write(cli: _Cli, database: Database) -> None:
    register_encoder(database)
    code, out, err = _sql(cli, "UPDATE encoders SET name = 'renamed'")
    assert code == 1 and out == ""
    assert (
        "read-only transaction" in err and "--write" in err and len(err.strip().splitlines()) == 1
    )
    code, out, _ = _sql(cli, "SELECT name FROM encoders")
    assert json.loads(out) == {"name": "fake"}
    code, out, _ = _sql(cli, "UPDATE encoders SET name = 'renamed'", "--write")
    assert code == 0 and out == ""
    code, out, _ = _sql(cli, "SELECT name FROM encoders")
    assert json.loads(out) == {"name": "renamed"}


def test_bad_sql_is_one_line_exit_1(cli: _Cli, database: Database) -> None:
    for stmt, expect in [
        ("SELEC 1", "syntax error"),
        ("SELECT nope FROM tiles", 'column "nope" does not exist'),
        ("SELECT 1; DROP TABLE tiles", "one statement"),
        ("   ;  ", "empty statement"),
    ]:
        code, out, err = _sql(cli, stmt)
        assert code == 1 and out == "", stmt
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expect in lines[0], err
    code, out, _ = _sql(cli, "SELECT ';' AS semi -- a comment; with a semicolon")
    assert code == 0 and json.loads(out) == {"semi": ";"}
    code, _, err = _sql(cli, "SELECT 1", "--format", "xml")
    assert code == 1 and "--format" in err
    code, out, _ = _sql(cli, "SELECT count(*) AS n FROM tiles")  # the failures changed nothing
    assert json.loads(out) == {"n": 0}


def test_db_url_drivers_and_hints(cli: _Cli) -> None:
    from sqlalchemy import create_engine, text

    code, out, err = cli("db", "url")
    assert code == 0 and out.startswith("postgresql://")
    assert "psql" in err and "--driver psycopg2" in err
    code, out, _ = cli("db", "url", "--driver", "psycopg2", "--show-password")
    url = out.strip()
    assert code == 0 and url.startswith("postgresql+psycopg2://")
    engine = create_engine(url)  # what the hint tells a SQLAlchemy user to do
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM encoders")).scalar_one() == 0
    finally:
        engine.dispose()
    assert cli("db", "url", "--driver", "psycopg3")[0] == 2


@pytest.fixture
def fresh_home() -> Iterator[Path]:
    h = Path(tempfile.mkdtemp(prefix="geoloc-test-sql-", dir="/tmp"))
    try:
        yield h
    finally:
        embedded.stop(Settings(home=h))
        shutil.rmtree(h, ignore_errors=True)


@pytest.mark.slow
def test_sql_on_a_fresh_embedded_server(fresh_home: Path) -> None:
    """A newcomer's first query: no server running, no URL; the command starts the embedded
    server, holds it for the statement, prints the rows, and the server stops after it."""
    env = {**os.environ, "GEOLOC_HOME": str(fresh_home), "GEOLOC_DATABASE_URL": ""}
    geoloc = [sys.executable, "-m", "geoloc.cli.main"]
    done = subprocess.run(
        [*geoloc, "sql", "SELECT count(*) AS n FROM orthomosaics"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"n": 0}
    assert not embedded.status(Settings(home=fresh_home)).running
    url = subprocess.run(
        [*geoloc, "db", "url"], env=env, capture_output=True, text=True, timeout=300
    )
    assert url.returncode == 0 and url.stdout.startswith("postgresql://")
    assert "geoloc db start" in url.stderr


def test_the_geoloc_sql_examples_of_docs_sql_md_run(cli: _Cli, database: Database) -> None:
    import re
    import shlex

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sql.md").read_text()
    lines = re.findall(r"^geoloc sql .*$", doc, flags=re.M)
    assert len(lines) == 3
    enc = register_encoder(database)
    rng = np.random.default_rng(1)
    ingest_fake(database, enc, make_tiles(1, 2), unit(rng, 2, 1024))
    ingest_fake(
        database, enc, make_tiles(1, 1, lat0=61.0), unit(rng, 1, 1024), sha="e" * 64, complete=False
    )
    with database.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE orthomosaics SET status = 'failed' WHERE status <> 'complete'")
    outs = []
    for line in lines:
        code, out, err = cli(*shlex.split(line)[1:])
        assert code == 0, (line, err)
        outs.append(out)
    assert [json.loads(x) for x in outs[0].splitlines()] == [
        {"status": "complete", "n": 1},
        {"status": "failed", "n": 1},
    ]
    table = list(csv.reader(io.StringIO(outs[1])))
    assert table[0] == ["id", "path", "target_gsd_m", "tiles_kept"] and len(table) == 3
    code, out, _ = cli("sql", "SELECT status FROM orthomosaics")
    assert [json.loads(x) for x in out.splitlines()] == [{"status": "complete"}]
