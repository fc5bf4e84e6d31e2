"""Generator of bad and odd query frames for ``geoloc locate`` (written by the tests, never stored).

Every frame is made from an RGB view (H, W, 3 uint8) the caller cuts from a real raster, so the
odd-but-valid ones can be checked against the truth after decoding (``ODD``) and the bad ones
must be refused with one line naming the file (``BAD``).

``generate(d, rgb)`` writes all of them and returns ``{name: path}``; ``huge(d, rgb)`` writes the
12,000 x 9,000 px JPEG separately (it takes a few seconds and ~300 MB while decoding).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: EXIF orientation tag and the value meaning "rotate 90 degrees clockwise to display".
EXIF_ORIENTATION = 0x0112
ORIENTATION_ROT90_CW = 6


def _jpeg_bytes(rgb: np.ndarray, quality: int = 92) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ------------------------------------------------------------------------------ bad frames
def zero_byte(d: Path, rgb: np.ndarray) -> Path:
    """An empty file named .jpg."""
    p = d / "zero_byte.jpg"
    p.write_bytes(b"")
    return p


def truncated_jpeg(d: Path, rgb: np.ndarray) -> Path:
    """A real JPEG of the view cut at 40 % of its size (the scan data ends early)."""
    data = _jpeg_bytes(rgb)
    p = d / "truncated.jpg"
    p.write_bytes(data[: int(len(data) * 0.4)])
    return p


def tiny_10px(d: Path, rgb: np.ndarray) -> Path:
    """A valid 10 x 10 px PNG (too small to hold a tile's worth of ground)."""
    from PIL import Image

    p = d / "tiny_10x10.png"
    Image.fromarray(np.ascontiguousarray(rgb[:10, :10])).save(p)
    return p


def not_an_image(d: Path, rgb: np.ndarray) -> Path:
    """A text file named .jpg."""
    p = d / "not_an_image.jpg"
    p.write_text("GPS: 60.45N 22.26E\nthis is a flight log, not a picture\n", encoding="utf-8")
    return p


def html_as_png(d: Path, rgb: np.ndarray) -> Path:
    """An HTML error page saved as .png (what a failed download leaves behind)."""
    p = d / "download_error.png"
    p.write_text("<html><body>403 Forbidden</body></html>\n", encoding="utf-8")
    return p


def transparent_png(d: Path, rgb: np.ndarray) -> Path:
    """An RGBA PNG whose alpha is 0 everywhere (no valid pixel)."""
    from PIL import Image

    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])
    p = d / "fully_transparent.png"
    Image.fromarray(rgba, mode="RGBA").save(p)
    return p


# ------------------------------------------------------------------------------ odd frames
def grayscale(d: Path, rgb: np.ndarray) -> Path:
    """8-bit grayscale JPEG (mode L)."""
    from PIL import Image

    p = d / "grayscale.jpg"
    Image.fromarray(rgb).convert("L").save(p, quality=92)
    return p


def cmyk_jpeg(d: Path, rgb: np.ndarray) -> Path:
    """CMYK JPEG (Adobe marker, as print workflows write them)."""
    from PIL import Image

    p = d / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(p, quality=95)
    return p


def png_alpha(d: Path, rgb: np.ndarray) -> Path:
    """RGBA PNG: opaque except a transparent 20 px band along the left edge."""
    from PIL import Image

    a = np.full(rgb.shape[:2], 255, np.uint8)
    a[:, :20] = 0
    p = d / "alpha.png"
    Image.fromarray(np.dstack([rgb, a]), mode="RGBA").save(p)
    return p


def png16_rgb(d: Path, rgb: np.ndarray) -> Path:
    """48-bit (16 bits per channel) RGB PNG: the view times 257 (full 16-bit range)."""
    import cv2

    p = d / "rgb16.png"
    arr16 = rgb.astype(np.uint16) * 257
    ok = cv2.imwrite(str(p), np.ascontiguousarray(arr16[..., ::-1]))  # OpenCV writes BGR
    if not ok:  # pragma: no cover - OpenCV always has PNG
        raise RuntimeError(f"{p}: cv2.imwrite failed")
    return p


def png16_gray(d: Path, rgb: np.ndarray) -> Path:
    """16-bit grayscale PNG (mode I;16), values spread over ~0..60000."""
    from PIL import Image

    lum = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16) * 235
    p = d / "gray16.png"
    Image.fromarray(lum).save(p)
    return p


def exif_rotated(d: Path, rgb: np.ndarray) -> Path:
    """A JPEG stored rotated 90 degrees counter-clockwise with EXIF Orientation=6.

    A viewer applying the orientation (rotate 90 degrees clockwise) shows exactly ``rgb``; a
    reader ignoring it sees the scene on its side.
    """
    from PIL import Image

    stored = np.ascontiguousarray(np.rot90(rgb, k=1))  # 90 degrees counter-clockwise
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[EXIF_ORIENTATION] = ORIENTATION_ROT90_CW
    p = d / "exif_rotated.jpg"
    img.save(p, quality=95, exif=exif.tobytes())
    return p


def animated_gif(d: Path, rgb: np.ndarray) -> Path:
    """A 3-frame animated GIF whose first frame is the view, then black, then white."""
    from PIL import Image

    first = Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    black = Image.fromarray(np.zeros_like(rgb)).quantize(colors=2)
    white = Image.fromarray(np.full_like(rgb, 255)).quantize(colors=2)
    p = d / "animated.gif"
    first.save(p, save_all=True, append_images=[black, white], duration=100, loop=0)
    return p


def unicode_name(d: Path, rgb: np.ndarray) -> Path:
    """A normal JPEG whose name has spaces, quotes, unicode and SQL."""
    p = d / "frame 'q' \"dq\" Åbo 🛰 '; DROP TABLE tiles; --.jpg"
    p.write_bytes(_jpeg_bytes(rgb))
    return p


def huge(d: Path, rgb: np.ndarray, size: tuple[int, int] = (12_000, 9_000)) -> Path:
    """A ``size`` (width, height) JPEG: the view upscaled (the same ground, 30x finer pixels)."""
    import cv2
    from PIL import Image

    w, h = size
    big = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_NEAREST)
    p = d / f"huge_{w}x{h}.jpg"
    Image.fromarray(big).save(p, quality=80)
    return p


Spec = Callable[[Path, np.ndarray], Path]

BAD: dict[str, Spec] = {
    f.__name__: f
    for f in (zero_byte, truncated_jpeg, tiny_10px, not_an_image, html_as_png, transparent_png)
}
ODD: dict[str, Spec] = {
    f.__name__: f
    for f in (
        grayscale,
        cmyk_jpeg,
        png_alpha,
        png16_rgb,
        png16_gray,
        exif_rotated,
        animated_gif,
        unicode_name,
    )
}


def generate(d: Path, rgb: np.ndarray) -> dict[str, Path]:
    """Write every frame of ``BAD`` and ``ODD`` made from ``rgb`` into ``d``; ``{name: path}``."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"need an (H, W, 3) uint8 view, got {rgb.shape} {rgb.dtype}")
    d.mkdir(parents=True, exist_ok=True)
    return {name: f(d, rgb) for name, f in {**BAD, **ODD}.items()}
