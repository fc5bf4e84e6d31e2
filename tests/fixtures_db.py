"""Real-Postgres fixtures: one embedded server per test session, a fresh database per test.

The server runs in a temporary ``GEOLOC_HOME`` under ``/tmp`` (never under ``/root``: as root the
embedded server chowns its data dir and opens up its parents). A template database is migrated
to the Alembic head once; each test gets ``CREATE DATABASE ... TEMPLATE`` (~0.1-0.2 s), dropped
afterwards. The server is stopped at session end.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from geoloc.config import Settings
    from geoloc.store.database import Database

TEMPLATE_DB = "geoloc_template"
_counter = itertools.count()


class PgServer:
    """The session's embedded server: its home, admin URL and database factory."""

    def __init__(self, home: Path) -> None:
        from geoloc.config import Settings
        from geoloc.store import embedded

        self.home = home
        self.settings = Settings(home=home, database_url=None)
        self.admin_url = embedded.start(self.settings)
        self._template_ready = False

    def url_for(self, dbname: str) -> str:
        """URL of database ``dbname`` on this server."""
        from sqlalchemy.engine import make_url

        return make_url(self.admin_url).set(database=dbname).render_as_string(hide_password=False)

    def _admin(self, sql: str) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(sql))
        finally:
            engine.dispose()

    def ensure_template(self) -> None:
        """Create and migrate the template database (once)."""
        if self._template_ready:
            return
        from geoloc.store.database import upgrade

        self._admin(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{TEMPLATE_DB}"')
        upgrade(self.url_for(TEMPLATE_DB))
        self._template_ready = True

    def create_database(self, migrated: bool = True) -> str:
        """A new database (a copy of the migrated template, or empty); return its URL."""
        name = f"geoloc_test_{next(_counter)}"
        if migrated:
            self.ensure_template()
            self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
        else:
            self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a test database (terminating its connections)."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's embedded Postgres server (stopped at session end)."""
    from geoloc.store import embedded

    home = Path(tempfile.mkdtemp(prefix="geoloc-test-pg-", dir="/tmp"))
    server = PgServer(home)
    try:
        yield server
    finally:
        try:
            embedded.stop(server.settings)
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pg_dbname(pg_server: PgServer) -> Iterator[str]:
    """Name of a fresh migrated database (dropped after the test)."""
    name = pg_server.create_database()
    try:
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def pg_settings(pg_server: PgServer, pg_dbname: str, tmp_path: Path) -> Settings:
    """Settings pointing at a fresh migrated database; ``home`` is a per-test tmp dir."""
    from geoloc.config import Settings

    return Settings(home=tmp_path / "geoloc-home", database_url=pg_server.url_for(pg_dbname))


@pytest.fixture
def database(pg_settings: Settings) -> Iterator[Database]:
    """An open :class:`~geoloc.store.database.Database` on a fresh migrated database."""
    from geoloc.store import open_database

    db = open_database(pg_settings)
    try:
        yield db
    finally:
        db.dispose()
