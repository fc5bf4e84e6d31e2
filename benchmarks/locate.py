"""Locate latency and accuracy: per-stage p50/p95 over synthetic drone views, warm and cold.

Ingests the bundled sample into a throw-away GEOLOC_HOME (embedded Postgres), then locates
``n`` views cut from it (random position, heading 0-360, scale 0.85-1.15, colour jitter; GSD
given) with one warm :class:`~geoloc.localize.Localizer` per preset, and times one cold
``geoloc locate`` CLI call separately. Writes ``benchmarks/results/locate.json``.

Usage: ``python -m benchmarks.locate [--full] [--n N]`` (default 100 views for ``accurate``,
``full`` also runs ``fast`` and ``seed`` on the same views).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "turku_utm34n_0.28m.tif"
RESULTS = ROOT / "benchmarks" / "results"


def _views(n: int, seed: int = 0) -> list[tuple[np.ndarray, float, float, float, float]]:
    """(rgb, lon, lat, heading, gsd) of ``n`` synthetic views of the sample (exact truth)."""
    import cv2
    import rasterio
    from pyproj import Transformer

    with rasterio.open(SAMPLE) as ds:
        img = np.ascontiguousarray(ds.read([1, 2, 3]).transpose(1, 2, 0))
        t = ds.transform
        tr = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    rng = np.random.default_rng(seed)
    out = []
    size = 400
    h, w = img.shape[:2]
    for _ in range(n):
        cx = float(rng.uniform(250, w - 250))
        cy = float(rng.uniform(250, h - 250))
        heading = float(rng.uniform(0, 360))
        scale = float(rng.uniform(0.85, 1.15))
        a = np.deg2rad(heading)
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale
        m = np.zeros((2, 3))
        m[:, :2] = r
        m[:, 2] = np.array([cx, cy]) - r @ np.array([size / 2, size / 2])
        v = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        gain = rng.uniform(0.85, 1.15, 3)
        v = np.clip(v.astype(np.float32) * gain + rng.uniform(-15, 15), 0, 255).astype(np.uint8)
        x, y = t @ (cx + 0.5, cy + 0.5)
        lon, lat = tr.transform(x, y)
        out.append((v, float(lon), float(lat), heading, 0.28 / scale))
    return out


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
        "mean": round(float(a.mean()), 1),
    }


def _run_preset(settings: Any, enc: Any, name: str, views: list[Any]) -> dict[str, Any]:
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m

    stages: dict[str, list[float]] = {}
    errors: list[float] = []
    ok = 0
    verified = 0
    with Localizer.open(settings, encoder=enc, preset=name) as loc:
        loc.locate(views[0][0], gsd=views[0][4])  # warm-up (first-call allocations)
        for rgb, lon, lat, _heading, gsd in views:
            fix = loc.locate(rgb, gsd=gsd)
            for k, v in fix.timings_ms.items():
                stages.setdefault(k, []).append(v)
            if fix.lat is not None:
                errors.append(float(geodesic_distance_m(fix.lon, fix.lat, lon, lat)))
            ok += fix.status == "ok"
            verified += fix.method == "verified"
        tile_step = loc.tile_ground_m / 2
    n = len(views)
    e = np.asarray(errors)
    return {
        "preset": name,
        "frames": n,
        "status_ok": ok,
        "verified": verified,
        "within_one_tile_step": int((e <= tile_step).sum()),
        "within_5m": int((e <= 5.0).sum()),
        "error_m_median": round(float(np.median(e)), 2) if e.size else None,
        "error_m_p90": round(float(np.percentile(e, 90)), 2) if e.size else None,
        "timings_ms": {k: _pct(v) for k, v in sorted(stages.items())},
    }


def run(full: bool = False, n: int | None = None) -> dict[str, Any]:
    """Measure; save ``benchmarks/results/locate.json`` and return the dict."""
    import torch

    torch.set_num_threads(2)
    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.models import load_encoder

    n = n or 100
    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-locate-", dir="/tmp"))
    out: dict[str, Any] = {"raster": SAMPLE.name, "frames": n, "threads": 2}
    try:
        settings = Settings(home=home, database_url=None)
        enc = load_encoder("sgmnet")
        enc.optimize_for_inference()
        (res,) = ingest([SAMPLE], encoder=enc, settings=settings, progress=False)
        out["tiles"] = res.tiles_kept
        views = _views(n)
        presets = ["accurate"] + (["fast", "seed"] if full else [])
        out["warm"] = {}
        for p in presets:
            r = _run_preset(settings, enc, p, views)
            out["warm"][p] = r
            t = r["timings_ms"]["total"]
            print(
                f"{p}: total p50 {t['p50']} ms p95 {t['p95']} ms; ok {r['status_ok']}/{n}, "
                f"within a tile step {r['within_one_tile_step']}/{n}, median error "
                f"{r['error_m_median']} m",
                file=sys.stderr,
            )
        # one cold CLI call (process start, imports, model + index load, one frame)
        from PIL import Image

        frame = home / "cold.jpg"
        Image.fromarray(views[0][0]).save(frame, quality=92)
        env = dict(os.environ, GEOLOC_HOME=str(home), OMP_NUM_THREADS="2")
        env.pop("GEOLOC_DATABASE_URL", None)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "geoloc.cli",
                "-q",
                "locate",
                str(frame),
                "--gsd",
                str(views[0][4]),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        out["cold_cli_s"] = round(time.perf_counter() - t0, 2)
        out["cold_cli_exit"] = proc.returncode
        print(f"cold CLI call: {out['cold_cli_s']} s (exit {proc.returncode})", file=sys.stderr)
    finally:
        from geoloc.store import embedded

        embedded.stop(Settings(home=home, database_url=None))
        shutil.rmtree(home, ignore_errors=True)
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out["load_average"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "locate.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also the fast and seed presets")
    ap.add_argument("--n", type=int, default=None, help="number of views (default 100)")
    args = ap.parse_args()
    print(json.dumps(run(full=args.full, n=args.n), indent=2))
