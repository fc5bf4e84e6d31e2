"""Map regions assembled from per-tile local features, for verification without pixels.

A region around a candidate tile is the keypoints of the tiles of the same orthomosaic near it,
brought into one frame: the region's pixels, north-up at the map's GSD, centred on the
candidate (the same frame :class:`~geoloc.localize.regions.MapRegions` reads pixels in, so the
scheduler turns a match into lon/lat the same way). Tiles overlap (half-tile stride): each
keypoint is kept only from the tile whose centre is nearest to it, so the overlap does not
double the keypoints.

Tile features come from a :class:`TileFeatureSource`:

- :class:`StoredTileFeatures`: the store's precomputed features (``TileStore.features``),
  written at ingest;
- :class:`ExtractedTileFeatures`: features of the same kind extracted here from the rasters,
  tile by tile, and kept in memory (databases ingested without features).

Keypoints are :class:`~geoloc.store.tile_features.TileKeypoints`: in the orthomosaic's grid at
the tile GSD (:func:`~geoloc.store.tile_features.grid_origin`), pixel-centre convention.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from affine import Affine

from geoloc.localize.regions import MapRegions
from geoloc.localize.verify import Features
from geoloc.lru import Lru
from geoloc.store.records import OrthoGrid
from geoloc.store.tile_features import TileKeypoints, TilePoints, grid_origin

log = logging.getLogger(__name__)


@runtime_checkable
class TileFeatureSource(Protocol):
    """Where a region's tile features come from (``kind`` names the extractor, e.g. xfeat).

    A source with ``needs_records`` False reads only ``tile_id`` of the records it is given,
    so a region's neighbours can be :class:`~geoloc.store.records.TileGrid` places instead of
    full candidate records (a source without the attribute gets full records).
    """

    kind: str

    def features(self, tiles: Sequence[Any]) -> dict[int, Any]:
        """Features (``xy``/``desc``/``score``) of these tile records by tile id; missing ones
        (no features stored, raster unreadable) are left out."""
        ...


@dataclass
class RegionFeatures:
    """A region assembled from tile features: matcher-ready ``features`` in region pixels,
    the region's ``transform`` (region pixel corner -> raster CRS) and the tiles used."""

    features: Features
    transform: Affine
    tile_ids: tuple[int, ...]
    size_px: int


class StoredTileFeatures:
    """The store's precomputed tile features (``store.features(ids)``), decoded once per tile.

    Neighbouring candidates share most of their tiles, and a warm localizer (serve, track) meets
    the same tiles frame after frame: an LRU keeps ``cache_size`` decoded tiles. A tile's stored
    features change only when the feature store is re-opened (an ingest or a rebuild saved new
    ones), which gives a new ``store.feature_spec`` object: the cache is then emptied.
    """

    #: features by tile id: neighbours' grid places suffice (see :class:`TileFeatureSource`)
    needs_records = False

    def __init__(self, store: Any, kind: str = "xfeat", cache_size: int = 2048) -> None:
        self._store = store
        self.kind = kind
        self.cache_size = int(cache_size)
        self._cache: Lru[int, Any] = Lru(self.cache_size)
        self._spec: Any = None

    def features(self, tiles: Sequence[Any]) -> dict[int, Any]:
        """The stored features of these tiles."""
        return self.by_ids([int(t.tile_id) for t in tiles])

    def points(self, ids: Sequence[int] | np.ndarray) -> TilePoints:
        """The stored records of the tiles with these ids, not decoded (not cached either: a
        region decodes only the keypoints it keeps, and the records are memory-mapped)."""
        return self._store.feature_points(ids)

    def by_ids(self, ids: Sequence[int]) -> dict[int, Any]:
        """The stored features of the tiles with these ids."""
        spec = self._store.feature_spec
        if spec is not self._spec:
            self._cache.clear()
            self._spec = spec
        missing = [i for i in ids if i not in self._cache]
        got = self._store.features(missing) if missing else {}
        out: dict[int, Any] = {}
        for i in ids:
            f = self._cache.get(i)
            if f is None:
                f = got.get(i)
                if f is None:
                    continue
                self._cache.put(i, f)
            out[i] = f
        self._cache.trim()
        return out


class ExtractedTileFeatures:
    """Tile features extracted from the rasters with the verifier's matcher, kept per tile.

    Each tile is read at its own GSD from ``regions`` (so bundles with regions work too) and
    keeps its best ``max_per_tile`` keypoints; :class:`FeatureRegions` keeps each from the tile
    nearest to it, as the stored features were cut at ingest. An LRU keeps ``cache_size`` tiles.
    """

    #: keypoints detected per tile before the central-square cut (as ingest does)
    DETECT_TOP_K = 4096
    #: a tile's pixels are read from its raster: full records
    needs_records = True

    def __init__(
        self,
        matcher: Any,
        regions: MapRegions,
        *,
        kind: str = "xfeat",
        max_per_tile: int = 256,
        cache_size: int = 4096,
    ) -> None:
        self.kind = kind
        self._matcher = matcher
        self._regions = regions
        self.max_per_tile = int(max_per_tile)
        self.cache_size = int(cache_size)
        self._cache: Lru[int, TileKeypoints] = Lru(self.cache_size)

    def features(self, tiles: Sequence[Any]) -> dict[int, Any]:
        """Features of these tiles (extracted on first use)."""
        out: dict[int, Any] = {}
        for t in tiles:
            tid = int(t.tile_id)
            hit = self._cache.get(tid)
            if hit is None:
                hit = self._extract(t)
                if hit is None:
                    continue
                self._cache.put(tid, hit)
                self._cache.trim()
            out[tid] = hit
        return out

    def _extract(self, tile: Any) -> TileKeypoints | None:
        ts = int(tile.tile_size)
        # the tile at its own GSD: its pixels, whichever GSD layer it is of
        rgb, mask, _t = self._regions.around(tile, ts, float(tile.gsd_m))
        if not mask.any():
            return None
        f = self._matcher.extract(rgb, mask, top_k=self.DETECT_TOP_K)
        # region pixels -> tile pixels (the region is the tile, at the tile's GSD)
        k = 1.0
        xy = (f.keypoints.astype(np.float64) + 0.5 - ts / 2.0) * k + ts / 2.0 - 0.5
        desc = np.asarray(f.descriptors, dtype=np.float32)
        score = np.asarray(f.extra.get("scores", np.ones(len(f), np.float32)), np.float32)
        idx = np.argsort(-score, kind="stable")[: self.max_per_tile]
        xy = xy[idx] + np.asarray(grid_origin(tile), dtype=np.float64)
        return TileKeypoints(xy.astype(np.float32), desc[idx], score[idx])


def region_transform(tile: Any, size_px: int, map_gsd_m: float) -> Affine:
    """Region pixel corner -> raster CRS of a ``size_px`` region at the map's GSD on ``tile``."""
    ts = float(tile.tile_size)
    k = float(map_gsd_m) / float(tile.gsd_m)
    # the tile transform after: to the tile's centre, scaled by k, from the region's corner
    off = k * -(size_px / 2.0) + ts / 2.0
    return tile.transform @ Affine(k, 0.0, off, 0.0, k, off)


class FeatureRegions:
    """Regions around candidate tiles, assembled from tile features (see the module docstring).

    ``max_keypoints`` caps a region's keypoints (best detection scores first). With stored
    features and a store that knows its orthomosaics' grids (:meth:`TileStore.grid`), a
    region's neighbours are a slice of its orthomosaic's grid; otherwise they come from a
    geographic query, whose tile records are cached (``cache_size`` tiles). The last
    ``region_cache`` regions are kept: the heading sweep checks its candidates' regions again
    at other headings, and a tracked flight meets the same candidates frame after frame.
    """

    def __init__(
        self,
        store: Any,
        source: TileFeatureSource,
        *,
        map_gsd_m: float,
        max_keypoints: int = 2048,
        cache_size: int = 4096,
        region_cache: int = 32,
    ) -> None:
        self.store = store
        self.source = source
        self.map_gsd_m = float(map_gsd_m)
        self.max_keypoints = int(max_keypoints)
        self.cache_size = int(cache_size)
        self._tiles: Lru[int, Any] = Lru(self.cache_size)
        self._near: Lru[tuple[int, int, float], tuple[int, ...]] = Lru(self.cache_size)
        self._regions: Lru[tuple[int, int, float], RegionFeatures] = Lru(int(region_cache))
        self._spec: Any = None
        # neighbours by grid slice: the source reads features by tile id, the store has grids
        self._by_grid = (
            not getattr(source, "needs_records", True)
            and callable(getattr(source, "by_ids", None))
            and callable(getattr(store, "grid", None))
        )

    def _grid(self, tile: Any) -> OrthoGrid | None:
        """The grid of the tile's orthomosaic when regions are sliced from it, else None."""
        if not self._by_grid:
            return None
        g = self.store.grid(int(tile.orthomosaic_id))
        if g is None or int(g.tile_size) != int(tile.tile_size):
            return None
        r, c = int(tile.row), int(tile.col)
        if not (0 <= r < g.ids.shape[0] and 0 <= c < g.ids.shape[1]):
            return None
        return g if int(g.ids[r, c]) == int(tile.tile_id) else None

    def neighbourhood(self, tile: Any, size_px: int, gsd_m: float | None = None) -> list[Any]:
        """Tile records of the same orthomosaic whose pixels can fall in the region (of
        ``size_px`` at ``gsd_m``, default the map's GSD), by a geographic query."""
        gsd = self.map_gsd_m if gsd_m is None else float(gsd_m)
        key = (int(tile.tile_id), int(size_px), gsd)
        self._prefetch_query([tile], size_px, gsd)
        ids = self._near[key]
        if any(i not in self._tiles for i in ids):  # records evicted since: fetch them again
            self._fetch([i for i in ids if i not in self._tiles])
        return [self._tiles[i] for i in ids if i in self._tiles] or [tile]

    def prefetch(self, tiles: Sequence[Any], size_px: int, gsd_m: float | None = None) -> None:
        """Look up the neighbourhoods of these candidate tiles (regions of ``size_px`` at
        ``gsd_m``) at once: their orthomosaics' grids, or one store query with the grid places
        of their new neighbours (a source that needs full records gets them in one more), so
        a cascade chunk costs at most one or two queries, not one per candidate."""
        gsd = self.map_gsd_m if gsd_m is None else float(gsd_m)
        rest = [t for t in tiles if self._grid(t) is None]
        if rest:
            self._prefetch_query(rest, size_px, gsd)

    def _prefetch_query(self, tiles: Sequence[Any], size_px: int, gsd: float) -> None:
        new: dict[tuple[int, int, float], tuple[Any, tuple[float, float, float]]] = {}
        for t in tiles:
            key = (int(t.tile_id), int(size_px), gsd)
            if key in self._near:
                self._near.touch([key])
            elif key not in new:
                ts_m = float(t.tile_size) * float(t.gsd_m)
                # region corner to centre, plus a tile's half diagonal
                radius = (size_px * gsd + ts_m) / 2.0 * 1.4143
                new[key] = (t, (float(t.center_lat), float(t.center_lon), radius))
        if not new:
            return
        # one query; a region is cut from its tile's raster
        circles = [c for _t, c in new.values()]
        oids: list[int | None] = [int(t.orthomosaic_id) for t, _c in new.values()]
        for t, _c in new.values():
            self._tiles.put(int(t.tile_id), t)
        if getattr(self.source, "needs_records", True):
            found = self.store.within_many(circles, oids)
        else:  # the neighbours' grid places come with their ids: no record fetch
            grids = self.store.grids_within_many(circles, oids)
            for g in (g for gs in grids for g in gs):
                if g.tile_id not in self._tiles:
                    self._tiles.put(g.tile_id, g)
            found = [np.asarray([g.tile_id for g in gs], dtype=np.int64) for gs in grids]
        pending = {
            key: (t, np.asarray(near, dtype=np.int64))
            for (key, (t, _c)), near in zip(new.items(), found, strict=True)
        }
        wanted = {int(i) for _t, near in pending.values() for i in near}
        self._tiles.touch(wanted)
        self._fetch(sorted(i for i in wanted if i not in self._tiles))
        for key, (t, near) in pending.items():
            # the query kept the candidate's orthomosaic only
            ids = tuple(int(i) for i in near if int(i) in self._tiles)
            if int(t.tile_id) not in ids:
                ids = (int(t.tile_id), *ids)
            self._near.put(key, ids)
        self._near.trim()
        self._tiles.trim()

    def _fetch(self, ids: Sequence[int]) -> None:
        """The records of these tile ids into the cache (most recent last)."""
        if ids:
            # geometry only: a neighbour's Φ is never read, and it is most of a row's bytes
            for r in self.store.candidates(list(ids), embeddings=False):
                self._tiles.put(int(r.tile_id), r)

    def around(self, tile: Any, size_px: int, gsd_m: float | None = None) -> RegionFeatures:
        """The region of ``size_px`` around ``tile`` at ``gsd_m`` (default: the map's GSD, else
        the candidate's GSD layer) from its neighbourhood's features."""
        gsd = self.map_gsd_m if gsd_m is None else float(gsd_m)
        spec = getattr(self.store, "feature_spec", None)
        if spec is not self._spec:  # new stored features: regions made of the old are stale
            self._regions.clear()
            self._spec = spec
        key = (int(tile.tile_id), int(size_px), gsd)
        hit = self._regions.get(key)
        if hit is not None:
            return hit
        grid = self._grid(tile)
        points = getattr(self.source, "points", None)
        if grid is not None:
            ids, colrow = _grid_neighbours(tile, size_px, gsd / float(tile.gsd_m), grid)
            if callable(points):
                region = self._assemble_points(tile, size_px, gsd, points(ids))
            else:
                feats = self.source.by_ids(ids.tolist())  # type: ignore[attr-defined]
                region = self._assemble(tile, size_px, gsd, ids, colrow, float(grid.stride), feats)
        else:
            tiles = self.neighbourhood(tile, size_px, gsd)
            feats = self.source.features(tiles)
            ids = np.array([int(t.tile_id) for t in tiles], dtype=np.int64)
            colrow = np.array([(int(t.col), int(t.row)) for t in tiles], dtype=np.int64)
            region = self._assemble(
                tile, size_px, gsd, ids, colrow.reshape(-1, 2), _stride(tiles, tile), feats
            )
        self._regions.put(key, region)
        self._regions.trim()
        return region

    def _assemble(
        self,
        tile: Any,
        size_px: int,
        gsd: float,
        ids: np.ndarray,
        colrow: np.ndarray,
        s: float,
        feats: dict[int, Any],
    ) -> RegionFeatures:
        """The region from its neighbours' features (``ids`` with their grid ``colrow``)."""
        with_f = np.array([int(i) in feats for i in ids.tolist()], dtype=bool)
        # every neighbour's keypoints in one array, with the (col, row) of the tile they are of
        have = [j for j, i in enumerate(ids.tolist()) if with_f[j] and len(feats[int(i)].xy) > 0]
        if have:
            fs = [feats[int(ids[j])] for j in have]
            counts = np.array([len(f.xy) for f in fs])
            owner = np.repeat(np.arange(len(have)), counts)
            xy = np.concatenate([np.asarray(f.xy, dtype=np.float64) for f in fs])
            p, keep = _region_pixels(
                tile, size_px, gsd, s, xy, colrow[np.asarray(have)][owner], colrow[with_f]
            )
            xy_r = p[keep]
            desc = np.concatenate([np.asarray(f.desc, dtype=np.float32) for f in fs])[keep]
            score = np.concatenate([np.asarray(f.score, dtype=np.float32) for f in fs])[keep]
            used = [int(ids[have[i]]) for i in np.unique(owner[keep])]
        else:
            xy_r, desc, score = np.zeros((0, 2)), np.zeros((0, 64), np.float32), np.zeros(0)
            used = []
        if len(score) > self.max_keypoints:
            top = np.argsort(-score, kind="stable")[: self.max_keypoints]
            xy_r, desc = xy_r[top], desc[top]
        return _region(tile, size_px, gsd, xy_r, desc, used)

    def _assemble_points(
        self,
        tile: Any,
        size_px: int,
        gsd: float,
        pts: TilePoints,
    ) -> RegionFeatures:
        """:meth:`_assemble` from the neighbours' undecoded records: the keypoints are chosen
        by position and score, and only the chosen ones' descriptors decoded.

        Stored keypoints were cut to their tile's core cell at ingest
        (:func:`~geoloc.store.tile_features.core_box`), and the cells do not overlap: the
        region's bounds alone choose them, where :meth:`_assemble` (features extracted over
        whole tiles) keeps each keypoint from the tile whose centre is nearest. Keypoints on
        the pixel grid, as XFeat's are, give the same region either way."""
        owner = pts.owner
        if len(owner):
            p = _grid_to_region(tile, size_px, gsd, pts.xy().astype(np.float64))
            keep = (p >= 0).all(axis=1) & (p < size_px).all(axis=1)
            sel = np.flatnonzero(keep)
            if len(sel) > self.max_keypoints:
                score = pts.recs["score"][sel].astype(np.float32)
                sel = sel[np.argsort(-score, kind="stable")[: self.max_keypoints]]
            xy_r, desc = p[sel], pts.descriptors(sel)
            used = pts.ids[np.unique(owner[keep])].tolist()
        else:
            xy_r, desc = np.zeros((0, 2)), np.zeros((0, max(pts.dim, 1)), np.float32)
            used = []
        return _region(tile, size_px, gsd, xy_r, desc, used)


def _region_pixels(
    tile: Any,
    size_px: int,
    gsd: float,
    s: float,
    xy: np.ndarray,
    own_cr: np.ndarray,
    with_cr: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Grid keypoints ``xy`` (float64) in the region's pixels, and which the region keeps: in
    the region and in the grid cell of the tile they are of (``own_cr``, (col, row) per
    keypoint), or in a cell no tile with features (``with_cr``) holds; ``s`` is the stride."""
    ts = float(tile.tile_size)
    # keep each keypoint from the tile whose centre is nearest (the grid cell it is in)
    cell = np.floor((xy + 0.5 - ts / 2.0) / s + 0.5).astype(np.int64)
    own = (cell == own_cr).all(axis=1)
    if len(with_cr) > 1:  # ... or from any tile when that cell's tile has no features
        own |= ~np.isin(_cell_key(cell[:, 1], cell[:, 0]), _cell_key(with_cr[:, 1], with_cr[:, 0]))
    p = _grid_to_region(tile, size_px, gsd, xy)
    return p, own & (p >= 0).all(axis=1) & (p < size_px).all(axis=1)


def _grid_to_region(tile: Any, size_px: int, gsd: float, xy: np.ndarray) -> np.ndarray:
    """Grid keypoints ``xy`` (float64) in the pixels of the ``size_px`` region around ``tile``
    at ``gsd``: grid pixel -> candidate tile pixel corner -> region pixel (centre convention)."""
    origin = np.asarray(grid_origin(tile), dtype=np.float64)
    k = gsd / float(tile.gsd_m)
    out: np.ndarray = ((xy + 0.5 - origin) - float(tile.tile_size) / 2.0) / k + size_px / 2.0 - 0.5
    return out


def _region(
    tile: Any, size_px: int, gsd: float, xy: np.ndarray, desc: np.ndarray, used: list[int]
) -> RegionFeatures:
    """The matcher-ready region of these region-pixel keypoints and descriptors."""
    import torch

    f = Features(
        np.ascontiguousarray(xy, dtype=np.float32),
        torch.from_numpy(np.ascontiguousarray(desc, dtype=np.float32)),
        (int(size_px), int(size_px)),
    )
    return RegionFeatures(f, region_transform(tile, size_px, gsd), tuple(used), int(size_px))


def _grid_neighbours(
    tile: Any, size_px: int, k: float, grid: OrthoGrid
) -> tuple[np.ndarray, np.ndarray]:
    """The ids and (col, row) of the grid's tiles whose core cell can hold keypoints of the
    region of ``size_px`` region pixels (``k`` grid pixels each) centred on ``tile``.

    A tile's stored keypoints lie in its core cell (:func:`~geoloc.store.tile_features.core_box`:
    the central ``stride`` square, reaching the grid's edge on its first and last row and
    column), so the cells that meet the region's square (a pixel of margin) are all it needs.
    """
    ts, st = int(grid.tile_size), min(int(grid.stride), int(grid.tile_size))
    m = (ts - st) // 2
    x0, y0 = grid_origin(tile)
    half = size_px * k / 2.0 + 1.0

    def span(centre: float, n: int) -> tuple[int, int]:
        a = np.arange(n, dtype=np.float64) * grid.stride + m
        b = a + st
        if n:
            a[0], b[-1] = 0.0, (n - 1) * grid.stride + ts
        hit = np.nonzero((a < centre + half) & (b > centre - half))[0]
        return (int(hit[0]), int(hit[-1]) + 1) if len(hit) else (0, 0)

    r0, r1 = span(y0 + ts / 2.0, grid.ids.shape[0])
    c0, c1 = span(x0 + ts / 2.0, grid.ids.shape[1])
    block = grid.ids[r0:r1, c0:c1]
    rr, cc = np.nonzero(block >= 0)
    return block[rr, cc], np.stack([cc + c0, rr + r0], axis=1).astype(np.int64)


def _cell_key(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """One int64 per grid cell (row, col), for set membership in numpy."""
    return np.asarray((row.astype(np.int64) << 32) + (col.astype(np.int64) + (1 << 31)))


def _stride(tiles: Sequence[Any], tile: Any) -> float:
    """The grid's tile stride (pixels), from the grid origins of neighbouring tiles."""
    x0, y0 = grid_origin(tile)
    steps = []
    for t in tiles:
        dc, dr = int(t.col) - int(tile.col), int(t.row) - int(tile.row)
        x, y = grid_origin(t)
        if dc:
            steps.append((x - x0) / dc)
        if dr:
            steps.append((y - y0) / dr)
    return float(np.median(steps)) if steps else float(tile.tile_size)
