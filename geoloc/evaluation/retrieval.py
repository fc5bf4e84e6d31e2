"""Retrieval evaluation on synthetic drone views of one raster (no database needed).

The protocol of ``shared/notes/baseline-retrieval.md``: the raster is tiled like ``geoloc ingest``
does (``tile_size`` px at ``gsd`` m/px, ``stride`` px), N synthetic drone views are drawn with a
fixed seed (heading 0-360, scale 0.7-1.4, perspective tilt, colour, blur, noise, offset up to half
a stride), and each view is searched against every tile by exact cosine similarity. Headings are
unknown: as the localizer does, each view is turned north-up under ``headings`` hypotheses
(``geoloc.localize.frame.rotation_batch``: rotate, cut the central tile footprint) and a tile's
score is the best over the hypotheses. ``loc@k``: one of the top-k tile centres lies within one
stride of the truth (the ground under the view's centre).

Several encoders that share the same frozen backbone are scored on the same backbone features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from geoloc.metrics import error_summary, recall_at_k
from geoloc.models.base import EncoderOutput
from geoloc.training.synthetic import ParamRanges, ViewSynthesizer
from tiling.errors import TilingError

__all__ = [
    "ScoredEncoder",
    "SyntheticQueries",
    "TileDatabase",
    "evaluate_retrieval",
    "make_queries",
    "make_tiles",
]


class ScoredEncoder(Protocol):
    """What the retrieval evaluation uses of an encoder: the backbone / head split (so encoders
    sharing a frozen backbone share its features) and what names it in the results.
    :class:`geoloc.models.Encoder` implements it; so can a baseline that is not a plugin."""

    freeze_backbone: bool

    @property
    def weights_sha256(self) -> str | None:
        """SHA-256 of the weights, or None for an unnamed baseline."""
        ...

    def config(self) -> dict[str, Any]:
        """Parameters; the backbone ones key the feature cache."""
        ...

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB (B, 3, H, W) -> the backbone's input."""
        ...

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen, cacheable part."""
        ...

    def forward_head(self, features: torch.Tensor) -> EncoderOutput:
        """Everything after the backbone."""
        ...

    def eval(self) -> Any:
        """Inference mode."""
        ...


@dataclass
class TileDatabase:
    """Tiles of a raster: pixels (N, 3, S, S) uint8 and centres (N, 2) lon/lat."""

    pixels: np.ndarray
    lonlat: np.ndarray
    gsd_m: float
    stride_px: int
    tile_size: int
    reason: str = ""  # why the tiling policy chose this GSD


@dataclass
class SyntheticQueries:
    """Synthetic views (N, H, W, 3) uint8 at map scale, their truth lon/lat and headings."""

    images: np.ndarray
    lonlat: np.ndarray
    heading_deg: np.ndarray


def make_tiles(
    raster: str | Path, tile_size: int = 224, stride: int | None = None, gsd: float | None = None
) -> TileDatabase:
    """Tile ``raster`` as ingest does: the grid of :class:`tiling.TilingPolicy` (its default
    GSD, half-tile stride, 50 % valid pixels) unless ``gsd`` / ``stride`` are given."""
    from tiling import TilingPolicy, open_raster

    pix, ll = [], []
    with open_raster(raster) as r:
        cfg, reason = TilingPolicy(tile_size=tile_size, gsd=gsd, stride=stride).resolve(r)
        g = float(r.grid(cfg).gsd_m)
        for t in r.tiles(cfg):
            pix.append(t.pixels)
            ll.append((t.center_lon, t.center_lat))
    if not pix:
        raise TilingError(TilingPolicy().no_tiles_message(cfg, r.gsd_m), str(raster))
    return TileDatabase(np.stack(pix), np.array(ll, dtype=float), g, cfg.step, tile_size, reason)


def make_queries(
    raster: str | Path, n: int, db: TileDatabase, seed: int = 0, max_tilt_deg: float = 30.0
) -> SyntheticQueries:
    """``n`` random views of ``raster`` at the database GSD, big enough to rotate and still cut a
    full tile footprint; offsets up to half a stride."""
    size = int(math.ceil(db.tile_size * math.sqrt(2.0))) + 2
    offset_m = 0.5 * db.stride_px * db.gsd_m
    ranges = ParamRanges(max_tilt_deg=max_tilt_deg, max_offset_frac=offset_m / (size * db.gsd_m))
    syn = ViewSynthesizer(raster, size=size, gsd_m=db.gsd_m, ranges=ranges)
    rng = np.random.default_rng(seed)
    centres = syn.valid_centres(0.5 * size * db.gsd_m / 0.7 + offset_m)
    if len(centres) == 0:
        raise ValueError(f"{raster}: too small for {size} px views at {db.gsd_m} m/px")
    imgs, ll, hd = [], [], []
    for _ in range(n):
        col, row = centres[int(rng.integers(len(centres)))]
        lon, lat = syn.px_to_lonlat(float(col), float(row))
        v = syn.random_view(lon, lat, rng, min_valid=0.99)
        imgs.append(v.image)
        ll.append((v.lon, v.lat))
        hd.append(v.heading_deg)
    return SyntheticQueries(np.stack(imgs), np.array(ll), np.array(hd))


def _rotation_crops(q: SyntheticQueries, tile_size: int, headings: int) -> np.ndarray:
    """(N, H, 3, S, S): every query turned north-up under each heading hypothesis."""
    from geoloc.localize.frame import default_headings, rotation_batch

    hyps = default_headings(headings)
    out = []
    for img in q.images:
        mask = np.ones(img.shape[:2], dtype=bool)
        batch, _ = rotation_batch(img, mask, hyps, crop_px=tile_size, size=tile_size)
        out.append(batch)
    return np.stack(out)


def _backbone(enc: ScoredEncoder, images: np.ndarray, batch: int = 32) -> torch.Tensor:
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            feats.append(enc.backbone_features(enc.preprocess(images[i : i + batch])))
    return torch.cat(feats)


def _head(
    enc: ScoredEncoder, feats: torch.Tensor, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    om, ph = [], []
    enc.eval()
    with torch.no_grad():
        for i in range(0, len(feats), batch):
            o = enc.forward_head(feats[i : i + batch])
            om.append(o.omega)
            ph.append(torch.nn.functional.normalize(o.phi, dim=1))
    return torch.cat(om), torch.cat(ph)


def _rerank(first: torch.Tensor, second: torch.Tensor, depth: int) -> torch.Tensor:
    """Scores that rank the ``depth`` best tiles by ``first`` by ``second``, the rest after."""
    depth = min(depth, first.shape[1])
    top = first.topk(depth, dim=1).indices
    out = torch.full_like(second, -1e9)
    out.scatter_(1, top, second.gather(1, top))
    return out


def _backbone_key(enc: ScoredEncoder) -> tuple[Any, ...]:
    cfg = enc.config()
    return (cfg.get("backbone"), cfg.get("pretrained"), cfg.get("backbone_weights"))


def _cache_file(
    cache_dir: str | Path, key: tuple[Any, ...], db: TileDatabase, crops: np.ndarray
) -> Path:
    import hashlib

    h = hashlib.sha256(repr(key).encode())
    h.update(np.ascontiguousarray(db.pixels).tobytes())
    h.update(np.ascontiguousarray(crops).tobytes())
    return Path(cache_dir) / f"features-{h.hexdigest()[:24]}.pt"


def evaluate_retrieval(
    encoders: Mapping[str, ScoredEncoder],
    db: TileDatabase,
    queries: SyntheticQueries,
    *,
    headings: int = 8,
    ks: tuple[int, ...] = (1, 5, 10),
    log: Callable[[str], None] | None = None,
    cache_dir: str | Path | None = None,
    rerank_depth: int = 50,
) -> dict[str, Any]:
    """Score every encoder on the same tiles and views; returns JSON-able results per encoder
    and per score: ``omega``, ``phi``, ``omega+phi`` (sum of the cosines) and ``omega>phi``
    (the localizer's chain: the ``rerank_depth`` best tiles by Ω, re-ordered by Φ).

    ``cache_dir``: keep the frozen backbone's features of the tiles and views there (keyed by the
    backbone, the tiles, the views and the hypotheses), so other heads are scored without
    recomputing them.
    """
    from tiling.crs import geodesic_distance_m

    say = log or (lambda _m: None)
    n_q = len(queries.images)
    crops = _rotation_crops(queries, db.tile_size, headings)  # (N, H, 3, S, S)
    flat = crops.reshape(-1, *crops.shape[2:])
    # relevance: tiles whose centre lies within one stride of the truth
    d = geodesic_distance_m(
        np.repeat(queries.lonlat[:, None, 0], len(db.lonlat), 1),
        np.repeat(queries.lonlat[:, None, 1], len(db.lonlat), 1),
        np.repeat(db.lonlat[None, :, 0], n_q, 0),
        np.repeat(db.lonlat[None, :, 1], n_q, 0),
    )
    step_m = db.stride_px * db.gsd_m
    relevant = [set(np.nonzero(row <= step_m)[0].tolist()) for row in np.asarray(d)]
    cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, float]] = {}
    results: dict[str, Any] = {}
    for name, enc in encoders.items():
        key = _backbone_key(enc)
        frozen = bool(enc.freeze_backbone)
        file = _cache_file(cache_dir, key, db, flat) if cache_dir and frozen else None
        if key not in cache and file is not None and file.is_file():
            saved = torch.load(file, weights_only=True)
            cache[key] = (saved["tiles"], saved["queries"], 0.0)
            say(f"backbone features from {file}")
        if key not in cache or not frozen:
            t0 = time.perf_counter()
            fdb = _backbone(enc, db.pixels)
            fq = _backbone(enc, flat)
            cache[key] = (fdb, fq, time.perf_counter() - t0)
            say(
                f"backbone features: {len(fdb)} tiles + {len(fq)} query crops in "
                f"{cache[key][2]:.0f} s"
            )
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"tiles": fdb, "queries": fq}, file.with_suffix(".tmp"))
                file.with_suffix(".tmp").replace(file)
        fdb, fq, _ = cache[key]
        o_db, p_db = _head(enc, fdb)
        o_q, p_q = _head(enc, fq)
        hq = headings
        scores = {
            "omega": (o_q @ o_db.T).view(n_q, hq, -1).amax(1),
            "phi": (p_q @ p_db.T).view(n_q, hq, -1).amax(1),
        }
        scores["omega+phi"] = ((o_q @ o_db.T) + (p_q @ p_db.T)).view(n_q, hq, -1).amax(1)
        scores["omega>phi"] = _rerank(scores["omega"], scores["phi"], rerank_depth)
        res: dict[str, Any] = {}
        for sname, s in scores.items():
            k = min(max(ks), s.shape[1])
            top = s.topk(k, dim=1).indices.numpy()
            rec = recall_at_k(top.tolist(), relevant, ks)
            top1 = top[:, 0]
            err = geodesic_distance_m(
                db.lonlat[top1, 0], db.lonlat[top1, 1], queries.lonlat[:, 0], queries.lonlat[:, 1]
            )
            res[sname] = {
                **{f"loc@{kk}": v for kk, v in rec.items()},
                "top1_error": error_summary(np.asarray(err)),
            }
        results[name] = res
        say(
            f"{name}: loc@1 omega {res['omega']['loc@1']:.3f}, phi {res['phi']['loc@1']:.3f}, "
            f"omega+phi {res['omega+phi']['loc@1']:.3f}, omega>phi {res['omega>phi']['loc@1']:.3f}"
        )
    return {
        "protocol": {
            "tiles": int(len(db.pixels)),
            "tile_size_px": db.tile_size,
            "stride_px": db.stride_px,
            "gsd_m": db.gsd_m,
            "tile_ground_m": db.tile_size * db.gsd_m,
            "queries": n_q,
            "heading_hypotheses": headings,
            "correct_within_m": step_m,
            "chance_loc@1": float(np.mean([len(r) for r in relevant]) / len(db.pixels)),
        },
        "encoders": {
            name: {
                "num_nodes": enc.config().get("num_nodes"),
                "weights_sha256": enc.weights_sha256,
            }
            for name, enc in encoders.items()
        },
        "results": results,
    }
