"""The records of the tile store: what ingest writes and what the localizer reads.

:class:`RasterRecord` (one orthomosaic) and :class:`TileRecord` (one tile, field for field the
``tiles`` columns of :mod:`geoloc.store.schema` but the keys) are written by ingest;
:class:`Candidate` (a tile of a complete orthomosaic with its raster, Φ and nodes) is read.

Geography is converted with pyproj directly (a cached ``Transformer``, ``always_xy=True``) so the
store depends on neither ``tiling`` nor ``geoloc.models``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS, Geod, Transformer

#: Ground distances of the store (radius filters) are geodesic on the WGS 84 ellipsoid.
WGS84_GEOD = Geod(ellps="WGS84")


@lru_cache(maxsize=64)
def _to_lonlat(crs: str) -> Transformer:
    return Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)


def geodesic_m(
    lon1: np.ndarray, lat1: np.ndarray, lon2: float | np.ndarray, lat2: float | np.ndarray
) -> np.ndarray:
    """Geodesic distances (m, WGS 84) from each ``(lon1, lat1)`` to ``(lon2, lat2)``: one point,
    or one per ``(lon1, lat1)``."""
    lon1 = np.atleast_1d(np.asarray(lon1, dtype=np.float64))
    lat1 = np.atleast_1d(np.asarray(lat1, dtype=np.float64))
    lon2 = np.broadcast_to(np.asarray(lon2, dtype=np.float64), lon1.shape).copy()
    lat2 = np.broadcast_to(np.asarray(lat2, dtype=np.float64), lat1.shape).copy()
    _, _, dist = WGS84_GEOD.inv(lon1, lat1, lon2, lat2)
    return np.asarray(dist, dtype=np.float64)


def crs_text(crs: Any) -> str:
    """``"EPSG:nnnn"`` when the CRS has an EPSG code, otherwise its WKT (how the store keeps it)."""
    c = crs if isinstance(crs, CRS) else CRS.from_user_input(_crs_input(crs))
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else str(c.to_wkt())


def _crs_input(crs: Any) -> Any:
    # rasterio CRS objects are not accepted by pyproj directly; their WKT is
    return crs.to_wkt() if hasattr(crs, "to_wkt") and not isinstance(crs, str) else crs


@dataclass(frozen=True)
class RasterRecord:
    """One raster to ingest, as the ``orthomosaics`` row describes it (path stored absolute)."""

    path: str
    sha256: str
    crs: str
    width: int
    height: int
    gsd_m: float
    bounds_lonlat: tuple[float, float, float, float]  # west, south, east, north
    footprint_wkt: str
    tile_size: int
    stride: int
    target_gsd_m: float | None

    @classmethod
    def from_raster(
        cls,
        raster: Any,
        *,
        sha256: str,
        tile_size: int,
        stride: int,
        target_gsd_m: float | None,
        path: str | None = None,
    ) -> RasterRecord:
        """The record of an open raster (anything with ``path``, ``crs``, ``width``, ``height``,
        ``gsd_m``, ``bounds_lonlat`` and ``footprint_lonlat``, e.g. a ``tiling.Raster``)."""
        return cls(
            path=str(path if path is not None else raster.path),
            sha256=sha256,
            crs=crs_text(raster.crs),
            width=int(raster.width),
            height=int(raster.height),
            gsd_m=float(raster.gsd_m),
            bounds_lonlat=tuple(float(v) for v in raster.bounds_lonlat),  # type: ignore[arg-type]
            footprint_wkt=str(raster.footprint_lonlat.wkt),
            tile_size=int(tile_size),
            stride=int(stride),
            target_gsd_m=None if target_gsd_m is None else float(target_gsd_m),
        )


#: Decimals of the lon/lat in a stored tile footprint: 1e-7 degree is about 1 cm on the ground,
#: far below a pixel, and half the text of full float precision.
FOOTPRINT_DECIMALS = 7


def footprint_text(geometry: Any) -> str:
    """WKT of a tile footprint (a shapely geometry) at :data:`FOOTPRINT_DECIMALS`."""
    import shapely

    return str(shapely.to_wkt(geometry, rounding_precision=FOOTPRINT_DECIMALS, trim=True))


@dataclass(frozen=True)
class TileRecord:
    """One tile as stored: its ``tiles`` columns except ``id`` and ``orthomosaic_id``.

    ``window`` is the source-pixel window ``(col_off, row_off, width, height)``; ``transform``
    maps the tile's output pixels to the raster CRS.
    """

    row: int
    col: int
    center_lat: float
    center_lon: float
    footprint_wkt: str
    gsd_m: float
    valid_fraction: float
    window: tuple[float, float, float, float]
    transform: Affine
    tile_size: int

    @classmethod
    def from_tile(cls, tile: Any) -> TileRecord:
        """The record of a tile (anything shaped like ``tiling.Tile``: ``footprint`` a shapely
        geometry, ``window`` a rasterio ``Window``, ``transform`` an ``Affine``)."""
        if isinstance(tile, TileRecord):
            return tile
        w = tile.window
        return cls(
            row=int(tile.row),
            col=int(tile.col),
            center_lat=float(tile.center_lat),
            center_lon=float(tile.center_lon),
            footprint_wkt=footprint_text(tile.footprint),
            gsd_m=float(tile.gsd_m),
            valid_fraction=float(tile.valid_fraction),
            window=(float(w.col_off), float(w.row_off), float(w.width), float(w.height)),
            transform=Affine(*(float(v) for v in tuple(tile.transform)[:6])),
            tile_size=int(tile.tile_size),
        )


@dataclass(frozen=True)
class TileRef:
    """Where a stored tile sits: its orthomosaic and grid cell (to re-encode it)."""

    tile_id: int
    orthomosaic_id: int
    row: int
    col: int


@dataclass(frozen=True, eq=False)
class OrthoGrid:
    """The tiles of one complete orthomosaic by grid cell: ``ids[row, col]`` is the tile id
    (-1 where no tile was kept: nodata), ``stride`` and ``tile_size`` the grid's (output px).

    A region's neighbours are a slice of it: no geographic query per candidate."""

    orthomosaic_id: int
    ids: np.ndarray
    stride: int
    tile_size: int


@dataclass(frozen=True)
class TileGrid:
    """A tile's place in its orthomosaic's grid and nothing else (no raster, no embeddings):
    what a candidate's neighbours need to lend their stored features to its region. ``window``
    as in :class:`Candidate`."""

    tile_id: int
    orthomosaic_id: int
    row: int
    col: int
    tile_size: int
    window: tuple[float, float, float, float]


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
