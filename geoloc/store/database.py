"""Open the tile database (embedded server or ``GEOLOC_DATABASE_URL``) and check its schema.

Schema policy: the *embedded* default database is upgraded to the Alembic head automatically
(it belongs to geoloc); an external ``GEOLOC_DATABASE_URL`` is never migrated implicitly:
:func:`open_database` raises :class:`~geoloc.errors.DatabaseError` asking for
``geoloc db upgrade``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from geoloc.config import Settings, mask_url
from geoloc.errors import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
#: The migrations of an installed wheel (``migrations/`` is packaged as ``geoloc._migrations``).
PACKAGED_MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "_migrations"
#: The migrations of a source checkout (editable install): ``migrations/`` beside ``alembic.ini``.
SOURCE_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def migrations_dir() -> Path:
    """Where the Alembic scripts are: the packaged copy, else the source checkout's."""
    for d in (PACKAGED_MIGRATIONS_DIR, SOURCE_MIGRATIONS_DIR):
        if (d / "env.py").exists():
            return d
    raise DatabaseError(f"{SOURCE_MIGRATIONS_DIR}: Alembic migrations not found")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at ``migrations/`` (``url`` overrides the resolved database)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.attributes["geoloc_url"] = url
    return cfg


def head_revision() -> str | None:
    """The newest revision in ``migrations/versions``."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The revision the connected database is at (None when never migrated)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine with a bounded connect timeout (psycopg2 driver)."""
    from sqlalchemy import create_engine

    return create_engine(
        url,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        pool_pre_ping=True,
        future=True,
    )


def upgrade(url: str, revision: str = "head") -> None:
    """Run ``alembic upgrade`` on ``url``."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Run ``alembic downgrade`` on ``url``."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


@dataclass
class Database:
    """An open tile database: ``engine``, ``session()``; ``url`` is masked for display."""

    engine: Engine
    raw_url: str
    embedded: bool

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return mask_url(self.raw_url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        from sqlalchemy.orm import Session

        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def resolve_url(settings: Settings) -> tuple[str, bool]:
    """The database URL of ``settings`` (starting the embedded server if needed), is-embedded."""
    if settings.database_url:
        url = settings.database_url
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        return url, False
    from geoloc.store import embedded

    return embedded.start(settings), True


#: Advisory lock key serialising automatic schema upgrades of the embedded database.
UPGRADE_LOCK_KEY = 0x6765_6F6C_6F64


def _upgrade_locked(engine: Engine, url: str, head: str | None) -> None:
    """Upgrade to ``head`` under an advisory lock (two first users must not both migrate)."""
    from sqlalchemy import text

    with engine.connect() as lock_conn:
        lock_conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": UPGRADE_LOCK_KEY})
        try:
            with engine.connect() as conn:
                rev = current_revision(conn)
            if rev != head:
                log.info("upgrading the embedded database schema %s -> %s", rev, head)
                upgrade(url)
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": UPGRADE_LOCK_KEY})
            lock_conn.commit()


def open_database(settings: Settings | None = None, *, check_schema: bool = True) -> Database:
    """Open the database of ``settings`` (``Settings.from_env()`` by default).

    Raises :class:`DatabaseError` within ~10 s when it is unreachable, and when an external
    database is not at the schema head (the embedded one is upgraded automatically).
    """
    from sqlalchemy.exc import DBAPIError, OperationalError

    settings = settings or Settings.from_env()
    url, embedded = resolve_url(settings)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rev = current_revision(conn) if check_schema else None
    except (OperationalError, DBAPIError) as exc:
        engine.dispose()
        first = str(getattr(exc, "orig", exc)).strip().splitlines()
        reason = first[0] if first else type(exc).__name__
        raise DatabaseError(f"cannot connect to {mask_url(url)}: {reason}") from exc
    db = Database(engine=engine, raw_url=url, embedded=embedded)
    if check_schema:
        head = head_revision()
        if rev != head:
            if embedded:
                _upgrade_locked(engine, url, head)
            else:
                engine.dispose()
                raise DatabaseError(
                    f"{mask_url(url)}: database schema is at {rev or 'no revision'}, "
                    f"expected {head}: run `geoloc db upgrade`"
                )
    return db
