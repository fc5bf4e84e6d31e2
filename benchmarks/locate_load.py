"""``geoloc locate`` under concurrent load: N processes in parallel, K frames each.

``run(full=False)`` ingests the bundled sample into a throw-away GEOLOC_HOME (embedded
Postgres, kept running for the duration), cuts frames from it at seeded random places and
headings (exact truth known), then starts ``procs`` ``geoloc -q locate`` processes at once, each
locating its own ``frames`` frames (the model is loaded once per process). ``full=True`` is the
issue's load: 8 processes x 50 frames; the quick run is 8 x 3.

Reports: every frame answered or not, failures (exit codes, error rows), per-frame latency
inside the process (``timings_ms.total``: decode to answer, the model already loaded) p50 / p95
/ max, per-process start-up (process wall time minus its frames), overall frames/s, and the
median distance of the answers to the truth. JSON in ``benchmarks/results/locate_load.json``.

    python benchmarks/locate_load.py [--full] [--preset fast|accurate] [--procs N] [--frames K]
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE = REPO / "data" / "sample" / "turku_utm34n_0.28m.tif"
FRAME_PX = 400  # 112 m at the sample's 0.28 m/px: one tile of ground at the ingest GSD


def _frames(d: Path, n: int, seed: int) -> list[tuple[Path, float, float]]:
    """``n`` JPEG views of the sample at random centres/headings: (path, lon, lat) truth."""
    import cv2
    import rasterio
    from PIL import Image
    from pyproj import Transformer

    with rasterio.open(SAMPLE) as ds:
        rgb = np.ascontiguousarray(ds.read([1, 2, 3]).transpose(1, 2, 0))
        tr = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        transform = ds.transform
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    h, w = rgb.shape[:2]
    for i in range(n):
        cx = float(rng.uniform(FRAME_PX / 2, w - FRAME_PX / 2))
        cy = float(rng.uniform(FRAME_PX / 2, h - FRAME_PX / 2))
        heading = float(rng.uniform(0, 360))
        a = np.deg2rad(heading)
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        m = np.zeros((2, 3))
        m[:, :2] = r
        m[:, 2] = np.array([cx, cy]) - r @ np.array([FRAME_PX / 2, FRAME_PX / 2])
        view = cv2.warpAffine(
            rgb, m, (FRAME_PX, FRAME_PX), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        )
        p = d / f"frame_{i:03d}.jpg"
        Image.fromarray(view).save(p, quality=90)
        x, y = transform @ (cx + 0.5, cy + 0.5)
        lon, lat = tr.transform(x, y)
        out.append((p, float(lon), float(lat)))
    return out


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def run(
    full: bool = False,
    procs: int = 8,
    frames: int | None = None,
    preset: str = "fast",
    seed: int = 0,
) -> dict[str, Any]:
    """Run the load test (``full``: 8 x 50 frames; else 8 x 3), save and return the results."""
    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.store import embedded
    from tiling.crs import geodesic_distance_m

    per_proc = frames if frames is not None else (50 if full else 3)
    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-load-", dir="/tmp"))
    settings = Settings(home=home, database_url=None)
    out: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": list(os.getloadavg()),
        },
        "commit": _commit(),
        "procs": procs,
        "frames_per_proc": per_proc,
        "preset": preset,
        "omp_num_threads_per_proc": 1,
    }
    try:
        embedded.start(settings, keep_running=True)
        t0 = time.perf_counter()
        (res,) = ingest([SAMPLE], settings=settings, progress=False)
        if res.status != "ingested":
            raise RuntimeError(f"{SAMPLE}: ingest {res.status}: {res.message}")
        out["ingest"] = {"tiles": res.tiles_kept, "seconds": round(time.perf_counter() - t0, 1)}
        truth = _frames(home / "frames", procs * per_proc, seed)
        env = dict(os.environ, GEOLOC_HOME=str(home), OMP_NUM_THREADS="1")
        env.pop("GEOLOC_DATABASE_URL", None)
        started = time.perf_counter()
        running = []
        for i in range(procs):
            mine = truth[i * per_proc : (i + 1) * per_proc]
            cmd = [sys.executable, "-m", "geoloc.cli.main", "-q", "locate"]
            cmd += [str(p) for p, _, _ in mine] + ["--gsd", "0.28", "--preset", preset]
            p = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            running.append((p, mine, time.perf_counter()))
        latencies: list[float] = []
        startups: list[float] = []
        errors_m: list[float] = []
        statuses: dict[str, int] = {}
        failures: list[str] = []
        answered = 0
        for p, mine, t_start in running:
            stdout, stderr = p.communicate(timeout=3600)
            wall = time.perf_counter() - t_start
            rows = [json.loads(x) for x in stdout.splitlines() if x.strip()]
            if p.returncode not in (0, 3):
                failures.append(f"pid {p.pid}: exit {p.returncode}: {stderr.strip()[-300:]}")
            if len(rows) != len(mine):
                failures.append(f"pid {p.pid}: {len(rows)} answers for {len(mine)} frames")
            totals = []
            for row, (_, lon, lat) in zip(rows, mine, strict=False):
                statuses[row["status"]] = statuses.get(row["status"], 0) + 1
                if row["status"] == "error":
                    continue
                answered += 1
                totals.append(float(row["timings_ms"]["total"]))
                if row.get("lat") is not None:
                    errors_m.append(float(geodesic_distance_m(row["lon"], row["lat"], lon, lat)))
            latencies += totals
            startups.append(wall - sum(totals) / 1000.0)
        elapsed = time.perf_counter() - started
        n = procs * per_proc
        out.update(
            {
                "frames": n,
                "answered": answered,
                "all_answered": answered == n and not failures,
                "failures": failures,
                "statuses": statuses,
                "latency_ms": {
                    "p50": _pct(latencies, 50),
                    "p95": _pct(latencies, 95),
                    "max": _pct(latencies, 100),
                },
                "process_startup_s": {"p50": _pct(startups, 50), "max": _pct(startups, 100)},
                "wall_s": round(elapsed, 1),
                "frames_per_s": round(n / elapsed, 3),
                "error_m": {"p50": _pct(errors_m, 50), "p95": _pct(errors_m, 95)},
                "loadavg_at_end": list(os.getloadavg()),
            }
        )
    finally:
        embedded.stop(settings)
        shutil.rmtree(home, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "locate_load.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def _arg(name: str, default: str | None) -> str | None:
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    frames_arg = _arg("--frames", None)
    result = run(
        full="--full" in sys.argv,
        procs=int(_arg("--procs", "8") or 8),
        frames=int(frames_arg) if frames_arg else None,
        preset=_arg("--preset", "fast") or "fast",
    )
    print(json.dumps(result, indent=2))
