"""The FAISS Ω index under its first module name: ``geoloc.store.omega_index`` holds it now.

The index is split into the basis maths (``omega_basis.py``), the refine codes (``refine.py``),
the on-disk format (``omega_format.py``) and the index that composes them (``omega_index.py``);
this module keeps ``from geoloc.store.faiss_store import OmegaIndex`` (and the constants callers
import with it) working.
"""

from __future__ import annotations

from geoloc.store.omega_basis import (
    ADD_CHUNK,
    DEFAULT_IVF_THRESHOLD,
    DEFAULT_NPROBE,
    DEFAULT_OMEGA_DIM,
    DEFAULT_TARGET_DIM,
    IVF_RETRAIN_FACTOR,
    RESIDUAL_TOL,
)
from geoloc.store.omega_format import FORMAT_VERSION, MAX_REFINE_SEGMENTS, REBUILD_HINT
from geoloc.store.omega_index import OmegaIndex
from geoloc.store.refine import (
    DEFAULT_REFINE_BITS,
    DEFAULT_REFINE_CHANNELS,
    DEFAULT_REFINE_DIMS,
    DEFAULT_REFINE_K,
    REFINE_TRAIN_TILES,
)

__all__ = [
    "ADD_CHUNK",
    "DEFAULT_IVF_THRESHOLD",
    "DEFAULT_NPROBE",
    "DEFAULT_OMEGA_DIM",
    "DEFAULT_REFINE_BITS",
    "DEFAULT_REFINE_CHANNELS",
    "DEFAULT_REFINE_DIMS",
    "DEFAULT_REFINE_K",
    "DEFAULT_TARGET_DIM",
    "FORMAT_VERSION",
    "IVF_RETRAIN_FACTOR",
    "MAX_REFINE_SEGMENTS",
    "REBUILD_HINT",
    "REFINE_TRAIN_TILES",
    "RESIDUAL_TOL",
    "OmegaIndex",
]
