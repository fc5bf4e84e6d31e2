"""Typed errors. Every user-facing failure is a :class:`GeolocError` whose ``str`` is one line.

The CLI prints that line to stderr and exits with :attr:`GeolocError.exit_code`.
"""

from __future__ import annotations


class GeolocError(Exception):
    """Base class of every expected failure: one-line message, an exit code."""

    exit_code: int = 1

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        msg = " ".join(str(message).split())  # always one line
        super().__init__(f"{path}: {msg}" if path else msg)


class ConfigError(GeolocError):
    """Bad configuration: unknown plugin, bad parameter, bad pipeline file."""


class DatabaseError(GeolocError):
    """The database is unreachable, not at the schema head, or inconsistent."""


class IndexError_(GeolocError):
    """The FAISS index is missing, corrupt or disagrees with the database."""


class EncoderMismatchError(GeolocError):
    """A checkpoint or encoder does not match what an index was built with."""


class FrameError(GeolocError):
    """A query frame cannot be read or used."""


class EmptyDatabaseError(GeolocError):
    """Nothing has been ingested for the requested encoder."""
