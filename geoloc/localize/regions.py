"""Map regions around candidate tiles, read at the map's GSD (or a candidate's GSD layer) for
verification and plots.

A raster that is missing or unreadable does not fail the frame: its candidates get an *unavailable*
region (zero pixels, all masked: the same thing verification sees for a region entirely beyond a
raster's edge), so the scheduler counts them as failed attempts and answers from the others.
Each such raster is warned about once per :class:`MapRegions`, naming it and the fix.
An orthomosaic imported from a bundle points at the bundle's region folder instead of a raster:
its regions are read from there (:class:`geoloc.store.bundle.BundleRegions`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from affine import Affine

log = logging.getLogger(__name__)


def _unavailable_region(size_px: int) -> tuple[np.ndarray, np.ndarray, Any]:
    s = int(size_px)
    return np.zeros((s, s, 3), np.uint8), np.zeros((s, s), bool), Affine.identity()


class MapRegions:
    """Reads the map around a point of an orthomosaic; keeps rasters open and recent regions.

    Verification reads the same candidate's region again for every heading and verifier it
    tries: the small cache saves those reads.
    """

    def __init__(self, gsd_m: float, cache_size: int = 64) -> None:
        self.gsd_m = float(gsd_m)
        self.cache_size = int(cache_size)
        self._rasters: dict[str, Any] = {}
        self._regions: dict[tuple[int, int, float], tuple[np.ndarray, np.ndarray, Any]] = {}
        #: rasters that could not be opened or read, with why (each warned about once)
        self.unavailable: dict[str, str] = {}
        self._bundles: dict[str, Any] = {}  # path -> BundleRegions, or None for a raster

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

    def _mark_unavailable(self, path: str, exc: BaseException) -> None:
        if path in self.unavailable:
            return
        why = str(exc)
        self.unavailable[path] = why
        log.warning(
            "%s: raster unavailable (%s); skipping its candidates. If it moved, run "
            "`geoloc db relink OLD_PREFIX NEW_PREFIX`; `geoloc db check` lists every such raster",
            path,
            why if path not in why else why.replace(f"{path}: ", ""),
        )

    def around(
        self, tile: Any, size_px: int, gsd_m: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, Any]:
        """Pixels (H, W, 3), valid mask and transform of the region centred on ``tile``, at
        ``gsd_m`` (default: the map's GSD).

        When the tile's raster is missing or unreadable the region is unavailable: zero pixels
        with an all-False mask (no match can be accepted on it).
        """
        from rasterio.errors import RasterioError

        from geoloc.errors import GeolocError
        from tiling import TilingError

        gsd = self.gsd_m if gsd_m is None else float(gsd_m)
        key = (int(tile.tile_id), int(size_px), gsd)
        hit = self._regions.get(key)
        if hit is not None:
            return hit
        path = str(tile.raster_path)
        if path in self.unavailable:
            return _unavailable_region(size_px)
        try:
            stored = self._bundle(path)
            if stored is not None:
                out = stored.around(int(tile.tile_id), int(size_px), gsd)
                self._remember(key, out)
                return out
            px, mask, t = self.raster(path).read_region(
                tile.center_lon, tile.center_lat, size_px, gsd
            )
        except (OSError, TilingError, RasterioError, GeolocError) as exc:
            self._mark_unavailable(path, exc)
            return _unavailable_region(size_px)
        out = (np.ascontiguousarray(np.transpose(px, (1, 2, 0))), mask, t)
        self._remember(key, out)
        return out

    def _remember(
        self, key: tuple[int, int, float], out: tuple[np.ndarray, np.ndarray, Any]
    ) -> None:
        self._regions[key] = out
        while len(self._regions) > self.cache_size:
            self._regions.pop(next(iter(self._regions)))

    def _bundle(self, path: str) -> Any:
        """The stored regions when ``path`` is a bundle's region folder, else None."""
        if path not in self._bundles:
            from geoloc.store.bundle import BundleRegions, is_region_folder

            self._bundles[path] = BundleRegions(path) if is_region_folder(path) else None
        return self._bundles[path]

    def close(self) -> None:
        """Close the rasters (best effort) and forget the cached regions."""
        for r in self._rasters.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._rasters.clear()
        self._regions.clear()
        self._bundles.clear()
