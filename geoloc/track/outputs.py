"""Track outputs: GeoJSON (LineString + per-fix Points), GPX (gpxpy), KML (simplekml), CSV, and
a plot over the map. Writers take ``TrackFix.as_dict()`` rows and write a complete file (a new
file renamed into place) so an interrupted track still leaves valid outputs.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from geoloc.errors import ConfigError

CSV_COLUMNS = (
    "index",
    "t",
    "frame",
    "status",
    "lat",
    "lon",
    "heading_deg",
    "speed_mps",
    "vel_east_mps",
    "vel_north_mps",
    "error_m_est",
    "camera",
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _positioned(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("lat") is not None and r.get("lon") is not None]


def to_geojson(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A FeatureCollection: the track as a LineString, then one Point per positioned frame."""
    pts = _positioned(rows)
    feats: list[dict[str, Any]] = []
    if len(pts) >= 2:
        feats.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "LineString",
                    "coordinates": [[r["lon"], r["lat"]] for r in pts],
                },
                "properties": {"kind": "track", "frames": len(rows), "positioned": len(pts)},
            }
        )
    for r in pts:
        feats.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
                "properties": {"kind": "fix", **r},
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def to_gpx(rows: list[dict[str, Any]], start_time: datetime = EPOCH) -> str:
    """GPX 1.1: one track segment of the positioned frames (time = start_time + t)."""
    import gpxpy.gpx

    g = gpxpy.gpx.GPX()
    trk = gpxpy.gpx.GPXTrack(name="geoloc track")
    seg = gpxpy.gpx.GPXTrackSegment()
    for r in _positioned(rows):
        p = gpxpy.gpx.GPXTrackPoint(
            r["lat"], r["lon"], time=start_time + timedelta(seconds=float(r.get("t") or 0.0))
        )
        p.name = str(r["index"])
        p.comment = r["status"]
        seg.points.append(p)
    trk.segments.append(seg)
    g.tracks.append(trk)
    return str(g.to_xml(version="1.1"))


def to_kml(rows: list[dict[str, Any]]) -> str:
    """KML: the track as a LineString and a Placemark per map fix."""
    import simplekml

    k = simplekml.Kml(name="geoloc track")
    pts = _positioned(rows)
    if len(pts) >= 2:
        ls = k.newlinestring(name="track", coords=[(r["lon"], r["lat"]) for r in pts])
        ls.style.linestyle.width = 3
    for r in pts:
        p = k.newpoint(name=str(r["index"]), coords=[(r["lon"], r["lat"])])
        p.description = f"{r['status']} t={r.get('t')} error_m_est={r.get('error_m_est')}"
    return str(k.kml())


def to_csv(rows: list[dict[str, Any]], header: bool = True) -> str:
    """CSV with the JSON columns (``camera`` as JSON text)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(CSV_COLUMNS)
    for d in rows:
        vals = []
        for c in CSV_COLUMNS:
            v = d.get(c)
            if isinstance(v, (dict, list)):
                v = json.dumps(v, separators=(",", ":"))
            vals.append("" if v is None else v)
        w.writerow(vals)
    return buf.getvalue()


WRITERS: dict[str, Callable[[list[dict[str, Any]]], str]] = {
    ".geojson": lambda rows: json.dumps(to_geojson(rows)),
    ".json": lambda rows: json.dumps(to_geojson(rows)),
    ".gpx": to_gpx,
    ".kml": to_kml,
    ".csv": to_csv,
}


def check_out_path(path: Path) -> None:
    """ConfigError unless the extension names a known format."""
    if path.suffix.lower() not in WRITERS:
        raise ConfigError(f"{path}: --out must end in {', '.join(WRITERS)}")


def write_track(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the track in the format of ``path``'s extension, atomically."""
    check_out_path(path)
    text = WRITERS[path.suffix.lower()](rows)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


# drawn in this order: map fixes last, on top of the dense odometry points
STATUS_COLOURS = {"vo": "tab:blue", "coasting": "tab:orange", "map_fix": "tab:green"}
LOST_COLOUR = "tab:red"


def plot_track(path: Path, rows: list[dict[str, Any]], background: Any = None) -> Path:
    """The track in local metres (east/north of its first position) over the map.

    Map fixes, odometry and coasting are marked in their colours, stretches without a position
    (``lost``) bridged in red, and the 1-sigma error ellipse (or circle) drawn every tenth frame
    and at every map fix. ``background`` is an optional ``(rgb, (west, east, south, north))``
    of the orthomosaic, bounds in degrees (:meth:`geoloc.track.Tracker.map_image`).
    """
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    pts = _positioned(rows)
    fig, ax = plt.subplots(figsize=(8, 8))
    if pts:
        lat0, lon0 = pts[0]["lat"], pts[0]["lon"]
        k = math.cos(math.radians(lat0))
        r_e = 6_371_008.8

        def en(lat: float, lon: float) -> tuple[float, float]:
            return math.radians(lon - lon0) * r_e * k, math.radians(lat - lat0) * r_e

        if background is not None:
            img, (west, east, south, north) = background
            x0, y0 = en(south, west)
            x1, y1 = en(north, east)
            ax.imshow(img, extent=(x0, x1, y0, y1), origin="upper", alpha=0.85, zorder=0)
        xy = [en(r["lat"], r["lon"]) for r in pts]
        ax.plot([p[0] for p in xy], [p[1] for p in xy], "-", color="white", lw=1, zorder=1)
        for status, colour in STATUS_COLOURS.items():
            sel = [p for p, r in zip(xy, pts, strict=True) if r["status"] == status]
            if sel:
                fix = status == "map_fix"
                ax.scatter(
                    [p[0] for p in sel], [p[1] for p in sel], s=40 if fix else 12, c=colour,
                    marker="^" if fix else "o", edgecolors="black" if fix else "none",
                    linewidths=0.5, label=status, zorder=4 if fix else 3,
                )  # fmt: skip
        # lost stretches: from the last position before to the first one after
        last: tuple[float, float] | None = None
        gap = False
        labelled = False
        for r in rows:
            if r.get("lat") is None or r.get("lon") is None:
                gap = gap or r.get("status") == "lost"
                continue
            p = en(r["lat"], r["lon"])
            if gap and last is not None:
                ax.plot(
                    [last[0], p[0]], [last[1], p[1]], "--", color=LOST_COLOUR, lw=2, zorder=2,
                    label=None if labelled else "lost",
                )  # fmt: skip
                labelled = True
            last, gap = p, False
        for i, (p, r) in enumerate(zip(xy, pts, strict=True)):
            if not (i % 10 == 0 or r["status"] == "map_fix"):
                continue
            ell = r.get("error_ellipse_m")
            if ell:
                major, minor, angle = (float(v) for v in ell)
            elif r.get("error_m_est"):
                major = minor = float(r["error_m_est"])
                angle = 0.0
            else:
                continue
            ax.add_patch(
                Ellipse(p, 2 * major, 2 * minor, angle=angle, fill=False, color="tab:red",
                        lw=0.6, zorder=2)
            )  # fmt: skip
        ax.legend(loc="best")
    ax.set_xlabel("east (m)")
    ax.set_ylabel("north (m)")
    ax.set_aspect("equal")
    ax.set_title(f"geoloc track: {len(pts)}/{len(rows)} frames with a position")
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix or '.png'}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
