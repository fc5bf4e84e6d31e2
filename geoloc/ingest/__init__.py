"""Ingest: tiler -> encoder -> store, pipelined, transactional, resumable.

Public API::

    from geoloc.ingest import ingest, IngestResult
    results = ingest(["ortho.tif", "more/"], encoder="sgmnet", gsd=None, stride=None)

See :mod:`geoloc.ingest.core` for the crash-safety protocol and the default GSD/stride choice.
"""

from __future__ import annotations

from geoloc.ingest.core import (
    DEFAULT_GSD_M,
    DEFAULT_MIN_VALID,
    DEFAULT_STRIDE_FRACTION,
    IngestError,
    IngestResult,
    IngestTimings,
    ingest,
    resolve_tiling,
)
from geoloc.ingest.paths import RASTER_EXTENSIONS, PathProblem, expand_paths, sha256_file

__all__ = [
    "DEFAULT_GSD_M",
    "DEFAULT_MIN_VALID",
    "DEFAULT_STRIDE_FRACTION",
    "RASTER_EXTENSIONS",
    "IngestError",
    "IngestResult",
    "IngestTimings",
    "PathProblem",
    "expand_paths",
    "ingest",
    "resolve_tiling",
    "sha256_file",
]
