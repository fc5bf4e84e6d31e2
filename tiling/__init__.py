"""geoloc's tiler: a georeferenced raster in, a stream of georeferenced uint8 RGB tiles out.

No torch, no database. See :func:`open_raster`, :class:`TilingPolicy` (which grid),
:class:`TileConfig`, :class:`Tile` and :func:`read_image` (frames and other plain images).
"""

from __future__ import annotations

from tiling.errors import TilingError
from tiling.grid import Grid, TileConfig
from tiling.image import read_image, stretch_to_uint8
from tiling.policy import TilingPolicy
from tiling.raster import Raster, open_raster
from tiling.tile import Tile

__all__ = [
    "Grid",
    "Raster",
    "Tile",
    "TileConfig",
    "TilingError",
    "TilingPolicy",
    "open_raster",
    "read_image",
    "stretch_to_uint8",
]
