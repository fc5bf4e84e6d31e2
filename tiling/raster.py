"""Open a georeferenced raster and read it as uint8 RGB tiles with validity masks.

:func:`open_raster` validates the file (exists, GDAL opens it, has a CRS, a north-up
axis-aligned geotransform and at least one valid pixel) and raises :class:`TilingError`
subclasses with one-line messages naming the file otherwise. Reads are windowed and resample
while reading (``out_shape``), so GDAL uses overviews when they exist, and memory stays bounded
by one band of tiles (:data:`BAND_MAX_PX` wide) whatever the raster size. A reduction no
overview serves (none, or only coarser ones) is downsampled (average, nearest) by
:mod:`tiling.resample` from the source pixels.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from tiling.crs import (
    affine_xy,
    crs_string,
    from_lonlat,
    gsd_xy_metres,
    pixel_size_m,
    to_lonlat,
    to_pyproj,
)
from tiling.errors import (
    EmptyRasterError,
    GeoreferenceError,
    RasterOpenError,
    RasterReadError,
    TileConfigError,
    TilingError,
)
from tiling.grid import Grid, TileConfig, inside_range, scaled_window_transform
from tiling.image import STRETCH_PERCENTILES, apply_stretch, stretch_limits
from tiling.resample import axis_weights, downsample
from tiling.tile import Tile

__all__ = ["STRETCH_PERCENTILES", "Raster", "open_raster"]

#: Widest band (output pixels) :meth:`Raster.tiles` reads at once: bounds memory on wide maps.
BAND_MAX_PX = 4096
#: Most source pixels of one band of a downsampled grid (its float32 sums are 12 B a pixel).
BAND_MAX_SOURCE_PX = 8_000_000
# GDAL reads an overview that reduces by up to this much more than asked (its 1.2 threshold)
_OVERVIEW_SLACK = 1.2

# Rasters up to this many pixels are sampled whole (decimated) for the stretch / empty check.
_SMALL_PIXELS = 25_000_000
_SAMPLE_SIDE = 1024


def _is_virtual(path: str) -> bool:
    return path.startswith("/vsi") or "://" in path


def _one_line(exc: BaseException, path: str | None = None) -> str:
    """GDAL's own message for ``exc`` (following rasterio's "see previous exception"), one line."""
    msg = str(exc)
    cause = exc.__cause__ or exc.__context__
    while cause is not None and ("previous exception" in msg or not msg.strip()):
        msg = str(cause)
        cause = cause.__cause__ or cause.__context__
    if path:
        base = os.path.basename(path)
        for p in (f"'{path}' ", f"{path}, ", f"{base}, ", f"'{base}' "):
            msg = msg.replace(p, "")
        msg = msg.replace(path, "<file>")
    return " ".join(msg.split()).rstrip(".") or type(exc).__name__


class Raster:
    """An open, validated raster (use :func:`open_raster`; close it or use ``with``).

    Attributes:
        path: the path as given (string).
        crs: rasterio CRS of the raster; ``crs_str`` is ``"EPSG:nnnn"`` or WKT.
        width, height, count, dtype, transform: as in rasterio.
        bands: the three 1-based source bands read as R, G, B.
        gsd_m: native ground sample distance in metres (geometric mean of x and y, at the centre);
            ``gsd_xy_m`` holds the x and y values.
        mask_kind: ``"none"``, ``"nodata"``, ``"alpha"`` or ``"mask"`` (internal/sidecar mask).
        stretch: per-band ``(low, high)`` of the 2-98 % stretch, or None for uint8 rasters.
        last_kept, last_skipped: counts of the latest :meth:`tiles` iteration.
    """

    def __init__(self, path: str | os.PathLike[str], bands: Sequence[int] = (1, 2, 3)) -> None:
        self.path = os.fspath(path)
        self._ds = self._open(self.path)
        try:
            self._validate()
            self.bands = self._select_bands(tuple(int(b) for b in bands))
            self._read_indexes = sorted(set(self.bands))
            self.mask_kind = self._mask_kind()
            self._is_float = np.issubdtype(np.dtype(self.dtype), np.floating)
            self._lut = self._palette()
            self._overviews = [int(f) for f in self._ds.overviews(self.bands[0])]
            self.stretch: list[tuple[float, float]] | None = None
            self._check_content_and_stretch()
        except BaseException:
            self._ds.close()
            raise
        self.last_kept = 0
        self.last_skipped = 0

    # ------------------------------------------------------------------ opening & checks
    @staticmethod
    def _open(path: str) -> Any:
        if not _is_virtual(path):
            p = Path(path)
            if not p.exists():
                raise RasterOpenError("no such file", path)
            if p.is_dir():
                raise RasterOpenError("is a directory, not a raster file", path)
            if p.stat().st_size == 0:
                raise RasterOpenError("empty file (0 bytes)", path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                return rasterio.open(path)
        except RasterioError as exc:
            raise RasterOpenError(
                f"not a raster GDAL can open ({_one_line(exc, path)})", path
            ) from exc

    def _validate(self) -> None:
        ds, path = self._ds, self.path
        if ds.count < 1:
            raise RasterOpenError("has no raster bands (a container of subdatasets?)", path)
        if ds.width < 1 or ds.height < 1:
            raise EmptyRasterError(f"has no pixels ({ds.width} x {ds.height})", path)
        if not _is_virtual(path):
            for f in ds.files[1:]:
                if not _is_virtual(f) and not Path(f).exists():
                    raise RasterReadError(f"source file missing: {f}", path)
        if ds.crs is None:
            if ds.gcps[0]:
                raise GeoreferenceError(
                    "georeferenced by ground control points only; warp it first (gdalwarp)", path
                )
            raise GeoreferenceError("has no CRS (not georeferenced)", path)
        self._crs_key: str = ds.crs.to_wkt()  # cached key for tiling.crs transformers
        t = ds.transform
        if t == Affine.identity():
            raise GeoreferenceError("has a CRS but no geotransform (identity transform)", path)
        if t.b != 0 or t.d != 0:
            raise GeoreferenceError(
                "rotated or sheared geotransform is not supported; warp it north-up first", path
            )
        if not (t.a > 0 and t.e < 0):
            raise GeoreferenceError(
                f"flipped geotransform (pixel size {t.a:g}, {t.e:g}) is not supported", path
            )
        try:  # one pixel at each end: catches truncated files and unreadable sources early
            for col, row in ((0, 0), (ds.width - 1, ds.height - 1)):
                ds.read(1, window=Window(col, row, 1, 1))
        except RasterioError as exc:
            raise RasterReadError(f"cannot read pixels ({_one_line(exc, path)})", path) from exc
        try:
            self.gsd_xy_m = gsd_xy_metres(self._crs_key, t, ds.width, ds.height)
        except Exception as exc:  # pyproj errors, out-of-domain coordinates
            raise GeoreferenceError(
                f"cannot compute the ground sample distance ({exc})", path
            ) from exc

    def _select_bands(self, bands: tuple[int, ...]) -> tuple[int, int, int]:
        ds = self._ds
        if len(bands) not in (1, 3):
            raise TileConfigError(f"give 1 or 3 bands, got {list(bands)}", self.path)
        colour = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha] or [1]
        if bands == (1, 2, 3) and len(colour) < 3:
            bands = (colour[0],)  # grey (+ alpha): repeat the grey band to RGB
        for b in bands:
            if not 1 <= b <= ds.count:
                raise TileConfigError(
                    f"band {b} requested but the raster has {ds.count} band(s)", self.path
                )
        if len(bands) == 1:
            return (bands[0], bands[0], bands[0])
        return (bands[0], bands[1], bands[2])

    def _mask_kind(self) -> str:
        flags = [self._ds.mask_flag_enums[b - 1] for b in self._read_indexes]
        if all(f == [MaskFlags.all_valid] for f in flags):
            return "none"
        if any(MaskFlags.alpha in f for f in flags):
            return "alpha"
        if any(MaskFlags.nodata in f for f in flags):
            return "nodata"
        return "mask"

    def _palette(self) -> np.ndarray | None:
        """RGBA lookup table (256 x 4) when the selected band is a uint8 colour-mapped band."""
        ds, b = self._ds, self.bands[0]
        if len(self._read_indexes) != 1 or ds.colorinterp[b - 1] != ColorInterp.palette:
            return None
        if np.dtype(ds.dtypes[b - 1]) != np.uint8:
            raise TileConfigError(
                "colour-mapped bands wider than 8 bits are not supported", self.path
            )
        try:
            cmap = ds.colormap(b)
        except ValueError:
            return None
        lut = np.zeros((256, 4), dtype=np.uint8)
        for k, rgba in cmap.items():
            if 0 <= k < 256:
                lut[k, : len(rgba)] = rgba
        return lut

    def _sample(self) -> tuple[list[np.ndarray], bool]:
        """Valid pixel values per selected band from a decimated read; (values, exhaustive)."""
        ds = self._ds
        w, h = ds.width, ds.height
        exhaustive = w * h <= _SMALL_PIXELS or bool(self._overviews)
        if exhaustive:
            f = max(1.0, max(w, h) / _SAMPLE_SIDE)
            shape = (max(1, round(h / f)), max(1, round(w / f)))
            windows = [(Window(0, 0, w, h), shape)]
        else:  # huge raster without overviews: 8 x 8 windows of 128 px spread over it
            s = 128
            windows = [
                (Window(int(c * (w - s) / 7), int(r * (h - s) / 7), s, s), (s, s))
                for r in range(8)
                for c in range(8)
            ]
        vals: list[list[np.ndarray]] = [[] for _ in self.bands]
        for win, shape in windows:
            data, mask = self._read_raw(win, shape, Resampling.nearest)
            for i in range(3):
                vals[i].append(data[i][mask])
        return [np.concatenate(v) for v in vals], exhaustive

    def _check_content_and_stretch(self) -> None:
        ds = self._ds
        needs_stretch = np.dtype(self.dtype) != np.uint8
        if not needs_stretch and self.mask_kind == "none":
            return
        if not needs_stretch and ds.width * ds.height > _SMALL_PIXELS:
            return  # emptiness of huge masked rasters is found while tiling
        values, exhaustive = self._sample()
        if values[0].size == 0:
            if exhaustive:
                raise EmptyRasterError("has no valid pixel (all nodata, masked or NaN)", self.path)
            values = [np.array([0.0, 1.0])] * 3
        if needs_stretch:
            self.stretch = stretch_limits(values)

    # ------------------------------------------------------------------ properties
    @property
    def crs(self) -> Any:
        """The rasterio CRS."""
        return self._ds.crs

    @property
    def crs_str(self) -> str:
        """``"EPSG:nnnn"`` when the CRS has an EPSG code, else its WKT."""
        return crs_string(self._ds.crs)

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self._ds.width)

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self._ds.height)

    @property
    def count(self) -> int:
        """Number of bands in the file."""
        return int(self._ds.count)

    @property
    def dtype(self) -> str:
        """Data type of the first selected band."""
        return str(
            self._ds.dtypes[self.bands[0] - 1] if hasattr(self, "bands") else self._ds.dtypes[0]
        )

    @property
    def transform(self) -> Affine:
        """Affine transform of the source pixels in the raster CRS."""
        return self._ds.transform

    @property
    def gsd_m(self) -> float:
        """Native GSD in metres (geometric mean of the x and y pixel sizes at the centre)."""
        return math.sqrt(self.gsd_xy_m[0] * self.gsd_xy_m[1])

    @property
    def dataset(self) -> Any:
        """The underlying rasterio dataset (read-only use)."""
        return self._ds

    def _outline(self, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Densified raster outline in lon/lat, counter-clockwise-agnostic."""
        w, h = self.width, self.height
        t = np.linspace(0.0, 1.0, n, endpoint=False)
        px = np.concatenate([t * w, np.full(n, w), (1 - t) * w, np.zeros(n)])
        py = np.concatenate([np.zeros(n), t * h, np.full(n, h), (1 - t) * h])
        lon, lat = to_lonlat(self._crs_key, *affine_xy(self.transform, px, py))
        return np.asarray(lon), np.asarray(lat)

    @property
    def bounds_lonlat(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of the raster in EPSG:4326 degrees."""
        lon, lat = self._outline()
        return float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())

    @property
    def footprint_lonlat(self) -> Polygon:
        """Outline of the raster in EPSG:4326 (densified, counter-clockwise)."""
        lon, lat = self._outline()
        return orient(Polygon(zip(lon.tolist(), lat.tolist(), strict=True)), 1.0)

    # ------------------------------------------------------------------ reading
    def _gdal_read(
        self, window: Window, out_shape: tuple[int, int], resampling: Resampling
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """GDAL's read of the bands to read, ``(n, h, w)`` source dtype, and their validity
        mask (None: the raster has no mask); window inside the raster."""
        ds, idx = self._ds, self._read_indexes
        h, w = out_shape
        try:
            data = ds.read(idx, window=window, out_shape=(len(idx), h, w), resampling=resampling)
            if self.mask_kind == "none":
                return data, None
            m_idx = [idx[0]] if self.mask_kind in ("alpha", "mask") else idx
            m = ds.read_masks(
                m_idx, window=window, out_shape=(len(m_idx), h, w), resampling=Resampling.nearest
            )
        except RasterioError as exc:
            raise RasterReadError(
                f"cannot read pixels ({_one_line(exc, self.path)})", self.path
            ) from exc
        return data, np.any(m > 0, axis=0)

    def _downsampled(
        self,
        col_off: float,
        row_off: float,
        scale_x: float,
        scale_y: float,
        cols: tuple[int, int],
        rows: tuple[int, int],
        average: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Output pixels ``rows x cols`` of a window by :func:`tiling.resample.downsample`
        from the source pixels under them, as :meth:`read_window` makes them: uint8 RGB
        ``(3, h, w)`` and the validity mask."""
        ax = axis_weights(col_off, scale_x, cols[0], cols[1], self.width)
        ay = axis_weights(row_off, scale_y, rows[0], rows[1], self.height)
        h, w = ay.stop - ay.start, ax.stop - ax.start
        data, valid = self._gdal_read(Window(ax.start, ay.start, w, h), (h, w), Resampling.nearest)
        if self._is_float:
            finite = np.isfinite(data).all(axis=0)
            valid = finite if valid is None else valid & finite
        out, ok = downsample(data, valid, ax, ay, average and self._lut is None)
        if np.issubdtype(data.dtype, np.integer):
            info = np.iinfo(data.dtype)
            out = np.clip(np.rint(out), info.min, info.max).astype(data.dtype)
        bands, m = self._selected(out, ok)
        return self._to_uint8(bands, m), m

    def _read_raw(
        self, window: Window, out_shape: tuple[int, int], resampling: Resampling
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Read the selected bands (source dtype) and a validity mask; window inside the raster."""
        if self._lut is not None:
            resampling = Resampling.nearest  # colour indices cannot be averaged
        return self._selected(*self._gdal_read(window, out_shape, resampling))

    def _selected(
        self, raw: np.ndarray, m: np.ndarray | None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The selected bands (source dtype; colours of a palette) of the bands read, ``(n, h,
        w)``, and the validity mask (``m`` None: all valid, then less palette alpha and NaN)."""
        idx = self._read_indexes
        mask = np.ones(raw.shape[1:], dtype=bool) if m is None else m
        bands = [raw[idx.index(b)] for b in self.bands]
        if self._lut is not None:
            rgba = self._lut[bands[0]]
            bands = [rgba[..., 0], rgba[..., 1], rgba[..., 2]]
            mask &= rgba[..., 3] > 0
        if self._is_float:
            for b in bands:
                mask &= np.isfinite(b)
        return bands, mask

    def _to_uint8(self, bands: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
        out = np.empty((3,) + mask.shape, dtype=np.uint8)
        all_valid = bool(mask.all())
        for i, b in enumerate(bands):
            if self.stretch is None:
                v = b.astype(np.uint8, copy=False)
            else:
                v = apply_stretch(b, self.stretch[i])
            out[i] = v if all_valid else np.where(mask, v, 0)
        return out

    def read_window(
        self,
        col_off: float,
        row_off: float,
        scale_x: float,
        scale_y: float,
        out_width: int,
        out_height: int,
        resampling: Resampling = Resampling.average,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read ``out_height x out_width`` output pixels; output pixel (i, j) covers source pixels
        ``(row_off + [i, i+1) * scale_y, col_off + [j, j+1) * scale_x)``.

        Returns ``(pixels uint8 (3, H, W), mask bool (H, W))``; pixels outside the raster or
        invalid are zero and False in the mask.
        """
        pixels = np.zeros((3, out_height, out_width), dtype=np.uint8)
        mask = np.zeros((out_height, out_width), dtype=bool)
        c0, c1 = inside_range(col_off, scale_x, out_width, self.width)
        r0, r1 = inside_range(row_off, scale_y, out_height, self.height)
        if c1 <= c0 or r1 <= r0:
            return pixels, mask
        x0 = max(0.0, col_off + c0 * scale_x)
        x1 = min(float(self.width), col_off + c1 * scale_x)
        y0 = max(0.0, row_off + r0 * scale_y)
        y1 = min(float(self.height), row_off + r1 * scale_y)
        if x1 <= x0 or y1 <= y0:
            return pixels, mask
        copy = abs(scale_x - 1.0) < 1e-9 and abs(scale_y - 1.0) < 1e-9
        if copy:
            resampling = Resampling.nearest  # 1:1 read, keep pixels exact
        if not copy and self._downsamples(scale_x, scale_y, resampling):
            average = resampling == Resampling.average
            px, m = self._downsampled(
                col_off, row_off, scale_x, scale_y, (c0, c1), (r0, r1), average
            )
        else:
            bands, m = self._read_raw(
                Window(x0, y0, x1 - x0, y1 - y0), (r1 - r0, c1 - c0), resampling
            )
            px = self._to_uint8(bands, m)
        pixels[:, r0:r1, c0:c1] = px
        mask[r0:r1, c0:c1] = m
        return pixels, mask

    def _strip_band(
        self,
        grid: Grid,
        row: int,
        first: int,
        last: int,
        strips: dict[int, tuple[int, np.ndarray, np.ndarray]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read_band` of a downsampled grid (:meth:`_downsamples`), computing only the
        output rows the band of the grid row above did not: ``strips`` keeps, per band's first
        column, its first output row (grid coordinates) and those rows' pixels and mask. An
        output pixel does not depend on the window read, so they are the band's own pixels."""
        ts, st = grid.tile_size, grid.stride
        w = grid.window(row, first)
        width = (last - first) * st + ts
        pixels = np.zeros((3, ts, width), dtype=np.uint8)
        mask = np.zeros((ts, width), dtype=bool)
        c0, c1 = inside_range(w.col_off, grid.scale_x, width, self.width)
        r0, r1 = inside_range(w.row_off, grid.scale_y, ts, self.height)
        if c1 <= c0 or r1 <= r0:
            return pixels, mask
        top, bottom = row * st + r0, row * st + r1  # output rows in grid coordinates
        cached = strips.get(first)
        if (
            cached
            and cached[0] <= top <= cached[0] + len(cached[2])
            and cached[2].shape[1] == c1 - c0
        ):
            k, px, m = cached
        else:
            k, px, m = top, pixels[:, :0, c0:c1], mask[:0, c0:c1]
        px, m = px[:, top - k :], m[top - k :]
        done = top + m.shape[0]
        if done < bottom:
            new_px, new_m = self._downsampled(
                w.col_off,
                w.row_off,
                grid.scale_x,
                grid.scale_y,
                (c0, c1),
                (done - row * st, r1),
                True,
            )
            px, m = np.concatenate([px, new_px], axis=1), np.concatenate([m, new_m])
        px, m = px[:, : bottom - top], m[: bottom - top]
        strips[first] = (top, px, m)
        pixels[:, r0:r1, c0:c1] = px
        mask[r0:r1, c0:c1] = m
        return pixels, mask

    @property
    def overview_factors(self) -> list[int]:
        """Reduction factors of the raster's overviews (of its first selected band; empty: none)."""
        return list(self._overviews)

    def _downsamples(self, scale_x: float, scale_y: float, resampling: Resampling) -> bool:
        """True when :meth:`read_window` resamples by :mod:`tiling.resample` rather than GDAL:
        an average or nearest read to fewer pixels than the source's, at a scale where GDAL
        would use no overview either (one reduces by more than the scale, or by at most
        :data:`_OVERVIEW_SLACK` times it: from an overview GDAL decodes fewer source pixels)."""
        return (
            resampling in (Resampling.average, Resampling.nearest)
            and scale_x >= 1.0
            and scale_y >= 1.0
            and max(scale_x, scale_y) * _OVERVIEW_SLACK < min(self._overviews, default=math.inf)
        )

    # ------------------------------------------------------------------ tiling
    def grid(self, cfg: TileConfig | None = None) -> Grid:
        """The tile grid for ``cfg`` (default :class:`TileConfig`)."""
        cfg = cfg or TileConfig()
        return Grid.build(cfg, self.width, self.height, self.transform, self.gsd_xy_m)

    def _make_tile(
        self, grid: Grid, row: int, col: int, pixels: np.ndarray, mask: np.ndarray
    ) -> Tile:
        ts = grid.tile_size
        t = grid.transform(row, col)
        px = np.array([ts / 2.0, 0.0, 0.0, ts, ts])
        py = np.array([ts / 2.0, 0.0, ts, ts, 0.0])
        lon, lat = to_lonlat(self._crs_key, *affine_xy(t, px, py))
        footprint = orient(Polygon(zip(lon[1:].tolist(), lat[1:].tolist(), strict=True)), 1.0)
        return Tile(
            raster_path=self.path,
            row=row,
            col=col,
            window=grid.window(row, col),
            transform=t,
            crs=self._crs_str_cached,
            center_lon=float(lon[0]),
            center_lat=float(lat[0]),
            footprint=footprint,
            gsd_m=grid.gsd_m,
            valid_fraction=_fraction(mask),
            pixels=pixels,
            mask=mask,
        )

    @property
    def _crs_str_cached(self) -> str:
        if not hasattr(self, "_crs_str"):
            self._crs_str = self.crs_str
        return self._crs_str

    def tiles(
        self, cfg: TileConfig | None = None, rows: tuple[int, int] | None = None
    ) -> Generator[Tile, None, None]:
        """Yield the kept tiles of the grid, row-major from the top-left (with ``rows``, those of
        grid rows ``[r0, r1)`` only: a distributed ingest's band).

        A tile is kept when its valid fraction is > 0 and >= ``cfg.min_valid``; others are
        skipped and counted in :attr:`last_skipped` (kept ones in :attr:`last_kept`; both are
        updated during iteration). Raises :class:`EmptyRasterError` at the end if no candidate
        tile had a single valid pixel.

        When the output pixels are the source pixels (no resampling), or fewer than the source
        pixels where no overview serves (:mod:`tiling.resample`, whose output pixels do not
        depend on the window read), each row of tiles is read as bands of at most
        :data:`BAND_MAX_PX` output pixels (and :data:`BAND_MAX_SOURCE_PX` source pixels,
        :meth:`read_band`) and the tiles are cut from them: with overlapping tiles a pixel is
        read once per band rather than once per tile that holds it, and memory stays bounded by
        one band. Other resampled grids read one window per tile: GDAL's resampled pixels
        depend on the window they are read in, and a tile's pixels must not depend on its
        neighbours.
        """
        cfg = cfg or TileConfig()
        grid = self.grid(cfg)
        ts, st = grid.tile_size, grid.stride
        copy = _is_copy(grid)
        strip = not copy and self._downsamples(grid.scale_x, grid.scale_y, Resampling.average)
        strips: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        per_band = 1  # GDAL's resampled reads: a window per tile
        if copy or strip:
            widest = BAND_MAX_PX
            if strip:
                widest = min(widest, int(BAND_MAX_SOURCE_PX / (ts * grid.scale_x * grid.scale_y)))
            per_band = max(1, (widest - ts) // st + 1)
        self.last_kept = self.last_skipped = 0
        unknown = False
        r0, r1 = (0, grid.rows) if rows is None else (max(0, rows[0]), min(grid.rows, rows[1]))
        for row in range(r0, r1):
            for first in range(0, grid.cols, per_band):
                cols = range(first, min(grid.cols, first + per_band))
                cov = [grid.coverage(row, col) for col in cols]
                wanted = [c for c, v in zip(cols, cov, strict=True) if v > 0 and v >= cfg.min_valid]
                # a downsampled band spans all its columns: the next row reuses its rows
                left = cols[0] if strip else (wanted[0] if wanted else 0)
                band = None
                if strip and wanted:
                    band = self._strip_band(grid, row, cols[0], cols[-1], strips)
                elif wanted:
                    band = self.read_band(grid, row, wanted[0], wanted[-1])
                for col, v in zip(cols, cov, strict=True):
                    if v <= 0.0 or v < cfg.min_valid:
                        self.last_skipped += 1
                        unknown |= v > 0.0
                        continue
                    assert band is not None
                    x = (col - left) * st
                    mask = band[1][:, x : x + ts]
                    vf = _fraction(mask)
                    if vf <= 0.0 or vf < cfg.min_valid:
                        self.last_skipped += 1
                        unknown |= vf > 0.0
                        continue
                    self.last_kept += 1
                    # copies: a kept tile must not hold the whole band alive
                    pixels = np.ascontiguousarray(band[0][:, :, x : x + ts])
                    yield self._make_tile(grid, row, col, pixels, mask.copy())
        if rows is None and self.last_kept == 0 and not unknown and len(grid) > 0:
            raise EmptyRasterError("has no valid pixel (all nodata, masked or NaN)", self.path)

    def read_band(
        self, grid: Grid, row: int, first_col: int, last_col: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The output pixels of the tiles ``first_col..last_col`` (inclusive) of grid ``row`` in
        one read: ``(pixels uint8 (3, S, W), mask bool (S, W))`` with ``S`` the tile size and
        ``W = (last_col - first_col) * stride + S``; tile ``c`` is columns
        ``[(c - first_col) * stride, ... + S)``. With one column, when the grid is not
        resampled, or when it is downsampled where no overview serves, those are the
        pixels of the tile's own :meth:`read_window`.
        """
        ts = grid.tile_size
        w = grid.window(row, first_col)
        resampling = Resampling.average if grid.scale_x >= 1.0 else Resampling.bilinear
        width = (last_col - first_col) * grid.stride + ts
        return self.read_window(
            w.col_off, w.row_off, grid.scale_x, grid.scale_y, width, ts, resampling
        )

    def count_tiles(
        self, cfg: TileConfig | None = None, *, stop_at: int | None = None
    ) -> tuple[int, int]:
        """(kept, skipped) tile counts for ``cfg`` without building tiles.

        Uses the geometric coverage alone when the raster has no mask, nodata or NaN to check;
        otherwise reads the tile masks. With ``stop_at``, counting stops once that many tiles
        are kept (then ``skipped`` counts the rest of the grid), so asking "at least N?" of a
        huge masked raster reads N masks, not all of them.
        """
        cfg = cfg or TileConfig()
        grid = self.grid(cfg)
        kept = 0
        geometric = self.mask_kind == "none" and not self._is_float
        for row, col in grid:
            if stop_at is not None and kept >= stop_at:
                break
            vf = grid.coverage(row, col)
            if vf > 0 and vf >= cfg.min_valid and not geometric:
                w = grid.window(row, col)
                _, mask = self.read_window(
                    w.col_off,
                    w.row_off,
                    grid.scale_x,
                    grid.scale_y,
                    grid.tile_size,
                    grid.tile_size,
                    Resampling.nearest,
                )
                vf = _fraction(mask)
            kept += int(vf > 0 and vf >= cfg.min_valid)
        return kept, len(grid) - kept

    def read_region(
        self, center_lon: float, center_lat: float, size_px: int, gsd_m: float
    ) -> tuple[np.ndarray, np.ndarray, Affine]:
        """Read a square of ground centred on (lon, lat), axis-aligned with the raster CRS.

        The square is ``size_px`` pixels of ``gsd_m`` metres (bilinear resampling); parts beyond
        the raster are zero and masked. Returns ``(pixels uint8 (3, S, S), mask bool (S, S),
        transform)`` where ``transform`` maps output pixel (col, row) to raster-CRS (x, y);
        use :func:`tiling.crs.to_lonlat` to go on to lon/lat.
        """
        if int(size_px) != size_px or size_px < 1:
            raise TileConfigError(f"region size must be an integer >= 1 px, got {size_px!r}")
        if not (math.isfinite(gsd_m) and gsd_m > 0):
            raise TileConfigError(f"region GSD must be a positive number of metres, got {gsd_m!r}")
        size = int(size_px)
        x, y = from_lonlat(self._crs_key, float(center_lon), float(center_lat))
        if not (math.isfinite(x) and math.isfinite(y)):
            raise TilingError(
                f"position ({center_lon}, {center_lat}) cannot be expressed in the raster CRS",
                self.path,
            )
        t = self.transform
        inv = ~t
        col_c, row_c = inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f
        try:  # the pixel's ground size where the region is (varies over big geographic rasters)
            gx, gy = pixel_size_m(self._crs_key, t, col_c, row_c, 16.0)
        except ValueError:
            gx, gy = self.gsd_xy_m
        sx, sy = gsd_m / gx, gsd_m / gy  # source pixels per output pixel
        col_off, row_off = col_c - size / 2.0 * sx, row_c - size / 2.0 * sy
        out_t = scaled_window_transform(t, col_off, row_off, sx, sy)
        pixels, mask = self.read_window(col_off, row_off, sx, sy, size, size, Resampling.bilinear)
        return pixels, mask, out_t

    # ------------------------------------------------------------------ info & lifecycle
    def info(self, cfg: TileConfig | None = None) -> dict[str, Any]:
        """A JSON-able description of the raster (``geoloc info``), with tile counts for ``cfg``."""
        cfg = cfg or TileConfig()
        ds = self._ds
        grid = self.grid(cfg)
        kept, skipped = self.count_tiles(cfg)
        w, s, e, n = self.bounds_lonlat
        cxy = affine_xy(self.transform, np.array([self.width / 2]), np.array([self.height / 2]))
        clon, clat = to_lonlat(self.crs, *cxy)
        return {
            "path": self.path,
            "driver": ds.driver,
            "crs": self.crs_str,
            "crs_name": str(to_pyproj(self.crs).name),
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "dtype": self.dtype,
            "dtypes": list(ds.dtypes),
            "bands": list(self.bands),
            "colorinterp": [ci.name for ci in ds.colorinterp],
            "nodata": _json_number(ds.nodata),
            "mask": self.mask_kind,
            "transform": list(self.transform)[:6],
            "bounds": list(ds.bounds),
            "bounds_lonlat": [w, s, e, n],
            "center_lonlat": [float(clon[0]), float(clat[0])],
            "gsd_m": self.gsd_m,
            "gsd_xy_m": list(self.gsd_xy_m),
            "overviews": self.overview_factors,
            "block_shape": list(ds.block_shapes[0]),
            "stretch": None if self.stretch is None else [list(p) for p in self.stretch],
            "tiles": {
                "tile_size": grid.tile_size,
                "stride": grid.stride,
                "gsd_m": grid.gsd_m,
                "min_valid": cfg.min_valid,
                "rows": grid.rows,
                "cols": grid.cols,
                "candidates": len(grid),
                "kept": kept,
                "skipped": skipped,
            },
        }

    def close(self) -> None:
        """Close the dataset."""
        self._ds.close()

    def __enter__(self) -> Raster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        crs = self.crs_str if len(self.crs_str) < 40 else "WKT"
        return f"Raster({self.path!r}, {self.width}x{self.height}, {crs}, gsd={self.gsd_m:.3f} m)"


def _is_copy(grid: Grid) -> bool:
    """True when the grid's output pixels are source pixels (1:1, integer windows)."""
    return abs(grid.scale_x - 1.0) < 1e-9 and abs(grid.scale_y - 1.0) < 1e-9


def _fraction(mask: np.ndarray) -> float:
    """Fraction of True in a boolean array (faster than ``mean``)."""
    return float(np.count_nonzero(mask)) / mask.size if mask.size else 0.0


def _json_number(v: float | None) -> float | str | None:
    if v is None:
        return None
    if not math.isfinite(v):
        return str(v)
    return float(v)


def open_raster(path: str | os.PathLike[str], bands: Sequence[int] = (1, 2, 3)) -> Raster:
    """Open and validate a georeferenced raster for tiling (a context manager).

    Args:
        path: any raster GDAL opens (GeoTIFF, COG, BigTIFF, VRT, ...).
        bands: 1-based bands read as R, G, B; a single band is repeated to RGB. With the
            default ``(1, 2, 3)``, rasters with fewer than three colour bands use band 1 as grey.

    Raises:
        TilingError: a subclass with a one-line ``"<path>: <problem>"`` message when the file is
            missing, empty, not a raster, not georeferenced, rotated/sheared, or has no valid
            pixel, or when ``bands`` do not exist.
    """
    return Raster(path, bands=bands)
