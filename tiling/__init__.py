"""geoloc's tiler: a georeferenced raster in, a stream of georeferenced uint8 RGB tiles out.

No torch, no database. See :func:`open_raster`, :class:`TileConfig` and :class:`Tile`.
"""

from __future__ import annotations

from tiling.errors import TilingError
from tiling.grid import Grid, TileConfig
from tiling.raster import Raster, open_raster
from tiling.tile import Tile

__all__ = ["Grid", "Raster", "Tile", "TileConfig", "TilingError", "open_raster"]
