"""Tiles as a GeoJSON FeatureCollection (RFC 7946: EPSG:4326, [lon, lat], CCW rings)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shapely.geometry import mapping

from tiling.tile import Tile

__all__ = ["tile_feature", "tiles_to_feature_collection"]


def tile_feature(tile: Tile) -> dict[str, Any]:
    """One GeoJSON Feature: the tile footprint with its grid position, centre, GSD and validity."""
    w = tile.window
    geom = mapping(tile.footprint)
    geom = {
        "type": geom["type"],
        "coordinates": [[[float(x), float(y)] for x, y in ring] for ring in geom["coordinates"]],
    }
    return {
        "type": "Feature",
        "id": f"{tile.row}_{tile.col}",
        "geometry": geom,
        "properties": {
            "row": tile.row,
            "col": tile.col,
            "center_lon": tile.center_lon,
            "center_lat": tile.center_lat,
            "gsd_m": tile.gsd_m,
            "valid_fraction": tile.valid_fraction,
            "window": [w.col_off, w.row_off, w.width, w.height],
            "crs": tile.crs,
            "raster": tile.raster_path,
        },
    }


def tiles_to_feature_collection(tiles: Iterable[Tile]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (dict) with one Feature per tile (pixels are not included)."""
    return {"type": "FeatureCollection", "features": [tile_feature(t) for t in tiles]}
