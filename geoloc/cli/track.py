"""``geoloc track INPUT...``: a video or frame sequence in, one position per frame out.

JSON lines (or ``--format csv``) on stdout, ``--out`` GeoJSON/GPX/KML/CSV by extension,
``--plot`` a PNG, progress with frames/s on stderr. Exit codes: 0 done; 1 an error (video that
cannot be opened, empty folder, no tiles near ``--start``); 130 interrupted (what was tracked
is written first).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer

from geoloc.config import DEFAULT_ENCODER

log = logging.getLogger("geoloc.track")


def _progress(n: int, t0: float, counts: dict[str, int], skipped: int) -> None:
    rate = n / max(time.perf_counter() - t0, 1e-9)
    msg = (
        f"\rtrack: {n} frames, {rate:.1f} frames/s, map fixes {counts['map_fix']}, "
        f"refused {counts['refused']}, lost {counts['lost']}, skipped {skipped}"
    )
    sys.stderr.write(msg)
    sys.stderr.flush()


def register(app: typer.Typer) -> None:
    """Add ``geoloc track`` to ``app``."""

    @app.command("track")
    def track_cmd(
        inputs: list[str] = typer.Argument(
            ..., metavar="INPUT...", help="Video files, folders or globs of frames."
        ),
        fps: float | None = typer.Option(
            None, "--fps", min=0.01, help="Sample videos at this rate (default: every frame)."
        ),
        order: str = typer.Option("name", "--order", help="Frames of a folder by name | time."),
        start: str | None = typer.Option(
            None, "--start", metavar="LAT,LON[,RADIUS_M]", help="Where the first fix is searched."
        ),
        gsd: float | None = typer.Option(None, "--gsd", help="Ground size of one frame pixel (m)."),
        altitude: float | None = typer.Option(
            None, "--altitude", help="Flight height above ground (m); needs --hfov."
        ),
        hfov: float | None = typer.Option(
            None, "--hfov", help="Horizontal field of view of the camera (degrees)."
        ),
        heading: float | None = typer.Option(
            None, "--heading", help="Initial compass direction of the image's top (deg)."
        ),
        preset_name: str = typer.Option("accurate", "--preset", help="Pipeline preset."),
        fmt: str = typer.Option("json", "--format", "-f", help="json | csv."),
        out: Path | None = typer.Option(
            None, "--out", metavar="TRACK.geojson|.gpx|.kml|.csv", help="Write the track."
        ),
        plot: Path | None = typer.Option(None, "--plot", metavar="OUT.png", help="Plot it."),
        frame_interval: float = typer.Option(
            0.1, "--frame-interval", min=0.0, help="Seconds between image files."
        ),
        map_fix_every: int | None = typer.Option(
            None,
            "--map-fix-every",
            min=1,
            help="Frames between map fixes on a healthy track (default: the tracker's, 3).",
        ),
        encoder: str = typer.Option(DEFAULT_ENCODER, "--encoder", "-e", help="Encoder plugin."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Checkpoint."),
    ) -> int:
        """Track a flight: every frame gets a position (map fix, odometry or coasting).

        JSON: one object per frame and line (index, t, frame, status map_fix|vo|coasting|lost,
        lat, lon, heading_deg, speed_mps, vel_east_mps, vel_north_mps, error_m_est, camera).
        """
        from geoloc.track import Tracker
        from geoloc.track.outputs import check_out_path, plot_track, to_csv, write_track
        from geoloc.track.sources import expand_inputs, iter_frames

        if fmt not in ("json", "csv"):
            raise typer.BadParameter("--format must be json or csv")
        if gsd is not None and (altitude is not None or hfov is not None):
            raise typer.BadParameter("give either --gsd or --altitude with --hfov, not both")
        if (altitude is None) != (hfov is None):
            raise typer.BadParameter("--altitude and --hfov go together")
        if out is not None:
            check_out_path(out)
        paths = expand_inputs(inputs, order)
        frames = iter_frames(paths, fps=fps, frame_interval_s=frame_interval)
        rows: list[dict[str, Any]] = []
        skipped = 0
        interrupted = False
        tr = Tracker.open(
            preset=preset_name, encoder=encoder, checkpoint=checkpoint, start=start, gsd=gsd,
            altitude_m=altitude, hfov_deg=hfov, heading=heading,
            conf={} if map_fix_every is None else {"map_fix_every": map_fix_every},
        )  # fmt: skip
        t0 = time.perf_counter()
        try:
            if fmt == "csv":
                typer.echo(to_csv([]), nl=False)
            for sf in frames:
                if sf.rgb is None:
                    skipped += 1
                    log.warning("skipped frame %d: %s", sf.index, sf.error)
                    continue
                fix = tr.update(sf.rgb, t=sf.t)
                d = fix.as_dict()
                d["index"], d["frame"] = sf.index, sf.name
                rows.append(d)
                typer.echo(
                    json.dumps(d) if fmt == "json" else to_csv([d], header=False), nl=fmt == "json"
                )
                sys.stdout.flush()
                _progress(len(rows), t0, tr.counts, skipped)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            try:
                background = tr.map_image(rows) if plot is not None else None
            finally:
                tr.close()
            sys.stderr.write("\n")
            if out is not None:
                write_track(out, rows)
                log.info("track written to %s", out)
            if plot is not None:
                plot_track(plot, rows, background)
                log.info("plot written to %s", plot)
        if skipped:
            typer.echo(f"geoloc: warning: {skipped} undecodable frame(s) skipped", err=True)
        return 130 if interrupted else 0
