"""Per-tile local features at ingest: their ingest-rate cost and their bytes per tile.

Ingests the bundled sample (``--mosaic``: also ``sat_map_00.tif`` of ``../shared/data/turku`` at
0.5 m/px) into a throw-away GEOLOC_HOME (embedded Postgres) twice, without and with features
(``--force``), and reports tiles/s end to end and the seconds spent extracting. Then the budget
table: for ``max_per_tile`` in 16..256 the feature bytes per tile (tile table + kept keypoints,
from the core-cell keypoint counts of the same tiles), next to the other per-tile storage
measured by ``benchmarks/store.py`` (its ``bytes_per_tile_defaults``). JSON in
``benchmarks/results/features.json``. Timings are as measured on the machine at the time: the
JSON records the load average next to them.
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

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE = REPO / "data" / "sample" / "turku_utm34n_0.28m.tif"
MOSAIC = REPO.parent / "shared" / "data" / "turku" / "sat_map_00.tif"
BUDGETS = (16, 32, 64, 128, 256)


def _core_counts(path: Path, gsd: float | None) -> list[int]:
    """Keypoints XFeat finds in each kept tile's core cell (before ``max_per_tile``)."""
    import numpy as np

    from geoloc.ingest.features import TileFeatures
    from geoloc.store.tile_features import XFEAT_SPEC
    from tiling import TilingPolicy, open_raster

    counts: list[int] = []
    with open_raster(path) as r:
        cfg, _ = TilingPolicy(tile_size=224, gsd=gsd).resolve(r)
        grid = r.grid(cfg)
        extract = TileFeatures(
            XFEAT_SPEC.with_max(10**6),
            rows=grid.rows,
            cols=grid.cols,
            tile_size=224,
            stride=grid.stride,
        )
        batch: list[Any] = []
        for t in [*r.tiles(cfg), None]:
            if t is not None:
                batch.append(t)
            if batch and (t is None or len(batch) == 16):
                feats = extract(batch, np.stack([b.pixels for b in batch]))
                counts += [len(f[0]) for f in feats]
                batch = []
    return counts


def _ingest_rate(settings: Any, path: Path, gsd: float | None, features: bool) -> dict[str, Any]:
    from geoloc.ingest import ingest

    t0 = time.perf_counter()
    (res,) = ingest(
        [path], settings=settings, gsd=gsd, force=True, progress=False, features=features
    )
    wall = time.perf_counter() - t0
    assert res.status == "ingested", res.message
    return {
        "features": features,
        "tiles": res.tiles_kept,
        "wall_s": round(wall, 2),
        "tiles_per_s": round(res.tiles_kept / wall, 2),
        "encode_s": round(res.timings.encode_s, 2),
        "features_s": round(res.timings.features_s, 2),
        "features_save_s": round(res.timings.features_save_s, 3),
    }


def run(mosaic: bool = False) -> dict[str, Any]:
    """The measurements (see the module docstring)."""
    import numpy as np

    from geoloc.config import Settings
    from geoloc.store import embedded
    from geoloc.store.faiss_store import OmegaIndex
    from geoloc.store.tile_features import TILE_DTYPE, FeatureStore, point_dtype

    rasters: list[tuple[Path, float | None]] = [(SAMPLE, None)]
    if mosaic and MOSAIC.exists():
        rasters.append((MOSAIC, 0.5))
    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-features-", dir="/tmp"))
    out: dict[str, Any] = {"load_average_1m": round(os.getloadavg()[0], 1), "rasters": []}
    try:
        settings = Settings(home=home, database_url=None)
        from geoloc.ingest import ingest

        ingest([SAMPLE], settings=settings, progress=False, features=False)  # warm-up, models
        for path, gsd in rasters:
            row: dict[str, Any] = {"raster": path.name, "gsd_m": gsd}
            row["without"] = _ingest_rate(settings, path, gsd, False)
            row["with"] = _ingest_rate(settings, path, gsd, True)
            row["rate_ratio"] = round(row["with"]["tiles_per_s"] / row["without"]["tiles_per_s"], 3)
            counts = _core_counts(path, gsd)
            row["core_keypoints"] = {
                "median": float(np.median(counts)),
                "p10": float(np.percentile(counts, 10)),
                "max": int(max(counts)),
            }
            rec = point_dtype(64).itemsize
            row["budget_table"] = [
                {
                    "max_per_tile": m,
                    "mean_keypoints": round(float(np.minimum(counts, m).mean()), 1),
                    "bytes_per_tile": round(
                        TILE_DTYPE.itemsize + rec * float(np.minimum(counts, m).mean())
                    ),
                }
                for m in BUDGETS
            ]
            out["rasters"].append(row)
        sha = next(p.name for p in settings.index_dir.iterdir() if p.is_dir())
        fdir = FeatureStore.path_for(OmegaIndex.path_for(settings, sha))
        out["feature_store"] = FeatureStore.open(fdir).info()
        out["bytes_per_keypoint"] = point_dtype(64).itemsize
        out["bytes_per_tile_record"] = TILE_DTYPE.itemsize
    finally:
        embedded.stop(Settings(home=home, database_url=None))
        shutil.rmtree(home, ignore_errors=True)
    store = json.loads((RESULTS / "store.json").read_text()).get("bytes_per_tile_defaults", {})
    out["other_storage_bytes_per_tile"] = {
        k: store.get(k) for k in ("postgres", "faiss_codes", "refine_codes", "total")
    }
    out["note"] = (
        f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} under load (1-min load "
        f"average {out['load_average_1m']} on {os.cpu_count()} cores): rates are relative, "
        "re-measure idle; other storage from benchmarks/results/store.json"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.features [--mosaic]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mosaic",
        action="store_true",
        help="also sat_map_00.tif of ../shared/data/turku at 0.5 m/px",
    )
    args = ap.parse_args(argv)
    res = run(mosaic=args.mosaic)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps(res, indent=1) + "\n")
    json.dump(res, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
