"""What a frame file says about its camera and attitude: EXIF (exifread) and XMP (XML).

:func:`read_metadata` never fails on a readable file: a missing, truncated or nonsensical tag is
left out with a warning in :attr:`FrameMetadata.warnings` (and the log), because a frame with bad
metadata is still a frame. DJI writes its attitude and altitudes as ``drone-dji:`` XMP
attributes (or elements) of an ``rdf:Description``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["DJI_NS", "FrameMetadata", "XMP_FIELDS", "parse_xmp", "read_metadata"]

DJI_NS = "http://www.dji.com/drone-dji/1.0/"

#: drone-dji XMP name -> (FrameMetadata attribute, lowest, highest plausible value).
XMP_FIELDS: dict[str, tuple[str, float, float]] = {
    "GimbalYawDegree": ("gimbal_yaw_deg", -360.0, 360.0),
    "GimbalPitchDegree": ("gimbal_pitch_deg", -180.0, 180.0),
    "GimbalRollDegree": ("gimbal_roll_deg", -180.0, 180.0),
    "FlightYawDegree": ("flight_yaw_deg", -360.0, 360.0),
    "FlightPitchDegree": ("flight_pitch_deg", -180.0, 180.0),
    "FlightRollDegree": ("flight_roll_deg", -180.0, 180.0),
    "RelativeAltitude": ("relative_altitude_m", -1000.0, 10000.0),
    "AbsoluteAltitude": ("absolute_altitude_m", -1000.0, 10000.0),
}

_XMP_START = re.compile(rb"<x:xmpmeta[\s>]")
_XMP_END = b"</x:xmpmeta>"
_SCAN_BYTES = 4 << 20  # XMP sits in APP1 before the image data; DJI files put it within 64 KB


@dataclass
class FrameMetadata:
    """EXIF and XMP values of one frame file; None where the file has no usable value."""

    make: str | None = None
    model: str | None = None
    focal_length_mm: float | None = None
    focal_35mm: float | None = None
    focal_plane_px_per_mm: float | None = None
    exif_long_side: int | None = None
    orientation: int | None = None
    gimbal_yaw_deg: float | None = None
    gimbal_pitch_deg: float | None = None
    gimbal_roll_deg: float | None = None
    flight_yaw_deg: float | None = None
    flight_pitch_deg: float | None = None
    flight_roll_deg: float | None = None
    relative_altitude_m: float | None = None
    absolute_altitude_m: float | None = None
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str, name: str) -> None:
        """Record (and log) a tag that was ignored."""
        self.warnings.append(message)
        log.warning("%s: %s", name, message)

    def as_dict(self) -> dict[str, Any]:
        """The values that are set (JSON-able)."""
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "warnings"} | (
            {"warnings": list(self.warnings)} if self.warnings else {}
        )


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if math.isfinite(f) else None


def _exif_value(tag: Any) -> Any:
    """The first value of an exifread tag (ratios as float), or the printable string."""
    values = getattr(tag, "values", tag)
    if isinstance(values, (list, tuple)):
        if not values:
            return None
        values = values[0]
    if hasattr(values, "numerator") and hasattr(values, "denominator"):
        return None if values.denominator == 0 else values.numerator / values.denominator
    return values


def _read_exif(data: bytes, meta: FrameMetadata, name: str) -> None:
    import exifread

    exif_log = logging.getLogger("exifread")
    level = exif_log.level
    exif_log.setLevel(logging.CRITICAL)  # its own complaints about odd files become one warning
    try:
        tags = exifread.process_file(io.BytesIO(data), details=False, extract_thumbnail=False)
    except Exception as exc:  # noqa: BLE001 - exifread raises many kinds on corrupt EXIF
        meta.warn(f"EXIF unreadable, ignored ({type(exc).__name__}: {exc})", name)
        return
    finally:
        exif_log.setLevel(level)
    if not tags and b"Exif\x00\x00" in data[:65536]:
        meta.warn("EXIF block unreadable, ignored", name)
        return

    def text(key: str) -> str | None:
        if key not in tags:
            return None
        s = str(tags[key]).strip().strip("\x00").strip()
        return s or None

    def number(key: str, lo: float, hi: float) -> float | None:
        if key not in tags:
            return None
        v = _finite(_exif_value(tags[key]))
        if v is None or not lo < v < hi:
            meta.warn(
                f"EXIF {key.split()[-1]} {tags[key]!s:.40} ignored (not in ({lo:g}, {hi:g}))", name
            )
            return None
        return v

    meta.make = text("Image Make")
    meta.model = text("Image Model")
    meta.focal_length_mm = number("EXIF FocalLength", 0.0, 2000.0)
    meta.focal_35mm = number("EXIF FocalLengthIn35mmFilm", 0.0, 5000.0)
    orientation = number("Image Orientation", 0.0, 9.0)
    meta.orientation = int(orientation) if orientation is not None else None
    fpx = number("EXIF FocalPlaneXResolution", 0.0, 1e9)
    unit = number("EXIF FocalPlaneResolutionUnit", 0.0, 6.0)
    width = number("EXIF ExifImageWidth", 0.0, 1e6)
    height = number("EXIF ExifImageLength", 0.0, 1e6)
    if fpx is not None:
        unit_mm = _UNIT_MM.get(int(unit) if unit is not None else 2)
        if unit_mm is not None:
            meta.focal_plane_px_per_mm = fpx / unit_mm
    if width is not None and height is not None:
        meta.exif_long_side = int(max(width, height))


_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # EXIF FocalPlaneResolutionUnit -> mm per unit


def _xmp_packet(data: bytes) -> bytes | None:
    m = _XMP_START.search(data, 0, _SCAN_BYTES)
    if m is None:
        return None
    end = data.find(_XMP_END, m.start())
    if end < 0:
        return b""
    return data[m.start() : end + len(_XMP_END)]


def parse_xmp(
    packet: bytes, meta: FrameMetadata | None = None, name: str = "<xmp>"
) -> FrameMetadata:
    """Read the ``drone-dji:`` values of an XMP packet into ``meta`` (a new one when None).

    Values may be attributes or child elements of any element; a value that is not a finite
    number within its plausible range is ignored with a warning. DOCTYPE declarations are
    refused (no entity expansion).
    """
    meta = meta or FrameMetadata()
    if b"<!DOCTYPE" in packet or b"<!ENTITY" in packet:
        meta.warn("XMP packet with a DOCTYPE/ENTITY declaration ignored", name)
        return meta
    try:
        root = ET.fromstring(packet)
    except ET.ParseError as exc:
        meta.warn(f"XMP packet is not well-formed XML, ignored ({exc})", name)
        return meta
    found: dict[str, str] = {}
    prefix = "{" + DJI_NS + "}"
    for el in root.iter():
        for k, v in el.attrib.items():
            if k.startswith(prefix):
                found.setdefault(k[len(prefix) :], v)
        if isinstance(el.tag, str) and el.tag.startswith(prefix) and el.text:
            found.setdefault(el.tag[len(prefix) :], el.text)
    for key, (attr, lo, hi) in XMP_FIELDS.items():
        if key not in found:
            continue
        num = _finite(found[key].strip())
        if num is None or not lo <= num <= hi:
            meta.warn(
                f"XMP drone-dji:{key}={found[key]!r:.40} ignored (not in [{lo:g}, {hi:g}])",
                name,
            )
            continue
        setattr(meta, attr, num)
    return meta


def read_metadata(
    source: str | os.PathLike[str] | bytes, *, name: str | None = None
) -> FrameMetadata:
    """EXIF and DJI XMP metadata of a frame file (path or its bytes); never raises on bad tags.

    A path that cannot be read raises :class:`OSError` (the frame loader reports it); everything
    about the contents is a warning.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or "<bytes>"
    else:
        label = name or os.fspath(source)
        data = Path(source).read_bytes()
    meta = FrameMetadata()
    if not data:
        meta.warn("empty file: no metadata", label)
        return meta
    _read_exif(data, meta, label)
    packet = _xmp_packet(data)
    if packet is not None:
        if packet:
            parse_xmp(packet, meta, label)
        else:
            meta.warn("XMP packet without its end tag, ignored", label)
    return meta
