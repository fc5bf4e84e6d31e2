"""The track filter: a Kalman filter over (east, north, v_east, v_north) in a local plane, with
heading and GSD as scalar states.

Visual odometry enters as a control (the measured ground displacement moves the position and
adds its uncertainty); map fixes are position measurements gated by their Mahalanobis distance,
so a wrong match is refused instead of followed. Each refusal inflates the position covariance:
a wrong fix stays out, but a filter that has drifted lets consistent fixes back in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

EARTH_R = 6_371_008.8


@dataclass
class LocalPlane:
    """An equirectangular plane around (lat0, lon0): metres east/north, for a flight's extent."""

    lat0: float
    lon0: float

    def to_en(self, lat: float, lon: float) -> np.ndarray:
        """(east, north) metres of a lat/lon."""
        k = math.cos(math.radians(self.lat0))
        return np.array(
            [
                math.radians(lon - self.lon0) * EARTH_R * k,
                math.radians(lat - self.lat0) * EARTH_R,
            ]
        )

    def to_latlon(self, en: np.ndarray) -> tuple[float, float]:
        """lat/lon of (east, north) metres."""
        k = math.cos(math.radians(self.lat0))
        lat = self.lat0 + math.degrees(float(en[1]) / EARTH_R)
        lon = self.lon0 + math.degrees(float(en[0]) / (EARTH_R * k))
        return lat, lon


@dataclass
class TrackFilter:
    """Position/velocity KF (numpy) with Mahalanobis gating; see the module docstring."""

    default_conf: ClassVar[dict[str, Any]] = {
        "vo_rel_sigma": 0.03,  # odometry error as a share of the displacement
        "vo_sigma_m": 0.05,  # odometry error per frame
        # m/s^2 of unmodelled acceleration while coasting (turns, gusts): the coast's covariance
        # has to cover a turning flight's drift from the constant-velocity prediction
        "accel_sigma": 4.0,
        "vel_sigma": 0.5,  # m/s of a velocity derived from one odometry step
        "gate_chi2": 13.8,  # 2 dof, 99.9 %
        "refuse_inflate": 2.0,
        "fix_sigma_floor_m": 1.0,
        "heading_vo_sigma_deg": 0.3,
        "heading_fix_sigma_deg": 3.0,
    }
    conf: dict[str, Any] = field(default_factory=dict)
    x: np.ndarray = field(default_factory=lambda: np.zeros(4))
    p: np.ndarray = field(default_factory=lambda: np.eye(4) * 1e6)
    heading_deg: float | None = None
    heading_var: float = 180.0**2
    initialised: bool = False

    def __post_init__(self) -> None:
        self.conf = {**self.default_conf, **self.conf}

    def reset(self, en: np.ndarray, sigma_m: float) -> None:
        """Start (or restart) at ``en`` with ``sigma_m`` position uncertainty, velocity unknown."""
        self.x = np.array([en[0], en[1], 0.0, 0.0])
        self.p = np.diag([sigma_m**2, sigma_m**2, 25.0, 25.0])
        self.initialised = True

    @property
    def position(self) -> np.ndarray:
        """(east, north) metres."""
        return self.x[:2].copy()

    @property
    def sigma_m(self) -> float:
        """1-sigma radius: the square root of the position covariance's largest eigenvalue."""
        return float(math.sqrt(max(np.linalg.eigvalsh(self.p[:2, :2]).max(), 0.0)))

    def ellipse(self) -> tuple[float, float, float]:
        """1-sigma ellipse of the position: semi-major, semi-minor (m), major-axis angle (deg,
        counter-clockwise from east)."""
        w, v = np.linalg.eigh(self.p[:2, :2])
        w = np.sqrt(np.maximum(w, 0.0))
        angle = math.degrees(math.atan2(float(v[1, 1]), float(v[0, 1])))
        return float(w[1]), float(w[0]), angle

    def odometry(
        self, d_en: np.ndarray, velocity: np.ndarray | None = None, dt: float = 0.0
    ) -> None:
        """Move by a measured ground displacement; ``velocity`` (m/s, measured over ``dt`` s by
        the same odometry) updates the velocity states."""
        c = self.conf
        self.x[:2] += d_en
        s = float(c["vo_rel_sigma"]) * float(np.linalg.norm(d_en)) + float(c["vo_sigma_m"])
        self.p[:2, :2] += np.eye(2) * s**2
        # odometry sets the position from the keyframe: the position/velocity correlation a
        # coast built up no longer holds, and keeping it would let the velocity update move
        # the position again
        self.p[:2, 2:] = 0.0
        self.p[2:, :2] = 0.0
        if velocity is not None and dt > 0:
            h = np.zeros((2, 4))
            h[0, 2] = h[1, 3] = 1.0
            r = np.eye(2) * (float(c["vel_sigma"]) ** 2 + (s / dt) ** 2)
            self._update(np.asarray(velocity, dtype=np.float64), h, r)

    def coast(self, dt: float) -> None:
        """Constant-velocity prediction over ``dt`` seconds (no odometry)."""
        f = np.eye(4)
        f[0, 2] = f[1, 3] = dt
        q_a = float(self.conf["accel_sigma"]) ** 2
        g = np.array([[0.5 * dt * dt, 0], [0, 0.5 * dt * dt], [dt, 0], [0, dt]])
        self.x = f @ self.x
        self.p = f @ self.p @ f.T + g @ g.T * q_a

    def _update(self, z: np.ndarray, h: np.ndarray, r: np.ndarray) -> None:
        y = z - h @ self.x
        s = h @ self.p @ h.T + r
        k = self.p @ h.T @ np.linalg.inv(s)
        self.x = self.x + k @ y
        self.p = (np.eye(4) - k @ h) @ self.p
        self.p = 0.5 * (self.p + self.p.T)

    def mahalanobis2(self, en: np.ndarray, sigma_m: float) -> float:
        """Squared Mahalanobis distance of a position measurement to the prediction."""
        s = self.p[:2, :2] + np.eye(2) * sigma_m**2
        y = en - self.x[:2]
        return float(y @ np.linalg.solve(s, y))

    def map_fix(self, en: np.ndarray, sigma_m: float) -> bool:
        """Fuse a map fix unless the gate refuses it (then inflate the covariance); True if used."""
        sigma_m = max(sigma_m, float(self.conf["fix_sigma_floor_m"]))
        if not self.initialised:
            self.reset(en, sigma_m)
            return True
        if self.mahalanobis2(en, sigma_m) > float(self.conf["gate_chi2"]):
            self.p[:2, :2] *= float(self.conf["refuse_inflate"])
            return False
        h = np.zeros((2, 4))
        h[0, 0] = h[1, 1] = 1.0
        self._update(en, h, np.eye(2) * sigma_m**2)
        return True

    def turn(self, delta_deg: float) -> None:
        """Heading change measured by odometry."""
        if self.heading_deg is not None:
            self.heading_deg = (self.heading_deg + delta_deg) % 360.0
            self.heading_var += float(self.conf["heading_vo_sigma_deg"]) ** 2

    def heading_fix(self, heading_deg: float, sigma_deg: float | None = None) -> float:
        """Fuse an absolute heading; returns the correction applied (degrees)."""
        r = (sigma_deg if sigma_deg is not None else float(self.conf["heading_fix_sigma_deg"])) ** 2
        if self.heading_deg is None:
            self.heading_deg, self.heading_var = heading_deg % 360.0, r
            return 0.0
        innov = (heading_deg - self.heading_deg + 180.0) % 360.0 - 180.0
        k = self.heading_var / (self.heading_var + r)
        self.heading_deg = (self.heading_deg + k * innov) % 360.0
        self.heading_var *= 1.0 - k
        return k * innov
