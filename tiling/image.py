"""Pixels of non-georeferenced images (drone frames, explain images) and the one contrast stretch.

:func:`read_image` decodes a path, encoded bytes or an array into RGB uint8 plus a validity
mask, whatever the source mode: EXIF orientation applied, palette / grey / alpha / CMYK /
16-bit / float / 1-band / 4-band handled, first frame of an animation. Non-uint8 data goes
through :func:`stretch_to_uint8`, the same 2-98 % per-band stretch the raster tiler applies, so
a frame, a training view and a tile of the same 16-bit source see the same pixels.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiling.errors import ImageError

__all__ = [
    "STRETCH_PERCENTILES",
    "DecodedImage",
    "apply_stretch",
    "decode_image",
    "read_image",
    "stretch_limits",
    "stretch_to_uint8",
]

log = logging.getLogger(__name__)

#: Percentiles of the robust contrast stretch applied to every non-uint8 source.
STRETCH_PERCENTILES = (2.0, 98.0)

_EXIF_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_EXIF_FOCAL_LENGTH = 0x920A
_EXIF_FOCAL_35MM = 0xA405
_TIFF_SUFFIXES = (".tif", ".tiff")


# ------------------------------------------------------------------------------ the stretch
def stretch_limits(values: Sequence[np.ndarray]) -> list[tuple[float, float]]:
    """Per-band ``(low, high)`` of the stretch from each band's valid values.

    Non-finite values are ignored; a band without finite values, or a constant one, gets a
    one-unit range so the stretch stays defined.
    """
    out = []
    for v in values:
        f = np.asarray(v, dtype=np.float64).ravel()
        f = f[np.isfinite(f)]
        if f.size == 0:
            out.append((0.0, 1.0))
            continue
        lo, hi = (float(x) for x in np.percentile(f, STRETCH_PERCENTILES))
        if not hi > lo:
            hi = lo + 1.0
        out.append((lo, hi))
    return out


def apply_stretch(band: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """Map ``band`` linearly from ``limits`` to 0-255 (clipped, rounded; NaN -> 0) as uint8."""
    lo, hi = limits
    with np.errstate(invalid="ignore"):
        f = (np.asarray(band).astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.nan_to_num(f, nan=0.0), 0, 255).round().astype(np.uint8)


def stretch_to_uint8(bands: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Stretch ``bands`` (C, H, W) to uint8, limits from the pixels where ``mask`` is True.

    uint8 input is returned unchanged: the stretch is for wider or float data only.
    """
    a = np.asarray(bands)
    if a.dtype == np.uint8:
        return a
    if a.ndim != 3:
        raise ValueError(f"expected (C, H, W) bands, got shape {a.shape}")
    sel = np.ones(a.shape[1:], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    limits = stretch_limits([b[sel] for b in a])
    return np.stack([apply_stretch(b, lim) for b, lim in zip(a, limits, strict=True)])


# ------------------------------------------------------------------------------ decoding
@dataclass
class DecodedImage:
    """A decoded image: ``rgb`` (H, W, 3) uint8, ``mask`` (H, W) bool (True = valid pixel) and
    ``meta`` (``exif_orientation``, ``FocalLength``, ``FocalLengthIn35mmFilm``, ``n_frames``
    when present)."""

    rgb: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def read_image(
    source: str | os.PathLike[str] | bytes | np.ndarray,
    *,
    max_side: int | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``source`` into ``(rgb uint8 (H, W, 3), valid mask bool (H, W))``.

    ``source`` is a path (JPEG/PNG/TIFF/GIF/WebP/BMP, or any raster GDAL reads), the encoded
    bytes of such a file, or an (H, W), (H, W, C) or (C, H, W) array with C in 1, 3, 4 (the 4th
    channel is alpha). ``max_side`` downsamples so the longer side is at most that many pixels.
    ``name`` labels error messages (default: the path, or ``<bytes>`` / ``<array>``).

    Raises:
        ImageError: one line naming the source, when it is missing, empty, a directory, not an
            image, truncated or of an unsupported shape.
    """
    img = decode_image(source, max_side=max_side, name=name)
    return img.rgb, img.mask


def decode_image(
    source: str | os.PathLike[str] | bytes | np.ndarray,
    *,
    max_side: int | None = None,
    name: str | None = None,
) -> DecodedImage:
    """:func:`read_image` plus the EXIF metadata of the file (see :class:`DecodedImage`)."""
    if max_side is not None and max_side < 1:
        raise ImageError(f"max side must be >= 1 px, got {max_side}", name)
    label = name or _label(source)
    if isinstance(source, np.ndarray):
        rgb, mask = _from_array(source, label)
        out = DecodedImage(rgb, mask)
    elif isinstance(source, bytes):
        out = _decode_bytes(source, label, None)
    else:
        path = Path(source)
        out = _decode_bytes(_read_file(path, label), label, path)
    if not out.mask.any():
        raise ImageError("image has no valid (non-transparent, finite) pixels", label)
    if max_side is not None and max(out.rgb.shape[:2]) > max_side:
        out.rgb, out.mask = _shrink(out.rgb, out.mask, max_side)
    return out


def _label(source: str | os.PathLike[str] | bytes | np.ndarray) -> str:
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, bytes):
        return "<bytes>"
    return os.fspath(source)


def _read_file(path: Path, label: str) -> bytes:
    if not path.exists():
        raise ImageError("no such file", label)
    if path.is_dir():
        raise ImageError("is a directory, not an image", label)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}", label) from exc
    if not data:
        raise ImageError("empty file", label)
    return data


def _decode_bytes(data: bytes, label: str, path: Path | None) -> DecodedImage:
    """Pillow first (EXIF, every 8-bit mode); GDAL for what Pillow cannot (16-bit RGB TIFF, ...)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageError("empty file", label)
    meta: dict[str, Any] = {}
    try:
        with Image.open(io.BytesIO(data)) as img:
            n_frames = int(getattr(img, "n_frames", 1))
            if n_frames > 1:
                log.warning("%s: animated image with %d frames; using the first", label, n_frames)
                meta["n_frames"] = n_frames
                img.seek(0)
            exif = img.getexif()
            orientation = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
            meta["exif_orientation"] = orientation
            sub = exif.get_ifd(_EXIF_IFD)
            if sub.get(_EXIF_FOCAL_35MM):
                meta["FocalLengthIn35mmFilm"] = float(sub[_EXIF_FOCAL_35MM])
            if sub.get(_EXIF_FOCAL_LENGTH):
                meta["FocalLength"] = float(sub[_EXIF_FOCAL_LENGTH])
            img.load()
            upright = ImageOps.exif_transpose(img) if orientation != 1 else img
            rgb, mask = _from_pillow(upright, label)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        rgb, mask = _gdal_fallback(
            data, label, path, exc, "not a readable image (unknown format or corrupt)"
        )
    except (OSError, ValueError, SyntaxError) as exc:
        msg = _first_line(exc)
        rgb, mask = _gdal_fallback(
            data, label, path, exc, f"cannot decode image (truncated or corrupt): {msg}"
        )
    return DecodedImage(rgb, mask, meta)


def _gdal_fallback(
    data: bytes, label: str, path: Path | None, exc: BaseException, problem: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read what Pillow refused through GDAL; when GDAL refuses too, report Pillow's problem."""
    looks_tiff = data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    is_tiff_name = path is not None and path.suffix.lower() in _TIFF_SUFFIXES
    if not (looks_tiff or is_tiff_name):
        raise ImageError(problem, label) from exc
    try:
        return _from_gdal(data)
    except Exception as exc2:  # noqa: BLE001 - any GDAL failure: report both problems
        raise ImageError(f"{problem}; {_first_line(exc2)}", label) from exc


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _from_gdal(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """First three bands (or band 1 as grey) of an in-memory raster, stretched when not uint8."""
    import warnings

    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(data) as mem, mem.open() as ds:
            colour = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha]
            idx = colour[:3] if len(colour) >= 3 else [(colour or [1])[0]]
            arr = ds.read(idx)
            mask = ds.dataset_mask() > 0
            if np.issubdtype(arr.dtype, np.floating):
                mask &= np.isfinite(arr).all(axis=0)
    out = stretch_to_uint8(arr, mask)
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    rgb = np.where(mask[..., None], out.transpose(1, 2, 0), 0).astype(np.uint8)
    return np.ascontiguousarray(rgb), mask


def _from_pillow(img: Any, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Any Pillow image mode to (RGB uint8, valid mask)."""
    mode = img.mode
    mask: np.ndarray | None = None
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        mask = np.asarray(img.getchannel("A")) > 0
        img = img.convert("RGB")
        mode = "RGB"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = np.asarray(img).astype(np.float64)
        finite = np.isfinite(grey)
        mask = finite if mask is None else mask & finite
        rgb = np.repeat(stretch_to_uint8(grey[None], mask)[0][..., None], 3, axis=2)
    elif mode == "RGB":
        rgb = np.asarray(img)
    else:
        try:
            rgb = np.asarray(img.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - any Pillow failure is a bad image
            raise ImageError(f"unsupported image mode {mode!r}: {exc}", label) from exc
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if mask is None:
        mask = np.ones(rgb.shape[:2], dtype=bool)
    return rgb, mask


def _from_array(arr: np.ndarray, label: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.size == 0:
        raise ImageError(f"array of shape {arr.shape} is not an image", label)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ImageError(f"array of dtype {a.dtype} is not an image", label)
    mask = np.ones(a.shape[:2], dtype=bool)
    if a.shape[2] == 4:
        mask = a[..., 3] > 0
        a = a[..., :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            mask &= np.isfinite(a).all(axis=2)
        a = stretch_to_uint8(np.moveaxis(a, -1, 0), mask).transpose(1, 2, 0)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a, dtype=np.uint8), mask


def _shrink(rgb: np.ndarray, mask: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-downsample so the longer side is ``max_side``; the mask by nearest neighbour."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(small), small_mask.astype(bool)
