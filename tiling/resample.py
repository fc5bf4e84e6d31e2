"""Area-average and nearest downsampling whose output pixels depend only on their own footprint.

GDAL's resampled reads depend on the window they are read in (a pixel of a tile read alone
differs from the same pixel read as part of a wider band, by up to tens of grey levels), so a
grid read through GDAL must read one window per tile, and with overlapping tiles every source
pixel is decoded and averaged once per tile that holds it. Here an output pixel is a function
of the source pixels under its footprint alone, computed in the same order whatever else is
read with it: a band of tiles read at once gives each tile the pixels it would get alone, and
a source pixel is read once per band.

Output pixel ``j`` along an axis covers source coordinates ``[b_j, b_{j+1})`` with
``b_j = (k0 + j) * scale`` when the window starts on the output grid of its origin (``offset =
k0 * scale``, as every tile window of a :class:`tiling.Grid` does), else ``offset + j * scale``.
Source pixel ``i`` covers ``[i, i + 1)``; its weight in output ``j`` is the length of the overlap.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["AxisWeights", "axis_weights", "downsample"]

# a window offset this close to a multiple of the scale starts on that output grid
_GRID_EPS = 1e-6


class AxisWeights:
    """Per output pixel along one axis: the source pixels it overlaps and the overlaps.

    Attributes:
        index: ``(n_out, m)`` int64 source pixel indices relative to ``start`` (padding: 0).
        weight: ``(n_out, m)`` float32 overlap lengths in source pixels (padding: 0).
        nearest: ``(n_out,)`` int64 index (relative to ``start``) of the source pixel holding
            the output pixel's centre.
        start, stop: the source pixels ``[start, stop)`` to read.
    """

    def __init__(
        self, index: np.ndarray, weight: np.ndarray, nearest: np.ndarray, start: int, stop: int
    ) -> None:
        self.index, self.weight, self.nearest = index, weight, nearest
        self.start, self.stop = start, stop


def axis_weights(offset: float, scale: float, first: int, last: int, limit: int) -> AxisWeights:
    """Weights of output pixels ``[first, last)`` of a window starting at source ``offset``
    with ``scale`` source pixels per output pixel, over source pixels ``[0, limit)``.

    The caller only asks for output pixels whose centres lie inside ``[0, limit)``
    (:func:`tiling.grid.inside_range`); parts of their footprints beyond it get no weight.
    """
    q = offset / scale
    k0 = round(q)
    j = np.arange(first, last + 1, dtype=np.float64)
    b = (k0 + j) * scale if abs(q - k0) < _GRID_EPS else offset + j * scale
    centre = np.floor(0.5 * (b[:-1] + b[1:])).astype(np.int64)
    lo, hi = np.clip(b[:-1], 0.0, limit), np.clip(b[1:], 0.0, limit)
    start = max(0, min(int(math.floor(lo[0])), int(centre.min())))
    stop = min(limit, max(int(math.ceil(hi[-1])), int(centre.max()) + 1))
    m = int(math.ceil(scale)) + 1
    i = np.floor(lo).astype(np.int64)[:, None] + np.arange(m, dtype=np.int64)[None, :]
    w = np.minimum(hi[:, None], i + 1.0) - np.maximum(lo[:, None], i.astype(np.float64))
    inside = (w > 0.0) & (i < stop)
    index = np.where(inside, i - start, 0)
    weight = np.where(inside, w, 0.0).astype(np.float32)
    nearest = np.clip(centre, start, stop - 1) - start
    return AxisWeights(index, weight, nearest, start, stop)


def _pass(x: np.ndarray, ax: AxisWeights, axis: int) -> np.ndarray:
    """Weighted sums of ``x`` along ``axis`` for each output pixel of ``ax``; the terms of each
    output are added in the same order whatever else ``x`` holds."""
    shape = [1] * x.ndim
    shape[axis] = -1
    out: np.ndarray | None = None
    for t in range(ax.index.shape[1]):
        term = np.take(x, ax.index[:, t], axis=axis) * ax.weight[:, t].reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    assert out is not None
    return out


def downsample(
    src: np.ndarray, valid: np.ndarray | None, ax_x: AxisWeights, ax_y: AxisWeights, average: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``src`` ``(C, H, W)`` (source pixels ``ax_y.start..stop`` x ``ax_x.start..stop``) and
    its validity ``(H, W)`` (None: all valid) -> ``(out (C, h, w) float32, valid (h, w))``.

    ``average``: the mean of the valid source pixels weighted by their overlap with the output
    pixel (GDAL's ``average``); else the source pixel under the output pixel's centre
    (``nearest``). An output pixel is valid when the source pixel under its centre is valid and
    (averaging) some valid source pixel overlaps it. Invalid outputs are 0.
    """
    rows, cols = np.ix_(ax_y.nearest, ax_x.nearest)
    centre_ok = (
        np.ones((len(ax_y.nearest), len(ax_x.nearest)), dtype=bool)
        if valid is None
        else valid[rows, cols]
    )
    if not average:
        out = src[:, rows, cols].astype(np.float32)
        out[:, ~centre_ok] = 0.0
        return out, centre_ok
    x = src.astype(np.float32)
    if valid is None:
        den = np.outer(ax_y.weight.sum(axis=1), ax_x.weight.sum(axis=1))
    else:
        v = valid.astype(np.float32)
        x[:, ~valid] = 0.0  # invalid values (nodata, NaN) carry no weight
        den = _pass(_pass(v, ax_y, 0), ax_x, 1)
    num = _pass(_pass(x, ax_y, 1), ax_x, 2)
    ok = centre_ok & (den > 0.0)
    out = np.divide(num, den[None], out=np.zeros_like(num), where=ok[None])
    return out, ok
