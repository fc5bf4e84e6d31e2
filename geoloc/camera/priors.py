"""Attitude and altitude priors of a frame: the user's flags over what the file says.

Every value carries its source (``"flag"``, ``"exif"``, ``"xmp"``) so the answer can report each
prior it used. Heading comes from the gimbal yaw (where the camera points) before the flight yaw
(where the airframe points); pitch and roll from the gimbal; the altitude above the ground from
DJI's ``RelativeAltitude``, which is above the take-off point: right over flat ground, and the
reason a flag overrides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from geoloc.camera.metadata import FrameMetadata

__all__ = ["NADIR_PITCH_DEG", "Prior", "Priors", "merge_priors"]

#: DJI gimbal pitch of a camera looking straight down.
NADIR_PITCH_DEG = -90.0


@dataclass(frozen=True)
class Prior:
    """One prior value and where it came from (``"flag"``, ``"exif"`` or ``"xmp"``)."""

    value: float
    source: str
    key: str = ""

    def as_dict(self) -> dict[str, Any]:
        """``{"value", "source"[, "key"]}`` (JSON-able)."""
        d: dict[str, Any] = {"value": self.value, "source": self.source}
        if self.key:
            d["key"] = self.key
        return d


@dataclass(frozen=True)
class Priors:
    """What is known about a frame before matching; None where nothing is known."""

    heading: Prior | None = None
    pitch: Prior | None = None
    roll: Prior | None = None
    altitude: Prior | None = None

    @property
    def attitude_known(self) -> bool:
        """True when the pitch is known (roll defaults to 0 then): the frame can be rectified."""
        return self.pitch is not None

    def tilt_deg(self) -> float | None:
        """Angle of the optical axis from the nadir (0 = straight down), when the pitch is known."""
        if self.pitch is None:
            return None
        from geoloc.camera.attitude import camera_to_world

        roll = self.roll.value if self.roll else 0.0
        z = camera_to_world(0.0, self.pitch.value, roll)[:, 2]
        return math.degrees(math.acos(max(-1.0, min(1.0, -float(z[2])))))

    def as_dict(self) -> dict[str, Any]:
        """The priors that are set, by name (JSON-able; the answer's ``priors`` field)."""
        out: dict[str, Any] = {}
        for name in ("heading", "pitch", "roll", "altitude"):
            p = getattr(self, name)
            if p is not None:
                out[name] = p.as_dict()
        return out


def _flag(value: float | None, what: str, lo: float, hi: float) -> Prior | None:
    if value is None:
        return None
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ValueError(f"--{what} must be a number in [{lo:g}, {hi:g}], got {value}")
    return Prior(v, "flag")


def merge_priors(
    meta: FrameMetadata | None = None,
    *,
    heading: float | None = None,
    pitch: float | None = None,
    roll: float | None = None,
    altitude: float | None = None,
) -> Priors:
    """Priors from the flags where given, else from the file's metadata.

    Raises :class:`ValueError` for a flag out of range (heading any finite degrees, pitch and
    roll within [-180, 180], altitude > 0); bad file values were already dropped by
    :func:`geoloc.camera.metadata.read_metadata`.
    """
    m = meta or FrameMetadata()
    h = _flag(heading, "heading", -math.inf, math.inf)
    if h is not None:
        h = Prior(h.value % 360.0, "flag")
    elif m.gimbal_yaw_deg is not None:
        h = Prior(m.gimbal_yaw_deg % 360.0, "xmp", "GimbalYawDegree")
    elif m.flight_yaw_deg is not None:
        h = Prior(m.flight_yaw_deg % 360.0, "xmp", "FlightYawDegree")
    p = _flag(pitch, "pitch", -180.0, 180.0)
    if p is None and m.gimbal_pitch_deg is not None:
        p = Prior(m.gimbal_pitch_deg, "xmp", "GimbalPitchDegree")
    r = _flag(roll, "roll", -180.0, 180.0)
    if r is None and m.gimbal_roll_deg is not None:
        r = Prior(m.gimbal_roll_deg, "xmp", "GimbalRollDegree")
    a = _flag(altitude, "altitude", 1e-6, math.inf)
    if a is None and m.relative_altitude_m is not None and m.relative_altitude_m > 0:
        a = Prior(m.relative_altitude_m, "xmp", "RelativeAltitude")
    return Priors(heading=h, pitch=p, roll=r, altitude=a)
