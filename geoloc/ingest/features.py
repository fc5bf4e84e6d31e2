"""Per-tile local features at ingest: what the verifier later matches instead of raster pixels.

:func:`extract_tile_features` is the pure per-image function; :class:`TileFeatures` extracts a
batch of grid tiles at once (one XFeat forward pass) and keeps, per tile, the best-scored
keypoints of its core cell (:func:`geoloc.store.tile_features.core_box`), so overlapping tiles do
not store the same ground twice. The store turns the tile-pixel keypoints into orthomosaic-grid
coordinates (:meth:`geoloc.store.TileStore.add`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from geoloc.errors import ConfigError
from geoloc.store.tile_features import XFEAT_SPEC, FeatureSpec, core_box

__all__ = ["DETECT_TOP_K", "TileFeatures", "extract_tile_features", "feature_spec"]

#: Keypoints XFeat detects per tile before the core-cell cut and ``max_per_tile`` (every one a
#: 224 px tile yields: the cut keeps the best of the core, not the best of the whole tile).
DETECT_TOP_K = 4096

FeatureTuple = tuple[np.ndarray, np.ndarray, np.ndarray]

_lock = threading.Lock()


def feature_spec(max_per_tile: int | None = None, extractor: str = "xfeat") -> FeatureSpec:
    """The spec of the features ingest writes (``max_per_tile`` None: the default)."""
    if extractor != XFEAT_SPEC.extractor:
        raise ConfigError(f"unknown feature extractor {extractor!r} (known: xfeat)")
    if max_per_tile is None:
        return XFEAT_SPEC
    if int(max_per_tile) < 1:
        raise ConfigError(f"--features-max must be >= 1, got {max_per_tile}")
    return XFEAT_SPEC.with_max(int(max_per_tile))


@lru_cache(maxsize=2)
def _extractor(name: str) -> Any:
    if name != "xfeat":
        raise ConfigError(f"unknown feature extractor {name!r} (known: xfeat)")
    from geoloc.localize.verify import XFeatLighterGlueMatcher

    return XFeatLighterGlueMatcher(max_keypoints=DETECT_TOP_K)


def _select(
    xy: np.ndarray,
    desc: np.ndarray,
    score: np.ndarray,
    box: tuple[int, int, int, int] | None,
    limit: int,
) -> FeatureTuple:
    """Keypoints inside ``box`` (x0 <= x < x1, y0 <= y < y1), best ``limit`` by score."""
    keep = np.ones(xy.shape[0], dtype=bool)
    if box is not None:
        x0, y0, x1, y1 = box
        keep = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
    idx = np.nonzero(keep)[0]
    idx = idx[np.argsort(-score[idx], kind="stable")[:limit]]
    return (
        np.ascontiguousarray(xy[idx], dtype=np.float32),
        np.ascontiguousarray(desc[idx], dtype=np.float32),
        np.ascontiguousarray(score[idx], dtype=np.float32),
    )


def extract_batch(
    rgb: np.ndarray,
    masks: np.ndarray | None,
    *,
    spec: FeatureSpec,
    boxes: Sequence[tuple[int, int, int, int] | None] | None = None,
) -> list[FeatureTuple]:
    """Features of images ``(B, H, W, 3)`` uint8 (valid ``masks`` ``(B, H, W)``) in one pass:
    per image ``(xy (N, 2) pixels, pixel-centre convention; desc (N, dim); score (N,))``, at most
    ``spec.max_per_tile``, inside ``boxes[i]`` when given."""
    if rgb.ndim != 4 or rgb.shape[0] == 0:
        return []
    extractor = _extractor(spec.extractor)
    with _lock:  # one forward pass at a time: XFeat's module is shared
        feats = extractor.extract_batch(rgb, masks)
    out = []
    for i, f in enumerate(feats):
        box = None if boxes is None else boxes[i]
        desc = np.asarray(f.descriptors, dtype=np.float32)
        if desc.shape[1:] != (spec.dim,):
            raise ConfigError(
                f"{spec.extractor} made {desc.shape[1:]} descriptors, the spec says {spec.dim}"
            )
        out.append(_select(f.keypoints, desc, f.extra["scores"], box, spec.max_per_tile))
    return out


def extract_tile_features(
    rgb: np.ndarray,
    mask: np.ndarray | None,
    *,
    spec: FeatureSpec = XFEAT_SPEC,
    box: tuple[int, int, int, int] | None = None,
) -> FeatureTuple:
    """Keypoints of one ``(H, W, 3)`` uint8 image: ``(xy_tile_px (N, 2), desc (N, dim) unit rows,
    score (N,))``, float32, at most ``spec.max_per_tile`` (best score first), none on ``mask``
    False (eroded as verification does) and only inside ``box`` (tile pixels) when given."""
    m = None if mask is None else np.asarray(mask, dtype=bool)[None]
    return extract_batch(np.asarray(rgb)[None], m, spec=spec, boxes=[box])[0]


class TileFeatures:
    """Extracts the stored features of batches of tiles of one grid (``rows`` x ``cols``)."""

    def __init__(self, spec: FeatureSpec, *, rows: int, cols: int, tile_size: int, stride: int):
        self.spec = spec
        self.rows, self.cols = int(rows), int(cols)
        self.tile_size, self.stride = int(tile_size), int(stride)
        self.seconds = 0.0

    def __call__(self, tiles: Sequence[Any], pixels: np.ndarray) -> list[FeatureTuple]:
        """Features of ``tiles`` (``tiling.Tile``-like: row, col, mask) with ``pixels``
        ``(B, 3, S, S)`` uint8: each tile's core-cell keypoints, in tile pixels."""
        import time

        t0 = time.perf_counter()
        rgb = np.ascontiguousarray(np.transpose(np.asarray(pixels), (0, 2, 3, 1)))
        masks = np.stack([np.asarray(t.mask, dtype=bool) for t in tiles])
        boxes = [
            core_box(int(t.row), int(t.col), self.rows, self.cols, self.tile_size, self.stride)
            for t in tiles
        ]
        out = extract_batch(rgb, masks, spec=self.spec, boxes=boxes)
        self.seconds += time.perf_counter() - t0
        return out
