"""Tracking: a synthetic flight over the bundled sample through :class:`geoloc.track.Tracker`,
and the same frames answered one by one with ``locate`` for comparison.

The flight (10 fps) turns, changes altitude (frame scale), has blurred/noisy frames, a 3 s
stretch of black frames and a stretch of washed-out low-texture frames. Reports the share of
frames with a position and with a map fix, median/p95 error after the first fix, the largest
jump between consecutive positions, the time to the first map fix after the blackout and
frames/s. The flight is encoded as an H.264 video at PyAV's default quality and tracked from
that file, so the frames/s include decoding and the frames carry the codec's losses. Writes
``benchmarks/results/track.json`` (with the load average: figures taken on a busy machine are
labelled ``under_load``).

Usage: ``python -m benchmarks.track [--seconds S] [--locate-every K]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.video import write_video

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "turku_utm34n_0.28m.tif"
RESULTS = ROOT / "benchmarks" / "results"
FPS = 10.0
GSD = 0.28


def flight(seconds: float, seed: int = 0) -> dict[str, Any]:
    """Frames, times, truth (lon, lat), per-frame GSD and the blackout window of a flight."""
    import cv2
    import rasterio
    from pyproj import Transformer

    with rasterio.open(SAMPLE) as ds:
        img = np.ascontiguousarray(ds.read([1, 2, 3]).transpose(1, 2, 0))
        t = ds.transform
        tr = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    rng = np.random.default_rng(seed)
    n = int(seconds * FPS)
    size, speed = 360, 8.0
    h, w = img.shape[:2]
    cx, cy, course = 450.0, h / 2.0, 90.0
    black = (int(0.45 * n), int(0.45 * n) + int(3 * FPS))
    low_tex = (int(0.75 * n), int(0.75 * n) + int(1 * FPS))
    frames, times, truth, gsds = [], [], [], []
    for i in range(n):
        tt = i / FPS
        course = 90.0 + 25.0 * math.sin(tt / 6.0)  # gentle S-turns, the camera turns with it
        scale = 1.0 + 0.15 * math.sin(tt / 9.0)  # altitude change: frame px per map px
        a = np.deg2rad(course - 60.0)
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale
        m = np.zeros((2, 3))
        m[:, :2] = r
        m[:, 2] = np.array([cx, cy]) - r @ np.array([size / 2, size / 2])
        v = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        if i % 7 == 3:  # motion blur and sensor noise on some frames
            v = cv2.GaussianBlur(v, (5, 5), 1.5)
            v = np.clip(v + rng.normal(0, 6, v.shape), 0, 255).astype(np.uint8)
        if black[0] <= i < black[1]:
            v = np.zeros_like(v)
        if low_tex[0] <= i < low_tex[1]:
            v = (0.25 * cv2.GaussianBlur(v, (0, 0), 4.0) + 150).astype(np.uint8)
        x, y = t @ (cx + 0.5, cy + 0.5)
        lon, lat = tr.transform(x, y)
        frames.append(v)
        times.append(tt)
        truth.append((float(lon), float(lat)))
        gsds.append(GSD / scale)
        step = speed / FPS / GSD
        cx += step * math.sin(math.radians(course))
        cy -= step * math.cos(math.radians(course))
        if not (200 < cx < w - 200 and 200 < cy < h - 200):
            raise SystemExit(f"the flight leaves the sample after {tt:.1f} s; use fewer --seconds")
    return {"frames": frames, "times": times, "truth": truth, "gsd": gsds, "black": black}


def _dist(lon: float, lat: float, tl: tuple[float, float]) -> float:
    from tiling.crs import geodesic_distance_m

    return float(geodesic_distance_m(lon, lat, tl[0], tl[1]))


def _stats(err: list[float]) -> dict[str, float | None]:
    a = np.asarray([e for e in err if np.isfinite(e)])
    if a.size == 0:
        return {"median_m": None, "p95_m": None}
    return {
        "median_m": round(float(np.median(a)), 2),
        "p95_m": round(float(np.percentile(a, 95)), 2),
    }


def run(seconds: float = 20.0, locate_every: int = 20) -> dict[str, Any]:
    """Measure; save ``benchmarks/results/track.json`` and return the dict."""
    import torch

    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.localize import Localizer
    from geoloc.models import load_encoder
    from geoloc.track import Tracker

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    fl = flight(seconds)
    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-track-"))
    out: dict[str, Any] = {"seconds": seconds, "fps_input": FPS, "frames": len(fl["frames"])}
    try:
        settings = Settings(home=home, database_url=None)
        enc = load_encoder("sgmnet")
        enc.optimize_for_inference()
        ingest([SAMPLE], encoder=enc, settings=settings, progress=False)
        from geoloc.track.sources import iter_frames

        video = write_video(home / "flight.mp4", fl["frames"], FPS)
        out["video"] = {"codec": "libx264 (default quality)", "bytes": video.stat().st_size}
        lon0, lat0 = fl["truth"][0]
        fixes = []
        fix_ms: list[float] = []
        with Tracker.open(settings, encoder=enc, start=(lat0, lon0, 150.0)) as trk:
            real = trk.map_fixer

            def timed(*a: Any) -> Any:
                t1 = time.perf_counter()
                try:
                    return real(*a)
                finally:
                    fix_ms.append((time.perf_counter() - t1) * 1000.0)

            trk.map_fixer = timed
            t0 = time.perf_counter()
            for sf in iter_frames([video]):
                assert sf.rgb is not None, sf.error
                t = sf.t if sf.t is not None else sf.index / FPS
                fixes.append(trk.update(sf.rgb, t=t, priors={"gsd": fl["gsd"][sf.index]}))
            wall = time.perf_counter() - t0
            counts = dict(trk.counts)
        if len(fixes) != len(fl["frames"]):
            raise SystemExit(f"decoded {len(fixes)} of {len(fl['frames'])} frames")
        err = [
            _dist(f.lon, f.lat, tl) if f.lat is not None and f.lon is not None else float("nan")
            for f, tl in zip(fixes, fl["truth"], strict=True)
        ]
        first = next((i for i, f in enumerate(fixes) if f.status == "map_fix"), len(fixes))
        after = err[first:]
        pos = [(f.lon, f.lat) for f in fixes[first:] if f.lat is not None and f.lon is not None]
        jumps = [_dist(a[0], a[1], b) for a, b in zip(pos, pos[1:], strict=False)]
        b_end = fl["black"][1]
        rec = next((i for i in range(b_end, len(fixes)) if fixes[i].status == "map_fix"), None)
        out["tracker"] = {
            "frames_per_s": round(len(fixes) / wall, 2),
            "share_with_position": round(sum(np.isfinite(after)) / max(len(after), 1), 3),
            "share_map_fix": round(counts["map_fix"] / len(fixes), 3),
            "map_fix_hz": round(counts["map_fix"] / (len(fixes) / FPS), 2),
            **_stats(after),
            "max_jump_m": round(max(jumps), 2) if jumps else None,
            "recovery_s": None if rec is None else round((rec - b_end) / FPS, 2),
            "max_error_after_blackout_m": round(float(np.nanmax(err[b_end:])), 2),
            "counts": counts,
            "map_fix_attempts": len(fix_ms),
            # the first fix searches the start circle (and may fall back to the localizer)
            "first_map_fix_ms": round(fix_ms[0], 1) if fix_ms else None,
            "map_fix_ms_median": round(float(np.median(fix_ms[1:])), 1) if fix_ms[1:] else None,
            "map_fix_ms_p95": round(float(np.percentile(fix_ms[1:], 95)), 1)
            if fix_ms[1:]
            else None,
        }
        # the same frames, one by one, with a global locate (every ``locate_every``-th frame)
        idx = list(range(0, len(fl["frames"]), locate_every))
        loc_err: dict[int, float] = {}
        with Localizer.open(settings, encoder=enc, preset="accurate") as loc:
            t0 = time.perf_counter()
            for i in idx:
                fx = loc.locate(fl["frames"][i], gsd=fl["gsd"][i])
                if fx.status == "ok" and fx.lat is not None and fx.lon is not None:
                    loc_err[i] = _dist(fx.lon, fx.lat, fl["truth"][i])
            loc_wall = time.perf_counter() - t0
        both = [i for i in loc_err if np.isfinite(err[i])]
        out["locate"] = {
            "frames": len(idx),
            "frames_per_s": round(len(idx) / loc_wall, 2),
            "share_with_position": round(len(loc_err) / len(idx), 3),
            **_stats(list(loc_err.values())),
            "on_frames_both_answer": {
                "n": len(both),
                "tracker": _stats([err[i] for i in both]),
                "locate": _stats([loc_err[i] for i in both]),
            },
        }
    finally:
        from geoloc.store import embedded

        embedded.stop(Settings(home=home, database_url=None))
        shutil.rmtree(home, ignore_errors=True)
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out["load_average"] = os.getloadavg()
    # two cores: a load above ~2 means the figures were taken while sharing them
    out["under_load"] = bool(out["load_average"][0] > 2.0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "track.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run and print the result."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--locate-every", type=int, default=20)
    a = ap.parse_args(argv)
    print(json.dumps(run(a.seconds, a.locate_every), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
