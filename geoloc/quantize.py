"""Int8 codes of unit vectors: the cheap cosines the localizer screens with (Φ's recall re-rank
in memory, the verifier's coarse check), one definition for both."""

from __future__ import annotations

import numpy as np

#: A unit vector's length in :func:`unit_int8` codes: a code's cosine with another is their
#: dot product over ``INT8_UNIT**2``, within a few thousandths of the float cosine.
INT8_UNIT = 127


def unit_int8(rows: np.ndarray) -> np.ndarray:
    """``rows`` (n, d) scaled to unit length and rounded to int8 codes of :data:`INT8_UNIT`."""
    p = np.asarray(rows, dtype=np.float32)
    n = np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    return np.rint(p * (INT8_UNIT / n)).astype(np.int8)
