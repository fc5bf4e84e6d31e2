"""Ingest throughput: tiles/s end to end vs the encoder alone, and where the wall time goes.

``run(full=False)`` ingests the bundled sample (``full=True``: the 0.14 m Turku mosaic of
``../shared/data/turku`` too) into a throw-away GEOLOC_HOME (embedded Postgres), at the default
ingest GSD/stride, then encodes the same tiles again with the encoder alone (tiles read into
memory first, same batch size). Reports per raster: tiles, wall seconds, tiles/s end to end,
encoder-only tiles/s (an encoder-alone run before the first ingest run and after each one; the
reported ingest run is compared with the mean of the two either side of it, and every run's
ratio to its two neighbours is listed, ``pair_ratios``, with their median; under the ingest's
setting, :func:`geoloc.models.runtime.throughput`, batches encoded as concurrently as the
ingest does; ``encoder_only_torch_threads``: once batch by batch with torch's own threads),
their ratio (target >= 0.90), the same
ratio in CPU seconds per tile of this process (robust to other load on the machine; the
Postgres server's CPU is not counted), the CPU milliseconds per tile split into the reader
thread, the writer thread, the rest of this process (encoder, glue) and the embedded Postgres
server (which shares the cores), and the share of wall time per stage (read =
tiler in the reader thread, encode, DB write = binary COPY, FAISS add, FAISS save, recovery and
lock). Stages overlap (threads), so shares can sum to more than 1. JSON in
``benchmarks/results/ingest.json``. ``--omega`` keeps the Ω FAISS index (a new store keeps none
unless asked), ``--no-features`` skips the per-tile local features.

``--gsd-sweep`` (``run(sweep=True)``) also measures retrieval by Ω against the ingest GSD
(0.28 / 0.5 / 0.75 m/px), the evidence behind the default ingest GSD: see :func:`gsd_sweep`.
"""

from __future__ import annotations

import contextlib
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
MOSAIC = REPO.parent / "shared" / "data" / "turku" / "turku_mosaic_utm34n.tif"


def _server_cpu_s(home: Path) -> float | None:
    """CPU seconds so far of the embedded Postgres serving ``home`` (its postmaster, the
    backends it reaped and the live ones); None without psutil or when it is not found."""
    try:
        import psutil
    except ImportError:
        return None
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if not any(str(home) in c for c in cmd) or "-D" not in cmd:
                continue
            t = p.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for c in p.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    ct = c.cpu_times()
                    total += ct.user + ct.system
            return float(total)
        except psutil.Error:
            continue
    return None


def _encoder_only(
    enc: Any,
    path: Path,
    gsd_m: float,
    stride: int,
    batch_size: int,
    threads: bool = True,
    omega: bool = True,
) -> tuple[float, float]:
    """(tiles/s, CPU s/tile) of ``enc.encode`` alone on the raster's tiles (pre-read), under
    the setting of an ingest without features (``threads``: :func:`throughput`, as many batches
    at once as the ingest encodes) or batch by batch on torch's own threads; ``omega``: Ω
    copied out as the ingest does for a store that keeps it."""
    import numpy as np

    from geoloc.ingest.stream import Batch, encoded
    from geoloc.models.runtime import throughput
    from tiling import TileConfig, open_raster

    with open_raster(path) as r:
        cfg = TileConfig(tile_size=int(enc.input_size), stride=stride, gsd=gsd_m, min_valid=0.5)
        pixels = np.stack([t.pixels for t in r.tiles(cfg)])
    batches = [Batch([], pixels[i : i + batch_size], i) for i in range(0, len(pixels), batch_size)]
    with throughput(enc) if threads else contextlib.nullcontext(1) as streams:
        for _ in encoded(enc, iter(batches[:streams]), streams, omega=omega):  # warm-up
            pass
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in encoded(enc, iter(batches), streams, omega=omega):
            pass
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(pixels) / wall, cpu / len(pixels)


def gsd_sweep(
    gsds: tuple[float, ...] = (0.28, 0.5, 0.75),
    n_views: int = 24,
    headings: int = 8,
    seed: int = 0,
    encoder: str = "sgmnet",
) -> dict[str, Any]:
    """Retrieval by Ω alone vs the ingest GSD, on synthetic drone views of the bundled sample.

    Views: 512 px at 0.3 m/px (~150 m of ground, like ``data/sample/frames``), random heading,
    scale, tilt, offset and colour (``geoloc.training.synthetic``). Per GSD: tiles at that GSD
    with a half-tile stride; each view brought to the GSD (its GSD is known), rotated to
    ``headings`` north-up hypotheses, centre tile footprint cut and encoded; the tile of highest
    cosine over all hypotheses is the answer. Reports the distance from its centre to the
    truth (median, and share within 25 / 50 m): the ceiling a tile-centre answer can reach
    before rerank, consistency and local-feature refinement.
    """
    import numpy as np

    from geoloc.localize.frame import default_headings, rotation_batch
    from geoloc.localize.frame import rescale as rescale_img
    from geoloc.models import load_encoder
    from geoloc.training.synthetic import ViewSynthesizer
    from tiling import TileConfig, open_raster
    from tiling.crs import geodesic_distance_m

    enc = load_encoder(encoder)
    enc.optimize_for_inference()
    synth = ViewSynthesizer(SAMPLE, size=512, gsd_m=0.3)
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(n_views):
        lon, lat = synth.random_point(rng)
        views.append(synth.random_view(lon, lat, rng))
    hs = default_headings(headings)
    out: dict[str, Any] = {"views": n_views, "headings": headings, "by_gsd": []}
    for g in gsds:
        t0 = time.perf_counter()
        with open_raster(SAMPLE) as r:
            cfg = TileConfig(tile_size=224, stride=112, gsd=g, min_valid=0.5)
            tiles = list(r.tiles(cfg))
        tile_omega = np.asarray(enc.encode(np.stack([t.pixels for t in tiles])).omega)
        centres = np.array([(t.center_lon, t.center_lat) for t in tiles])
        errors = []
        for v in views:
            factor = v.gsd_m / g
            img = rescale_img(v.image, factor)
            mask = np.ones(img.shape[:2], dtype=bool)
            batch, _ = rotation_batch(img, mask, hs, crop_px=224)
            q = np.asarray(enc.encode(batch).omega)
            best = int(np.argmax((q @ tile_omega.T).max(axis=0)))
            errors.append(
                float(geodesic_distance_m(v.lon, v.lat, centres[best, 0], centres[best, 1]))
            )
        e = np.asarray(errors)
        row = {
            "gsd_m": g,
            "tile_ground_m": round(224 * g, 1),
            "stride_m": round(112 * g, 1),
            "tiles": len(tiles),
            "median_error_m": round(float(np.median(e)), 1),
            "within_25m": round(float(np.mean(e <= 25)), 3),
            "within_50m": round(float(np.mean(e <= 50)), 3),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        out["by_gsd"].append(row)
        print(f"gsd sweep: {row}", file=sys.stderr)
    return out


def run(
    full: bool = False,
    encoder: str = "sgmnet",
    batch_size: int = 16,
    sweep: bool = False,
    gsd: float | None = None,
    stride: int | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    runtime: str = "auto",
    mosaic_only: bool = False,
    features: bool = True,
    omega: bool = False,
    repeat: int = 1,
) -> dict[str, Any]:
    """Measure ingest throughput (and, with ``sweep``, the GSD sweep); save and return them.

    ``runtime`` is the encoder's backbone runtime (``geoloc.models.runtime``) for the encoder
    alone, the single-process ingest and the Ray actors alike.
    ``mosaic_only`` measures the Turku mosaic without the bundled sample.

    ``cluster`` (``auto`` or ``ray://HOST:PORT``) also re-ingests each raster (``force``) on Ray
    with ``workers`` encoder actors and reports its tiles/s and its ratio to the single-process
    run (the actors are started, and their encoder loaded, before the timed raster).

    ``repeat`` ingests each raster that many times (the first into the fresh store, the others
    re-ingesting it), each followed by an encoder-alone run, and reports the run of median wall
    time and the median of the runs' ratios to their neighbouring encoder runs, every rate listed;
    the Ray ingest runs as many times, reported the same way.

    ``gsd`` / ``stride`` override the ingest defaults for every raster (e.g. the mosaic at its
    native 0.136 m/px gives hundreds of tiles, where fixed costs no longer dominate).
    A previous ``gsd_sweep`` result in the JSON file is kept when ``sweep`` is False.
    """
    from geoloc.config import Settings
    from geoloc.ingest import ingest, policy_for
    from geoloc.models import load_encoder
    from geoloc.models.runtime import use_runtime
    from tiling import open_raster

    rasters = [] if mosaic_only else [SAMPLE]
    rasters += [MOSAIC] if (full or mosaic_only) and MOSAIC.is_file() else []
    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-ingest-", dir="/tmp"))
    out: dict[str, Any] = {"encoder": encoder, "batch_size": batch_size, "rasters": []}
    out["load_average_1min"] = {"start": round(os.getloadavg()[0], 2)}
    out["features"] = features
    out["omega"] = omega
    out["repeat"] = repeat
    try:
        settings = Settings(home=home, database_url=None)
        enc = load_encoder(encoder)
        if hasattr(enc, "optimize_for_inference"):
            enc.optimize_for_inference()
        out["runtime"] = use_runtime(enc, runtime, cache_dir=home / "cache" / "onnx")
        for path in rasters:
            # Encoder alone before and after the ingest (the machine's load drifts), averaged.
            with open_raster(path) as r:
                policy = policy_for(int(enc.input_size), gsd, stride, 0.5)
                cfg, _ = policy.resolve(r)
                gsd_m, step = r.grid(cfg).gsd_m, policy.step
            before = _encoder_only(
                enc, path, gsd_m, step, batch_size, threads=not features, omega=omega
            )
            # the encoder alone with torch's own threads (the setting ingests had before)
            torch_pool = _encoder_only(
                enc, path, gsd_m, step, batch_size, threads=False, omega=omega
            )
            if _server_cpu_s(home) is None:  # start the server before the measured ingest
                from geoloc.store.database import open_database

                open_database(settings).dispose()
            # ``repeat`` runs (the later ones re-ingest: --force replaces the rows), the run of
            # median wall time reported: one run's rate moves with the machine's other load
            # every ingest of the raster (single process or Ray) with the same settings
            same: dict[str, Any] = dict(
                encoder=enc,
                batch_size=batch_size,
                settings=settings,
                progress=False,
                gsd=gsd,
                stride=stride,
                features=features,
                omega=omega,
            )
            # each ingest run is followed by an encoder-alone run: every run is paired with the
            # mean of the encoder runs either side of it, so the machine's drift falls on both
            runs = []
            alone = [before]
            for i in range(max(1, repeat)):
                s0 = _server_cpu_s(home)
                c0 = time.process_time()
                (res,) = ingest([path], **same, force=i > 0)
                if res.status != "ingested":
                    raise RuntimeError(f"{path}: ingest {res.status}: {res.message}")
                cpu_tile = (time.process_time() - c0) / res.tiles_kept  # this process only
                runs.append((res, cpu_tile, s0, _server_cpu_s(home)))
                assert res.gsd_m is not None and res.stride_px is not None
                alone.append(
                    _encoder_only(
                        enc,
                        path,
                        res.gsd_m,
                        res.stride_px,
                        batch_size,
                        threads=not features,
                        omega=omega,
                    )
                )
                print(
                    f"{path.name}: run {i + 1}: {res.tiles_kept / res.seconds:.1f} tiles/s, "
                    f"encoder alone {alone[-1][0]:.1f} tiles/s",
                    file=sys.stderr,
                )
            pair_ratios = [
                (r[0].tiles_kept / r[0].seconds) / (0.5 * (alone[i][0] + alone[i + 1][0]))
                for i, r in enumerate(runs)
            ]
            mid = sorted(range(len(runs)), key=lambda i: runs[i][0].seconds)[len(runs) // 2]
            res, cpu_tile, s0, s1 = runs[mid]
            assert res.gsd_m is not None and res.stride_px is not None
            enc_tps = 0.5 * (alone[mid][0] + alone[mid + 1][0])
            enc_cpu = 0.5 * (alone[mid][1] + alone[mid + 1][1])
            wall = res.seconds
            tm = res.timings
            e2e = res.tiles_kept / wall
            row = {
                "raster": path.name,
                "tiles": res.tiles_kept,
                "runs_tiles_per_s": [round(r[0].tiles_kept / r[0].seconds, 2) for r in runs],
                "gsd_m": round(res.gsd_m, 4),
                "stride_px": res.stride_px,
                "wall_s": round(wall, 3),
                "tiles_per_s": round(e2e, 2),
                "encoder_only_tiles_per_s": round(enc_tps, 2),
                "encoder_only_torch_threads": {
                    "tiles_per_s": round(torch_pool[0], 2),
                    "cpu_s_per_tile": round(torch_pool[1], 4),
                },
                "ratio_to_encoder": round(e2e / enc_tps, 3),
                "encoder_only_runs_tiles_per_s": [round(a[0], 2) for a in alone],
                "pair_ratios": [round(x, 3) for x in pair_ratios],
                "median_pair_ratio": round(sorted(pair_ratios)[len(pair_ratios) // 2], 3),
                "cpu_s_per_tile": round(cpu_tile, 4),
                "encoder_only_cpu_s_per_tile": round(enc_cpu, 4),
                "cpu_ratio": round(enc_cpu / cpu_tile, 3),
                "cpu_ms_per_tile": {
                    "reader": round(1000 * tm.read_cpu_s / res.tiles_kept, 3),
                    "writer": round(1000 * tm.write_cpu_s / res.tiles_kept, 3),
                    "rest": round(
                        1000 * cpu_tile - 1000 * (tm.read_cpu_s + tm.write_cpu_s) / res.tiles_kept,
                        3,
                    ),
                    "postgres_server": None
                    if s0 is None or s1 is None
                    else round(1000 * (s1 - s0) / res.tiles_kept, 3),
                    "encoder_alone": round(1000 * enc_cpu, 3),
                },
                "share_of_wall": {
                    "read": round(tm.read_s / wall, 3),
                    "encode": round(tm.encode_s / wall, 3),
                    "db_write": round(tm.db_s / wall, 3),
                    "faiss_add": round(tm.faiss_add_s / wall, 3),
                    "faiss_save": round(tm.faiss_save_s / wall, 3),
                    "features": round((tm.features_s + tm.features_save_s) / wall, 3),
                    "recover_and_lock": round((tm.recover_s + tm.lock_wait_s) / wall, 3),
                },
                "seconds": {k: round(v, 3) for k, v in vars(tm).items()},
            }
            if cluster is not None:
                ray_runs = []
                for _ in range(max(1, repeat)):  # as many as the single process, median run
                    (rr,) = ingest([path], **same, force=True, cluster=cluster, workers=workers)
                    if rr.status != "ingested" or rr.tiles_kept != res.tiles_kept:
                        raise RuntimeError(f"{path}: Ray ingest {rr.status}: {rr.message}")
                    ray_runs.append(rr)
                rr = sorted(ray_runs, key=lambda r: r.seconds)[len(ray_runs) // 2]
                ray_tps = rr.tiles_kept / rr.seconds
                row["ray"] = {
                    "cluster": cluster,
                    "workers": workers,
                    "runs_tiles_per_s": [round(r.tiles_kept / r.seconds, 2) for r in ray_runs],
                    "wall_s": round(rr.seconds, 3),
                    "tiles_per_s": round(ray_tps, 2),
                    "ratio_to_single_process": round(ray_tps / e2e, 3),
                    "ratio_to_encoder": round(ray_tps / enc_tps, 3),
                }
                print(f"{path.name}: Ray {row['ray']}", file=sys.stderr)
            out["rasters"].append(row)
            print(
                f"{path.name}: {res.tiles_kept} tiles in {wall:.1f} s = {e2e:.1f} tiles/s; "
                f"encoder alone {enc_tps:.1f} tiles/s (ratio {e2e / enc_tps:.2f}, CPU ratio "
                f"{enc_cpu / cpu_tile:.2f}); "
                f"CPU ms/tile {row['cpu_ms_per_tile']}; shares {row['share_of_wall']}",
                file=sys.stderr,
            )
    finally:
        from geoloc.store import embedded

        embedded.stop(Settings(home=home, database_url=None))
        shutil.rmtree(home, ignore_errors=True)
    if sweep:
        out["gsd_sweep"] = gsd_sweep()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out["load_average_1min"]["end"] = round(os.getloadavg()[0], 2)
    out["gsd_override_m"], out["stride_override_px"] = gsd, stride
    name = "ingest.json" if gsd is None and stride is None else f"ingest_gsd{gsd}_s{stride}.json"
    if cluster is not None:
        name = name.replace(".json", "_ray.json")
    if runtime != "auto":
        name = name.replace(".json", f"_{runtime}.json")
    if not features:
        name = name.replace(".json", "_nofeatures.json")
    if omega:
        name = name.replace(".json", "_omega.json")
    prev = RESULTS / name
    if not sweep and prev.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            old = json.loads(prev.read_text()).get("gsd_sweep")
            if old is not None:
                out["gsd_sweep"] = old
    (RESULTS / name).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also the Turku mosaic")
    ap.add_argument("--gsd-sweep", action="store_true", help="also the retrieval-vs-GSD sweep")
    ap.add_argument("--gsd", type=float, default=None, help="ingest GSD (m/px) for every raster")
    ap.add_argument("--stride", type=int, default=None, help="tile step (px) for every raster")
    ap.add_argument("--cluster", default=None, help="also ingest on Ray: auto | ray://HOST:PORT")
    ap.add_argument("--workers", type=int, default=None, help="Ray encoder actors")
    ap.add_argument(
        "--ray",
        action="store_true",
        help="also ingest on a local Ray cluster (127.0.0.1, 2 encoder actors): --cluster auto",
    )
    ap.add_argument("--runtime", default="auto", help="encoder backbone: auto | torch | onnx")
    ap.add_argument("--mosaic", action="store_true", help="only the Turku mosaic")
    ap.add_argument(
        "--no-features", action="store_true", help="ingest without the per-tile local features"
    )
    ap.add_argument(
        "--omega", action="store_true", help="keep the Ω FAISS index (a new store keeps none)"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="single-process ingests per raster (median run)"
    )
    a = ap.parse_args()
    res = run(
        full=a.full,
        sweep=a.gsd_sweep,
        gsd=a.gsd,
        stride=a.stride,
        cluster="auto" if a.ray else a.cluster,
        workers=2 if a.ray and a.workers is None else a.workers,
        runtime=a.runtime,
        mosaic_only=a.mosaic,
        features=not a.no_features,
        omega=a.omega,
        repeat=a.repeat,
    )
    print(json.dumps(res, indent=2))
