"""geoloc: GNSS-free UAV geolocalization against georeferenced orthomosaics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geoloc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
