"""The tile grid: :class:`TileConfig`, the grid formula and each tile's source window.

Tiles live in a virtual *output* raster whose pixels are ``gsd`` metres on the ground (or the
native pixels when ``gsd`` is None). Tile ``(row, col)`` covers output pixels
``[row*stride, row*stride + tile_size) x [col*stride, col*stride + tile_size)``. Per axis, the
number of tiles is ``1`` when the output size ``n <= tile_size``, else
``ceil((n - tile_size) / stride) + 1``: the last tile reaches the raster's edge (and may overhang
it; overhanging pixels are invalid and padded).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from affine import Affine
from rasterio.windows import Window

from tiling.errors import TileConfigError

__all__ = [
    "NATIVE_SNAP",
    "Grid",
    "TileConfig",
    "axis_count",
    "inside_range",
    "scaled_window_transform",
]

_EPS = 1e-9
#: A requested GSD within this relative difference of the raster's own (on both axes) tiles the
#: native pixels: a projected raster's ground pixel differs from its CRS unit by the
#: projection's scale factor (UTM: 0.9996-1.001), so ``--gsd 0.5`` on a 0.5 m orthophoto would
#: otherwise resample every pixel by a fraction of a percent (slower reads, slightly blurred
#: tiles) for at most 0.22 px across a 224 px tile.
NATIVE_SNAP = 1e-3


@dataclass(frozen=True)
class TileConfig:
    """Tiling parameters.

    Attributes:
        tile_size: side of a tile in output pixels (default 224).
        stride: step between tiles in output pixels; None means ``tile_size`` (no overlap).
        gsd: target ground sample distance in metres per pixel; None keeps the native GSD.
        min_valid: minimum fraction of valid pixels for a tile to be kept (default 0.5).
            Tiles with no valid pixel are always skipped.
    """

    tile_size: int = 224
    stride: int | None = None
    gsd: float | None = None
    min_valid: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.tile_size, bool) or int(self.tile_size) != self.tile_size:
            raise TileConfigError(f"tile size must be an integer, got {self.tile_size!r}")
        if self.tile_size < 1:
            raise TileConfigError(f"tile size must be >= 1 px, got {self.tile_size}")
        if self.stride is not None and (int(self.stride) != self.stride or self.stride < 1):
            raise TileConfigError(f"stride must be an integer >= 1 px, got {self.stride!r}")
        if self.gsd is not None and not (math.isfinite(self.gsd) and self.gsd > 0):
            raise TileConfigError(f"GSD must be a positive number of metres, got {self.gsd!r}")
        if not (0.0 <= self.min_valid <= 1.0):
            raise TileConfigError(f"min valid fraction must be in [0, 1], got {self.min_valid!r}")

    @property
    def step(self) -> int:
        """The effective stride in output pixels."""
        return int(self.stride) if self.stride is not None else int(self.tile_size)


def axis_count(n: float, tile_size: int, stride: int) -> int:
    """Number of tiles along an axis of ``n`` output pixels (the grid formula)."""
    if n <= 0:
        return 0
    if n <= tile_size + _EPS:
        return 1
    return int(math.ceil((n - tile_size) / stride - _EPS)) + 1


def scaled_window_transform(
    t: Affine, col_off: float, row_off: float, scale_x: float, scale_y: float
) -> Affine:
    """Transform of output pixels starting at source pixel (col_off, row_off), each covering
    ``scale_x`` x ``scale_y`` source pixels (``t @ translation @ scale``, spelled out)."""
    return Affine(
        t.a * scale_x,
        t.b * scale_y,
        t.a * col_off + t.b * row_off + t.c,
        t.d * scale_x,
        t.e * scale_y,
        t.d * col_off + t.e * row_off + t.f,
    )


def inside_range(offset: float, scale: float, n_out: int, limit: float) -> tuple[int, int]:
    """Output pixels ``[i0, i1)`` whose centres fall inside the source range ``[0, limit)``.

    Output pixel ``i`` covers source coordinates ``offset + [i, i+1) * scale``.
    """
    i0 = math.ceil((0.0 - offset) / scale - 0.5 - _EPS)
    i1 = math.floor((limit - offset) / scale - 0.5 - _EPS) + 1
    return max(0, i0), min(n_out, i1)


@dataclass(frozen=True)
class Grid:
    """The tile grid of one raster for one :class:`TileConfig`.

    Attributes:
        rows, cols: number of tile rows and columns (candidates, before the valid filter).
        tile_size, stride: in output pixels.
        gsd_m: ground sample distance of the output pixels (metres).
        scale_x, scale_y: source pixels per output pixel along x and y.
        out_width, out_height: size of the virtual output raster (fractional when resampled).
        src_width, src_height: size of the source raster in pixels.
        src_transform: the source raster's affine transform.
    """

    rows: int
    cols: int
    tile_size: int
    stride: int
    gsd_m: float
    scale_x: float
    scale_y: float
    out_width: float
    out_height: float
    src_width: int
    src_height: int
    src_transform: Affine

    @classmethod
    def build(
        cls,
        cfg: TileConfig,
        width: int,
        height: int,
        transform: Affine,
        gsd_xy_m: tuple[float, float],
    ) -> Grid:
        """Grid for a ``width`` x ``height`` raster whose pixels measure ``gsd_xy_m`` metres.

        A ``cfg.gsd`` within :data:`NATIVE_SNAP` of the native pixel on both axes keeps the
        native pixels (``gsd_m`` is then the native GSD)."""
        gx, gy = gsd_xy_m
        sx, sy = (1.0, 1.0) if cfg.gsd is None else (cfg.gsd / gx, cfg.gsd / gy)
        if abs(sx - 1.0) <= NATIVE_SNAP and abs(sy - 1.0) <= NATIVE_SNAP:
            sx = sy = 1.0
            gsd = math.sqrt(gx * gy)
        else:
            gsd = float(cfg.gsd or 0.0)  # set: a None GSD keeps sx = sy = 1
        out_w, out_h = width / sx, height / sy
        ts, st = int(cfg.tile_size), cfg.step
        return cls(
            rows=axis_count(out_h, ts, st),
            cols=axis_count(out_w, ts, st),
            tile_size=ts,
            stride=st,
            gsd_m=gsd,
            scale_x=sx,
            scale_y=sy,
            out_width=out_w,
            out_height=out_h,
            src_width=int(width),
            src_height=int(height),
            src_transform=transform,
        )

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(row, col) of every candidate tile, row-major from the top-left."""
        for r in range(self.rows):
            for c in range(self.cols):
                yield r, c

    def window(self, row: int, col: int) -> Window:
        """The tile's window in source pixels (fractional when resampled)."""
        ts, st = self.tile_size, self.stride
        return Window(
            col * st * self.scale_x, row * st * self.scale_y, ts * self.scale_x, ts * self.scale_y
        )

    def transform(self, row: int, col: int) -> Affine:
        """Affine transform of the tile's output pixels in the raster CRS."""
        w = self.window(row, col)
        return scaled_window_transform(
            self.src_transform, w.col_off, w.row_off, self.scale_x, self.scale_y
        )

    def coverage(self, row: int, col: int) -> float:
        """Fraction of the tile's output pixels that lie inside the raster (ignoring masks)."""
        w = self.window(row, col)
        c0, c1 = inside_range(w.col_off, self.scale_x, self.tile_size, self.src_width)
        r0, r1 = inside_range(w.row_off, self.scale_y, self.tile_size, self.src_height)
        return max(0, c1 - c0) * max(0, r1 - r0) / float(self.tile_size**2)
