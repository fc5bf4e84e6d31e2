"""THE CRS helper of geoloc: every lon/lat <-> raster-CRS conversion goes through here.

All transformers use ``always_xy=True``: coordinates are always (x, y) = (easting, northing)
or (lon, lat), whatever axis order the CRS definition declares. Transformers are cached.
Ground distances are geodesic on the WGS 84 ellipsoid (:class:`pyproj.Geod`), so a GSD is in
metres on the ground for any CRS (projected or geographic), never in degrees or map units.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
from affine import Affine
from pyproj import CRS, Geod, Transformer

__all__ = [
    "affine_xy",
    "CrsLike",
    "crs_string",
    "from_lonlat",
    "geodesic_distance_m",
    "gsd_metres",
    "gsd_xy_metres",
    "local_utm_crs",
    "pixel_size_m",
    "to_lonlat",
    "to_pyproj",
]

CrsLike = Any  # rasterio CRS, pyproj CRS, "EPSG:nnnn", WKT, PROJ string or EPSG int
_T = TypeVar("_T", float, np.ndarray)

WGS84_GEOD = Geod(ellps="WGS84")


def _key(crs: CrsLike) -> str:
    if isinstance(crs, int):
        return f"EPSG:{crs}"
    if isinstance(crs, str):
        return crs
    if hasattr(crs, "to_wkt"):
        return str(crs.to_wkt())
    return str(crs)


@lru_cache(maxsize=64)
def _pyproj_from_key(key: str) -> CRS:
    return CRS.from_user_input(key)


def to_pyproj(crs: CrsLike) -> CRS:
    """Return ``crs`` (rasterio CRS, pyproj CRS, string or EPSG int) as a cached pyproj CRS."""
    if isinstance(crs, CRS):
        return crs
    return _pyproj_from_key(_key(crs))


def crs_string(crs: CrsLike) -> str:
    """``"EPSG:nnnn"`` when the CRS has an EPSG code, otherwise its WKT."""
    c = to_pyproj(crs)
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else str(c.to_wkt())


@lru_cache(maxsize=64)
def _transformer(src_key: str, dst_key: str) -> Transformer:
    return Transformer.from_crs(
        _pyproj_from_key(src_key), _pyproj_from_key(dst_key), always_xy=True
    )


def _tr(src: CrsLike, dst: CrsLike) -> Transformer:
    return _transformer(_key(src), _key(dst))


def to_lonlat(crs: CrsLike, xs: _T, ys: _T) -> tuple[_T, _T]:
    """Convert coordinates in ``crs`` to (lon, lat) in EPSG:4326 degrees (scalars or arrays)."""
    lon, lat = _tr(crs, "EPSG:4326").transform(xs, ys)
    return lon, lat


def from_lonlat(crs: CrsLike, lons: _T, lats: _T) -> tuple[_T, _T]:
    """Convert EPSG:4326 (lon, lat) degrees to (x, y) in ``crs`` (scalars or arrays)."""
    x, y = _tr("EPSG:4326", crs).transform(lons, lats)
    return x, y


def geodesic_distance_m(lon1: _T, lat1: _T, lon2: _T, lat2: _T) -> _T:
    """Geodesic distance in metres on the WGS 84 ellipsoid between (lon1, lat1) and (lon2, lat2).

    Accepts scalars or equally shaped arrays (vectorised).
    """
    scalar = all(np.ndim(v) == 0 for v in (lon1, lat1, lon2, lat2))
    _, _, dist = WGS84_GEOD.inv(
        np.atleast_1d(np.asarray(lon1, dtype=float)),
        np.atleast_1d(np.asarray(lat1, dtype=float)),
        np.atleast_1d(np.asarray(lon2, dtype=float)),
        np.atleast_1d(np.asarray(lat2, dtype=float)),
    )
    dist = np.asarray(dist, dtype=float)
    return float(dist[0]) if scalar else dist  # type: ignore[return-value]


def affine_xy(
    transform: Affine, cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``transform`` to pixel coordinates (``cols``, ``rows``) -> CRS (x, y) arrays."""
    t = transform
    c = np.asarray(cols, dtype=float)
    r = np.asarray(rows, dtype=float)
    return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f


def pixel_size_m(
    crs: CrsLike, transform: Affine, col: float, row: float, half_span: float = 32.0
) -> tuple[float, float]:
    """Ground size in metres of one pixel along x and y at pixel position (col, row).

    Measured geodesically between points ``half_span`` pixels either side, so it is right for
    geographic CRSs (degrees) and projected CRSs with a scale factor (UTM's 0.9996, Web
    Mercator's 1/cos(lat)).
    """
    h = max(0.5, float(half_span))
    px = np.array([col - h, col + h, col, col])
    py = np.array([row, row, row - h, row + h])
    lon, lat = to_lonlat(crs, *affine_xy(transform, px, py))
    d = geodesic_distance_m(lon[[0, 2]], lat[[0, 2]], lon[[1, 3]], lat[[1, 3]])
    gx, gy = float(d[0]) / (2 * h), float(d[1]) / (2 * h)
    if not (math.isfinite(gx) and math.isfinite(gy)) or gx <= 0 or gy <= 0:
        raise ValueError(
            "cannot compute a ground sample distance (coordinates out of the CRS area)"
        )
    return gx, gy


def gsd_xy_metres(crs: CrsLike, transform: Affine, width: int, height: int) -> tuple[float, float]:
    """Ground size in metres of one pixel along its columns (x) and rows (y), at the raster centre.

    See :func:`pixel_size_m`; the baseline is up to 64 px, within the raster.
    """
    span = max(0.5, min(32.0, width / 2.0, height / 2.0))
    return pixel_size_m(crs, transform, width / 2.0, height / 2.0, span)


def gsd_metres(crs: CrsLike, transform: Affine, width: int, height: int) -> float:
    """Ground sample distance in metres per pixel at the raster centre.

    The geometric mean of the x and y pixel sizes on the ground (so ``gsd**2`` is the pixel's
    ground area, exact for square pixels). Geographic CRSs are measured geodesically.
    """
    gx, gy = gsd_xy_metres(crs, transform, width, height)
    return math.sqrt(gx * gy)


def local_utm_crs(lon: float, lat: float) -> str:
    """The WGS 84 UTM zone CRS (``"EPSG:326zz"`` north, ``"EPSG:327zz"`` south) at (lon, lat).

    Standard 6-degree zones (the Norway/Svalbard exceptions are not applied).
    """
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise ValueError(f"not a lon/lat position: ({lon}, {lat})")
    zone = min(60, int((lon + 180.0) // 6.0) + 1)
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"
