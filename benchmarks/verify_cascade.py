"""Verification from stored tile features (coarse-then-learned cascade) vs reading raster pixels.

Ingests the bundled sample and a few distractor images (real aerial imagery of other places from
``../shared/data/distractors``, given fake coordinates far from the sample) into a throw-away
GEOLOC_HOME (embedded Postgres, stored XFeat features on), then locates the same frames with
``verify_features = "raster"`` and ``"auto"`` (the stored features): synthetic views of the
sample (heading unknown, GSD known) that should be located, and views of distractor images that
are *not* in the database, that should be rejected. Reports per mode: located share, error,
no_match share, latency p50/p95 per outcome (located / rejected), and the verification cost per
candidate checked. Writes ``benchmarks/results/verify_cascade.json``.

Usage: ``python -m benchmarks.verify_cascade [--n N] [--distractors K]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.locate import SAMPLE, _views

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DISTRACTORS = ROOT.parent / "shared" / "data" / "distractors"


def _airbus(k: int) -> list[Path]:
    files = sorted(DISTRACTORS.glob("airbus_*.jpg"))
    if len(files) < 2 * k:
        raise SystemExit(f"{DISTRACTORS}: need {2 * k} airbus_*.jpg distractor images")
    return files[: 2 * k]


def _fake_geotiff(src: Path, dst: Path, i: int, size: int = 1024) -> Path:
    """A ``size`` px crop of a 0.5 m/px distractor image as a GeoTIFF in the sample's CRS, placed
    100 km + i * 10 km east of the sample (far from every real area)."""
    import rasterio
    from affine import Affine
    from PIL import Image

    rgb = np.asarray(Image.open(src).convert("RGB"))[:size, :size]
    with rasterio.open(SAMPLE) as ds:
        crs, t = ds.crs, ds.transform
    origin = Affine.translation(t.c + 100_000.0 + 10_000.0 * i, t.f) @ Affine.scale(0.5, -0.5)
    with rasterio.open(
        dst,
        "w",
        driver="GTiff",
        width=rgb.shape[1],
        height=rgb.shape[0],
        count=3,
        dtype="uint8",
        crs=crs,
        transform=origin,
        photometric="RGB",
    ) as out:
        out.write(rgb.transpose(2, 0, 1))
    return dst


def _elsewhere(files: list[Path], n: int, seed: int = 1) -> list[np.ndarray]:
    """``n`` 400 px views (random place and heading) of images that are not in the database,
    resampled from 0.5 m/px to the sample's 0.28 m/px."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        img = np.asarray(Image.open(files[j % len(files)]).convert("RGB"))
        img = cv2.resize(img, None, fx=0.5 / 0.28, fy=0.5 / 0.28, interpolation=cv2.INTER_LINEAR)
        h, w = img.shape[:2]
        cx, cy = rng.uniform(300, w - 300), rng.uniform(300, h - 300)
        a = np.deg2rad(rng.uniform(0, 360))
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        m = np.zeros((2, 3))
        m[:, :2] = r
        m[:, 2] = np.array([cx, cy]) - r @ np.array([200.0, 200.0])
        out.append(
            cv2.warpAffine(img, m, (400, 400), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        )
    return out


def _pct(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
    }


class _Count:
    def __init__(self, obj: Any, names: list[str]) -> None:
        self.calls = dict.fromkeys(names, 0)
        for name in names:
            inner = getattr(obj, name)

            def wrap(*a: Any, _inner: Any = inner, _n: str = name, **kw: Any) -> Any:
                self.calls[_n] += 1
                return _inner(*a, **kw)

            setattr(obj, name, wrap)


def _run(
    settings: Any, enc: Any, mode: str, located: list[Any], rejected: list[Any]
) -> dict[str, Any]:
    from geoloc.localize import Localizer
    from geoloc.localize.pipeline import preset
    from tiling.crs import geodesic_distance_m

    cfg = preset("accurate")
    cfg.verify_features = mode
    res: dict[str, Any] = {"mode": mode}
    with Localizer.open(settings, encoder=enc, pipeline=cfg) as loc:
        assert loc.verify is not None
        res["path"] = "features" if loc.verify.feature_regions is not None else "raster"
        loc.locate(located[0][0], gsd=located[0][4])  # warm-up
        count = _Count(loc.verify.verifier, ["verify", "coarse", "verify_features"])
        outcome: dict[str, list[float]] = {"located": [], "rejected": []}
        verify_ms: list[float] = []
        ok = within5 = wrong = 0
        errors = []
        for rgb, lon, lat, _h, gsd in located:
            fix = loc.locate(rgb, gsd=gsd)
            verify_ms.append(fix.timings_ms.get("verify", 0.0))
            outcome["located" if fix.status == "ok" else "rejected"].append(fix.timings_ms["total"])
            if fix.status == "ok" and fix.lat is not None:
                ok += 1
                e = float(geodesic_distance_m(fix.lon, fix.lat, lon, lat))
                errors.append(e)
                within5 += e <= 5.0
                wrong += e > 25.0
        accepted_elsewhere = 0
        for rgb in rejected:
            fix = loc.locate(rgb, gsd=0.28)
            verify_ms.append(fix.timings_ms.get("verify", 0.0))
            outcome["located" if fix.status == "ok" else "rejected"].append(fix.timings_ms["total"])
            accepted_elsewhere += fix.status == "ok"
    checks = count.calls["verify"] + count.calls["coarse"]
    res.update(
        {
            "views_of_the_map": len(located),
            "located_ok": ok,
            "within_5m": within5,
            "wrong_over_25m": wrong,
            "error_m_median": round(float(np.median(errors)), 2) if errors else None,
            "views_elsewhere": len(rejected),
            "elsewhere_accepted": accepted_elsewhere,
            "total_ms": {k: _pct(v) for k, v in outcome.items()},
            "verify_ms_sum": round(float(np.sum(verify_ms)), 1),
            "candidate_checks": checks,
            # verify() runs verify_features(): each counts one learned-matcher call
            "learned_matcher_calls": count.calls["verify_features"],
            "verify_ms_per_candidate": round(float(np.sum(verify_ms)) / max(checks, 1), 1),
        }
    )
    return res


def run(n: int = 12, k: int = 2) -> dict[str, Any]:
    """Measure; save ``benchmarks/results/verify_cascade.json`` and return the dict."""
    import torch

    torch.set_num_threads(2)
    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.models import load_encoder

    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-cascade-", dir="/tmp"))
    files = _airbus(k)
    out: dict[str, Any] = {"raster": SAMPLE.name, "frames_each": n, "threads": 2}
    try:
        settings = Settings(home=home, database_url=None)
        enc = load_encoder("sgmnet")
        enc.optimize_for_inference()
        fakes = [_fake_geotiff(f, home / f"distractor_{i}.tif", i) for i, f in enumerate(files[:k])]
        results = ingest([SAMPLE, *fakes], encoder=enc, settings=settings, progress=False)
        out["tiles"] = sum(r.tiles_kept for r in results)
        out["distractor_tiles"] = sum(r.tiles_kept for r in results[1:])
        located = _views(n)
        rejected = _elsewhere(files[k:], n)
        out["modes"] = [_run(settings, enc, m, located, rejected) for m in ("raster", "auto")]
        for r in out["modes"]:
            print(json.dumps(r), file=sys.stderr)
    finally:
        from geoloc.store import embedded

        embedded.stop(Settings(home=home, database_url=None))
        shutil.rmtree(home, ignore_errors=True)
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out["load_average"] = os.getloadavg()
    out["note"] = "measured with other jobs on the 2 cores (see load_average): relative figures"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "verify_cascade.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=12, help="views of the map and views elsewhere")
    ap.add_argument("--distractors", type=int, default=2, help="distractor images ingested")
    args = ap.parse_args()
    print(json.dumps(run(n=args.n, k=args.distractors), indent=2))
