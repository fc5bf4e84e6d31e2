"""Evaluate the localizer on real or demo frames with a truth table, against the current database.

``truth.csv`` columns: ``name,lat,lon`` (+ optional ``gsd_m``, ``heading_deg``). A row with an
empty lat/lon is a negative: the localizer should answer ``no_match`` for it. Several pipeline
configurations (presets, or the ablation: Ω only, Ω + Φ rerank, + node-centroid consistency)
run on the same frames and are reported side by side.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.config import DEFAULT_ENCODER
from geoloc.errors import ConfigError, GeolocError
from geoloc.metrics import (
    error_summary,
    errors_m,
    latency_summary,
    recall_at_k,
    rejection_summary,
)

__all__ = ["TruthRow", "ablation_configs", "evaluate_frames", "plot_results", "read_truth"]


@dataclass
class TruthRow:
    """One frame of the truth table (lat/lon None for a negative)."""

    name: str
    lat: float | None
    lon: float | None
    gsd_m: float | None = None
    heading_deg: float | None = None


def _float(v: str | None) -> float | None:
    if v is None or not v.strip():
        return None
    return float(v)


def read_truth(path: str | Path) -> list[TruthRow]:
    """Parse ``truth.csv`` (``name,lat,lon[,gsd_m][,heading_deg]``)."""
    p = Path(path)
    try:
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"name", "lat", "lon"} - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(f"missing column(s) {', '.join(sorted(missing))}", path=str(p))
            rows = []
            for i, r in enumerate(reader, start=2):
                try:
                    rows.append(
                        TruthRow(
                            r["name"],
                            _float(r["lat"]),
                            _float(r["lon"]),
                            _float(r.get("gsd_m")),
                            _float(r.get("heading_deg")),
                        )
                    )
                except ValueError as exc:
                    raise ConfigError(f"line {i}: {exc}", path=str(p)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read truth table: {exc}", path=str(p)) from exc
    if not rows:
        raise ConfigError("truth table has no rows", path=str(p))
    return rows


def ablation_configs() -> dict[str, Any]:
    """Ω only; Ω + Φ rerank; + node-centroid consistency (rotation search, tile-centre answer)."""
    from geoloc.localize.pipeline import from_dict

    base = {"preset": "fast", "min_confidence": 0.0}
    return {
        "omega": from_dict({**base, "rerank": {"name": "none"}}),
        "omega+phi": from_dict(base),
        "omega+phi+consistency": from_dict({**base, "consistency": {"name": "node-centroid"}}),
    }


def _tile_step_m() -> float | None:
    """One tile step (stride x GSD) of the complete orthomosaics, from the database."""
    from geoloc.config import Settings
    from geoloc.store import open_database
    from geoloc.store.repository import max_tile_step_m

    db = open_database(Settings.from_env())
    try:
        return max_tile_step_m(db)
    finally:
        db.dispose()


def evaluate_frames(
    configs: Mapping[str, Any],
    queries: str | Path,
    truth: str | Path,
    *,
    checkpoint: str | Path | None = None,
    encoder: str = DEFAULT_ENCODER,
    use_gsd: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Locate every frame of ``truth`` under each pipeline config; metrics per config."""
    from geoloc.localize.localizer import Localizer
    from geoloc.localize.state import Fix
    from tiling import TilingError

    say = log or (lambda _m: None)
    rows = read_truth(truth)
    qdir = Path(queries)
    for r in rows:
        if not (qdir / r.name).is_file():
            raise ConfigError(
                f"frame {r.name} listed in the truth table is missing", path=str(qdir)
            )
    step = _tile_step_m()
    results: dict[str, Any] = {}
    answers: dict[str, list[dict[str, Any]]] = {}
    for cname, cfg in configs.items():
        loc = Localizer.open(encoder=encoder, checkpoint=checkpoint, pipeline=cfg)
        fixes = []
        for r in rows:
            try:
                fix = loc.locate(qdir / r.name, gsd=r.gsd_m if use_gsd else None, name=r.name)
            except (GeolocError, TilingError, OSError) as exc:
                # one frame's failure is a result of the evaluation, not the end of it
                msg = str(exc)
                say(f"{cname}: {r.name}: error: {msg}")
                fix = Fix(frame=r.name, status="error", message=msg)
            fixes.append(fix)
        pos = [i for i, r in enumerate(rows) if r.lat is not None and r.lon is not None]
        pred_lon = [fixes[i].lon if fixes[i].status == "ok" else None for i in pos]
        pred_lat = [fixes[i].lat if fixes[i].status == "ok" else None for i in pos]
        t_lon = [float(rows[i].lon) for i in pos]  # type: ignore[arg-type]
        t_lat = [float(rows[i].lat) for i in pos]  # type: ignore[arg-type]
        err = errors_m(pred_lon, pred_lat, t_lon, t_lat)
        res: dict[str, Any] = {"errors": error_summary(err)}
        if step is not None and pos:
            ranked, relevant = [], []
            for i in pos:
                cands = fixes[i].candidates
                if cands:
                    d = errors_m(
                        [c["lon"] for c in cands],
                        [c["lat"] for c in cands],
                        [rows[i].lon] * len(cands),  # type: ignore[list-item]
                        [rows[i].lat] * len(cands),  # type: ignore[list-item]
                    )
                else:
                    d = np.array([])
                ranked.append(list(range(len(cands))))
                relevant.append({j for j, dj in enumerate(d) if dj <= step})
            res.update({f"R@{k}": v for k, v in recall_at_k(ranked, relevant, (1, 5)).items()})
            res["correct_within_m"] = step
        res["rejection"] = rejection_summary(
            [r.lat is None for r in rows], [f.status != "ok" for f in fixes]
        )
        res["latency"] = latency_summary([sum(f.timings_ms.values()) for f in fixes])
        res["frame_errors"] = sum(f.status == "error" for f in fixes)
        results[cname] = res
        answers[cname] = [
            {
                "frame": r.name,
                "status": f.status,
                "lat": f.lat,
                "lon": f.lon,
                "truth_lat": r.lat,
                "truth_lon": r.lon,
                "orthomosaic": f.orthomosaic,
                **({"message": f.message} if f.status == "error" else {}),
            }
            for r, f in zip(rows, fixes, strict=True)
        ]
        e = res["errors"]
        say(f"{cname}: median {e['median_m']:.1f} m, within 25 m {e['within_25m']:.2f}")
    return {
        "protocol": {"frames": len(rows), "negatives": sum(r.lat is None for r in rows)},
        "results": results,
        "answers": answers,
    }


def plot_results(
    result: dict[str, Any], out_dir: str | Path, raster: str | Path | None
) -> list[Path]:
    """Error CDF per config, and a map of answers vs truth over the orthomosaic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    answers: dict[str, list[dict[str, Any]]] = result.get("answers", {})
    fig, ax = plt.subplots(figsize=(6, 4))
    for cname, ans in answers.items():
        pos = [a for a in ans if a["truth_lat"] is not None]
        err = errors_m(
            [a["lon"] for a in pos],
            [a["lat"] for a in pos],
            [a["truth_lon"] for a in pos],
            [a["truth_lat"] for a in pos],
        )
        e = np.sort(err)
        ax.step(
            np.concatenate([[0], e]),
            np.arange(len(e) + 1) / max(len(e), 1),
            where="post",
            label=cname,
        )
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("error (m)")
    ax.set_ylabel("share of frames")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    p = out / "error_cdf.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    written.append(p)
    if raster is None:
        for ans in answers.values():
            for a in ans:
                if a["orthomosaic"]:
                    raster = a["orthomosaic"]
                    break
            if raster is not None:
                break
    if raster is not None and Path(str(raster)).is_file():
        written.append(_plot_map(answers, Path(str(raster)), out / "answers_map.png"))
    return written


def _plot_map(answers: dict[str, list[dict[str, Any]]], raster: Path, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import rasterio
    from rasterio.enums import Resampling

    from tiling.crs import from_lonlat

    with rasterio.open(raster) as ds:
        f = max(1, int(math.ceil(max(ds.width, ds.height) / 1200)))
        img = ds.read(
            [1, 2, 3] if ds.count >= 3 else [1, 1, 1],
            out_shape=(3, ds.height // f, ds.width // f),
            resampling=Resampling.average,
        )
        inv = ~ds.transform
        crs = ds.crs

    def px(lon: float, lat: float) -> tuple[float, float]:
        x, y = from_lonlat(crs, lon, lat)
        c, r = inv @ (x, y)
        return c / f, r / f

    fig, ax = plt.subplots(figsize=(10, 10 * img.shape[1] / img.shape[2] + 1))
    ax.imshow(np.transpose(img, (1, 2, 0)))
    markers = ["x", "+", "1", "2"]
    for k, (cname, ans) in enumerate(answers.items()):
        for a in ans:
            if a["truth_lat"] is not None:
                tx, ty = px(a["truth_lon"], a["truth_lat"])
                if k == 0:
                    ax.plot(tx, ty, "o", mfc="none", mec="lime", ms=10)
                    ax.annotate(a["frame"], (tx, ty), color="white", fontsize=7)
                if a["lat"] is not None:
                    ax_, ay = px(a["lon"], a["lat"])
                    ax.plot([tx, ax_], [ty, ay], "-", color=f"C{k}", lw=0.8)
            if a["lat"] is not None:
                ax_, ay = px(a["lon"], a["lat"])
                ax.plot(
                    ax_,
                    ay,
                    markers[k % 4],
                    color=f"C{k}",
                    ms=9,
                    label=cname if a is ans[0] else None,
                )
    ax.set_title("answers (markers) vs truth (green circles)")
    ax.legend(loc="lower right")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
