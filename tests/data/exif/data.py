"""Generator of frame files with camera metadata: EXIF written by piexif, DJI XMP written by hand.

Each case is a JPEG of a small real view with the metadata of a DJI camera (a Phantom 3's FC300S
by default) and what :func:`geoloc.camera.read_metadata` must read from it (``expected``), or
which warning it must give (``warns``) when a tag is garbage. ``generate(d, rgb)`` writes every
case and returns ``{name: (path, Case)}``. Nothing is stored in the repository.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DJI_NS = "http://www.dji.com/drone-dji/1.0/"
XMP_APP1_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"

#: A DJI-like attitude: camera 30 deg off nadir, facing 123.4 deg, airframe yawed a bit more.
DJI_XMP: dict[str, str] = {
    "GimbalYawDegree": "+123.40",
    "GimbalPitchDegree": "-60.00",
    "GimbalRollDegree": "+1.50",
    "FlightYawDegree": "+125.10",
    "FlightPitchDegree": "-3.20",
    "FlightRollDegree": "+0.80",
    "RelativeAltitude": "+98.75",
    "AbsoluteAltitude": "+142.31",
}


def xmp_packet(fields: dict[str, str], *, elements: bool = False, doctype: bool = False) -> bytes:
    """An XMP packet with ``drone-dji:`` values as attributes (DJI's way) or child elements."""
    if elements:
        body = "".join(f"<drone-dji:{k}>{v}</drone-dji:{k}>" for k, v in fields.items())
        desc = f'<rdf:Description rdf:about="" xmlns:drone-dji="{DJI_NS}">{body}</rdf:Description>'
    else:
        attrs = " ".join(f'drone-dji:{k}="{v}"' for k, v in fields.items())
        desc = (
            f'<rdf:Description rdf:about="" xmlns:drone-dji="{DJI_NS}" '
            f'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Make="DJI" {attrs}/>'
        )
    # an entity declared before the packet and used inside it (the billion-laughs shape)
    pre = '<!DOCTYPE x [<!ENTITY a "123.4">]>' if doctype else ""
    if doctype:
        desc = desc.replace(
            'drone-dji:GimbalYawDegree="+123.40"', 'drone-dji:GimbalYawDegree="&a;"'
        )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        f'{pre}<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f"{desc}</rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def exif_bytes(
    *,
    make: str = "DJI",
    model: str | None = "FC300S",
    focal: tuple[int, int] | None = (361, 100),
    focal35: int | None = 20,
    size: tuple[int, int] | None = None,
) -> bytes:
    """An EXIF block (piexif) with the camera tags geoloc reads."""
    import piexif

    zeroth: dict[int, Any] = {piexif.ImageIFD.Make: make.encode()}
    if model is not None:
        zeroth[piexif.ImageIFD.Model] = model.encode()
    exif: dict[int, Any] = {}
    if focal is not None:
        exif[piexif.ExifIFD.FocalLength] = focal
    if focal35 is not None:
        exif[piexif.ExifIFD.FocalLengthIn35mmFilm] = focal35
    if size is not None:
        exif[piexif.ExifIFD.PixelXDimension] = size[0]
        exif[piexif.ExifIFD.PixelYDimension] = size[1]
    return bytes(piexif.dump({"0th": zeroth, "Exif": exif}))


def jpeg_with(rgb: np.ndarray, exif: bytes | None, xmp: bytes | None) -> bytes:
    """A JPEG of ``rgb`` with the EXIF block (APP1) and the XMP packet (a second APP1)."""
    from PIL import Image

    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"format": "JPEG", "quality": 90}
    if exif is not None:
        kwargs["exif"] = exif
    Image.fromarray(rgb).save(buf, **kwargs)
    data = buf.getvalue()
    if xmp is None:
        return data
    payload = XMP_APP1_HEADER + xmp
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    # after SOI and the EXIF APP1 (if any), where DJI puts it
    pos = 2
    if data[2:4] == b"\xff\xe1":
        pos = 4 + int.from_bytes(data[4:6], "big")
    return data[:pos] + segment + data[pos:]


@dataclass
class Case:
    """One fixture: how to write it and what must be read back."""

    write: Callable[[np.ndarray], bytes]
    expected: dict[str, Any] = field(default_factory=dict)
    warns: tuple[str, ...] = ()


_FULL = {
    "make": "DJI",
    "model": "FC300S",
    "focal_length_mm": 3.61,
    "focal_35mm": 20.0,
    "gimbal_yaw_deg": 123.4,
    "gimbal_pitch_deg": -60.0,
    "gimbal_roll_deg": 1.5,
    "flight_yaw_deg": 125.1,
    "flight_pitch_deg": -3.2,
    "flight_roll_deg": 0.8,
    "relative_altitude_m": 98.75,
    "absolute_altitude_m": 142.31,
}

CASES: dict[str, Case] = {
    "dji_full.jpg": Case(lambda rgb: jpeg_with(rgb, exif_bytes(), xmp_packet(DJI_XMP)), _FULL),
    "dji_xmp_elements.jpg": Case(
        lambda rgb: jpeg_with(rgb, exif_bytes(), xmp_packet(DJI_XMP, elements=True)), _FULL
    ),
    "exif_only.jpg": Case(
        lambda rgb: jpeg_with(rgb, exif_bytes(), None),
        {"model": "FC300S", "focal_length_mm": 3.61, "gimbal_yaw_deg": None},
    ),
    "no_metadata.jpg": Case(
        lambda rgb: jpeg_with(rgb, None, None),
        {"model": None, "focal_length_mm": None, "relative_altitude_m": None},
    ),
    "unknown_model_35mm.jpg": Case(
        lambda rgb: jpeg_with(rgb, exif_bytes(model="XYZ-1", focal=(450, 100), focal35=24), None),
        {"model": "XYZ-1", "focal_length_mm": 4.5, "focal_35mm": 24.0},
    ),
    "xmp_garbage_values.jpg": Case(
        lambda rgb: jpeg_with(
            rgb,
            exif_bytes(),
            xmp_packet(
                DJI_XMP
                | {"GimbalPitchDegree": "abc", "GimbalYawDegree": "1e999", "RelativeAltitude": ""}
            ),
        ),
        {
            "gimbal_pitch_deg": None,
            "gimbal_yaw_deg": None,
            "relative_altitude_m": None,
            "flight_yaw_deg": 125.1,
        },
        ("GimbalPitchDegree", "GimbalYawDegree", "RelativeAltitude"),
    ),
    "xmp_out_of_range.jpg": Case(
        lambda rgb: jpeg_with(
            rgb, exif_bytes(), xmp_packet(DJI_XMP | {"GimbalPitchDegree": "-900"})
        ),
        {"gimbal_pitch_deg": None, "gimbal_roll_deg": 1.5},
        ("GimbalPitchDegree",),
    ),
    "xmp_malformed.jpg": Case(
        lambda rgb: jpeg_with(rgb, exif_bytes(), xmp_packet(DJI_XMP).replace(b"/>", b">", 1)),
        {"gimbal_yaw_deg": None, "model": "FC300S"},
        ("not well-formed",),
    ),
    "xmp_doctype.jpg": Case(
        lambda rgb: jpeg_with(rgb, exif_bytes(), xmp_packet(DJI_XMP, doctype=True)),
        {"gimbal_yaw_deg": None, "model": "FC300S"},
        ("XMP",),
    ),
    "xmp_unterminated.jpg": Case(
        lambda rgb: jpeg_with(rgb, exif_bytes(), xmp_packet(DJI_XMP).split(b"</x:xmpmeta>")[0]),
        {"gimbal_yaw_deg": None},
        ("end tag",),
    ),
    "exif_zero_denominator.jpg": Case(
        lambda rgb: jpeg_with(rgb, exif_bytes(focal=(361, 0), focal35=0), xmp_packet(DJI_XMP)),
        {"focal_length_mm": None, "focal_35mm": None, "gimbal_yaw_deg": 123.4},
        ("FocalLength",),
    ),
    "exif_corrupt.jpg": Case(
        lambda rgb: _corrupt_exif(jpeg_with(rgb, exif_bytes(), xmp_packet(DJI_XMP))),
        {"gimbal_yaw_deg": 123.4, "model": None},
        ("EXIF",),
    ),
}


def _corrupt_exif(data: bytes) -> bytes:
    """Overwrite the EXIF block after its TIFF header with junk (the XMP stays intact)."""
    start = data.find(b"Exif\x00\x00")
    length = int.from_bytes(data[start - 2 : start], "big")
    junk = bytes((i * 37 + 11) % 256 for i in range(length - 2 - 14))
    return data[: start + 14] + junk + data[start + length - 2 :]


def generate(d: Path, rgb: np.ndarray) -> dict[str, tuple[Path, Case]]:
    """Write every case into ``d``; ``{file name: (path, case)}``."""
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, Case]] = {}
    for name, case in CASES.items():
        p = d / name
        p.write_bytes(case.write(rgb))
        out[name] = (p, case)
    return out


def data_fields() -> dict[str, tuple[str, float, float]]:
    """The drone-dji fields geoloc reads (so the fixture checks each one of them)."""
    from geoloc.camera.metadata import XMP_FIELDS

    assert set(XMP_FIELDS) == set(DJI_XMP), "DJI_XMP must hold every field geoloc reads"
    return XMP_FIELDS
