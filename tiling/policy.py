"""The one tiling policy: which grid ``geoloc tiles``, ``ingest``, ``train`` and ``eval`` lay.

:class:`TilingPolicy` holds what the user asked for (tile size, GSD, stride, valid fraction;
None means "the default") and :meth:`TilingPolicy.resolve` turns it into the
:class:`~tiling.grid.TileConfig` of one raster, with a one-line reason the callers log.

The default GSD is ``max(DEFAULT_GSD_M, native)``: a 224 px tile then covers about as much
ground as a drone frame from typical survey heights, which is what retrieval needs, and a
coarse raster is never upsampled. A small map at that GSD would give a handful of tiles or
none at all, which is no database to search, so when fewer than :data:`MIN_TILES` tiles would
be kept the policy falls back to the native GSD and says so in the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tiling.errors import TileConfigError
from tiling.grid import TileConfig

if TYPE_CHECKING:
    from tiling.raster import Raster

__all__ = [
    "DEFAULT_GSD_M",
    "DEFAULT_MIN_VALID",
    "DEFAULT_STRIDE_FRACTION",
    "DEFAULT_TILE_SIZE",
    "MIN_TILES",
    "TilingPolicy",
]

#: Tile side in pixels: the encoders' input size.
DEFAULT_TILE_SIZE = 224

#: Default ground sample distance (m/px): a 224 px tile covers 112 m, the ground a drone frame
#: sees from ~100 m. Finer tiles hold too little structure to retrieve a frame by.
DEFAULT_GSD_M = 0.5

#: Default stride as a fraction of the tile: with half a tile, any frame centre lies within a
#: quarter tile of some tile centre along each axis.
DEFAULT_STRIDE_FRACTION = 0.5

#: Default minimum fraction of valid pixels for a tile to be kept.
DEFAULT_MIN_VALID = 0.5

#: Fewest kept tiles the default GSD must give before the policy falls back to the native GSD
#: ("a few dozen": below that, recall has nothing to choose between).
MIN_TILES = 24


@dataclass(frozen=True)
class TilingPolicy:
    """Tiling options as given by the user; None picks the default (see :meth:`resolve`).

    Attributes:
        tile_size: tile side in pixels.
        gsd: target ground sample distance in m/px; None lets :meth:`resolve` choose.
        stride: step between tiles in pixels; None means half a tile.
        min_valid: minimum fraction of valid pixels of a kept tile.
        default_gsd_m: the GSD tried first when ``gsd`` is None.
        min_tiles: fewest kept tiles at ``default_gsd_m`` before falling back to native.

    Raises:
        TileConfigError: at construction, naming the option (``--gsd``, ``--stride``, ...).
    """

    tile_size: int = DEFAULT_TILE_SIZE
    gsd: float | None = None
    stride: int | None = None
    min_valid: float = DEFAULT_MIN_VALID
    default_gsd_m: float = DEFAULT_GSD_M
    min_tiles: int = MIN_TILES

    def __post_init__(self) -> None:
        ts = self.tile_size
        if isinstance(ts, bool) or not isinstance(ts, int | float) or int(ts) != ts or ts < 1:
            raise TileConfigError(f"--tile-size must be an integer >= 1 pixel, got {ts!r}")
        if self.gsd is not None and not (
            isinstance(self.gsd, int | float) and math.isfinite(self.gsd) and self.gsd > 0
        ):
            raise TileConfigError(f"--gsd must be a positive number of metres, got {self.gsd!r}")
        st = self.stride
        if st is not None and (isinstance(st, bool) or int(st) != st or st < 1):
            raise TileConfigError(f"--stride must be >= 1 pixel, got {st!r}")
        if not (isinstance(self.min_valid, int | float) and 0.0 <= self.min_valid <= 1.0):
            raise TileConfigError(f"--min-valid must be in [0, 1], got {self.min_valid!r}")
        if not (math.isfinite(self.default_gsd_m) and self.default_gsd_m > 0):
            raise TileConfigError(f"default GSD must be positive, got {self.default_gsd_m!r}")
        if self.min_tiles < 0:
            raise TileConfigError(f"min tiles must be >= 0, got {self.min_tiles!r}")

    @classmethod
    def from_options(
        cls,
        *,
        tile_size: int | None = None,
        gsd: float | None = None,
        stride: int | None = None,
        min_valid: float | None = None,
    ) -> TilingPolicy:
        """The policy of command-line options where None means "not given": the default."""
        return cls(
            tile_size=DEFAULT_TILE_SIZE if tile_size is None else tile_size,
            gsd=gsd,
            stride=stride,
            min_valid=DEFAULT_MIN_VALID if min_valid is None else min_valid,
        )

    @property
    def step(self) -> int:
        """The stride in pixels that every resolved config uses."""
        if self.stride is not None:
            return int(self.stride)
        return max(1, int(self.tile_size * DEFAULT_STRIDE_FRACTION))

    def config(self, gsd: float | None) -> TileConfig:
        """The :class:`TileConfig` of this policy at ``gsd`` m/px (None: native pixels)."""
        return TileConfig(
            tile_size=int(self.tile_size), stride=self.step, gsd=gsd, min_valid=self.min_valid
        )

    def resolve(self, raster: Raster) -> tuple[TileConfig, str]:
        """The grid for ``raster`` and why it was chosen (one line, for the caller's log).

        An explicit ``gsd`` is used as given. Otherwise ``max(default_gsd_m, native)``, unless
        that keeps fewer than ``min_tiles`` tiles on a raster finer than the default: then the
        native pixels are tiled as they are (no resampling).
        """
        native = float(raster.gsd_m)
        if self.gsd is not None:
            return self.config(float(self.gsd)), f"--gsd {self.gsd:g} m/px as given"
        if native >= self.default_gsd_m:
            reason = (
                f"native GSD {native:.3g} m/px (the {self.default_gsd_m:g} m/px default would "
                "upsample)"
            )
            return self.config(native), reason
        default = self.config(self.default_gsd_m)
        kept, _ = raster.count_tiles(default, stop_at=self.min_tiles)
        if kept >= self.min_tiles:
            return default, (
                f"default GSD {self.default_gsd_m:g} m/px (native {native:.3g} m/px; at least "
                f"{self.min_tiles} tiles)"
            )
        w_m, h_m = raster.width * raster.gsd_xy_m[0], raster.height * raster.gsd_xy_m[1]
        return self.config(None), (
            f"native GSD {native:.3g} m/px: the {self.default_gsd_m:g} m/px default keeps only "
            f"{kept} tile(s) of this {w_m:.0f} m x {h_m:.0f} m map (fewer than {self.min_tiles}); "
            "pass --gsd to choose another"
        )

    def no_tiles_message(self, cfg: TileConfig, native_gsd_m: float) -> str:
        """The one-line "no tile" problem for ``cfg``, saying which option to change."""
        gsd = cfg.gsd if cfg.gsd is not None else native_gsd_m
        hints = []
        if gsd > native_gsd_m * 1.001:
            hints.append(f"a finer --gsd (the raster's native GSD is {native_gsd_m:.3g} m/px)")
        if cfg.min_valid > 0:
            hints.append(f"a lower --min-valid (now {cfg.min_valid:g})")
        if not hints:
            hints.append("a smaller tile size")
        return (
            f"no tile has at least {cfg.min_valid:.0%} valid pixels at {gsd:.3g} m/px "
            f"({cfg.tile_size} px tiles); try {' or '.join(hints)}"
        )
