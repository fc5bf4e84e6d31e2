"""Content hashes of files: how the store recognises a raster it has already ingested."""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, streamed in 1 MiB chunks (constant memory).

    For a VRT this is the hash of the VRT XML only, not of the files it points to.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
