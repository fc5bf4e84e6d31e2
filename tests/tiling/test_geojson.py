"""tiling.geojson: RFC 7946 FeatureCollection of tile footprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import shape

from tiling import TileConfig, open_raster
from tiling.geojson import tiles_to_feature_collection


def test_feature_collection_round_trips(fake: dict[str, Path]) -> None:
    with open_raster(fake["wgs84"]) as r:
        tiles = list(r.tiles(TileConfig(tile_size=150)))
    fc = json.loads(json.dumps(tiles_to_feature_collection(tiles)))  # plain JSON types only
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(tiles) == 6
    for f, t in zip(fc["features"], tiles, strict=True):
        p = f["properties"]
        assert (p["row"], p["col"]) == (t.row, t.col)
        assert (p["center_lon"], p["center_lat"]) == (t.center_lon, t.center_lat)
        assert p["gsd_m"] == t.gsd_m and p["valid_fraction"] == t.valid_fraction
        assert p["crs"] == "EPSG:4326" and p["raster"] == str(fake["wgs84"])
        geom = shape(f["geometry"])
        assert geom.equals_exact(t.footprint, 1e-12)
        # EPSG:4326 raster: the footprint corners are the pixel-window corners in lon/lat
        tr = t.transform
        assert geom.bounds == pytest.approx(
            (tr.c, tr.f + 150 * tr.e, tr.c + 150 * tr.a, tr.f), abs=1e-12
        )
        assert geom.exterior.is_ccw
