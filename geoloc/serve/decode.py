"""Uploaded images: decoded by their content (JPEG or PNG), never by a name or a content type."""

from __future__ import annotations

import io

import numpy as np

from geoloc.errors import FrameError

#: Formats accepted from clients (PIL format names).
ACCEPTED_FORMATS = ("JPEG", "PNG")
#: Largest decoded frame accepted (pixels); a guard against decompression bombs.
MAX_PIXELS = 40_000_000


def decode_image(data: bytes, label: str = "upload") -> np.ndarray:
    """The RGB uint8 array of a JPEG/PNG held in ``data``; FrameError naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise FrameError(f"{label}: empty body (send one JPEG or PNG image)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ACCEPTED_FORMATS:
                raise FrameError(f"{label}: {img.format} image; only JPEG and PNG are accepted")
            w, h = img.size
            if w * h > MAX_PIXELS or w < 16 or h < 16:
                raise FrameError(f"{label}: {w}x{h} px is outside 16x16 .. {MAX_PIXELS} pixels")
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FrameError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FrameError(f"{label}: not a readable JPEG/PNG image ({first})") from exc
    return rgb
