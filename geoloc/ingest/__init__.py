"""Ingest: tiler -> encoder -> tile store, pipelined, transactional, resumable.

Public API::

    from geoloc.ingest import ingest, IngestResult, rebuild_index
    results = ingest(["ortho.tif", "more/"], encoder="sgmnet", gsd=None, stride=None)

See :mod:`geoloc.ingest.core` for the protocol, :class:`tiling.TilingPolicy` for the grid and
:mod:`geoloc.ingest.rebuild` for ``geoloc index rebuild`` (a re-ingest of Ω only).
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
    policy_for,
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
    "policy_for",
    "sha256_file",
]
