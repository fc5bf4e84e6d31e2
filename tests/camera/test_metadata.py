"""EXIF (written by piexif) and DJI XMP (by hand) metadata; garbage is a warning, never a crash."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from geoloc.camera import FrameMetadata, camera_from_exif, parse_xmp, read_metadata
from tests.conftest import SHARED_DATA
from tests.data.exif import data as exif


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, view_rgb: np.ndarray) -> dict[str, Path]:
    written = exif.generate(tmp_path_factory.mktemp("exif"), view_rgb)
    return {name: path for name, (path, _) in written.items()}


def _check(meta: FrameMetadata, expected: dict[str, object]) -> None:
    for key, want in expected.items():
        got = getattr(meta, key)
        if want is None or isinstance(want, str):
            assert got == want, key
        else:
            assert got == pytest.approx(want), key


@pytest.mark.parametrize("name", sorted(exif.CASES))
def test_fixture_file(files: dict[str, Path], name: str, caplog: pytest.LogCaptureFixture) -> None:
    case = exif.CASES[name]
    with caplog.at_level(logging.WARNING, logger="geoloc.camera.metadata"):
        meta = read_metadata(files[name])
    _check(meta, case.expected)
    for needle in case.warns:
        assert any(needle in w for w in meta.warnings), (needle, meta.warnings)
        assert needle in caplog.text and str(files[name]) in caplog.text
    if not case.warns:
        assert meta.warnings == []


def test_every_xmp_field_is_read(files: dict[str, Path]) -> None:
    meta = read_metadata(files["dji_full.jpg"])
    for key, (attr, _, _) in exif.data_fields().items():
        assert getattr(meta, attr) == pytest.approx(float(exif.DJI_XMP[key])), key


def test_bytes_and_path_agree(files: dict[str, Path]) -> None:
    p = files["dji_full.jpg"]
    a = read_metadata(p).as_dict()
    b = read_metadata(p.read_bytes(), name=str(p)).as_dict()
    assert a == b and a["model"] == "FC300S"


def test_parse_xmp_alone() -> None:
    meta = parse_xmp(exif.xmp_packet({"GimbalPitchDegree": "-45.5", "FlightYawDegree": "-10"}))
    assert meta.gimbal_pitch_deg == -45.5 and meta.flight_yaw_deg == -10.0
    assert meta.gimbal_yaw_deg is None and meta.warnings == []


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_never_crash(seed: int, view_rgb: np.ndarray) -> None:
    rng = np.random.default_rng(seed)
    good = exif.jpeg_with(view_rgb, exif.exif_bytes(), exif.xmp_packet(exif.DJI_XMP))
    junk = bytearray(good)
    # flip bytes inside the metadata segments (the first 2 KB hold EXIF and XMP)
    for i in rng.integers(2, min(2048, len(junk)), 40):
        junk[int(i)] = int(rng.integers(0, 256))
    meta = read_metadata(bytes(junk), name=f"junk{seed}")
    assert isinstance(meta, FrameMetadata)
    assert isinstance(
        read_metadata(bytes(rng.integers(0, 256, 5000, dtype=np.uint8))), FrameMetadata
    )


def test_empty_input_warns() -> None:
    meta = read_metadata(b"")
    assert meta.warnings and meta.model is None


@pytest.mark.realdata
def test_real_dji_photo() -> None:
    p = SHARED_DATA / "brighton_beach" / "DJI_0019.JPG"
    if not p.exists():
        pytest.skip(f"real imagery not found at {p}")
    meta = read_metadata(p)
    assert meta.make == "DJI" and meta.model == "FC300S"
    assert meta.focal_length_mm == pytest.approx(3.61) and meta.focal_35mm == 20
    assert meta.gimbal_yaw_deg is None  # the shared copy has its XMP removed
    cam = camera_from_exif(meta, 4000, 2250)
    assert cam is not None
    # the README's GSD: RelativeAltitude x (6.17 mm / 4000 px) / 3.61 mm
    assert 40.0 / cam.fx == pytest.approx(40.0 * 6.17 / 4000 / 3.61)
