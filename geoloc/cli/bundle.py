"""``geoloc bundle export|import|verify``: a tile database folder that locates without rasters."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

log = logging.getLogger("geoloc.bundle")


def register(app: typer.Typer) -> None:
    """Add the ``bundle`` command group to ``app``."""
    bundle_app = typer.Typer(
        help="Bundles: export the tile database + Ω index + verification regions to one folder, "
        "import it on another machine (no source raster needed).",
        no_args_is_help=True,
    )
    app.add_typer(bundle_app, name="bundle")

    @bundle_app.command("export")
    def export_cmd(
        out: Path = typer.Argument(..., help="New (or empty) folder to write the bundle to."),
        encoder: str | None = typer.Option(
            None, "--encoder", "-e", help="Encoder id, name or weights SHA-256 prefix."
        ),
        no_regions: bool = typer.Option(
            False,
            "--no-regions",
            help="Leave out the region images (most of a bundle's size); needs stored local "
            "features for every tile, which verification then matches.",
        ),
    ) -> None:
        """Write one encoder's tiles, Φ, Ω index (with the local features) and verification
        regions, with a manifest."""
        from geoloc.config import Settings
        from geoloc.ingest.bundle import export_bundle

        def progress(done: int, total: int) -> None:
            log.info("regions of %d / %d tiles", done, total)

        summary = export_bundle(
            Settings.from_env(), out, encoder, progress=progress, regions=not no_regions
        )
        typer.echo(json.dumps(summary.as_dict(), indent=2))

    @bundle_app.command("import")
    def import_cmd(
        path: Path = typer.Argument(..., help="Bundle folder (keep it in place after import)."),
    ) -> None:
        """Check every checksum, then load the bundle into the (empty) database and Ω index."""
        from geoloc.config import Settings
        from geoloc.store.bundle import import_bundle

        summary = import_bundle(Settings.from_env(), path)
        typer.echo(json.dumps(summary.as_dict(), indent=2))

    @bundle_app.command("verify")
    def verify_cmd(path: Path = typer.Argument(..., help="Bundle folder.")) -> None:
        """Check every file of a bundle against its manifest (exit 1 with one line if not)."""
        from geoloc.store.bundle import verify_bundle

        m = verify_bundle(path)
        typer.echo(json.dumps({"ok": True, "files": len(m["files"]), "tiles": m["tiles"]}))
