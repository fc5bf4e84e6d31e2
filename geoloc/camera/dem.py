"""Terrain heights from a DEM GeoTIFF in any CRS (``--dem FILE.tif``), bilinear, NaN off the data.

Heights are in the DEM's own vertical datum (usually above mean sea level); a pose solved on them
reports its altitude in that datum. Reads are windowed around the queried points, so a large DEM
costs only the pixels under the frame.
"""

from __future__ import annotations

import math
import os
from types import TracebackType
from typing import Any

import numpy as np

from geoloc.errors import DemFileError

__all__ = ["Dem", "open_dem"]


class Dem:
    """An open DEM (use :func:`open_dem`; close it or use ``with``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import rasterio
        from rasterio.errors import RasterioError

        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise DemFileError("no such file", path=self.path)
        try:
            self._ds: Any = rasterio.open(self.path)
        except RasterioError as exc:
            raise DemFileError(
                f"not a readable raster ({' '.join(str(exc).split())})", path=self.path
            ) from exc
        ds = self._ds
        try:
            if ds.crs is None:
                raise DemFileError("DEM has no CRS", path=self.path)
            if ds.count < 1:
                raise DemFileError("DEM has no band", path=self.path)
            if np.dtype(ds.dtypes[0]).kind not in "iuf":
                raise DemFileError(
                    f"DEM band is {ds.dtypes[0]}, not numeric heights", path=self.path
                )
            if ds.transform.b != 0 or ds.transform.d != 0:
                raise DemFileError("rotated geotransforms are not supported", path=self.path)
        except BaseException:
            ds.close()
            raise
        self.crs = ds.crs
        self.nodata = ds.nodata

    def heights(self, xs: np.ndarray, ys: np.ndarray, crs: Any) -> np.ndarray:
        """Heights at points (``xs``, ``ys``) given in ``crs``; NaN outside the DEM or on nodata."""
        from rasterio.windows import Window

        from tiling.crs import crs_string, from_lonlat, to_lonlat

        x = np.atleast_1d(np.asarray(xs, dtype=np.float64))
        y = np.atleast_1d(np.asarray(ys, dtype=np.float64))
        out = np.full(x.shape, np.nan)
        if x.size == 0:
            return out
        if crs_string(crs) != crs_string(self.crs):
            lon, lat = to_lonlat(crs, x, y)
            x, y = from_lonlat(self.crs, np.asarray(lon), np.asarray(lat))
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        inv = ~self._ds.transform
        col = inv.a * x + inv.b * y + inv.c - 0.5  # pixel-centre coordinates
        row = inv.d * x + inv.e * y + inv.f - 0.5
        ok = np.isfinite(col) & np.isfinite(row)
        ok &= (
            (col > -0.5)
            & (row > -0.5)
            & (col < self._ds.width - 0.5)
            & (row < self._ds.height - 0.5)
        )
        if not ok.any():
            return out
        c0 = max(0, int(math.floor(col[ok].min())))
        r0 = max(0, int(math.floor(row[ok].min())))
        c1 = min(self._ds.width, int(math.floor(col[ok].max())) + 2)
        r1 = min(self._ds.height, int(math.floor(row[ok].max())) + 2)
        win = Window(c0, r0, c1 - c0, r1 - r0)
        band = self._ds.read(1, window=win, masked=True).astype(np.float64)
        z = np.ma.filled(band, np.nan)
        if self.nodata is not None and not math.isnan(self.nodata):
            z[z == self.nodata] = np.nan
        cc = np.clip(col[ok] - c0, 0, z.shape[1] - 1)
        rr = np.clip(row[ok] - r0, 0, z.shape[0] - 1)
        i0 = np.clip(np.floor(cc).astype(int), 0, max(0, z.shape[1] - 2))
        j0 = np.clip(np.floor(rr).astype(int), 0, max(0, z.shape[0] - 2))
        i1 = np.minimum(i0 + 1, z.shape[1] - 1)
        j1 = np.minimum(j0 + 1, z.shape[0] - 1)
        fx, fy = cc - i0, rr - j0
        out[ok] = (
            z[j0, i0] * (1 - fx) * (1 - fy)
            + z[j0, i1] * fx * (1 - fy)
            + z[j1, i0] * (1 - fx) * fy
            + z[j1, i1] * fx * fy
        )
        return out

    def close(self) -> None:
        """Close the file."""
        self._ds.close()

    def __enter__(self) -> Dem:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_dem(path: str | os.PathLike[str]) -> Dem:
    """Open a DEM GeoTIFF (any CRS, first band = heights); raises :class:`DemFileError`."""
    return Dem(path)
