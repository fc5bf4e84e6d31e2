"""``geoloc plugins list``: every plugin group with its installed plugins and the defaults."""

from __future__ import annotations

import json
import sys

import typer


def defaults() -> dict[str, tuple[str, ...]]:
    """The plugins the default preset and ``geoloc ingest`` use, per group (from their tables)."""
    from geoloc.config import DEFAULT_ENCODER
    from geoloc.localize.pipeline import DEFAULT_PRESET, preset

    cfg = preset(DEFAULT_PRESET)
    out: dict[str, tuple[str, ...]] = {"geoloc.encoders": (DEFAULT_ENCODER,)}
    for stage in ("recall", "rerank", "consistency", "verify"):
        sc = getattr(cfg, stage)
        out[f"geoloc.{stage}"] = (sc.name,) if sc is not None else ()
    out["geoloc.priors"] = tuple(p.name for p in cfg.priors)
    return out


def list_plugins(load: bool = True) -> list[dict[str, object]]:
    """One row per installed plugin: group, protocol, name, value, package, version, default,
    status.

    With ``load`` each plugin is imported: one that fails is reported ``broken`` with its error
    (it never stops the listing).
    """
    import importlib.util

    from geoloc import __version__, plugins

    default = defaults()
    rows: list[dict[str, object]] = []
    for group, proto in plugins.GROUPS.items():
        infos = plugins.available(group)
        broken: dict[str, str] = {}
        loaded: dict[str, object] = {}
        if load:
            loaded, broken = plugins.load_all(group)
        for name, info in infos.items():
            status, error = ("broken", broken[name]) if name in broken else ("ok", None)
            # optional dependencies a plugin declares with a ``requires`` attribute
            missing = [
                m
                for m in getattr(loaded.get(name), "requires", ())
                if importlib.util.find_spec(m) is None
            ]
            if missing and status == "ok":
                hint = getattr(loaded.get(name), "install_hint", "")
                status, error = "not installed", f"missing {', '.join(missing)} {hint}".strip()
            rows.append(
                {
                    "group": group,
                    "protocol": proto,
                    "name": name,
                    "value": info.value,
                    "package": info.package or "geoloc (built-in)",
                    "version": info.version or (__version__ if info.package is None else None),
                    "default": name in default.get(group, ()),
                    "status": status,
                    "error": error,
                }
            )
    return rows


def register(app: typer.Typer) -> None:
    """Add ``geoloc plugins list`` to ``app``."""
    plugins_app = typer.Typer(
        help="Pipeline plugins (encoders and locate stages).", no_args_is_help=True
    )
    app.add_typer(plugins_app, name="plugins")

    @plugins_app.command("list")
    def list_cmd(
        fmt: str = typer.Option("table", "--format", "-f", help="table | json."),
    ) -> None:
        """Show every group with its plugins, their package and version, and the defaults.

        A plugin that fails to import is listed as broken with its error, and skipped.
        """
        if fmt not in ("table", "json"):
            raise typer.BadParameter("--format must be table or json")
        rows = list_plugins()
        if fmt == "json":
            typer.echo(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="geoloc plugins")
        for col in ("group", "name", "package", "version", "default", "status"):
            table.add_column(col)
        for r in rows:
            status = "ok" if r["status"] == "ok" else f"{r['status']}: {r['error']}"
            table.add_row(
                str(r["group"]),
                str(r["name"]),
                str(r["package"]),
                str(r["version"] or ""),
                "*" if r["default"] else "",
                status,
            )
        Console(width=200 if not sys.stdout.isatty() else None).print(table)
