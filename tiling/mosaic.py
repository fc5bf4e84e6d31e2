"""Whole rasters in memory: one raster, or several adjacent ones of a CRS merged, as uint8 RGB.

Training views are rendered from such an in-memory mosaic. It is read decimated when the views
never need the full resolution and always within a pixel budget, and non-uint8 data gets the
tiler's stretch (:mod:`tiling.image`), with the very limits :class:`tiling.Raster` computes for
a single file, so views show the pixels that file's tiles are searched with.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from tiling.crs import gsd_metres
from tiling.errors import RasterOpenError, TilingError
from tiling.image import apply_stretch, stretch_to_uint8
from tiling.raster import open_raster

__all__ = ["DEFAULT_MAX_PIXELS", "Mosaic", "read_mosaic", "touching_groups"]

log = logging.getLogger(__name__)

#: Largest mosaic (pixels) kept in memory (~1 GB with its mask).
DEFAULT_MAX_PIXELS = 250_000_000


@dataclass
class Mosaic:
    """An in-memory mosaic: ``data`` uint8 (3, H, W), ``mask`` bool (H, W) (True = valid),
    ``transform`` of its pixels and ``crs_wkt`` of the CRS they are in."""

    data: np.ndarray
    mask: np.ndarray
    transform: Affine
    crs_wkt: str


def touching_groups(paths: Sequence[str | os.PathLike[str]]) -> list[list[Path]]:
    """Rasters grouped for merging: same CRS and touching footprints (1 % tolerance).

    Adjacent map sheets become one group; distant orthomosaics stay separate, so a merge never
    spans the empty ground between them.
    """
    import rasterio

    info = []
    for r in paths:
        try:
            with rasterio.open(r) as ds:
                b = ds.bounds
                tol = 0.01 * max(b.right - b.left, b.top - b.bottom)
                info.append(
                    (Path(r), ds.crs, (b.left - tol, b.bottom - tol, b.right + tol, b.top + tol))
                )
        except rasterio.errors.RasterioIOError as exc:
            raise RasterOpenError(f"cannot read raster: {exc}", r) from exc
    parent = list(range(len(info)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (_, crs_i, bi) in enumerate(info):
        for j in range(i):
            _, crs_j, bj = info[j]
            touch = bi[0] <= bj[2] and bj[0] <= bi[2] and bi[1] <= bj[3] and bj[1] <= bi[3]
            if crs_i == crs_j and touch:
                parent[root(i)] = root(j)
    groups: dict[int, list[Path]] = {}
    for i, (path, _, _) in enumerate(info):
        groups.setdefault(root(i), []).append(path)
    return list(groups.values())


def _decimation(datasets: list[Any], finest_gsd_m: float | None, max_pixels: int) -> float:
    """Read factor (>= 1, not necessarily an integer): to ``finest_gsd_m`` and ``max_pixels``."""
    native = min(gsd_metres(d.crs, d.transform, d.width, d.height) for d in datasets)
    factor = max(1.0, (finest_gsd_m or 0.0) / native)
    total = sum(float(d.width) * float(d.height) for d in datasets) / factor**2
    if total > max_pixels:
        budget = factor * math.sqrt(total / max_pixels)
        log.warning(
            "%s: read at %.2f m/px instead of %.2f m/px to stay within %d pixels in memory",
            datasets[0].name,
            native * budget,
            native * factor,
            max_pixels,
        )
        factor = budget
    return factor


def read_mosaic(
    paths: Sequence[str | os.PathLike[str]],
    finest_gsd_m: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Mosaic:
    """Read one raster, or merge several rasters of one CRS, into memory (first three bands).

    Decimated (area average) so no pixel is finer than ``finest_gsd_m`` when given, and to at
    most ``max_pixels`` pixels (coarser than asked, with a warning).

    Raises:
        TilingError: naming the file that cannot be opened, has no CRS, is rotated, or is in
            another CRS than the first.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.merge import merge

    if not paths:
        raise TilingError("no raster given")
    datasets = []
    try:
        for p in paths:
            try:
                datasets.append(rasterio.open(p))
            except Exception as exc:  # rasterio raises several types for unreadable files
                raise RasterOpenError(f"cannot read raster: {exc}", p) from exc
        for ds, p in zip(datasets, paths, strict=True):
            if ds.crs is None:
                raise TilingError("raster has no CRS", p)
            if ds.transform.b != 0 or ds.transform.d != 0:
                raise TilingError("rotated geotransforms are not supported", p)
            if ds.crs != datasets[0].crs:
                raise TilingError(
                    f"cannot merge rasters in different CRSs ({ds.crs} vs {datasets[0].crs})", p
                )
        first = datasets[0]
        bands = [1, 2, 3] if first.count >= 3 else [1, 1, 1]
        factor = _decimation(datasets, finest_gsd_m, max_pixels or DEFAULT_MAX_PIXELS)
        if len(datasets) == 1 and factor <= 1.0:
            data = first.read(bands)
            mask = first.dataset_mask() > 0
            transform = first.transform
        elif len(datasets) == 1:
            h = max(1, int(round(first.height / factor)))
            w = max(1, int(round(first.width / factor)))
            data = first.read(bands, out_shape=(3, h, w), resampling=Resampling.average)
            mask = first.dataset_mask(out_shape=(h, w), resampling=Resampling.nearest) > 0
            transform = first.transform @ first.transform.scale(first.width / w, first.height / h)
        else:
            res = (
                factor * min(abs(d.transform.a) for d in datasets),
                factor * min(abs(d.transform.e) for d in datasets),
            )
            rs = Resampling.average if factor > 1.0 else Resampling.nearest
            data, transform = merge(datasets, indexes=bands, res=res, nodata=0, resampling=rs)
            valid, _ = merge([_ones_like(d) for d in datasets], res=res, nodata=0, indexes=[1])
            mask = valid[0] > 0
        crs_wkt = str(first.crs.to_wkt())
    finally:
        for ds in datasets:
            ds.close()
    if data.dtype != np.uint8:
        data, mask = _stretched(data, mask, paths[0] if len(paths) == 1 else None)
    return Mosaic(data, mask, transform, crs_wkt)


def _stretched(
    data: np.ndarray, mask: np.ndarray, path: str | os.PathLike[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (3, H, W) as uint8 through the tiler's stretch; non-finite pixels invalid.

    A single file gets the tiler's own limits for it; a merged group has no single tiler
    stretch, so its limits come from the merged pixels (the same stretch function).
    """
    if np.issubdtype(data.dtype, np.floating):
        mask = mask & np.isfinite(data).all(axis=0)
    limits = None
    if path is not None:
        try:
            with open_raster(path) as r:
                limits = r.stretch
        except TilingError:
            limits = None  # the tiler refuses the file: the data's own limits
    if limits is None:
        return stretch_to_uint8(data, mask), mask
    return np.stack([apply_stretch(b, lim) for b, lim in zip(data, limits, strict=True)]), mask


def _ones_like(ds: Any) -> Any:
    """An in-memory single-band raster of ones with ``ds``'s grid (for the merged valid mask)."""
    from rasterio.io import MemoryFile

    mem = MemoryFile()
    out = mem.open(
        driver="GTiff",
        width=ds.width,
        height=ds.height,
        count=1,
        dtype="uint8",
        crs=ds.crs,
        transform=ds.transform,
        nodata=0,
    )
    out.write((ds.dataset_mask() > 0).astype(np.uint8)[None])
    return out
