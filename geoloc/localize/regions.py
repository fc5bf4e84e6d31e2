"""Map regions around candidate tiles, read at the map's GSD for verification and plots."""

from __future__ import annotations

from typing import Any

import numpy as np


class MapRegions:
    """Reads the map around a point of an orthomosaic; keeps rasters open and recent regions.

    Verification reads the same candidate's region again for every heading and verifier it
    tries: the small cache saves those reads.
    """

    def __init__(self, gsd_m: float, cache_size: int = 64) -> None:
        self.gsd_m = float(gsd_m)
        self.cache_size = int(cache_size)
        self._rasters: dict[str, Any] = {}
        self._regions: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, Any]] = {}

    def raster(self, path: str) -> Any:
        """The opened raster of ``path`` (opened once)."""
        r = self._rasters.get(path)
        if r is None:
            from tiling import open_raster

            r = open_raster(path)
            self._rasters[path] = r
        return r

    def read(self, path: str, lon: float, lat: float, size_px: int) -> tuple[np.ndarray, Any]:
        """(H, W, 3) pixels and their transform, ``size_px`` square centred on (lon, lat)."""
        px, _mask, t = self.raster(path).read_region(lon, lat, size_px, self.gsd_m)
        return np.ascontiguousarray(np.transpose(px, (1, 2, 0))), t

    def around(self, tile: Any, size_px: int) -> tuple[np.ndarray, np.ndarray, Any]:
        """Pixels (H, W, 3), valid mask and transform of the region centred on ``tile``."""
        key = (int(tile.tile_id), int(size_px))
        hit = self._regions.get(key)
        if hit is not None:
            return hit
        px, mask, t = self.raster(tile.raster_path).read_region(
            tile.center_lon, tile.center_lat, size_px, self.gsd_m
        )
        out = (np.ascontiguousarray(np.transpose(px, (1, 2, 0))), mask, t)
        self._regions[key] = out
        while len(self._regions) > self.cache_size:
            self._regions.pop(next(iter(self._regions)))
        return out

    def close(self) -> None:
        """Close the rasters (best effort) and forget the cached regions."""
        for r in self._rasters.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._rasters.clear()
        self._regions.clear()
