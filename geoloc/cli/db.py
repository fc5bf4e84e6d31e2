"""``geoloc db url|status|upgrade|downgrade|start|stop|relink|check``,
``geoloc index verify|rebuild|info`` and ``geoloc sql``.

Schema policy: the embedded default database is upgraded automatically by every command that
opens it; an external ``GEOLOC_DATABASE_URL`` is only migrated by ``geoloc db upgrade``.
Data (JSON) goes to stdout, logs to stderr.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

log = logging.getLogger("geoloc.db")


def _echo_json(data: Any, indent: int | None = 2) -> None:
    typer.echo(json.dumps(data, indent=indent, default=str))


def _settings() -> Any:
    from geoloc.config import Settings

    return Settings.from_env()


def _display(url: str, show_password: bool = False) -> str:
    """``url`` with a non-empty password masked (an empty one is left as is)."""
    from sqlalchemy.engine import make_url

    from geoloc.config import mask_url

    try:
        has_password = bool(make_url(url).password)
    except Exception:  # noqa: BLE001 - unparsable: mask what can be masked
        has_password = True
    return mask_url(url) if has_password and not show_password else url


def _libpq(url: str) -> str:
    """SQLAlchemy URL -> the libpq URI psql understands (driver name dropped)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else url


def register(app: typer.Typer) -> None:
    """Add the ``db`` and ``index`` command groups to ``app``."""
    db_app = typer.Typer(
        help="The tile database: embedded Postgres server, URL, schema migrations.",
        no_args_is_help=True,
    )
    index_app = typer.Typer(
        help="The FAISS Ω index: verify it against the database, rebuild it, describe it.",
        no_args_is_help=True,
    )
    app.add_typer(db_app, name="db")
    app.add_typer(index_app, name="index")

    @db_app.command("url")
    def url_cmd(
        driver: str = typer.Option(
            "libpq",
            "--driver",
            help="libpq: the URL psql understands (default); psycopg2: the SQLAlchemy URL "
            "(postgresql+psycopg2://).",
        ),
        sqlalchemy: bool = typer.Option(
            False, "--sqlalchemy", help="Same as --driver psycopg2.", hidden=True
        ),
        show_password: bool = typer.Option(
            False, "--show-password", help="Do not mask the password of an external URL."
        ),
    ) -> None:
        """Print the database URL (starts the embedded server if needed): psql "$(geoloc db url)".

        The embedded server listens on a Unix socket only and stops when its last user exits:
        run `geoloc db start` first to keep it up for psql. For one query, `geoloc sql` needs
        neither. How to use the URL is said on stderr.
        """
        from geoloc.store.database import resolve_url

        if driver not in ("libpq", "psycopg2"):
            raise typer.BadParameter(f"--driver must be libpq or psycopg2, got {driver!r}")
        settings = _settings()
        url, embedded = resolve_url(settings)
        shown = _display(url, show_password)
        as_sqlalchemy = sqlalchemy or driver == "psycopg2"
        typer.echo(shown if as_sqlalchemy else _libpq(shown))
        hints = [
            'psql: psql "$(geoloc db url)"',
            "SQLAlchemy: create_engine(URL of `geoloc db url --driver psycopg2`); the plain "
            "postgresql:// URL makes SQLAlchemy 2 load psycopg 3, which geoloc does not install",
            'one query, no set-up: geoloc sql "SELECT ..."',
        ]
        if embedded:
            hints.insert(
                0,
                "the embedded server stops when its last user exits: run `geoloc db start` "
                "before a psql or SQLAlchemy session (and `geoloc db stop` after)",
            )
        for line in hints:
            typer.echo(f"geoloc: {line}", err=True)

    @db_app.command("status")
    def status_cmd() -> None:
        """Print (JSON) the server state, schema revision and row counts; never starts a server."""
        from geoloc.errors import DatabaseError
        from geoloc.store import embedded
        from geoloc.store.database import current_revision, head_revision, make_engine
        from geoloc.store.repository import counts

        settings = _settings()
        out: dict[str, Any] = {"home": str(settings.home), "embedded": settings.uses_embedded_db}
        url: str | None = settings.database_url
        if settings.uses_embedded_db:
            st = embedded.status(settings)
            out["server"] = st.as_dict()
            url = embedded.start(settings) if st.running else None
        out["url"] = _display(url) if url else None
        out["head_revision"] = head_revision()
        if url is None:
            out["reachable"] = False
            _echo_json(out)
            return
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                rev = current_revision(conn)
                out["reachable"] = True
                out["revision"] = rev
                out["at_head"] = rev == out["head_revision"]
                if rev is not None:
                    out.update(counts(conn))
        except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a status report
            if isinstance(exc, DatabaseError):
                raise
            out["reachable"] = False
            out["error"] = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        finally:
            engine.dispose()
        _echo_json(out)

    @db_app.command("upgrade")
    def upgrade_cmd(
        revision: str = typer.Argument("head", help="Target revision (default: head)."),
    ) -> None:
        """Migrate the database schema up to REVISION (Alembic)."""
        from geoloc.store.database import open_database, upgrade

        db = open_database(_settings(), check_schema=False)
        try:
            upgrade(db.raw_url, revision)
        finally:
            db.dispose()
        log.info("%s: schema upgraded to %s", _display(db.raw_url), revision)

    @db_app.command("downgrade")
    def downgrade_cmd(
        revision: str = typer.Argument(..., help="Target revision: an id, -1, or base."),
    ) -> None:
        """Migrate the database schema down to REVISION (base drops every table)."""
        from geoloc.store.database import downgrade, open_database

        db = open_database(_settings(), check_schema=False)
        try:
            downgrade(db.raw_url, revision)
        finally:
            db.dispose()
        log.info("%s: schema downgraded to %s", db.url, revision)

    @db_app.command("start")
    def start_cmd() -> None:
        """Start the embedded server and keep it running after this command (until db stop)."""
        from geoloc.errors import DatabaseError
        from geoloc.store import embedded

        settings = _settings()
        if not settings.uses_embedded_db:
            raise DatabaseError("GEOLOC_DATABASE_URL is set: there is no embedded server to start")
        url = embedded.start(settings, keep_running=True)
        typer.echo(_libpq(url))

    @db_app.command("stop")
    def stop_cmd() -> None:
        """Stop the embedded server (fast shutdown: open sessions are disconnected)."""
        from geoloc.errors import DatabaseError
        from geoloc.store import embedded

        settings = _settings()
        if not settings.uses_embedded_db:
            raise DatabaseError("GEOLOC_DATABASE_URL is set: there is no embedded server to stop")
        stopped = embedded.stop(settings)
        log.info("embedded server %s", "stopped" if stopped else "was not running")

    @db_app.command("relink")
    def relink_cmd(
        old_prefix: str = typer.Argument(..., help="Stored path prefix the rasters were under."),
        new_prefix: str = typer.Argument(..., help="Prefix they are under now."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change only."),
    ) -> None:
        """Rewrite stored raster paths OLD_PREFIX/... to NEW_PREFIX/... (one transaction; JSON)."""
        from geoloc.store import open_database
        from geoloc.store.repository import ingest_lock, relink_prefix

        db = open_database(_settings())
        try:
            with ingest_lock(db):
                changed = relink_prefix(db, old_prefix, new_prefix, dry_run=dry_run)
        finally:
            db.dispose()
        _echo_json({"dry_run": dry_run, "relinked": [c.as_dict() for c in changed]})
        log.info("%s %d raster paths", "would relink" if dry_run else "relinked", len(changed))

    @db_app.command("check")
    def check_cmd(
        quick: bool = typer.Option(
            False, "--quick", help="Only check the files exist and open; skip the SHA-256."
        ),
    ) -> None:
        """List stored rasters that are missing or whose content no longer matches (JSON);
        exit 1 when any is."""
        from geoloc.store import open_database
        from geoloc.store.repository import check_rasters

        db = open_database(_settings())
        try:
            checks = check_rasters(db, hash_content=not quick)
        finally:
            db.dispose()
        problems = [c for c in checks if c.status not in ("ok", "bundle")]
        _echo_json(
            {
                "ok": not problems,
                "rasters": len(checks),
                "problems": [c.as_dict() for c in problems],
            }
        )
        if problems:
            typer.echo(
                f"geoloc: {len(problems)} of {len(checks)} rasters missing or changed; "
                "move them back, `geoloc db relink OLD NEW`, or re-ingest them",
                err=True,
            )
            raise typer.Exit(1)

    encoder_opt = typer.Option(
        None, "--encoder", "-e", help="Encoder id, name or weights SHA-256 prefix."
    )

    @index_app.command("verify")
    def verify_cmd(encoder: str | None = encoder_opt) -> None:
        """Check FAISS and the per-tile features hold exactly the database's complete tile ids
        (and every feature file its SHA-256); exit 1 with a diff and a one-line reason if not."""
        from geoloc.store import TileStore

        with TileStore.for_registered(_settings(), encoder) as store:
            report = store.verify()
        _echo_json(report.as_dict())
        if not report.ok:
            typer.echo(f"geoloc: {report.reason()}", err=True)
            raise typer.Exit(1)

    @index_app.command("rebuild")
    def rebuild_cmd(
        encoder: str | None = encoder_opt,
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="Checkpoint the tiles were ingested with."
        ),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="Tiles per encoder batch."),
        features: bool = typer.Option(
            False,
            "--features",
            help="Rebuild the per-tile local features (not Ω) from the rasters: every tile, or "
            "with --missing only those without intact features.",
        ),
        missing: bool = typer.Option(
            False, "--missing", help="With --features: only tiles without intact features."
        ),
        features_max: int | None = typer.Option(
            None, "--max-per-tile", min=1, help="With --features: keypoints kept per tile."
        ),
        omega: bool = typer.Option(
            False,
            "--omega",
            help="Build the Ω index of a store ingested with --no-omega (which keeps it from "
            "then on: needed by --preset seed).",
        ),
    ) -> None:
        """Recreate the FAISS index (or, with --features, the per-tile features) from the
        database by re-reading tiles from their rasters."""
        from geoloc.ingest.rebuild import rebuild_features, rebuild_index
        from geoloc.store import TileStore

        def progress(done: int, total: int) -> None:
            log.info("re-%s %d / %d tiles", "extracted" if features else "encoded", done, total)

        with TileStore.for_registered(_settings(), encoder) as store, store.locked():
            if features:
                rebuild_features(
                    store,
                    max_per_tile=features_max,
                    only_missing=missing,
                    batch_size=batch_size,
                    progress=progress,
                )
            else:
                rebuild_index(
                    store,
                    checkpoint=checkpoint,
                    batch_size=batch_size,
                    progress=progress,
                    add_omega=omega,
                )
            report = store.verify()
        _echo_json(report.as_dict())
        if not report.ok:
            typer.echo(f"geoloc: {report.reason()}", err=True)
            raise typer.Exit(1)

    @index_app.command("info")
    def info_cmd(encoder: str | None = encoder_opt) -> None:
        """Print the index sidecar (JSON): dims, count, type, parameters, files; ``omega``
        null for a store without Ω index."""
        from geoloc.store import OmegaIndex, open_database
        from geoloc.store.maintenance import resolve_encoder

        settings = _settings()
        db = open_database(settings)
        try:
            enc = resolve_encoder(db, encoder)
        finally:
            db.dispose()
        from geoloc.store.tile_features import FeatureStore

        if enc.has_omega:
            ix = OmegaIndex.open(settings, enc.weights_sha256, create=False)
            info = ix.info()
        else:  # ingested with --no-omega: only the features live in the folder
            info = {"omega": None}
        info["encoder"] = enc.name
        fdir = FeatureStore.path_for(OmegaIndex.path_for(settings, enc.weights_sha256))
        info["features"] = FeatureStore.open(fdir).info() if FeatureStore.exists(fdir) else None
        _echo_json(info)

    @app.command("sql")
    def sql_cmd(
        statement: str = typer.Argument(..., metavar="SQL", help="One SQL statement."),
        fmt: str = typer.Option(
            "json", "--format", "-f", help="json: one JSON object per row (default); csv."
        ),
        write: bool = typer.Option(
            False, "--write", help="Allow changes (default: a READ ONLY transaction)."
        ),
    ) -> None:
        """Run one SQL statement on the tile database; rows to stdout as JSON lines or CSV.

        Works on the embedded server (held for the statement's duration) or GEOLOC_DATABASE_URL.
        Read-only unless --write. Example: geoloc sql "SELECT status, count(*) FROM orthomosaics
        GROUP BY status".
        """
        from geoloc.errors import DatabaseError
        from geoloc.store import open_database
        from geoloc.store.sql import FORMATS, format_rows, run_statement

        if fmt not in FORMATS:
            raise DatabaseError(f"sql: --format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        db = open_database(_settings())
        try:
            result = run_statement(db, statement, write=write)
        finally:
            db.dispose()
        for line in format_rows(result, fmt):
            typer.echo(line)
        if not result.columns:
            log.info("%d row(s) affected", max(result.rowcount, 0))
