"""``geoloc locate FRAME...``: where was each frame taken? (JSON / GeoJSON / CSV on stdout).

Exit codes: 0 every frame located; 3 at least one frame without a confident match; 1 an error
(unreadable frame, empty database, encoder mismatch: the other frames are still answered).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer

from geoloc.config import DEFAULT_ENCODER

log = logging.getLogger("geoloc.locate")

FORMATS = ("json", "geojson", "csv")
CSV_COLUMNS = (
    "frame",
    "status",
    "lat",
    "lon",
    "confidence",
    "error_m_est",
    "tile_id",
    "orthomosaic",
    "heading_deg",
    "candidates",
    "timings_ms",
    "pipeline",
    "method",
    "message",
)


def fix_to_feature(d: dict[str, Any]) -> dict[str, Any]:
    """A GeoJSON Point Feature ([lon, lat]) with the fix's fields as properties."""
    geom = None
    if d.get("lat") is not None and d.get("lon") is not None:
        geom = {"type": "Point", "coordinates": [d["lon"], d["lat"]]}
    return {"type": "Feature", "geometry": geom, "properties": dict(d)}


def fixes_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV with the JSON columns; nested values (candidates, timings, pipeline) as JSON text."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for d in rows:
        out = []
        for c in CSV_COLUMNS:
            v = d.get(c)
            if isinstance(v, (dict, list)):
                v = json.dumps(v, separators=(",", ":"))
            out.append("" if v is None else v)
        w.writerow(out)
    return buf.getvalue()


def _plot_path(base: Path, frame: str, n_frames: int) -> Path:
    if n_frames == 1:
        return base
    return base.with_name(f"{base.stem}_{Path(frame).stem}{base.suffix or '.png'}")


def register(app: typer.Typer) -> None:
    """Add ``geoloc locate`` to ``app``."""

    @app.command("locate")
    def locate_cmd(
        frames: list[Path] = typer.Argument(
            ..., metavar="FRAME...", help="Drone frames (JPEG/PNG/TIFF)."
        ),
        top_n: int | None = typer.Option(
            None, "--top-n", min=1, help="Tiles recalled by Ω (presets: 50)."
        ),
        top_m: int | None = typer.Option(
            None, "--top-m", min=1, help="Candidates for consistency and verification [5]."
        ),
        no_consistency: bool = typer.Option(
            False, "--no-consistency", help="Skip the node-centroid consistency stage."
        ),
        prior: str | None = typer.Option(
            None, "--prior", metavar="LAT,LON,RADIUS_M", help="Only answer within this circle."
        ),
        gsd: float | None = typer.Option(None, "--gsd", help="Ground size of one frame pixel (m)."),
        altitude: float | None = typer.Option(
            None,
            "--altitude",
            help="Flight height above ground (m); needs a camera (--camera, --hfov or EXIF).",
        ),
        hfov: float | None = typer.Option(
            None, "--hfov", help="Horizontal field of view of the camera (degrees)."
        ),
        heading: float | None = typer.Option(
            None, "--heading", help="Compass direction of the image's top (deg, clockwise)."
        ),
        camera: Path | None = typer.Option(
            None,
            "--camera",
            metavar="FILE",
            help="Camera intrinsics, JSON or YAML (OpenCV: K, dist, width, height).",
        ),
        pitch: float | None = typer.Option(
            None, "--pitch", help="Camera pitch (deg, DJI gimbal convention: -90 = nadir)."
        ),
        roll: float | None = typer.Option(None, "--roll", help="Camera roll (deg)."),
        dem: Path | None = typer.Option(
            None, "--dem", metavar="FILE.tif", help="Terrain heights for the camera pose."
        ),
        fmt: str = typer.Option("json", "--format", "-f", help="json | geojson | csv."),
        plot: Path | None = typer.Option(
            None, "--plot", metavar="OUT.png", help="Draw frame, matched tile and overview."
        ),
        preset_name: str = typer.Option(
            "accurate", "--preset", help="Pipeline preset: fast | accurate | realtime | seed."
        ),
        pipeline_file: Path | None = typer.Option(
            None, "--pipeline", metavar="FILE", help="TOML pipeline file (overrides --preset)."
        ),
        verify_budget_ms: float | None = typer.Option(
            None,
            "--verify-budget-ms",
            min=0.0,
            help="Stop verifying candidates after this many ms per frame (0: no limit) "
            "(accurate: 0, realtime: 300).",
        ),
        encoder: str = typer.Option(
            DEFAULT_ENCODER, "--encoder", "-e", help="Encoder plugin name."
        ),
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="Checkpoint the database was ingested with."
        ),
    ) -> int:
        """Locate drone frames against the ingested orthomosaics.

        JSON: one object per frame and line (frame, status ok|no_match|error, lat, lon,
        confidence, error_m_est, tile_id, orthomosaic, heading_deg, candidates, timings_ms,
        pipeline). The model and the index are loaded once for all frames.
        """
        from geoloc.errors import ConfigError, GeolocError

        if fmt not in FORMATS:
            raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}")
        if gsd is not None and (altitude is not None or hfov is not None):
            raise typer.BadParameter("give either --gsd or --altitude with --hfov, not both")
        if hfov is not None and altitude is None and camera is None and gsd is None:
            raise typer.BadParameter("--hfov needs --altitude")
        from geoloc.localize import Localizer, Prior

        if camera is not None:
            from geoloc.camera import load_camera

            load_camera(camera)  # a bad file is a usage error before anything loads

        prior_obj = Prior.parse(prior) if prior else None
        config = Localizer.resolve_config(preset_name, pipeline_file)
        if verify_budget_ms is not None:
            config.verify_budget_ms = float(verify_budget_ms)
            config.validate()
        if no_consistency and config.consistency is None:
            log.info("the pipeline has no consistency stage; --no-consistency changes nothing")
        loc = Localizer.open(encoder=encoder, checkpoint=checkpoint, pipeline=config, dem=dem)
        results: list[dict[str, Any]] = []
        n_err = n_nomatch = 0
        try:
            for path in frames:
                try:
                    fix = loc.locate(
                        path,
                        prior=prior_obj,
                        gsd=gsd,
                        altitude_m=altitude,
                        hfov_deg=hfov,
                        heading=heading,
                        camera=camera,
                        pitch=pitch,
                        roll=roll,
                        top_n=top_n,
                        top_m=top_m,
                        consistency=False if no_consistency else None,
                    )
                except ConfigError:
                    raise
                except GeolocError as exc:
                    typer.echo(f"geoloc: error: {exc}", err=True)
                    n_err += 1
                    results.append({"frame": str(path), "status": "error", "message": str(exc)})
                    if fmt == "json":
                        typer.echo(json.dumps(results[-1]))
                    continue
                d = fix.as_dict()
                results.append(d)
                if fix.status != "ok":
                    n_nomatch += 1
                    log.warning("%s: no confident match (%s)", path, fix.message)
                else:
                    log.info(
                        "%s: %.6f, %.6f (confidence %.2f, %s)",
                        path,
                        fix.lat,
                        fix.lon,
                        fix.confidence,
                        fix.method,
                    )
                if fmt == "json":
                    typer.echo(json.dumps(d))
                    sys.stdout.flush()
                if plot is not None and fix.lat is not None:
                    from geoloc.localize.plot import plot_fix

                    out = _plot_path(plot, str(path), len(frames))
                    plot_fix(loc, fix, path, out, gsd=gsd)
                    log.info("plot written to %s", out)
        finally:
            loc.close()
        if fmt == "geojson":
            fc = {"type": "FeatureCollection", "features": [fix_to_feature(d) for d in results]}
            typer.echo(json.dumps(fc))
        elif fmt == "csv":
            typer.echo(fixes_to_csv(results), nl=False)
        if n_err:
            return 1
        return 3 if n_nomatch else 0
