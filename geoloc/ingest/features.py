"""Per-tile local features at ingest: what the verifier later matches instead of raster pixels.

:func:`extract_tile_features` is the pure per-image function; :class:`TileFeatures` extracts a
batch of grid tiles at once (one XFeat forward pass) and keeps, per tile, the best-scored
keypoints of its core cell (:func:`geoloc.store.tile_features.core_box`), so overlapping tiles do
not store the same ground twice. :class:`StripFeatures` gives nearly the same per-tile result
from one pass over each *strip* (up to :attr:`StripFeatures.span` neighbouring tiles of one grid
row pasted together): the tiles overlap, so a strip has a few times fewer pixels than its tiles.
Ingest still uses :class:`TileFeatures`: with strip features a mirrored view passed verification
(``tests/localize/test_verify_features.py::test_mirrored_view_is_rejected``), so the switch waits
until that is understood.
The store turns the tile-pixel keypoints into orthomosaic-grid coordinates
(:meth:`geoloc.store.TileStore.add`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from geoloc.errors import ConfigError
from geoloc.store.tile_features import XFEAT_SPEC, FeatureSpec, core_box

__all__ = [
    "DETECT_TOP_K",
    "STRIP_MAX_WIDTH",
    "StripFeatures",
    "TileFeatures",
    "extract_tile_features",
    "feature_spec",
]

#: Keypoints XFeat detects per tile before the core-cell cut and ``max_per_tile`` (every one a
#: 224 px tile yields: the cut keeps the best of the core, not the best of the whole tile).
DETECT_TOP_K = 4096

#: Widest strip (pixels) :class:`StripFeatures` pastes: bounds XFeat's activations per image.
STRIP_MAX_WIDTH = 2048

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
    # every keypoint a tile's worth of pixels yields, whatever the image's width (strips)
    top_k = -(-DETECT_TOP_K * rgb.shape[1] * rgb.shape[2] // (224 * 224))
    with _lock:  # one forward pass at a time: XFeat's module is shared
        extractor.max_keypoints = max(DETECT_TOP_K, top_k)
        try:
            feats = extractor.extract_batch(rgb, masks)
        finally:
            extractor.max_keypoints = DETECT_TOP_K
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

    def add(self, tiles: Sequence[Any], pixels: np.ndarray) -> list[FeatureTuple]:
        """The features of ``tiles`` (the stream's interface; nothing is held back)."""
        return self(tiles, pixels)

    def finish(self) -> list[FeatureTuple]:
        """Nothing: every tile was answered by :meth:`add`."""
        return []


class StripFeatures:
    """The stored features of a grid's tiles, extracted once per strip of one row.

    Tiles arrive in row-major order (:meth:`add`, a batch at a time). A strip is row ``r``,
    columns ``[c0, c0 + span)``: the kept tiles there are pasted at their grid offsets into one
    ``tile_size``-high image (each tile's own pixels on its core cell, neighbours' around it;
    outside every tile: invalid), one XFeat pass finds its keypoints, and each tile keeps the
    best of those in its core cell, in its own pixels. Vertically a core cell sees the same
    context as in its tile, horizontally more, so the keypoints are those of the tile up to
    the detector's response to the extra context (``tests/ingest/test_strip_features.py``
    bounds the difference).

    :meth:`add` returns the features of the tiles whose strips are complete (a prefix of the
    tiles given so far, in order), :meth:`finish` those of the rest.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        rows: int,
        cols: int,
        tile_size: int,
        stride: int,
        max_width: int = STRIP_MAX_WIDTH,
    ) -> None:
        self.spec = spec
        self.rows, self.cols = int(rows), int(cols)
        self.tile_size, self.stride = int(tile_size), int(stride)
        ts, st = self.tile_size, self.stride
        #: tiles per strip (1 when tiles do not overlap: a strip would save nothing)
        self.span = max(1, (int(max_width) - ts) // st + 1) if st < ts else 1
        self.seconds = 0.0
        self._open: list[tuple[Any, np.ndarray]] = []
        self._start: tuple[int, int] = (-1, -1)  # (row, first column) of the open strip
        self._full: list[list[tuple[Any, np.ndarray]]] = []

    def _close(self) -> None:
        if self._open:
            self._full.append(self._open)
        self._open = []

    def add(self, tiles: Sequence[Any], pixels: np.ndarray) -> list[FeatureTuple]:
        """Take a batch (``tiling.Tile``-like: row, col, mask; ``pixels`` ``(B, 3, S, S)``
        uint8); return the features of the tiles whose strips it completed."""
        for t, px in zip(tiles, np.asarray(pixels), strict=True):
            row, col = int(t.row), int(t.col)
            if self._open and (row != self._start[0] or col >= self._start[1] + self.span):
                self._close()
            if not self._open:
                self._start = (row, col)
            self._open.append((t, px))
        return self._extract()

    def finish(self) -> list[FeatureTuple]:
        """The features of the tiles still held (the last strip)."""
        self._close()
        return self._extract()

    def _paste(self, strip: list[tuple[Any, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        ts, st = self.tile_size, self.stride
        c0 = int(strip[0][0].col)
        width = self._width(strip)
        rgb = np.zeros((ts, width, 3), dtype=np.uint8)
        mask = np.zeros((ts, width), dtype=bool)
        covered = np.zeros(width, dtype=bool)
        for t, px in strip:
            x = (int(t.col) - c0) * st
            rgb[:, x : x + ts] = np.transpose(px, (1, 2, 0))
            mask[:, x : x + ts] |= np.asarray(t.mask, dtype=bool)
            covered[x : x + ts] = True
        # outside every tile counts as valid: no core cell keeps a keypoint there, and a mask
        # edge would erode the keypoints of a core cell on the grid's border, which its tile's
        # own edge does not
        mask[:, ~covered] = True
        for t, px in strip:  # each core cell shows its own tile's pixels
            x0, _, x1, _ = self._box(t)
            x = (int(t.col) - c0) * st
            rgb[:, x + x0 : x + x1] = np.transpose(px[:, :, x0:x1], (1, 2, 0))
            mask[:, x + x0 : x + x1] = np.asarray(t.mask, dtype=bool)[:, x0:x1]
        return rgb, mask

    def _width(self, strip: list[tuple[Any, np.ndarray]]) -> int:
        """Width of a strip's image: up to its last tile's edge (a sparse row, e.g. a rebuild of
        a few tiles, costs no more than its tiles), padded to XFeat's multiple of 32 px."""
        span = int(strip[-1][0].col) - int(strip[0][0].col)
        return -(-(span * self.stride + self.tile_size) // 32) * 32

    def _box(self, t: Any) -> tuple[int, int, int, int]:
        return core_box(int(t.row), int(t.col), self.rows, self.cols, self.tile_size, self.stride)

    def _extract(self) -> list[FeatureTuple]:
        if not self._full:
            return []
        import time

        t0 = time.perf_counter()
        strips, self._full = self._full, []
        out: list[FeatureTuple] = []
        st = self.stride
        groups: list[list[list[tuple[Any, np.ndarray]]]] = []
        for strip in strips:  # a few strips of one width per pass (bounds the activations)
            if groups and len(groups[-1]) < 4 and self._width(groups[-1][0]) == self._width(strip):
                groups[-1].append(strip)
            else:
                groups.append([strip])
        for group in groups:
            pasted = [self._paste(strip) for strip in group]
            rgb = np.stack([p[0] for p in pasted])
            masks = np.stack([p[1] for p in pasted])
            every = self.spec.with_max(10**9)  # the cut per tile comes below
            for strip, found in zip(group, extract_batch(rgb, masks, spec=every), strict=True):
                xy, desc, score = found
                c0 = int(strip[0][0].col)
                for t, _ in strip:
                    x0, y0, x1, y1 = self._box(t)
                    off = np.array([(int(t.col) - c0) * st, 0], dtype=np.float32)
                    box = (x0 + int(off[0]), y0, x1 + int(off[0]), y1)
                    kxy, kd, ks = _select(xy, desc, score, box, self.spec.max_per_tile)
                    out.append((np.ascontiguousarray(kxy - off), kd, ks))
        self.seconds += time.perf_counter() - t0
        return out
