"""Typed errors. Every user-facing failure is a :class:`GeolocError` whose ``str`` is one line.

The CLI prints that line to stderr and exits with :attr:`GeolocError.exit_code`. The one-line
logic lives in :class:`tiling.errors.OneLineError`, the base of both :class:`GeolocError` and
:class:`tiling.errors.TilingError` (tiling is below geoloc and cannot import it).
"""

from __future__ import annotations

from tiling.errors import OneLineError

__all__ = [
    "ConfigError",
    "DatabaseError",
    "DatasetError",
    "EmptyDatabaseError",
    "EncoderInputError",
    "EncoderMismatchError",
    "FrameError",
    "GeolocError",
    "ImageReadError",
    "IndexError_",
    "IngestError",
    "NoOmegaIndexError",
    "OneLineError",
    "SyntheticError",
    "TrainError",
]


class GeolocError(OneLineError):
    """Base class of every expected geoloc failure: one-line message, an exit code."""

    def __init__(self, message: object, *, path: str | None = None) -> None:
        super().__init__(message, path)


class ConfigError(GeolocError):
    """Bad configuration: unknown plugin, bad parameter, bad pipeline file."""


class DatabaseError(GeolocError):
    """The database is unreachable, not at the schema head, or inconsistent."""


class IndexError_(GeolocError):
    """The FAISS index is missing, corrupt or disagrees with the database."""


class NoOmegaIndexError(IndexError_):
    """Ω recall (the ``seed`` preset) asked of a store ingested without its Ω index.

    The store is as it was built, so the CLI exits 2 (a usage error, like a bad option).
    """

    exit_code = 2


class EncoderMismatchError(GeolocError):
    """A checkpoint or encoder does not match what an index was built with."""


class EncoderInputError(GeolocError):
    """Images given to an encoder have the wrong type, dtype or shape."""


class FrameError(GeolocError):
    """A query frame cannot be read or used."""


class ImageReadError(GeolocError):
    """An image file cannot be read as RGB (``geoloc encoders explain`` and the demo encoder)."""


class EmptyDatabaseError(GeolocError):
    """Nothing has been ingested for the requested encoder."""


class IngestError(GeolocError):
    """An expected ingest failure (bad input path, invalid parameter, empty raster)."""


class DatasetError(GeolocError):
    """A training/evaluation data source is missing, empty or malformed."""


class SyntheticError(GeolocError):
    """A synthetic view cannot be made (unreadable raster, point off the raster, ...)."""


class TrainError(GeolocError):
    """Training cannot start or resume (bad checkpoint directory, mismatched config)."""


class CameraFileError(ConfigError):
    """A ``--camera`` file that cannot be used: unreadable, bad shape, non-numeric, missing keys.

    A bad file named on the command line is a usage error, so the CLI exits 2.
    """

    exit_code = 2


class DemFileError(ConfigError):
    """A ``--dem`` raster that cannot be used: unreadable, no CRS, not one band of heights."""

    exit_code = 2
