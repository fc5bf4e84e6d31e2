"""The records the tile store hands out: :class:`Candidate` (one searchable tile).

Geography is converted with pyproj directly (a cached ``Transformer``, ``always_xy=True``) so the
store depends on neither ``tiling`` nor ``geoloc.models``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from affine import Affine
from pyproj import CRS, Geod, Transformer

#: Ground distances of the store (radius filters) are geodesic on the WGS 84 ellipsoid.
WGS84_GEOD = Geod(ellps="WGS84")


@lru_cache(maxsize=64)
def _to_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)


def geodesic_m(lon1: np.ndarray, lat1: np.ndarray, lon2: float, lat2: float) -> np.ndarray:
    """Geodesic distances (m, WGS 84) from each ``(lon1, lat1)`` to one point ``(lon2, lat2)``."""
    lon1 = np.atleast_1d(np.asarray(lon1, dtype=np.float64))
    lat1 = np.atleast_1d(np.asarray(lat1, dtype=np.float64))
    _, _, dist = WGS84_GEOD.inv(lon1, lat1, np.full_like(lon1, lon2), np.full_like(lat1, lat2))
    return np.asarray(dist, dtype=np.float64)


@dataclass(frozen=True)
class Candidate:
    """Everything the localizer needs about one tile of a complete orthomosaic.

    ``transform`` maps the tile's *output* pixels (``tile_size`` x ``tile_size``, x right, y
    down, (0, 0) the top-left corner) to ``crs``; ``window`` is the source-pixel window
    ``(col_off, row_off, width, height)`` they were resampled from (fractional when resampled).
    """

    tile_id: int
    orthomosaic_id: int
    row: int
    col: int
    center_lat: float
    center_lon: float
    gsd_m: float
    valid_fraction: float
    tile_size: int
    raster_path: str
    crs: str
    transform: Affine
    window: tuple[float, float, float, float]
    footprint_wkt: str
    phi: np.ndarray  # (phi_dim,) float32
    node_areas: np.ndarray  # (K,) float32
    node_centroids: np.ndarray  # (K, 2) float32, (x, y) in [0, 1] of the tile

    def to_lonlat(self, x_px: float, y_px: float) -> tuple[float, float]:
        """(lon, lat) in degrees of a point given in the tile's output-pixel coordinates."""
        x, y = self.transform @ (float(x_px), float(y_px))
        lon, lat = _to_lonlat(self.crs).transform(x, y)
        return float(lon), float(lat)
