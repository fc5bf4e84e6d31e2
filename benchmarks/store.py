"""Store benchmark: bytes per tile, Postgres insert rate, k-NN latency and recall (pgvector, FAISS).

Usage: ``python -m benchmarks.store [--full]``; writes ``benchmarks/results/store.json``.

1. Real Ω/Φ: tiles of the bundled sample (and ``../shared/data/turku/sat_map_*.tif`` when
   present) at the ingest defaults (224 px, stride 112, GSD max(0.5, native)), encoded by SGM-Net.
2. Ω compression on real tiles: :class:`OmegaIndex` at its defaults vs exact 50,176-d inner
   product, held-out tiles as queries: recall@10 and 10-recall@100; and what freezing the basis
   after ``freeze_after`` vectors costs against a basis that never freezes (``--freeze`` alone).
3. pgvector on synthetic Φ drawn to match the real Φ statistics (mean, top principal directions
   and their variances, isotropic rest): insert rate through ``repository.add_tiles`` (binary
   COPY, HNSW index present, batches of 1,000), bytes per tile on disk, HNSW k-NN p50/p95 and
   recall@10 vs exact cosine, at 10k tiles (and 100k with ``full``).
4. FAISS at scale on synthetic codes drawn with the real code spectrum: flat (<= 50k) or IVF
   (above) as :class:`OmegaIndex` would build it; search p50/p95 and recall@10 vs exact, at 10k
   and 100k tiles (and 1M with ``full``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "turku_utm34n_0.28m.tif"
TURKU = REPO.parent / "shared" / "data" / "turku"


def _pct(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95))}


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


# --------------------------------------------------------------------------------------------
def encode_real(max_rasters: int | None = None) -> dict[str, np.ndarray]:
    """Ω, Φ of real tiles at the ingest defaults (bundled sample + Turku sat maps)."""
    import torch

    from geoloc.models import load_encoder
    from tiling import TileConfig, open_raster

    torch.set_num_threads(2)
    enc = load_encoder("sgmnet")
    paths = [SAMPLE] + sorted(TURKU.glob("sat_map_*.tif"))
    paths = paths[:max_rasters] if max_rasters else paths
    omegas, phis = [], []
    for p in paths:
        with open_raster(p) as r:
            gsd = max(0.5, r.gsd_m)
            tiles = list(r.tiles(TileConfig(tile_size=224, stride=112, gsd=gsd, min_valid=0.5)))
        for s in range(0, len(tiles), 16):
            out = enc.encode(np.stack([t.pixels for t in tiles[s : s + 16]]))
            omegas.append(np.asarray(out.omega, dtype=np.float32))
            phis.append(np.asarray(out.phi, dtype=np.float32))
    return {"omega": np.concatenate(omegas), "phi": np.concatenate(phis)}


OMEGA_CACHE = Path(tempfile.gettempdir()) / "geoloc-bench-omega"
#: Ingest GSDs of the real-tile Ω set (those finer than a raster's native GSD are skipped).
OMEGA_GSDS = (0.14, 0.2, 0.28, 0.4, 0.5)


def encode_real_multi(stride: int = 80, batch: int = 32) -> tuple[np.ndarray, str]:
    """Ω (float32, L2-normed) of every raster tiled at :data:`OMEGA_GSDS`; and the weights SHA.

    Tiles in raster order (the order an ingest adds them). The float16 Ω are cached under
    :data:`OMEGA_CACHE` keyed by the encoder's weights SHA-256 and the stride, so a re-run with
    the same head does not re-encode (~8,400 tiles: ~8 min on one thread).
    """
    import torch

    from geoloc.models import load_encoder
    from tiling import TileConfig, open_raster

    enc = load_encoder("sgmnet")
    sha = str(enc.weights_sha256)
    cache = OMEGA_CACHE / f"omega_{sha[:12]}_s{stride}.npy"
    if not cache.exists():
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        paths = [SAMPLE] + sorted(TURKU.glob("*.tif"))
        chunks = []
        for p in paths:
            with open_raster(p) as r:
                gsds = [g for g in OMEGA_GSDS if g >= 0.98 * r.gsd_m]
                for g in gsds:
                    cfg = TileConfig(tile_size=224, stride=stride, gsd=g, min_valid=0.5)
                    tiles = list(r.tiles(cfg))
                    for s in range(0, len(tiles), batch):
                        px = np.stack([t.pixels for t in tiles[s : s + batch]])
                        chunks.append(np.asarray(enc.encode(px).omega, dtype=np.float16))
        OMEGA_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, np.concatenate(chunks))
        os.replace(tmp, cache)
    x = np.load(cache).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, sha


#: Ω index configurations compared on real tiles: (name, OmegaIndex keyword arguments).
OMEGA_CONFIGS: tuple[tuple[str, dict[str, int]], ...] = (
    ("pca512, no refine (format 1 default)", {"target_dim": 512, "refine_dims": 0}),
    ("pca256, no refine", {"target_dim": 256, "refine_dims": 0}),
    ("pca256 + refine 64x4 @200", {"target_dim": 256, "refine_dims": 64, "refine_bits": 4}),
    ("pca256 + refine 96x4 @100", {"target_dim": 256, "refine_k": 100}),
    ("pca256 + refine 96x4 @200 (default)", {}),
    ("pca512 + refine 96x4 @100", {"target_dim": 512, "refine_k": 100}),
    ("pca256 + refine 64x8 @200", {"target_dim": 256, "refine_dims": 64, "refine_bits": 8}),
)


def omega_compression(
    omega: np.ndarray,
    configs: tuple[tuple[str, dict[str, int]], ...] = OMEGA_CONFIGS,
    n_queries: int = 300,
) -> dict[str, Any]:
    """OmegaIndex configurations vs exact 50,176-d inner product on real Ω.

    ``n_queries`` random tiles are held out as queries; the rest are added in raster order in
    batches of 16 (as an ingest does). Per configuration: recall@10 and recall@1 of the final
    search, 10-recall@k of the compressed stage alone at the re-scored depth (100 and 200),
    bytes per tile of each component (FAISS codes incl. the 8-byte id; refine codes incl. the
    8-byte id and the 4-byte norm), add rate and single-query search latency (k=10).
    """
    from geoloc.config import Settings
    from geoloc.store.omega_index import OmegaIndex

    rng = np.random.default_rng(0)
    held = np.zeros(len(omega), dtype=bool)
    held[rng.choice(len(omega), n_queries, replace=False)] = True
    q, x = omega[held], omega[~held]
    truth = np.argsort(-(q @ x.T), axis=1)
    out: dict[str, Any] = {"tiles": int(len(x)), "queries": int(len(q)), "configs": []}
    for name, kw in configs:
        home = Path(tempfile.mkdtemp(prefix="geoloc-bench-omega-", dir="/tmp"))
        try:
            ix = OmegaIndex.open(Settings(home=home), "b" * 64, omega_dim=omega.shape[1], **kw)
            t0 = time.perf_counter()
            for s in range(0, len(x), 16):
                ix.add(np.arange(s, min(s + 16, len(x)), dtype=np.int64), x[s : s + 16])
            info = ix.info()  # folds in the pending additions
            add_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ix.save()
            save_s = time.perf_counter() - t0
            ix = OmegaIndex.open(Settings(home=home), "b" * 64)  # memory-mapped, as locate does
            refine_k = ix.refine_k
            ix.refine_k = 0  # the compressed stage alone
            _, stage1 = ix.search(q, 200)
            ix.refine_k = refine_k
            times = []
            for i in range(len(q)):
                t = time.perf_counter()
                ix.search(q[i : i + 1], 10)
                times.append(time.perf_counter() - t)
            _, found = ix.search(q, 10)
            refine = info["refine"]
            row = {
                "name": name,
                **kw,
                "dim": info["dim"],
                "index_type": info["index_type"],
                "refine": refine is not None,
                "recall_at_10": _recall(found, truth[:, :10]),
                "recall_at_1": float(np.mean(found[:, 0] == truth[:, 0])),
                "stage1_recall_at_10": _recall(stage1[:, :10], truth[:, :10]),
                "stage1_10_recall_at_100": _recall(stage1[:, :100], truth[:, :10]),
                "stage1_10_recall_at_200": _recall(stage1, truth[:, :10]),
                "faiss_bytes_per_tile": 2 * info["dim"] + 8,
                # codes + int64 id + float32 norm of the decoded vector
                "refine_bytes_per_tile": (refine["bytes_per_tile"] + 12) if refine else 0,
                "add_tiles_per_s": len(x) / add_s,
                "save_s": save_s,
                "search_k10": _pct(times),
            }
            row["bytes_per_tile"] = row["faiss_bytes_per_tile"] + row["refine_bytes_per_tile"]
            out["configs"].append(row)
            print(f"omega {name}: {json.dumps(row)}", flush=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return out


#: ``freeze_after`` values compared by :func:`omega_freeze` (0: the basis never freezes).
FREEZE_AFTER = (0, 512, 1024, 2048)


def omega_freeze(
    omega: np.ndarray, values: tuple[int, ...] = FREEZE_AFTER, n_queries: int = 300
) -> dict[str, Any]:
    """What freezing the Ω basis costs in recall, on real Ω added in raster order.

    Same held-out queries as :func:`omega_compression`. Per ``freeze_after``: recall@1/@10 of
    the final (refined) search vs exact 50,176-d inner product, top-1 and top-10 agreement with
    the basis that never freezes (``freeze_after=0``), the vectors the basis had seen when it
    froze (``fit_count``), its residual energy, and the add rate (tiles/s, this machine's
    load).
    """
    from geoloc.config import Settings
    from geoloc.store.omega_index import OmegaIndex

    rng = np.random.default_rng(0)
    held = np.zeros(len(omega), dtype=bool)
    held[rng.choice(len(omega), n_queries, replace=False)] = True
    q, x = omega[held], omega[~held]
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    out: dict[str, Any] = {"tiles": int(len(x)), "queries": int(len(q)), "rows": []}
    ref: np.ndarray | None = None
    for value in values:
        home = Path(tempfile.mkdtemp(prefix="geoloc-bench-freeze-", dir="/tmp"))
        try:
            ix = OmegaIndex.open(
                Settings(home=home), "b" * 64, omega_dim=omega.shape[1], freeze_after=value
            )
            t0 = time.perf_counter()
            frozen_at = None
            for s in range(0, len(x), 16):
                ix.add(np.arange(s, min(s + 16, len(x)), dtype=np.int64), x[s : s + 16])
                if frozen_at is None and ix._basis.frozen:
                    frozen_at = ix.fit_count
            info = ix.info()
            add_s = time.perf_counter() - t0
            _, found = ix.search(q, 10)
            if ref is None:
                ref = found
            row = {
                "freeze_after": value,
                "frozen_at_vectors": frozen_at,
                "recall_at_1": float(np.mean(found[:, 0] == truth[:, 0])),
                "recall_at_10": _recall(found, truth),
                "top1_agreement_vs_growing": float(np.mean(found[:, 0] == ref[:, 0])),
                "top10_agreement_vs_growing": _recall(found, ref),
                "residual_energy": float(info["residual_energy"]),
                "add_tiles_per_s": len(x) / add_s,
            }
            out["rows"].append(row)
            print(f"omega freeze: {json.dumps(row)}", flush=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return out


def omega_search_at_scale(
    omega: np.ndarray, sizes: list[int], n_queries: int = 200, **kw: int
) -> list[dict[str, Any]]:
    """``OmegaIndex.search`` latency at ``sizes`` tiles, with and without the refine stage.

    An index is built from the real Ω at the defaults (``kw`` overrides), then grown to each
    size with synthetic rows: FAISS codes are real codes plus Gaussian noise at the code
    spectrum (so IVF lists stay balanced) and refine codes are real refine rows resampled.
    Saved and re-opened memory-mapped (as ``locate`` opens it); queries are real held-out Ω.
    Latency only: recall at scale of the compressed stage is :func:`faiss_bench`'s.
    """
    from geoloc.config import Settings
    from geoloc.store.omega_index import OmegaIndex
    from geoloc.store.refine import RefineCodes

    rng = np.random.default_rng(5)
    q = omega[rng.choice(len(omega), n_queries, replace=False)]
    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-scale-", dir="/tmp"))
    out = []
    try:
        base = OmegaIndex.open(Settings(home=home), "b" * 64, omega_dim=omega.shape[1], **kw)
        for s in range(0, len(omega), 256):
            base.add(np.arange(s, min(s + 256, len(omega)), dtype=np.int64), omega[s : s + 256])
        assert base.has_refine, "the real set must be large enough to truncate the basis"
        codes, _ = base._codes_and_ids()
        refine = base._refine
        assert refine is not None
        sd = codes.std(axis=0)
        for n in sizes:
            ids = np.arange(n, dtype=np.int64)
            pick = rng.integers(0, len(codes), n)
            c = codes[pick] + 0.5 * sd * rng.standard_normal((n, codes.shape[1])).astype(np.float32)
            c /= np.linalg.norm(c, axis=1, keepdims=True)
            ix = base
            ix._rebuild_flat(ids, c.astype(np.float32))
            ix._ids = ids
            ix._refine = RefineCodes(refine.quantizer, ids, refine.codes[pick % len(refine)])
            if n > ix.ivf_threshold:
                ix._to_ivf()
            t0 = time.perf_counter()
            ix.save()
            save_s = time.perf_counter() - t0
            ix2 = OmegaIndex.open(Settings(home=home), "b" * 64)
            row: dict[str, Any] = {
                "tiles": n,
                "index_type": ix2.index_type,
                "dim": ix2.dim,
                "save_s": save_s,
                "bytes_on_disk": {
                    name: sum(
                        (home / "index" / ("b" * 64) / f).stat().st_size
                        for f in (fs if isinstance(fs, list) else [fs])
                    )
                    for name, fs in ix2.info()["files"].items()
                },
            }
            for label, rk in (("without_refine", 0), ("with_refine", ix2.refine_k)):
                ix2.refine_k = rk
                for k, b in ((10, 1), (50, 8)):  # one query; locate: 8 headings, top 50
                    times = []
                    for i in range(0, len(q) - b + 1, b):
                        t = time.perf_counter()
                        ix2.search(q[i : i + b], k)
                        times.append(time.perf_counter() - t)
                    row[f"{label}_k{k}_b{b}"] = _pct(times)
            # what an ingest of one more raster costs: add 1,000 tiles, save (refine codes are
            # append-only segments: only the new rows are written; the FAISS file is rewritten)
            extra = np.arange(n, n + 1000, dtype=np.int64)
            grow = OmegaIndex.open(Settings(home=home), "b" * 64)
            t0 = time.perf_counter()
            grow.add(extra, omega[rng.integers(0, len(omega), 1000)])
            grow.dim  # noqa: B018 - folds the pending additions in (timed as the add)
            t1 = time.perf_counter()
            grow.save()
            row["add_1000_s"] = t1 - t0
            row["save_after_add_1000_s"] = time.perf_counter() - t1
            grow.remove(extra)
            grow.save()
            out.append(row)
            print(f"omega search at {n}: {json.dumps(row)}", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------
class Matched:
    """A Gaussian with the mean and top principal directions of real vectors, L2-normalised."""

    def __init__(self, real: np.ndarray, rank: int = 64) -> None:
        self.mean = real.mean(axis=0)
        c = real - self.mean
        _, s, vt = np.linalg.svd(c, full_matrices=False)
        r = min(rank, len(s) - 1)
        self.vt = vt[:r]
        self.sd = s[:r] / np.sqrt(len(real))
        total = float((c**2).sum() / len(real))
        self.iso = np.sqrt(max(total - float((self.sd**2).sum()), 0.0) / real.shape[1])
        self.dim = real.shape[1]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` synthetic unit vectors."""
        z = rng.standard_normal((n, len(self.sd))).astype(np.float32) * self.sd
        x = self.mean + z @ self.vt + self.iso * rng.standard_normal((n, self.dim))
        x = x.astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass
class _Tile:
    row: int
    col: int
    center_lat: float
    center_lon: float
    footprint: Any
    gsd_m: float
    valid_fraction: float
    window: Any
    transform: tuple[float, ...]
    tile_size: int


def _fake_tiles(start: int, n: int) -> list[_Tile]:
    from rasterio.windows import Window
    from shapely.geometry import box

    out = []
    for i in range(start, start + n):
        r, c = divmod(i, 1000)
        lat, lon = 60.0 + r * 5e-4, 22.0 + c * 1e-3
        out.append(
            _Tile(
                row=r,
                col=c,
                center_lat=lat,
                center_lon=lon,
                footprint=box(lon - 5e-4, lat - 2.5e-4, lon + 5e-4, lat + 2.5e-4),
                gsd_m=0.5,
                valid_fraction=1.0,
                window=Window(c * 112, r * 112, 224, 224),
                transform=(0.5, 0.0, c * 56.0, 0.0, -0.5, r * 56.0),
                tile_size=224,
            )
        )
    return out


def pgvector_bench(phi_model: Matched, sizes: list[int], n_queries: int = 50) -> list[dict]:
    """Insert rate, bytes per tile and HNSW k-NN latency/recall on an embedded server."""
    from sqlalchemy import text

    from geoloc.config import Settings
    from geoloc.store import embedded, open_database
    from geoloc.store import repository as repo

    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-pg-", dir="/tmp"))
    settings = Settings(home=home)
    out = []
    try:
        db = open_database(settings)
        enc = repo.get_or_create_encoder(db, "bench", {}, "e" * 64, 50176, phi_model.dim)
        oid = repo.begin_orthomosaic(
            db,
            path="/bench.tif",
            sha256="0" * 64,
            encoder_id=enc,
            crs="EPSG:32634",
            width=1,
            height=1,
            gsd_m=0.5,
            bounds_lonlat=(22.0, 60.0, 23.0, 61.0),
        )
        rng = np.random.default_rng(1)
        k_nodes = 8
        all_phi: list[np.ndarray] = []
        all_ids: list[int] = []
        done = 0
        for size in sorted(sizes):
            t_ins = 0.0
            inserted = size - done
            while done < size:
                b = min(1000, size - done)
                phi = phi_model.sample(rng, b)
                t0 = time.perf_counter()
                ids = repo.add_tiles(
                    db,
                    oid,
                    enc,
                    _fake_tiles(done, b),
                    phi,
                    np.full((b, k_nodes), 1 / k_nodes, np.float32),
                    rng.random((b, k_nodes, 2), dtype=np.float32),
                )
                t_ins += time.perf_counter() - t0
                all_phi.append(phi)
                all_ids += ids
                done += b
            repo.finish_orthomosaic(db, oid, done, 0)
            with db.engine.begin() as conn:
                conn.execute(text("ANALYZE"))
                sizes_b = {
                    r.relname: int(r.b)
                    for r in conn.execute(
                        text(
                            "SELECT relname, pg_total_relation_size(oid) AS b FROM pg_class "
                            "WHERE relname IN ('tiles', 'tile_embeddings')"
                        )
                    )
                }
                hnsw_b = conn.execute(
                    text("SELECT pg_relation_size('ix_tile_embeddings_phi_bq')")
                ).scalar_one()
            x = np.concatenate(all_phi)
            ids_arr = np.asarray(all_ids)
            q = phi_model.sample(rng, n_queries)
            truth = ids_arr[np.argsort(-(q @ x.T), axis=1)[:, :10]]
            res: dict[str, Any] = {
                "tiles": size,
                "insert_tiles_per_s": inserted / t_ins if t_ins else None,
                "bytes_per_tile": sum(sizes_b.values()) / size,
                "hnsw_bytes_per_tile": hnsw_b / size,
                "relations_bytes": sizes_b,
            }
            for ef in (40, 100):
                times, found = [], []
                for i in range(n_queries):
                    t = time.perf_counter()
                    got = repo.knn_phi(db, enc, q[i], k=10, ef_search=ef)
                    times.append(time.perf_counter() - t)
                    found.append([g[0] for g in got])
                res[f"knn_ef{ef}"] = {
                    **_pct(times),
                    "recall_at_10": _recall(np.array(found), truth),
                }
            out.append(res)
            print(f"pgvector {size}: {json.dumps(res)}", flush=True)
        db.dispose()
    finally:
        embedded.stop(settings)
        shutil.rmtree(home, ignore_errors=True)
    return out


def phi_type_bench(phi: np.ndarray, n_queries: int = 50) -> dict[str, Any]:
    """vector(1024) vs halfvec(1024) for Φ on real tiles: HNSW build time, size, recall@10."""
    from pgvector import HalfVector, Vector

    from geoloc.config import Settings
    from geoloc.store import embedded, open_database

    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-phi-", dir="/tmp"))
    settings = Settings(home=home)
    rng = np.random.default_rng(3)
    phi = phi / np.linalg.norm(phi, axis=1, keepdims=True)
    qi = rng.choice(len(phi), min(n_queries, len(phi) // 4), replace=False)
    q = phi[qi] + 0.5 * phi[rng.permutation(qi)]  # queries near, not at, stored tiles
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = np.argsort(-(q @ phi.T), axis=1)[:, :10]
    out: dict[str, Any] = {"tiles": int(len(phi))}
    try:
        db = open_database(settings)
        raw = db.engine.raw_connection()
        cur = raw.cursor()
        cur.execute("SET maintenance_work_mem = '512MB'")
        for typ, cls in (("vector", Vector), ("halfvec", HalfVector)):
            cur.execute(f"CREATE TABLE phi_{typ} (id int PRIMARY KEY, e {typ}(1024))")
            from psycopg2.extras import execute_values

            execute_values(
                cur,
                f"INSERT INTO phi_{typ} (id, e) VALUES %s",  # noqa: S608 - fixed names
                [(i, cls(v).to_text()) for i, v in enumerate(phi)],
            )
            t0 = time.perf_counter()
            cur.execute(f"CREATE INDEX ON phi_{typ} USING hnsw (e {typ}_cosine_ops)")
            build = time.perf_counter() - t0
            raw.commit()
            cur.execute(f"SELECT pg_indexes_size('phi_{typ}')")
            row = cur.fetchone()
            size = row[0] if row else 0
            cur.execute("SET hnsw.ef_search = 40")
            found, times = [], []
            for v in q:
                t = time.perf_counter()
                cur.execute(
                    f"SELECT id FROM phi_{typ} ORDER BY e <=> %s::{typ} LIMIT 10",  # noqa: S608
                    (cls(v).to_text(),),
                )
                found.append([r[0] for r in cur.fetchall()])
                times.append(time.perf_counter() - t)
            out[typ] = {
                "hnsw_build_s": build,
                "hnsw_bytes": int(size),
                "recall_at_10": _recall(np.array(found), truth),
                **_pct(times),
            }
        raw.close()
        db.dispose()
    finally:
        embedded.stop(settings)
        shutil.rmtree(home, ignore_errors=True)
    return out


def faiss_bench(code_sd: np.ndarray, sizes: list[int], n_queries: int = 100) -> list[dict]:
    """OmegaIndex's code-space index at scale (flat <= 50k, IVF above) vs exact."""
    import importlib

    faiss: Any = importlib.import_module("faiss")

    from geoloc.store.omega_basis import (
        DEFAULT_IVF_THRESHOLD,
        DEFAULT_NPROBE,
        IVF_RETRAIN_FACTOR,
    )

    rng = np.random.default_rng(2)
    d = len(code_sd)
    out = []
    for n in sizes:
        x = (rng.standard_normal((n, d)).astype(np.float32) * code_sd).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[rng.choice(n, n_queries, replace=False)] + 0.3 * (
            rng.standard_normal((n_queries, d)).astype(np.float32) * code_sd
        )
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        exact = faiss.IndexFlatIP(d)
        exact.add(x)
        _, truth = exact.search(q, 10)
        t0 = time.perf_counter()
        if n <= DEFAULT_IVF_THRESHOLD:
            index = faiss.IndexScalarQuantizer(
                d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            index.add(x)
            kind = "flat-fp16"
            params = None
        else:
            # as OmegaIndex does: IVF trained when the count crosses the threshold, and re-trained
            # whenever it holds IVF_RETRAIN_FACTOR times its last training count
            m = DEFAULT_IVF_THRESHOLD + 1
            while n > IVF_RETRAIN_FACTOR * m:
                m = IVF_RETRAIN_FACTOR * m + 1
            nlist = int(max(1, min(4 * np.sqrt(m), m // 39)))
            index = faiss.index_factory(d, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
            index.train(x[rng.choice(m, min(m, nlist * 64), replace=False)])
            index.add(x)
            kind = f"ivf{nlist}-sqfp16"
            params = faiss.SearchParametersIVF(nprobe=DEFAULT_NPROBE)
        build_s = time.perf_counter() - t0
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # as OmegaIndex.search does for single queries
        times, found = [], []
        for i in range(n_queries):
            t = time.perf_counter()
            _, f = (
                index.search(q[i : i + 1], 10, params=params)
                if params
                else index.search(q[i : i + 1], 10)
            )
            times.append(time.perf_counter() - t)
            found.append(f[0])
        faiss.omp_set_num_threads(threads)
        res = {
            "tiles": n,
            "dim": d,
            "index": kind,
            "build_s": build_s,
            "bytes_per_tile": d * 2 + 8,
            **_pct(times),
            "recall_at_10": _recall(np.array(found), truth),
        }
        out.append(res)
        print(f"faiss {n}: {json.dumps(res)}", flush=True)
        del x, index, exact
    return out


def code_spectrum(omega: np.ndarray) -> np.ndarray:
    """Per-dimension standard deviations of real Ω codes (PCA), extended to the target dim."""
    from geoloc.store.omega_basis import DEFAULT_TARGET_DIM

    s = np.linalg.svd(omega, compute_uv=False)
    sd = s[: min(DEFAULT_TARGET_DIM, len(s))] / np.sqrt(len(omega))
    if len(sd) < DEFAULT_TARGET_DIM:  # extend the tail with the last measured value
        sd = np.concatenate([sd, np.full(DEFAULT_TARGET_DIM - len(sd), sd[-1])])
    return sd.astype(np.float32)


def bytes_per_tile_defaults(results: dict[str, Any]) -> dict[str, Any]:
    """Bytes per tile at the defaults: Postgres (10k tiles) + FAISS codes + refine codes."""
    from geoloc.store.omega_basis import DEFAULT_TARGET_DIM

    pg = results["pgvector"][0]["bytes_per_tile"]
    faiss_codes = 2 * DEFAULT_TARGET_DIM + 8  # fp16 codes + id (up to 2x before an IVF switch)
    default = [c for c in results["omega_compression_real"]["configs"] if "(default)" in c["name"]]
    refine = default[0]["refine_bytes_per_tile"] if default else 0
    return {
        "postgres": pg,
        "faiss_codes": faiss_codes,
        "refine_codes": refine,
        "total": pg + faiss_codes + refine,
        "note": "Postgres at 10k tiles; FAISS codes at target_dim (flat: up to max_dim = 2x "
        "between re-fits); the Ω basis (max_dim x 50,176 float32) is extra, per encoder",
    }


def run_omega() -> dict[str, Any]:
    """The Ω sections: real-tile compression table and search latency at 10k / 100k tiles."""
    omega, sha = encode_real_multi()
    out: dict[str, Any] = {
        "omega_real_tiles": {
            "tiles": int(len(omega)),
            "gsds_m": list(OMEGA_GSDS),
            "stride_px": 80,
            "encoder_weights_sha256": sha,
            "rasters": 1 + len(sorted(TURKU.glob("*.tif"))),
        }
    }
    out["omega_compression_real"] = omega_compression(omega)
    out["omega_freeze_real"] = omega_freeze(omega)
    out["omega_search_at_scale"] = omega_search_at_scale(omega, [10_000, 100_000])
    return out


def run(full: bool = False) -> dict[str, Any]:
    """Run the store benchmark; save and return the results."""
    t0 = time.time()
    real = encode_real()
    omega, phi = real["omega"], real["phi"]
    results: dict[str, Any] = {"full": full, "real_tiles": int(len(omega))}
    results.update(run_omega())
    sd = code_spectrum(omega)  # real Ω spectrum in the index's code space
    results["phi_vector_vs_halfvec_real"] = phi_type_bench(phi)
    print("phi type:", json.dumps(results["phi_vector_vs_halfvec_real"]), flush=True)
    results["pgvector"] = pgvector_bench(
        Matched(phi, rank=min(64, len(phi) - 1)), [10_000, 100_000] if full else [10_000]
    )
    results["faiss"] = faiss_bench(sd, [10_000, 100_000, 1_000_000] if full else [10_000, 100_000])
    results["bytes_per_tile_defaults"] = bytes_per_tile_defaults(results)
    results["seconds"] = time.time() - t0
    if full is False and (RESULTS / "store.json").exists():  # keep a separate 1M run's figures
        old = json.loads((RESULTS / "store.json").read_text())
        if "faiss_1m" in old:
            results["faiss_1m"] = old["faiss_1m"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "store.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="add the 100k pgvector / 1M FAISS cases")
    ap.add_argument(
        "--omega-only",
        action="store_true",
        help="only the Ω sections (real-tile compression, search at scale); merged into the JSON",
    )
    ap.add_argument(
        "--freeze",
        action="store_true",
        help="only the Ω basis freeze comparison (real tiles); merged into the JSON",
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if args.freeze:
        path = RESULTS / "store.json"
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged["omega_freeze_real"] = omega_freeze(encode_real_multi()[0])
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2) + "\n")
    elif args.omega_only:
        path = RESULTS / "store.json"
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(run_omega())
        if merged.get("pgvector"):
            merged["bytes_per_tile_defaults"] = bytes_per_tile_defaults(merged)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2) + "\n")
        print(json.dumps(merged["omega_compression_real"], indent=2))
    else:
        print(json.dumps(run(full=args.full), indent=2))
