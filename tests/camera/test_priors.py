"""Priors: the flags over the file's XMP values, each with its source."""

from __future__ import annotations

import pytest

from geoloc.camera import FrameMetadata, Prior, merge_priors

META = FrameMetadata(
    gimbal_yaw_deg=-100.0,
    flight_yaw_deg=30.0,
    gimbal_pitch_deg=-60.0,
    gimbal_roll_deg=1.5,
    relative_altitude_m=98.0,
)


def test_from_file() -> None:
    p = merge_priors(META)
    assert p.heading == Prior(260.0, "xmp", "GimbalYawDegree")
    assert p.pitch == Prior(-60.0, "xmp", "GimbalPitchDegree")
    assert p.roll == Prior(1.5, "xmp", "GimbalRollDegree")
    assert p.altitude == Prior(98.0, "xmp", "RelativeAltitude")
    assert p.attitude_known and p.tilt_deg() == pytest.approx(30.0, abs=0.1)


def test_flags_win() -> None:
    p = merge_priors(META, heading=370.0, pitch=-90.0, roll=0.0, altitude=120.0)
    assert p.heading == Prior(10.0, "flag") and p.pitch == Prior(-90.0, "flag")
    assert p.roll == Prior(0.0, "flag") and p.altitude == Prior(120.0, "flag")
    assert p.tilt_deg() == pytest.approx(0.0, abs=1e-6)
    assert p.as_dict()["heading"] == {"value": 10.0, "source": "flag"}


def test_flight_yaw_when_no_gimbal_yaw() -> None:
    p = merge_priors(FrameMetadata(flight_yaw_deg=-30.0))
    assert p.heading == Prior(330.0, "xmp", "FlightYawDegree")
    assert p.pitch is None and not p.attitude_known and p.tilt_deg() is None


def test_nothing_known() -> None:
    p = merge_priors(None)
    assert (p.heading, p.pitch, p.roll, p.altitude) == (None, None, None, None)
    assert p.as_dict() == {}


def test_non_positive_relative_altitude_is_not_a_prior() -> None:
    assert merge_priors(FrameMetadata(relative_altitude_m=-2.0)).altitude is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"altitude": 0.0},
        {"altitude": -5.0},
        {"pitch": 200.0},
        {"roll": float("nan")},
        {"heading": float("inf")},
    ],
)
def test_bad_flags(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="--"):
        merge_priors(META, **kwargs)
