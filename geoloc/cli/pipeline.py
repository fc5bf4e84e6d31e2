"""``geoloc ingest``: tile, encode and store orthomosaics (JSON summary on stdout)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``geoloc ingest`` to ``app``."""

    @app.command("ingest")
    def ingest_cmd(
        paths: list[str] = typer.Argument(
            ..., metavar="PATH...", help="Raster files, directories (recursive) or glob patterns."
        ),
        encoder: str = typer.Option("sgmnet", "--encoder", "-e", help="Encoder plugin name."),
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="Checkpoint of the encoder's head (safetensors)."
        ),
        gsd: float | None = typer.Option(
            None,
            "--gsd",
            help="Tile ground sample distance in m/px (default: max(0.5, native), or native "
            "when that keeps fewer than a few dozen tiles; the same grid as `geoloc tiles`).",
        ),
        stride: int | None = typer.Option(
            None, "--stride", help="Tile step in output pixels (default: half a tile)."
        ),
        min_valid: float | None = typer.Option(
            None,
            "--min-valid",
            min=0.0,
            max=1.0,
            help="Minimum valid fraction of a kept tile (default: 0.5).",
        ),
        batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Tiles per batch."),
        write_tiles: int | None = typer.Option(
            None,
            "--write-tiles",
            min=1,
            help="Tiles per database transaction (consecutive batches merged; default 64).",
        ),
        force: bool = typer.Option(False, "--force", help="Replace rasters already ingested."),
        cluster: str | None = typer.Option(
            None,
            "--cluster",
            help="Encode on Ray: 'auto' (a local cluster on 127.0.0.1) or 'ray://HOST:PORT'; "
            "this process stays the one writer. Default: encode in this process.",
        ),
        workers: int | None = typer.Option(
            None, "--workers", min=1, help="Encoder actors on the Ray cluster (default: its CPUs)."
        ),
        no_progress: bool = typer.Option(
            False, "--no-progress", help="Do not draw the progress bar on stderr."
        ),
        no_features: bool = typer.Option(
            False,
            "--no-features",
            help="Do not store the tiles' local features (verification then reads the rasters; "
            "also GEOLOC_FEATURES=0).",
        ),
        features_max: int | None = typer.Option(
            None,
            "--features-max",
            min=1,
            help="Keypoints kept per tile (default 64; a store with features keeps its own).",
        ),
        omega: bool | None = typer.Option(
            None,
            "--omega/--no-omega",
            help="Keep the Ω FAISS index, which only `--preset seed` reads (default: off for a "
            "new store, also GEOLOC_OMEGA=1; a store with tiles keeps its setting; `geoloc "
            "index rebuild --omega` adds it later).",
        ),
    ) -> int:
        """Ingest orthomosaics: tiles + embeddings into the database (Ω into the FAISS index
        with --omega).

        Prints a JSON array (one object per raster: id, path, status ingested|skipped|failed,
        tiles kept/skipped, seconds) on stdout. Exit 1 when any raster failed; 130 on Ctrl-C
        and 143 on SIGTERM (the interrupted raster is rolled back).
        """
        from geoloc.ingest import DEFAULT_MIN_VALID, ingest

        results = ingest(
            paths,
            encoder=encoder,
            checkpoint=checkpoint,
            gsd=gsd,
            stride=stride,
            batch_size=batch_size,
            write_tiles=write_tiles,
            force=force,
            progress=not no_progress,
            min_valid=DEFAULT_MIN_VALID if min_valid is None else min_valid,
            cluster=cluster,
            workers=workers,
            features=False if no_features else None,
            features_max=features_max,
            omega=omega,
        )
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        failed = sum(r.status == "failed" for r in results)
        if failed:
            typer.echo(f"geoloc: error: {failed} of {len(results)} inputs failed", err=True)
            raise typer.Exit(1)
        return 0
