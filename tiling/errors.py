"""Typed errors of the tiler: every message is one line, ``"<path>: <problem>"``."""

from __future__ import annotations

from os import PathLike


class TilingError(Exception):
    """Base class of every expected tiler failure (bad input raster, bad parameters).

    ``str(exc)`` is a single line naming the file (when there is one) and the problem;
    the ``geoloc`` CLI prints it as ``geoloc: error: <message>`` and exits with ``exit_code``.
    """

    exit_code: int = 1

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        msg = " ".join(str(message).split())  # always one line
        super().__init__(f"{self.path}: {msg}" if self.path is not None else msg)


class RasterOpenError(TilingError):
    """The path does not exist, is empty, is a directory, or GDAL cannot open it as a raster."""


class GeoreferenceError(TilingError):
    """No CRS, no (identity) geotransform, or a rotated/sheared/flipped geotransform."""


class EmptyRasterError(TilingError):
    """The raster has no pixels or no valid (non-nodata, unmasked, finite) pixel."""


class RasterReadError(TilingError):
    """Reading pixels failed (truncated file, missing VRT source, I/O error)."""


class TileConfigError(TilingError):
    """Invalid tiling parameters (tile size, stride, GSD, valid fraction, bands)."""


class ImageError(TilingError):
    """A non-georeferenced image (frame, explain image) cannot be read or has no usable pixels."""


class NoTilesError(TilingError):
    """A raster gives no tile for the tiling policy; the message says which option to change."""
