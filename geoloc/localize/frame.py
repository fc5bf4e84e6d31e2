"""Query frames: loading, ground scale, rotation and the encoder's square input.

A drone frame arrives as a JPEG/PNG/TIFF (or an array). :func:`load_frame` decodes it through
the one image reader, :func:`tiling.image.decode_image` (RGB uint8, EXIF orientation applied,
every image mode, the one stretch for non-uint8 data, EXIF focal lengths), reads the DJI XMP
packet of the file, and works out the frame's ground sampling
distance (GSD) from, in this order: the user's ``gsd``; ``altitude_m`` + ``hfov_deg``; DJI-style
XMP ``RelativeAltitude`` with the EXIF focal length (35 mm equivalent, or focal length + sensor
width of known DJI models is not guessed: only the 35 mm equivalent is used).

Headings follow the compass: ``heading_deg`` is the direction the top of the image points to,
clockwise from north. :func:`rotate_to_north` turns a frame with a known heading north-up.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.errors import FrameError

#: The 35 mm film frame is 36 mm wide: the reference of ``FocalLengthIn35mmFilm``.
FILM_35MM_WIDTH_MM = 36.0


@dataclass
class Frame:
    """A decoded query frame.

    ``rgb`` is (H, W, 3) uint8, north-up only if ``heading_deg`` says so; ``mask`` is True on
    valid pixels (False where the source was transparent). ``gsd_m`` is the ground size of one
    frame pixel in metres, or None when unknown; ``gsd_source`` tells where it came from.
    """

    name: str
    rgb: np.ndarray
    mask: np.ndarray
    gsd_m: float | None = None
    gsd_source: str | None = None
    heading_deg: float | None = None
    heading_source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return int(self.rgb.shape[0])


def gsd_from_altitude(altitude_m: float, hfov_deg: float, width_px: int) -> float:
    """Ground size of one pixel (m) of a nadir frame ``width_px`` wide taken at ``altitude_m``."""
    if altitude_m <= 0 or not 0 < hfov_deg < 180 or width_px <= 0:
        raise ValueError(
            f"altitude {altitude_m} m and HFOV {hfov_deg} deg must be positive (HFOV < 180)"
        )
    return 2.0 * altitude_m * math.tan(math.radians(hfov_deg) / 2.0) / width_px


def hfov_from_35mm(focal_35mm: float) -> float:
    """Horizontal field of view (degrees) from a 35 mm-equivalent focal length."""
    return math.degrees(2.0 * math.atan(FILM_35MM_WIDTH_MM / (2.0 * focal_35mm)))


_XMP_KEYS = ("RelativeAltitude", "FlightYawDegree", "GimbalYawDegree", "GimbalPitchDegree")


def parse_dji_xmp(data: bytes) -> dict[str, float]:
    """Read DJI-style ``drone-dji:`` values (attributes or elements) from raw XMP/file bytes."""
    out: dict[str, float] = {}
    for key in _XMP_KEYS:
        pat = rb"drone-dji:" + key.encode() + rb"""(?:=\s*["']|>)\s*([+-]?[0-9]*\.?[0-9]+)"""
        m = re.search(pat, data)
        if m:
            try:
                out[key] = float(m.group(1))
            except ValueError:  # pragma: no cover - the regex only matches numbers
                continue
    return out


def load_frame(
    source: str | Path | np.ndarray,
    *,
    gsd: float | None = None,
    altitude_m: float | None = None,
    hfov_deg: float | None = None,
    heading_deg: float | None = None,
    name: str | None = None,
) -> Frame:
    """Decode a query frame and work out its GSD and heading when they are known.

    ``source`` is a path (JPEG/PNG/TIFF/GIF/WebP/BMP) or an (H, W, 3) / (H, W) / (3, H, W)
    uint8 array. Raises :class:`FrameError` (one line naming the file) when it cannot be used.
    """
    label = name or (str(source) if not isinstance(source, np.ndarray) else "<array>")
    rgb, mask, meta = _decode(source, label)
    if min(rgb.shape[:2]) < 32:
        raise FrameError(
            f"frame too small ({rgb.shape[1]}x{rgb.shape[0]} px, need >= 32)", path=label
        )
    if not mask.any():
        raise FrameError("frame has no valid (non-transparent) pixels", path=label)

    frame = Frame(name=label, rgb=rgb, mask=mask, meta=meta)
    width = frame.width
    if gsd is not None:
        if not gsd > 0:
            raise FrameError(f"--gsd must be positive, got {gsd}", path=label)
        frame.gsd_m, frame.gsd_source = float(gsd), "user"
    elif altitude_m is not None or hfov_deg is not None:
        if altitude_m is None or hfov_deg is None:
            raise FrameError("--altitude and --hfov must be given together", path=label)
        try:
            frame.gsd_m = gsd_from_altitude(altitude_m, hfov_deg, width)
        except ValueError as exc:
            raise FrameError(str(exc), path=label) from exc
        frame.gsd_source = "altitude+hfov"
    elif "RelativeAltitude" in meta and "FocalLengthIn35mmFilm" in meta:
        alt = float(meta["RelativeAltitude"])
        f35 = float(meta["FocalLengthIn35mmFilm"])
        if alt > 0 and f35 > 0:
            frame.gsd_m = gsd_from_altitude(alt, hfov_from_35mm(f35), width)
            frame.gsd_source = "exif"
    if heading_deg is not None:
        frame.heading_deg, frame.heading_source = float(heading_deg) % 360.0, "user"
    elif "GimbalYawDegree" in meta or "FlightYawDegree" in meta:
        yaw = float(
            meta["GimbalYawDegree"] if "GimbalYawDegree" in meta else meta["FlightYawDegree"]
        )
        frame.heading_deg, frame.heading_source = float(yaw) % 360.0, "xmp"
    return frame


def _decode(
    source: str | Path | np.ndarray, label: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Pixels and EXIF through the one image reader (:mod:`tiling.image`), XMP from the file."""
    from tiling.errors import ImageError
    from tiling.image import decode_image

    try:
        img = decode_image(source, name=label)
    except ImageError as exc:
        raise FrameError(exc.problem, path=label) from exc
    meta = dict(img.meta)
    if not isinstance(source, np.ndarray):
        try:
            with Path(source).open("rb") as fh:
                head = fh.read(1 << 20)
        except OSError as exc:  # decoded a moment ago: only a race can get here
            raise FrameError(f"cannot read: {exc.strerror or exc}", path=label) from exc
        if b"drone-dji:" in head:
            meta.update(parse_dji_xmp(head))
    return img.rgb, img.mask, meta


# ---------------------------------------------------------------------------------------------
# geometry on frames


def rescale(img: np.ndarray, factor: float, *, nearest: bool = False) -> np.ndarray:
    """Resize ``img`` (H, W[, C]) by ``factor`` (area interpolation when shrinking)."""
    import cv2

    if abs(factor - 1.0) < 1e-6:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    src = img.astype(np.uint8) if img.dtype == bool else img
    out = cv2.resize(src, size, interpolation=interp)
    return out.astype(bool) if img.dtype == bool else out


def rotation_matrix(width: int, height: int, angle_ccw_deg: float) -> np.ndarray:
    """The 2x3 affine (source pixel -> rotated pixel, pixel centres) that :func:`rotate` applies.

    It is what a :class:`~geoloc.camera.PixelChain` records so that matches on the rotated
    frame map back to the frame's own pixels.
    """
    import cv2

    a = angle_ccw_deg % 360.0
    w, h = int(width), int(height)
    if a == 0.0:
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    k = round(a / 90.0)
    if abs(a - 90.0 * k) < 1e-9:
        # np.rot90 moves whole pixels: (x, y) -> (y, w-1-x) per quarter turn
        quarter = {
            0: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            1: [[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0]],
            2: [[-1.0, 0.0, w - 1.0], [0.0, -1.0, h - 1.0]],
            3: [[0.0, -1.0, h - 1.0], [1.0, 0.0, 0.0]],
        }
        return np.array(quarter[k % 4])
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), a, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(math.ceil(h * sin + w * cos)), int(math.ceil(h * cos + w * sin))
    m[0, 2] += nw / 2.0 - w / 2.0
    m[1, 2] += nh / 2.0 - h / 2.0
    return np.asarray(m, dtype=np.float64)


def rotate(
    img: np.ndarray, mask: np.ndarray, angle_ccw_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about the centre by ``angle_ccw_deg`` (counter-clockwise as seen), canvas expanded.

    Returns the rotated image and its valid mask (False in the new empty corners).
    """
    import cv2

    a = angle_ccw_deg % 360.0
    if a == 0.0:
        return img, mask
    k = round(a / 90.0)
    if abs(a - 90.0 * k) < 1e-9:
        return np.ascontiguousarray(np.rot90(img, k % 4)), np.ascontiguousarray(
            np.rot90(mask, k % 4)
        )
    h, w = img.shape[:2]
    m = rotation_matrix(w, h, a)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(math.ceil(h * sin + w * cos)), int(math.ceil(h * cos + w * sin))
    out = cv2.warpAffine(img, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    om = cv2.warpAffine(mask.astype(np.uint8), m, (nw, nh), flags=cv2.INTER_NEAREST, borderValue=0)
    return out, om.astype(bool)


def rotate_to_north(
    img: np.ndarray, mask: np.ndarray, heading_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a frame whose image-up points to ``heading_deg`` (clockwise from north) north-up."""
    return rotate(img, mask, -heading_deg)


def centre_crop_origin(width: int, height: int, size: int) -> tuple[int, int]:
    """Top-left source pixel (x0, y0) of :func:`centre_crop`'s square (negative: padding)."""
    return (int(width) - size) // 2, (int(height) - size) // 2


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` square of ``img``, zero-padded if ``img`` is smaller."""
    h, w = img.shape[:2]
    out_shape = (size, size) + img.shape[2:]
    out = np.zeros(out_shape, dtype=img.dtype)
    y0, x0 = (h - size) // 2, (w - size) // 2
    sy0, sx0 = max(0, y0), max(0, x0)
    sy1, sx1 = min(h, y0 + size), min(w, x0 + size)
    out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def at_map_scale(
    frame: Frame, map_gsd_m: float, tile_px: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """The frame resampled to the map's GSD, with its mask and the factor applied.

    With an unknown GSD, the frame's shorter side is assumed to span one tile (``tile_px``
    map pixels): the only scale information there is.
    """
    if frame.gsd_m is not None:
        factor = frame.gsd_m / map_gsd_m
    else:
        factor = tile_px / float(min(frame.width, frame.height))
    return rescale(frame.rgb, factor), rescale(frame.mask, factor, nearest=True), factor


def rotation_batch(
    img: np.ndarray,
    mask: np.ndarray,
    headings_deg: list[float],
    *,
    crop_px: int,
    size: int = 224,
) -> tuple[np.ndarray, np.ndarray]:
    """North-up candidates for each hypothetical heading, as the encoder's input.

    ``img`` is the frame at map scale; for each heading h the frame is rotated north-up, the
    central ``crop_px`` square (one tile footprint) is cut and resized to ``size``. Returns
    (B, 3, size, size) uint8 and the valid fraction of each crop (B,).
    """
    import cv2

    batch = np.empty((len(headings_deg), 3, size, size), dtype=np.uint8)
    valid = np.empty(len(headings_deg), dtype=np.float32)
    for i, h in enumerate(headings_deg):
        r, m = rotate_to_north(img, mask, h)
        c = centre_crop(r, crop_px)
        cm = centre_crop(m, crop_px)
        if crop_px != size:
            interp = cv2.INTER_AREA if crop_px > size else cv2.INTER_LINEAR
            c = cv2.resize(c, (size, size), interpolation=interp)
        batch[i] = c.transpose(2, 0, 1)
        valid[i] = float(cm.mean())
    return batch, valid


def default_headings(n: int = 8) -> list[float]:
    """``n`` evenly spaced heading hypotheses, starting at 0 (north)."""
    if n < 1:
        raise ValueError("need at least one heading")
    return [360.0 * i / n for i in range(n)]
