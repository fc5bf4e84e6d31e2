"""The :class:`Tile` record produced by :meth:`tiling.raster.Raster.tiles`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import Polygon


@dataclass(frozen=True, eq=False)
class Tile:
    """One square tile of a georeferenced raster.

    Attributes:
        raster_path: path of the source raster (as given to :func:`tiling.open_raster`).
        row, col: position of the tile in the grid (0-based, row 0 at the top).
        window: the tile's window in *source* pixels (fractional when resampled to a target
            GSD; may extend beyond the raster for edge tiles).
        transform: affine transform of the tile's *output* pixels (``pixels[:, i, j]``) in the
            raster CRS.
        crs: raster CRS as ``"EPSG:nnnn"`` when it has an EPSG code, otherwise WKT.
        center_lon, center_lat: centre of the tile in EPSG:4326 degrees.
        footprint: the tile's outline in EPSG:4326 (shapely polygon, x = lon, y = lat).
        gsd_m: ground sample distance of the output pixels, metres per pixel.
        valid_fraction: fraction of output pixels that are valid (inside the raster, unmasked).
        pixels: ``uint8`` array ``(3, tile_size, tile_size)``, RGB, zeros where invalid.
        mask: ``bool`` array ``(tile_size, tile_size)``, True where the pixel is valid.
    """

    raster_path: str
    row: int
    col: int
    window: Window
    transform: Affine
    crs: str
    center_lon: float
    center_lat: float
    footprint: Polygon
    gsd_m: float
    valid_fraction: float
    pixels: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)

    @property
    def tile_size(self) -> int:
        """Side of the tile in output pixels."""
        return int(self.pixels.shape[-1])
