"""Typed errors of the tiler: every message is one line, ``"<path>: <problem>"``."""

from __future__ import annotations

import os
from os import PathLike


class OneLineError(Exception):
    """Base of every expected failure of tiling and geoloc: a one-line message and an exit code.

    ``str(exc)`` is ``"<path>: <problem>"`` (or just the problem when there is no path); the
    ``geoloc`` CLI prints it as ``geoloc: error: <message>`` and exits with ``exit_code``.
    ``geoloc.errors.GeolocError`` builds on this class, so both families share the logic and
    tiling stays importable without geoloc.

    Attributes:
        path: the file concerned, or None.
        problem: the message without the path, whitespace collapsed to one line.
    """

    exit_code: int = 1

    def __init__(self, message: object, path: str | PathLike[str] | None = None) -> None:
        self.path = None if path is None or path == "" else os.fspath(path)
        self.problem = " ".join(str(message).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)


class TilingError(OneLineError):
    """Base class of every expected tiler failure (bad input raster or image, bad parameters)."""


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
