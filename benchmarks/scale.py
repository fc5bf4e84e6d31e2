"""Scale benchmark: recall, verification, rejection and latency on tile databases of growing size.

Each database is built through the real ingest (:func:`geoloc.ingest.ingest`) in its own
``GEOLOC_HOME`` (embedded Postgres + Ω index) under a cache directory outside the repository
(``$GEOLOC_SCALE_CACHE``, default ``~/.cache/geoloc-scale``; ``/var/tmp/geoloc-scale`` as
root), and reused when present: a build that was stopped resumes where it stopped, because the
ingest skips rasters already complete.

Contents of a database: the true areas (the Turku mosaic at 0.5 and 0.3 m/px, the Brighton map at
its native 0.1 m/px) plus distractors, real aerial images of other places from
``../shared/data/distractors`` written as GeoTIFFs with fake coordinates in the southern
hemisphere, far from every real area, at their GSD from ``SOURCES.csv`` resampled to 0.5 m/px
(then 0.3 and 1.0 m/px to reach the largest sizes): sizes come from more images and more GSDs,
never from copied pixels. Every resampled layer is its own file (the ingest keys rasters by their
bytes). Held-out distractors never enter a database: views of them are negatives.

Queries (fixed seed): synthetic drone views of the Turku mosaic (heading unknown, GSD known,
tilt, colour, blur, noise; :class:`geoloc.training.synthetic.ViewSynthesizer`), the real Brighton
photos (``gt.csv``; GSD given), and negatives: views of held-out distractors and the two Seneca
photos. For each database size the JSON has R@1/5/10/50 of the right tile (a tile at any GSD
whose footprint holds the truth) after each stage, the share within 5 m,
wrong answers (status ok but more than 25 m off), no_match, negatives accepted, latency p50/p95
per stage and per outcome, bytes per tile, the process RSS, and per-query records (confidence,
inliers, margin) for the calibration in :mod:`benchmarks.scale_calibrate`.

Usage::

    python -m benchmarks.scale --quick                 # a few hundred tiles, ~10 queries
    python -m benchmarks.scale --sizes 1000,10000 --queries 60
    python -m benchmarks.scale --sizes 100000 --build-only   # resumable, prints progress

Writes ``benchmarks/results/scale.json`` (``scale_quick.json`` with ``--quick``; one file per
size too, ``scale_<size>.json``, so runs of different sizes can be merged) and the plots
``docs/img/scale_*.png`` (:func:`plot`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"
TILE = 224
STRIDE = 112
MAP_GSD = 0.5
#: distractors never ingested: the negatives' source (last of each family in sorted order)
HOLDOUT_AIRBUS = 6
WRONG_M = 25.0
RIGHT_M = 5.0
KS = (1, 5, 10, 50)


def cache_dir() -> Path:
    """Where rasters and databases are built (outside the repository).

    The embedded server refuses a home under /root when running as root (it chowns the data
    directory's parents), so root builds go to /var/tmp.
    """
    env = os.environ.get("GEOLOC_SCALE_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/tmp/geoloc-scale")
    return Path.home() / ".cache" / "geoloc-scale"


def log(msg: str) -> None:
    """Progress line on stderr (flushed: a long build is followed with ``tail -f``)."""
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------- rasters
@dataclass(frozen=True)
class Layer:
    """One raster file of a database: a source image at one GSD (its own file)."""

    name: str  # file stem, unique per source and GSD
    source: Path
    gsd: float  # the layer's pixel size (m), also the ingest GSD
    kind: str  # "true" | "distractor"
    est_tiles: int
    index: int = 0  # distractor index (its fake location)
    crop: float = 1.0  # share of the source's width and height kept (quick mode)


def _gsd_from_sources(text: str) -> float:
    """The GSD column of SOURCES.csv: the first number, 0.4 m when there is none."""
    m = re.search(r"\d+\.\d+", text)
    return float(m.group(0)) if m else 0.4


def distractors() -> tuple[list[tuple[Path, float]], list[tuple[Path, float]]]:
    """(ingested, held-out) distractor images with their native GSDs, in a fixed order."""
    d = SHARED / "distractors"
    rows = list(csv.DictReader((d / "SOURCES.csv").open()))
    airbus = sorted(
        (d / r["file"], _gsd_from_sources(r["gsd_m_per_px"]))
        for r in rows
        if r["file"].startswith("airbus")
    )
    dota = sorted(
        (d / r["file"], _gsd_from_sources(r["gsd_m_per_px"]))
        for r in rows
        if r["file"].startswith("dota")
    )
    # DOTA scenes are too small for more than a tile or two at the map's GSD: negatives only
    return airbus[:-HOLDOUT_AIRBUS], airbus[-HOLDOUT_AIRBUS:] + dota


def _est(width_m: float, height_m: float, gsd: float) -> int:
    def n(m: float) -> int:
        px = int(m / gsd)
        return 0 if px < TILE else (px - TILE) // STRIDE + 1

    return n(width_m) * n(height_m)


def plan(size: int, quick: bool = False) -> list[Layer]:
    """The layers of a database of about ``size`` tiles (true areas first)."""
    turku = SHARED / "turku" / "turku_mosaic_utm34n.tif"
    brighton = SHARED / "brighton_beach" / "map_pointcloud_10cm.tif"
    w_m, h_m = 4213 * 0.14, 2372 * 0.14
    layers = [
        Layer("turku_0.5", turku, 0.5, "true", _est(w_m, h_m, 0.5)),
        Layer("brighton_0.1", brighton, 0.1, "true", 27),
    ]
    if not quick:
        layers.insert(1, Layer("turku_0.3", turku, 0.3, "true", _est(w_m, h_m, 0.3)))
    ingested, _ = distractors()
    if quick:
        src, g = ingested[0]
        return [*layers, Layer(f"{src.stem}_0.5_half", src, 0.5, "distractor", 100, 0, 0.5)]
    total = sum(la.est_tiles for la in layers)
    # 0.5 m first, and no other GSD with as many rasters: frames are scaled to the map's GSD,
    # the most common one over the rasters, which must stay 0.5 m
    count = Counter(la.gsd for la in layers)
    for gsd in (0.5, 1.0, 0.3):
        for i, (src, g) in enumerate(ingested):
            if total >= size:
                return layers
            if gsd != MAP_GSD and count[gsd] + 1 >= count[MAP_GSD]:
                break
            side = 2560 * g
            est = _est(side, side, gsd)
            layers.append(Layer(f"{src.stem}_{gsd:g}", src, gsd, "distractor", est, i))
            count[gsd] += 1
            total += est
    return layers


def fake_crs(index: int) -> tuple[str, float, float]:
    """A UTM zone in the southern hemisphere and an origin for distractor ``index``.

    Every real area (Turku, Duluth, Ohio) is in the northern hemisphere, so any southern
    location is thousands of kilometres from all of them; zones cycle so distractors are apart.
    """
    zone = 1 + (index * 7) % 60
    northing = 7_200_000.0 - 150_000.0 * (index // 60)
    return f"EPSG:{32700 + zone}", 400_000.0, northing


def write_layer(layer: Layer, out_dir: Path) -> Path:
    """The layer's GeoTIFF (written once): resampled to its GSD, fake coordinates for
    distractors. The Brighton map is used as it is (native GSD)."""
    import cv2
    import rasterio
    from rasterio.transform import from_origin

    if layer.kind == "true" and layer.name.startswith("brighton"):
        return layer.source
    path = out_dir / f"{layer.name}.tif"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    if layer.kind == "true":
        with rasterio.open(layer.source) as ds:
            data = ds.read([1, 2, 3]).transpose(1, 2, 0)
            t, crs = ds.transform, ds.crs
            native = abs(t.a)
        f = native / layer.gsd
        img = cv2.resize(
            data, (round(data.shape[1] * f), round(data.shape[0] * f)), interpolation=cv2.INTER_AREA
        )
        transform = from_origin(t.c, t.f, layer.gsd, layer.gsd)
    else:
        from tiling.image import read_image

        rgb, _ = read_image(str(layer.source))
        native = dict(distractors()[0] + distractors()[1])[layer.source]
        if layer.crop < 1.0:
            h, w = rgb.shape[:2]
            rgb = rgb[: int(h * layer.crop), : int(w * layer.crop)]
        f = native / layer.gsd
        interp = cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC
        img = cv2.resize(
            rgb, (round(rgb.shape[1] * f), round(rgb.shape[0] * f)), interpolation=interp
        )
        crs, e0, n0 = fake_crs(layer.index)
        transform = from_origin(e0, n0, layer.gsd, layer.gsd)
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(
        tmp,
        "w",
        driver="GTiff",
        width=img.shape[1],
        height=img.shape[0],
        count=3,
        dtype="uint8",
        crs=crs,
        transform=transform,
        compress="deflate",
        predictor=2,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        photometric="RGB",
    ) as dst:
        dst.write(np.ascontiguousarray(img.transpose(2, 0, 1)))
    tmp.replace(path)  # a stopped run never leaves a half-written layer under the final name
    return path


def write_negative_raster(src: Path, native: float, index: int, out_dir: Path) -> Path:
    """A held-out distractor as a GeoTIFF at its native GSD (fake coordinates), for views."""
    layer = Layer(f"neg_{src.stem}", src, native, "distractor", 0, 1000 + index)
    return write_layer(layer, out_dir)


# --------------------------------------------------------------------------------- build
def settings_for(label: str) -> Any:
    """The Settings of the database ``label`` (a size, or "quick") under the cache; the
    feature and Ω knobs of the environment (``GEOLOC_FEATURES_MAX``, ``GEOLOC_FEATURES_BITS``,
    ``GEOLOC_OMEGA``) apply to a new build."""
    import dataclasses

    from geoloc.config import Settings

    env = Settings.from_env()
    return dataclasses.replace(env, home=cache_dir() / f"db-{label}", database_url=None)


def build(
    size: int, enc: Any, *, quick: bool = False, ingest_missing: bool = True
) -> tuple[Any, list[Layer]]:
    """Build (or resume) the database of about ``size`` tiles; return its Settings.

    ``ingest_missing`` False takes the database as it is (a build stopped part way).
    """
    from geoloc.ingest import ingest

    root = cache_dir()
    label = "quick" if quick else str(size)
    settings = settings_for(label)
    layers = plan(size, quick)
    if not ingest_missing:
        return settings, layers
    est = sum(la.est_tiles for la in layers)
    log(f"database {label}: {len(layers)} rasters, about {est} tiles, in {settings.home}")
    t0, done_tiles = time.perf_counter(), 0
    new_tiles = 0
    for i, la in enumerate(layers):
        path = write_layer(la, root / "rasters")
        t1 = time.perf_counter()
        (res,) = ingest([path], encoder=enc, settings=settings, gsd=la.gsd, progress=False)
        if res.status not in ("ingested", "skipped", "relinked"):
            raise RuntimeError(f"{path}: ingest {res.status}: {res.message}")
        done_tiles += res.tiles_kept
        if res.status == "ingested":
            new_tiles += res.tiles_kept
        el = time.perf_counter() - t0
        rate = new_tiles / el if new_tiles else 0.0
        left = sum(x.est_tiles for x in layers[i + 1 :])
        eta = f", ETA {left / rate / 60:.0f} min" if rate > 0 else ""
        log(
            f"[{i + 1}/{len(layers)}] {la.name}: {res.status} {res.tiles_kept} tiles in "
            f"{time.perf_counter() - t1:.0f} s; {done_tiles} tiles so far, "
            f"{rate:.1f} new tiles/s{eta}"
        )
    return settings, layers


# --------------------------------------------------------------------------------- queries
@dataclass
class Query:
    """One query frame and its truth (``lat`` None for a negative)."""

    name: str
    kind: str  # synthetic | brighton | negative
    image: Any  # RGB array or a file path
    gsd: float
    lat: float | None = None
    lon: float | None = None


def queries(n: int, seed: int = 0, quick: bool = False) -> list[Query]:
    """``n`` synthetic positives, the Brighton photos, and negatives (a fixed seed)."""
    from geoloc.training.synthetic import ParamRanges, ViewSynthesizer

    rng = np.random.default_rng(seed)
    ranges = ParamRanges(scale=(0.8, 1.25), max_tilt_deg=15.0, max_offset_frac=0.0)
    out: list[Query] = []
    syn = ViewSynthesizer(
        SHARED / "turku" / "turku_mosaic_utm34n.tif", size=320, gsd_m=0.35, ranges=ranges
    )
    for i in range(n):
        lon, lat = syn.random_point(rng)
        v = syn.random_view(lon, lat, rng)
        out.append(Query(f"syn_{i:03d}", "synthetic", v.image, float(v.gsd_m), v.lat, v.lon))
    b = SHARED / "brighton_beach"
    rows = [r for r in csv.DictReader((b / "gt.csv").open()) if r["inside_map"] == "true"]
    for r in rows[: 2 if quick else None]:
        out.append(
            Query(
                r["name"],
                "brighton",
                str(b / r["name"]),
                float(r["gsd_m"]),
                float(r["reg_lat"]),
                float(r["reg_lon"]),
            )
        )
    _, held = distractors()
    n_neg = max(2, n // 3)
    raster_dir = cache_dir() / "rasters"
    synths = [
        ViewSynthesizer(write_negative_raster(p, g, j, raster_dir), size=320, ranges=ranges)
        for j, (p, g) in enumerate(held[:3] if quick else held)
    ]
    for i in range(n_neg):
        s = synths[i % len(synths)]
        try:
            lon, lat = s.random_point(rng)
        except Exception:  # a scene smaller than a view: take it whole
            lon, lat = s.px_to_lonlat(s.width / 2, s.height / 2)
        v = s.random_view(lon, lat, rng, min_valid=0.5)
        out.append(Query(f"{s.path.stem}_{i:02d}", "negative", v.image, float(v.gsd_m)))
    for p in sorted(b.glob("neg_seneca_*.jpg")):
        # Seneca is a fixed-wing survey: a plausible GSD, what a caller would pass
        out.append(Query(p.stem, "negative", str(p), 0.05))
    return interleave(out)


def interleave(qs: list[Query]) -> list[Query]:
    """The queries with their kinds interleaved in proportion, so that an evaluation stopped
    early (a long run under load) still holds every kind."""
    kinds: dict[str, list[Query]] = {}
    for q in qs:
        kinds.setdefault(q.kind, []).append(q)
    keyed = [
        ((i + 0.5) / len(group), k, q) for k, group in kinds.items() for i, q in enumerate(group)
    ]
    return [q for _, _, q in sorted(keyed, key=lambda t: (t[0], t[1]))]


def same_place(held: list[Path], ingested: list[Path], min_inliers: int = 60) -> dict[str, str]:
    """Held-out distractors that show the same place as an ingested one (the Airbus set has a
    few airports twice, at other dates): {held stem: ingested stem}. A view of such an image is
    not a negative, since the database holds its place. SIFT + a RANSAC homography on 800 px
    copies; the pairs are cached in the cache directory.
    """
    import cv2

    cache = cache_dir() / "same_place.json"
    known: dict[str, Any] = json.loads(cache.read_text()) if cache.exists() else {}
    sift = cv2.SIFT_create(4000)
    feats: dict[Path, Any] = {}

    def features(path: Path) -> Any:
        if path not in feats:
            g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            k = 800 / max(g.shape)
            g = cv2.resize(g, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
            feats[path] = sift.detectAndCompute(g, None)
        return feats[path]

    out: dict[str, str] = {}
    matcher = cv2.BFMatcher()
    for h in held:
        for i in ingested:
            key = f"{h.stem}|{i.stem}"
            if key not in known:
                (k0, d0), (k1, d1) = features(h), features(i)
                inl = 0
                if d0 is not None and d1 is not None and len(k0) > 8 and len(k1) > 8:
                    good = [
                        m
                        for m, n in matcher.knnMatch(d0, d1, k=2)
                        if m.distance < 0.75 * n.distance
                    ]
                    if len(good) >= 8:
                        a = np.float32([k0[m.queryIdx].pt for m in good])
                        b = np.float32([k1[m.trainIdx].pt for m in good])
                        _, mask = cv2.findHomography(a, b, cv2.RANSAC, 5.0)
                        inl = int(mask.sum()) if mask is not None else 0
                known[key] = inl
            if int(known[key]) >= min_inliers:
                out[h.stem] = i.stem
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known, indent=0) + "\n")
    return out


# --------------------------------------------------------------------------------- evaluate
def _pct(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p95": round(float(np.percentile(a, 95)), 1),
    }


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def storage(settings: Any) -> dict[str, Any]:
    """Bytes of the database (Postgres), the Ω index (FAISS + refine codes) and any per-tile
    feature files under GEOLOC_HOME, and the tile count."""
    from sqlalchemy import text

    from geoloc.store.database import open_database

    db = open_database(settings)
    try:
        with db.engine.connect() as c:
            pg = int(c.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
            tiles = int(c.execute(text("SELECT count(*) FROM tiles")).scalar_one())
    finally:
        db.dispose()
    home = Path(settings.home)
    # per-tile local features (when the ingest stores them) live in a "features" folder
    # beside the Ω index files: counted apart from the index
    feats = sum(_dir_bytes(p) for p in home.rglob("features") if p.is_dir())
    index = sum(_dir_bytes(p) for p in home.glob("index*")) - feats
    total = pg + index + feats
    return {
        "tiles": tiles,
        "postgres_bytes": pg,
        "index_bytes": index,
        "features_bytes": feats,
        "bytes_per_tile": round(total / max(tiles, 1)),
        "postgres_bytes_per_tile": round(pg / max(tiles, 1)),
        "index_bytes_per_tile": round(index / max(tiles, 1)),
        "features_bytes_per_tile": round(feats / max(tiles, 1)),
    }


def _rank(order: list[int], right: set[int]) -> int | None:
    """1-based rank of the first right tile in ``order`` (None: not there)."""
    for i, tid in enumerate(order):
        if tid in right:
            return i + 1
    return None


def right_tiles(store: Any, lat: float, lon: float) -> set[int]:
    """Ids of the tiles (any GSD) whose footprint holds (lat, lon): the right tiles."""
    from tiling.crs import from_lonlat

    ids = store.within(lat, lon, TILE * 1.0 * math.sqrt(2))  # the largest tile's half-diagonal
    out = set()
    for t in store.candidates(ids):
        x, y = from_lonlat(t.crs, lon, lat)
        col, row = ~t.transform * (x, y)
        if 0.0 <= col < t.tile_size and 0.0 <= row < t.tile_size:
            out.add(int(t.tile_id))
    return out


def evaluate(
    settings: Any,
    enc: Any,
    qs: list[Query],
    preset: str = "accurate",
    records_path: Path | None = None,
    knobs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Locate every query warm; one record per query (also appended to ``records_path`` as
    JSON lines as they come, so a run stopped early keeps what it measured).

    ``knobs`` override pipeline keys of the preset (``top_n``, ``top_m``, ``rotations``,
    ``heading_sweep``, ...), as a pipeline file would.
    """
    from geoloc.localize import Localizer
    from geoloc.localize.pipeline import from_dict
    from tiling.crs import geodesic_distance_m

    pipeline = from_dict({"preset": preset, **(knobs or {})}, where="benchmarks.scale")
    recs: list[dict[str, Any]] = []
    with Localizer.open(settings, encoder=enc, pipeline=pipeline) as loc:
        loc.warm()  # what `geoloc serve` does before its first frame
        loc.locate(qs[0].image, gsd=qs[0].gsd)  # warm-up (first-call allocations)
        for q in qs:
            fix = loc.locate(q.image, gsd=q.gsd, name=q.name)
            st = loc.last_state
            assert st is not None
            rec: dict[str, Any] = {
                "name": q.name,
                "kind": q.kind,
                "status": fix.status,
                "method": fix.method,
                "confidence": round(float(fix.confidence), 4),
                "margin": round(float(loc.answer.margin_confidence(st.candidates)), 4)
                if st.candidates
                else 0.0,
                "inliers": int((fix.verification or {}).get("inliers", 0)),
                "rmse_px": float((fix.verification or {}).get("rmse_px", 0.0)),
                "ncc": float((fix.verification or {}).get("ncc", 0.0)),
                "timings_ms": fix.timings_ms,
                # the accepted candidate: its place in the cascade and in the ranked list
                "attempts": st.match.attempts if st.match is not None else None,
                "candidate_rank": next(
                    (i + 1 for i, c in enumerate(st.candidates) if c is st.match.candidate), None
                )
                if st.match is not None
                else None,
                "error_m": None,
                "ranks": {},
            }
            if q.lat is not None and q.lon is not None:
                rec["truth"] = [q.lat, q.lon]
                right = right_tiles(loc.store, q.lat, q.lon)
                rec["right_tiles"] = len(right)
                for stage in ("recall", "rerank", "consistency"):
                    order = st.trace.get(stage)
                    if order is None and stage == "consistency":
                        order = st.trace.get("rerank")
                    rec["ranks"][stage] = _rank(order or [], right)
                m = st.match
                rec["ranks"]["verification"] = (
                    1 if m is not None and m.candidate.tile_id in right else None
                )
                if fix.lat is not None and fix.lon is not None:
                    rec["error_m"] = round(
                        float(geodesic_distance_m(fix.lon, fix.lat, q.lon, q.lat)), 2
                    )
            recs.append(rec)
            if records_path is not None:
                with records_path.open("a") as f:
                    f.write(json.dumps({**rec, "rss_mb": _rss_mb()}) + "\n")
            log(
                f"{q.name}: {fix.status} conf {fix.confidence:.2f} err {rec['error_m']} "
                f"ranks {rec['ranks']} {fix.timings_ms.get('total', 0):.0f} ms"
            )
        rss = _rss_mb()
    for r in recs:
        r["rss_mb"] = rss
    return recs


def summarize(recs: list[dict[str, Any]], twins: dict[str, str] | None = None) -> dict[str, Any]:
    """The per-size figures from the per-query records.

    ``twins`` ({held-out stem: ingested stem}, :func:`same_place`) names held-out images whose
    place is in the database after all: their views are counted apart, not as negatives.
    """
    out: dict[str, Any] = {}
    twins = twins or {}

    def twin(r: dict[str, Any]) -> str | None:
        stem = re.sub(r"^neg_|_\d+$", "", str(r["name"]))
        return twins.get(stem)

    pos = [r for r in recs if r["kind"] != "negative"]
    neg = [r for r in recs if r["kind"] == "negative" and twin(r) is None]
    same = [r for r in recs if r["kind"] == "negative" and twin(r) is not None]
    for kind in ("synthetic", "brighton"):
        rs = [r for r in pos if r["kind"] == kind]
        if not rs:
            continue
        n = len(rs)
        ok = [r for r in rs if r["status"] == "ok"]
        within = [r for r in ok if r["error_m"] is not None and r["error_m"] <= RIGHT_M]
        wrong = [r for r in ok if r["error_m"] is None or r["error_m"] > WRONG_M]
        recall: dict[str, dict[str, float]] = {}
        for stage in ("recall", "rerank", "consistency", "verification"):
            ranks = [r["ranks"].get(stage) for r in rs]
            recall[stage] = {
                f"R@{k}": round(sum(1 for x in ranks if x is not None and x <= k) / n, 3)
                for k in (KS if stage != "verification" else (1,))
            }
        out[kind] = {
            "queries": n,
            "located_within_5m": round(len(within) / n, 3),
            "wrong_over_25m": round(len(wrong) / n, 3),
            "no_match": round(sum(r["status"] != "ok" for r in rs) / n, 3),
            # precision of the answers within 5 m (a change that makes them coarser shows here)
            "median_error_m": round(float(np.median([r["error_m"] for r in within])), 2)
            if within
            else None,
            "recall": recall,
        }
    if neg:
        out["negatives"] = {
            "queries": len(neg),
            "accepted": round(sum(r["status"] == "ok" for r in neg) / len(neg), 3),
        }
    if same:
        out["same_place_held_out"] = {
            "queries": len(same),
            "accepted": sum(r["status"] == "ok" for r in same),
            "twins": sorted({f"{r['name']} ~ {twin(r)}" for r in same}),
        }
    stages: dict[str, list[float]] = {}
    by_outcome: dict[str, list[float]] = {"located": [], "rejected": []}
    outcome_stages: dict[str, dict[str, list[float]]] = {"located": {}, "rejected": {}}
    for r in recs:
        outcome = "located" if r["status"] == "ok" else "rejected"
        for k, v in r["timings_ms"].items():
            stages.setdefault(k, []).append(float(v))
            outcome_stages[outcome].setdefault(k, []).append(float(v))
        by_outcome[outcome].append(float(r["timings_ms"].get("total", 0.0)))
    out["latency_ms"] = {
        "per_stage": {k: _pct(v) for k, v in sorted(stages.items())},
        "per_outcome": {k: _pct(v) for k, v in by_outcome.items()},
        # a stage a frame did not reach counts as 0 ms for it (e.g. pose for a rejected frame)
        "per_outcome_stage": {
            o: {k: _pct(v + [0.0] * (len(by_outcome[o]) - len(v))) for k, v in sorted(st.items())}
            for o, st in outcome_stages.items()
            if by_outcome[o]
        },
    }
    out["rss_mb"] = recs[0]["rss_mb"] if recs else None
    return out


# --------------------------------------------------------------------------------- plots
def plot(results: dict[str, Any], out_dir: Path = IMG) -> list[Path]:
    """Located within 5 m and p95 latency against tiles (log x); the reliability diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    runs = sorted(results["sizes"].values(), key=lambda r: r["storage"]["tiles"])
    if not runs:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    tiles = [r["storage"]["tiles"] for r in runs]
    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for kind, style in (("synthetic", "o-"), ("brighton", "s--")):
        ys = [r["summary"].get(kind, {}).get("located_within_5m") for r in runs]
        if any(y is not None for y in ys):
            ax.plot(tiles, [y if y is not None else np.nan for y in ys], style, label=kind)
    wrong = [r["summary"].get("synthetic", {}).get("wrong_over_25m", np.nan) for r in runs]
    ax.plot(tiles, wrong, "x:", color="red", label="wrong > 25 m (synthetic)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels overlap
    ax.set_ylim(0, 1)
    ax.set_xlabel("tiles in the database")
    ax.set_ylabel("share of queries")
    ax.set_title("located within 5 m")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / "scale_located.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for outcome, style in (("located", "o-"), ("rejected", "s--")):
        ys = [
            ((r["summary"]["latency_ms"]["per_outcome"].get(outcome) or {}).get("p95", np.nan))
            / 1e3
            for r in runs
        ]
        ax.plot(tiles, ys, style, label=f"p95, {outcome}")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels overlap
    ax.set_xlabel("tiles in the database")
    ax.set_ylabel("seconds")
    ax.set_title("locate latency, p95 (2 CPU cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / "scale_latency.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


# --------------------------------------------------------------------------------- main
def run(
    sizes: list[int],
    n_queries: int,
    *,
    quick: bool = False,
    build_only: bool = False,
    preset: str = "accurate",
    out: Path | None = None,
    no_build: bool = False,
    from_records: bool = False,
    knobs: dict[str, Any] | None = None,
    save_results: bool = True,
) -> dict[str, Any]:
    """Build every size, evaluate it, save the JSON and return it.

    ``save_results`` False writes ``out`` only (not the per-size results and plots the README
    quotes): a run on another cache (``--cache``).

    ``no_build`` evaluates each database as it is; ``from_records`` only summarises the records
    an evaluation stopped early left (``records-<preset>.jsonl`` in the database's home).
    """
    from benchmarks.run_all import git_commit

    enc = encoder()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "preset": preset,
        "knobs": knobs or {},
        "queries": n_queries,
        "commit": git_commit(),
        "note": "wall-clock latencies: load_average (per size) says what else ran",
        "sizes": {},
    }
    qs = None if build_only or from_records else queries(n_queries, quick=quick)
    for size in sizes:
        t0 = time.perf_counter()
        settings, layers = build(
            size, enc, quick=quick, ingest_missing=not (no_build or from_records)
        )
        build_s = time.perf_counter() - t0
        # stop the server the ingest left behind, so the localizer starts its own (an ingest
        # and a localizer in one process otherwise met a server shutting down)
        _stop(settings)
        if build_only:
            continue
        label = "quick" if quick else str(size)
        tag = preset + "".join(f"_{k}{v}" for k, v in sorted((knobs or {}).items()))
        records_path = Path(settings.home) / f"records-{tag}.jsonl"
        if from_records:
            recs = [json.loads(line) for line in records_path.read_text().splitlines() if line]
            result["stopped_early"] = True
        else:
            assert qs is not None
            records_path.unlink(missing_ok=True)
            recs = evaluate(
                settings, enc, qs, preset=preset, records_path=records_path, knobs=knobs
            )
        held = [p for p, _ in distractors()[1]]
        ingested_src = sorted({la.source for la in layers if la.kind == "distractor"})
        twins = same_place(held, ingested_src)
        entry = {
            "target_tiles": size,
            "rasters": [la.name for la in layers],
            "build_s_this_run": round(build_s, 1),
            "storage": storage(settings),
            "summary": summarize(recs, twins),
            "records": recs,
            "load_average": os.getloadavg(),
        }
        result["sizes"][label] = entry
        if not quick and save_results:
            RESULTS.mkdir(parents=True, exist_ok=True)
            one = dict(result, sizes={label: entry})
            (RESULTS / f"scale_{label}.json").write_text(json.dumps(one, indent=1) + "\n")
        s = entry["summary"]
        log(f"size {label}: {json.dumps({k: v for k, v in s.items() if k != 'latency_ms'})}")
        _stop(settings)
    if not build_only:
        out = out or RESULTS / ("scale_quick.json" if quick else "scale.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        if not quick and save_results:
            plot(merged())
    return result


def encoder() -> Any:
    """The encoder the benchmark builds and locates with, on two torch threads: optimised for
    inference, on ONNX Runtime / OpenVINO when installed (the ingest default)."""
    import torch

    from geoloc.models import load_encoder
    from geoloc.models.runtime import use_runtime

    torch.set_num_threads(2)
    enc = load_encoder("sgmnet")
    enc.optimize_for_inference()
    use_runtime(enc, "auto")
    return enc


def _stop(settings: Any) -> None:
    from geoloc.store import embedded

    embedded.stop(settings)


def merged() -> dict[str, Any]:
    """The ``scale_<size>.json`` files of the results folder measured at the newest one's commit,
    as one result (for the plots: a size last run with an older chain is left out, not drawn
    beside figures it cannot be compared with)."""
    found = [
        json.loads(p.read_text())
        for p in sorted(RESULTS.glob("scale_*.json"))
        if p.stem.removeprefix("scale_").isdigit()
    ]
    out: dict[str, Any] = {"sizes": {}}
    if not found:
        return out
    newest = max(found, key=lambda r: str(r.get("date", "")))
    for r in found:
        if r.get("commit") == newest.get("commit"):
            out["sizes"].update(r["sizes"])
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description="geoloc scale benchmark")
    ap.add_argument("--quick", action="store_true", help="a few hundred tiles, ~10 queries")
    ap.add_argument("--sizes", default="1000,10000,100000", help="database sizes in tiles")
    ap.add_argument("--queries", type=int, default=None, help="synthetic positives (default 60)")
    ap.add_argument("--preset", default="accurate")
    ap.add_argument("--build-only", action="store_true", help="build/resume, do not evaluate")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default in results/)")
    ap.add_argument("--no-build", action="store_true", help="evaluate the databases as they are")
    ap.add_argument(
        "--from-records", action="store_true", help="summarise a stopped evaluation's records"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pipeline key of the preset (top_n, top_m, rotations, heading_sweep)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="rasters and databases under this folder (default $GEOLOC_SCALE_CACHE or the "
        "per-user cache); with it only --out is written, not the results the README quotes",
    )
    args = ap.parse_args(argv)
    if args.cache is not None:
        os.environ["GEOLOC_SCALE_CACHE"] = str(args.cache)
        if args.out is None and not args.build_only:
            ap.error("--cache needs --out (the README's results are not overwritten)")
    knobs = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    sizes = [300] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    n = args.queries or (8 if args.quick else 60)
    res = run(
        sizes,
        n,
        quick=args.quick,
        build_only=args.build_only,
        preset=args.preset,
        out=args.out,
        no_build=args.no_build,
        from_records=args.from_records,
        knobs=knobs,
        save_results=args.cache is None,
    )
    for label, e in res["sizes"].items():
        print(json.dumps({label: e["summary"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
