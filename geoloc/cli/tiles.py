"""``geoloc tiles`` (GeoJSON of tile footprints) and ``geoloc info`` (raster description, JSON).

Both lay the grid of :class:`tiling.TilingPolicy`, the one ``geoloc ingest`` lays. Data goes to
stdout, the summary to stderr (as a log line, hidden by ``--quiet``). Bad rasters
raise :class:`tiling.errors.TilingError`; the root command prints its one-line message.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

log = logging.getLogger("geoloc.tiles")

# The defaults live in tiling.policy (imported lazily: it pulls in rasterio); None = default.
GSD_HELP = (
    "Resample to this ground sample distance (m/px). Default: max(0.5, native), or native "
    "when that keeps fewer than a few dozen tiles (the same grid as `geoloc ingest`)."
)
TILE_SIZE_HELP = "Tile side in pixels (default: 224)."
STRIDE_HELP = "Step between tiles in pixels (default: half a tile)."
MIN_VALID_HELP = "Minimum valid fraction to keep a tile (default: 0.5)."


def parse_bands(text: str) -> tuple[int, ...]:
    """Parse ``"1,2,3"`` (or ``"1"``) into a tuple of 1-based band numbers."""
    try:
        bands = tuple(int(b) for b in text.replace(" ", "").split(",") if b)
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated band numbers, got {text!r}") from None
    if len(bands) not in (1, 3) or any(b < 1 for b in bands):
        raise typer.BadParameter(f"give 1 or 3 band numbers >= 1, got {text!r}")
    return bands


def _quiet_gdal() -> None:
    # GDAL warnings (e.g. about odd TIFF tags) would add lines around our one-line errors.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("rasterio._env").setLevel(logging.ERROR)
        logging.getLogger("rasterio._err").setLevel(logging.CRITICAL)


@contextmanager
def _progress(total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on stderr (only when stderr is a terminal and logs are on);
    yields ``advance(done)``."""
    if not (enabled and sys.stderr.isatty() and log.isEnabledFor(logging.INFO)) or total < 50:
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "tiles",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("tiles", total=total)
        yield lambda done: bar.update(task, completed=done)


def register(app: typer.Typer) -> None:
    """Add ``geoloc tiles`` and ``geoloc info`` to ``app``."""

    @app.command("tiles")
    def tiles_cmd(
        raster: Path = typer.Argument(..., metavar="RASTER", help="A georeferenced raster."),
        tile_size: int | None = typer.Option(None, "--tile-size", min=1, help=TILE_SIZE_HELP),
        stride: int | None = typer.Option(None, "--stride", min=1, help=STRIDE_HELP),
        gsd: float | None = typer.Option(None, "--gsd", help=GSD_HELP),
        min_valid: float | None = typer.Option(
            None, "--min-valid", min=0.0, max=1.0, help=MIN_VALID_HELP
        ),
        bands: str = typer.Option("1,2,3", "--bands", help="Bands read as R,G,B (or one band)."),
        indent: int | None = typer.Option(None, "--indent", min=0, help="Pretty-print the JSON."),
        progress: bool = typer.Option(
            True, "--progress/--no-progress", help="Progress bar on stderr (terminals only)."
        ),
    ) -> None:
        """Print the tile footprints of RASTER as a GeoJSON FeatureCollection, lon/lat order.

        One Feature per kept tile with properties row, col, center_lon, center_lat, gsd_m,
        valid_fraction, window, crs, raster. A summary (kept/skipped, CRS, GSD) goes to stderr.
        """
        from tiling import TilingPolicy, open_raster
        from tiling.geojson import tile_feature

        _quiet_gdal()
        band_tuple = parse_bands(bands)
        policy = TilingPolicy.from_options(
            tile_size=tile_size, gsd=gsd, stride=stride, min_valid=min_valid
        )
        with open_raster(raster, bands=band_tuple) as r:
            cfg, reason = policy.resolve(r)
            log.info("%s: tiling at %s", raster, reason)
            grid = r.grid(cfg)
            native_gsd = r.gsd_m
            features = []
            with _progress(len(grid), enabled=progress) as advance:
                for t in r.tiles(cfg):
                    features.append(tile_feature(t))
                    advance(r.last_kept + r.last_skipped)
            kept, skipped = r.last_kept, r.last_skipped
            crs = r.crs_str
        sys.stdout.write(
            json.dumps({"type": "FeatureCollection", "features": features}, indent=indent) + "\n"
        )
        log.info(
            "%s: %d tiles kept, %d skipped (grid %d x %d, %d px, stride %d, GSD %.4f m, %s)",
            raster,
            kept,
            skipped,
            grid.rows,
            grid.cols,
            grid.tile_size,
            grid.stride,
            grid.gsd_m,
            crs if len(crs) < 40 else "custom CRS",
        )
        if kept == 0:
            log.warning("%s: %s", raster, policy.no_tiles_message(cfg, native_gsd))

    @app.command("info")
    def info_cmd(
        raster: Path = typer.Argument(..., metavar="RASTER", help="A georeferenced raster."),
        bands: str = typer.Option("1,2,3", "--bands", help="Bands read as R,G,B (or one band)."),
        tile_size: int | None = typer.Option(None, "--tile-size", min=1, help=TILE_SIZE_HELP),
        gsd: float | None = typer.Option(None, "--gsd", help=GSD_HELP),
        stride: int | None = typer.Option(None, "--stride", min=1, help=STRIDE_HELP),
        min_valid: float | None = typer.Option(
            None, "--min-valid", min=0.0, max=1.0, help=MIN_VALID_HELP
        ),
    ) -> None:
        """Print RASTER's CRS, size, EPSG:4326 bounds, GSD (m), bands, dtype, nodata/mask and
        the tile grid ``geoloc ingest`` would lay (with the reason for its GSD) as JSON."""
        from tiling import TilingPolicy, open_raster

        _quiet_gdal()
        band_tuple = parse_bands(bands)
        policy = TilingPolicy.from_options(
            tile_size=tile_size, gsd=gsd, stride=stride, min_valid=min_valid
        )
        with open_raster(raster, bands=band_tuple) as r:
            cfg, reason = policy.resolve(r)
            info = r.info(cfg)
            info["tiles"]["reason"] = reason
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
