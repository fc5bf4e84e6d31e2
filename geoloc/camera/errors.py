"""Errors of the camera package (to move into :mod:`geoloc.errors` with the redesign).

Both are bad files named on the command line, so the CLI exits 2 (usage), not 1.
"""

from __future__ import annotations

from geoloc.errors import ConfigError


class CameraFileError(ConfigError):
    """A ``--camera`` file that cannot be used: unreadable, bad shape, non-numeric, missing keys."""

    exit_code = 2


class DemFileError(ConfigError):
    """A ``--dem`` raster that cannot be used: unreadable, no CRS, not one band of heights."""

    exit_code = 2
