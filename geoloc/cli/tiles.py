"""``geoloc tiles`` (GeoJSON of tile footprints) and ``geoloc info`` (raster description, JSON).

Data goes to stdout, the summary to stderr (as a log line, hidden by ``--quiet``). Bad rasters
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
        tile_size: int = typer.Option(224, "--tile-size", min=1, help="Tile side in pixels."),
        stride: int | None = typer.Option(
            None, "--stride", min=1, help="Step between tiles in pixels (default: the tile size)."
        ),
        gsd: float | None = typer.Option(
            None, "--gsd", help="Resample to this ground sample distance (m/px) (default: native)."
        ),
        min_valid: float = typer.Option(
            0.5, "--min-valid", min=0.0, max=1.0, help="Minimum valid fraction to keep a tile."
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
        from tiling import TileConfig, open_raster
        from tiling.geojson import tile_feature

        _quiet_gdal()
        band_tuple = parse_bands(bands)
        cfg = TileConfig(tile_size=tile_size, stride=stride, gsd=gsd, min_valid=min_valid)
        with open_raster(raster, bands=band_tuple) as r:
            grid = r.grid(cfg)
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
            log.warning(
                "%s: no tile kept: the raster is smaller than --min-valid of a tile, or mostly "
                "invalid",
                raster,
            )

    @app.command("info")
    def info_cmd(
        raster: Path = typer.Argument(..., metavar="RASTER", help="A georeferenced raster."),
        bands: str = typer.Option("1,2,3", "--bands", help="Bands read as R,G,B (or one band)."),
        tile_size: int = typer.Option(224, "--tile-size", min=1, help="Tile side for the count."),
        gsd: float | None = typer.Option(None, "--gsd", help="Target GSD (m/px) for the count."),
    ) -> None:
        """Print RASTER's CRS, size, EPSG:4326 bounds, GSD (m), bands, dtype, nodata/mask and
        tile count as JSON."""
        from tiling import TileConfig, open_raster

        _quiet_gdal()
        band_tuple = parse_bands(bands)
        with open_raster(raster, bands=band_tuple) as r:
            info = r.info(TileConfig(tile_size=tile_size, gsd=gsd))
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
