"""The answer of the tracker for one frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STATUSES = ("map_fix", "vo", "coasting", "lost")


@dataclass
class TrackFix:
    """One frame of a track (``as_dict`` is the JSON object ``geoloc track`` prints per frame).

    ``status``: ``map_fix`` (a map match accepted by the filter this frame), ``vo`` (moved on by
    visual odometry since the last fix), ``coasting`` (no usable odometry: the motion model
    alone), ``lost`` (no position). ``lat``/``lon`` are the ground point under the frame centre,
    ``error_m_est`` the 1-sigma radius of the position covariance (``error_ellipse_m`` its
    ellipse), ``camera`` the camera
    position when its model is known (None otherwise).
    """

    index: int
    t: float
    frame: str | None
    status: str
    lat: float | None = None
    lon: float | None = None
    heading_deg: float | None = None
    speed_mps: float | None = None
    vel_east_mps: float | None = None
    vel_north_mps: float | None = None
    error_m_est: float | None = None
    #: the 1-sigma ellipse of the position covariance: semi-axes (m) and the major axis's
    #: angle (degrees counter-clockwise from east)
    error_ellipse_m: list[float] | None = None
    camera: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)
