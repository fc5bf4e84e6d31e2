"""MAVLink to and from the autopilot (pymavlink): fixes out, telemetry in, heartbeat, reconnect.

Out (``--mavlink-out``): ``GPS_INPUT`` (ArduPilot and PX4), ``VISION_POSITION_ESTIMATE`` or
``ODOMETRY`` (local NED metres from the first fix, with covariance). Only new ``ok`` fixes are
sent, at most ``rate_hz``: when localization fails the autopilot sees messages stop, never a
frozen position. In: ATTITUDE (heading/pitch/roll), ALTITUDE (above the terrain, else above
home) or GLOBAL_POSITION_INT (above home), and the last GPS_RAW_INT with a 3D fix (a start
prior). Telemetry older than :data:`TELEMETRY_MAX_AGE_S` is not used. A message's time is that
of the frame it was computed from (``received_unix``), so the autopilot can correct for the lag.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MAVLINK20", "1")  # GPS_INPUT.yaw and the covariance fields are MAVLink 2

from geoloc.serve.service import POSITION_STATUSES

log = logging.getLogger("geoloc.serve.mavlink")

OUTPUTS = ("gps_input", "vision_position_estimate", "odometry")
#: ``GPS_INPUT.satellites_visible``: not a real count; a fixed value high enough that the
#: autopilot's GPS checks (ArduPilot needs >= 6) accept the position.
SATELLITES_VISIBLE = 10
#: Nominal user-equivalent range error (m) dividing ``error_m_est`` into an HDOP figure.
HDOP_UERE_M = 5.0
#: MAV_COMP_ID_ONBOARD_COMPUTER: this process is a companion component.
COMPONENT_ID = 191
GPS_EPOCH_UNIX = 315_964_800  # 1980-01-06T00:00:00Z
GPS_LEAP_SECONDS = 18

#: Seconds after which an attitude or altitude is too old to use as a prior.
TELEMETRY_MAX_AGE_S = 2.0
#: ``--camera-mount``: ``body`` = fixed to the airframe looking down, image top forward (its
#: attitude follows the vehicle's); ``gimbal`` = held at nadir, image top forward (heading only).
MOUNTS = ("body", "gimbal")

# GPS_INPUT_IGNORE_FLAGS
IGNORE_ALT, IGNORE_HDOP, IGNORE_VDOP = 1, 2, 4
IGNORE_VEL_HORIZ, IGNORE_VEL_VERT, IGNORE_SPEED_ACCURACY = 8, 16, 32
IGNORE_HORIZ_ACCURACY, IGNORE_VERT_ACCURACY = 64, 128


@dataclass
class Telemetry:
    """The latest autopilot telemetry (None until received)."""

    heading_deg: float | None = None  # vehicle yaw, ATTITUDE
    pitch_deg: float | None = None  # vehicle pitch and roll (not the camera's)
    roll_deg: float | None = None
    altitude_m: float | None = None  # above the terrain (ALTITUDE) or above home
    altitude_key: str | None = None  # the field it came from
    gps_lat: float | None = None  # last GPS_RAW_INT with fix_type >= 3
    gps_lon: float | None = None
    gps_eph_m: float | None = None
    attitude_at: float = -math.inf  # time.monotonic() of the last ATTITUDE
    altitude_at: float = -math.inf


def nadir_camera_angles(
    yaw_deg: float, pitch_deg: float, roll_deg: float
) -> tuple[float, float, float]:
    """(heading, pitch, roll) of a camera fixed to the airframe looking straight down with the
    image top forward, in the camera convention of :mod:`geoloc.camera.attitude`, from the
    vehicle's yaw/pitch/roll (MAVLink ATTITUDE: aerospace yaw-pitch-roll, NED)."""
    import numpy as np

    from geoloc.camera.attitude import angles_from_rotation

    y, p, r = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    cy, sy, cp, sp, cr, sr = (
        math.cos(y),
        math.sin(y),
        math.cos(p),
        math.sin(p),
        math.cos(r),
        math.sin(r),
    )
    body_to_ned = np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )
    # camera axes (OpenCV: x right, y image-down, z optical axis) in the body frame (FRD)
    cam_in_body = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ned_to_enu = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    h, pc, rc = angles_from_rotation(ned_to_enu @ body_to_ned @ cam_in_body)
    return h % 360.0, pc, rc


def gps_time(unix_s: float) -> tuple[int, int]:
    """(GPS week, ms of week) of a Unix time."""
    gps = unix_s - GPS_EPOCH_UNIX + GPS_LEAP_SECONDS
    week = int(gps // 604_800)
    return week, int((gps - week * 604_800) * 1000)


def _local_ned(lat: float, lon: float, origin: tuple[float, float]) -> tuple[float, float]:
    """North/east metres of (lat, lon) from ``origin`` (equirectangular: a flight's extent)."""
    north = (lat - origin[0]) * 111_320.0
    east = (lon - origin[1]) * 111_320.0 * math.cos(math.radians(origin[0]))
    return north, east


class MavlinkBridge:
    """A pymavlink link in a background thread; :meth:`send_fix` is a Service fix sink."""

    def __init__(
        self, conn: str, out: str = "gps_input", rate_hz: float = 5.0, mount: str = "body"
    ) -> None:
        from geoloc.errors import ConfigError

        if out not in OUTPUTS:
            raise ConfigError(f"--mavlink-out must be one of {', '.join(OUTPUTS)}, got {out!r}")
        if mount not in MOUNTS:
            raise ConfigError(f"--camera-mount must be one of {', '.join(MOUNTS)}, got {mount!r}")
        self.mount = mount
        self.conn_str, self.out, self.min_dt = conn, out, 1.0 / max(rate_hz, 0.01)
        self.telemetry = Telemetry()
        self.sent = 0
        self._mav: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_send = 0.0
        self._origin: tuple[float, float] | None = None
        self._boot = time.monotonic()

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> MavlinkBridge:
        """Connect and run the heartbeat/telemetry loop in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="mavlink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop and close the link."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()

    def _connect(self) -> None:
        from pymavlink import mavutil

        mav = mavutil.mavlink_connection(
            self.conn_str, source_system=1, source_component=COMPONENT_ID, autoreconnect=True
        )
        with self._lock:
            self._mav = mav
        log.info("MAVLink link open on %s", self.conn_str)

    def _close(self) -> None:
        with self._lock:
            mav, self._mav = self._mav, None
        if mav is not None:
            try:
                mav.close()
            except OSError:
                pass

    def _run(self) -> None:
        from pymavlink.dialects.v20 import common as mavlink

        next_beat = 0.0
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if self._mav is None:
                    self._connect()
                    backoff = 0.5
                now = time.monotonic()
                if now >= next_beat:
                    with self._lock:
                        self._mav.mav.heartbeat_send(
                            mavlink.MAV_TYPE_ONBOARD_CONTROLLER,
                            mavlink.MAV_AUTOPILOT_INVALID,
                            0,
                            0,
                            mavlink.MAV_STATE_ACTIVE,
                        )
                    next_beat = now + 1.0
                msg = self._mav.recv_match(blocking=True, timeout=0.1)
                if msg is not None:
                    self._on_message(msg)
            except (OSError, ConnectionError) as exc:
                # the link dropped (serial unplugged, UDP unreachable): reconnect, bounded backoff
                log.warning("MAVLink link %s lost (%s); reconnecting", self.conn_str, exc)
                self._close()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _on_message(self, msg: Any) -> None:
        kind = msg.get_type()
        t = self.telemetry
        now = time.monotonic()
        if kind == "ATTITUDE":
            t.heading_deg = math.degrees(msg.yaw) % 360.0
            t.pitch_deg, t.roll_deg = math.degrees(msg.pitch), math.degrees(msg.roll)
            t.attitude_at = now
        elif kind == "ALTITUDE":
            # above the terrain is what a ground sampling distance needs; NaN when unknown
            for key in ("altitude_terrain", "altitude_relative"):
                v = float(getattr(msg, key))
                if math.isfinite(v) and v > 0:
                    t.altitude_m, t.altitude_key, t.altitude_at = v, f"ALTITUDE.{key}", now
                    break
        elif kind == "GLOBAL_POSITION_INT":
            fresh_terrain = (
                t.altitude_key == "ALTITUDE.altitude_terrain"
                and now - t.altitude_at <= TELEMETRY_MAX_AGE_S
            )
            if not fresh_terrain:
                t.altitude_m = msg.relative_alt / 1000.0
                t.altitude_key, t.altitude_at = "GLOBAL_POSITION_INT.relative_alt", now
        elif kind == "GPS_RAW_INT" and msg.fix_type >= 3:
            t.gps_lat, t.gps_lon = msg.lat / 1e7, msg.lon / 1e7
            t.gps_eph_m = msg.eph / 100.0 if msg.eph != 65535 else None

    def priors(self) -> dict[str, Any]:
        """Telemetry as priors of the camera: ``heading_deg`` (image top; the vehicle's yaw),
        ``pitch_deg``/``roll_deg`` (DJI gimbal convention; from the vehicle's attitude for a
        ``body`` mount, nadir for a ``gimbal``), ``altitude_m``, each None when unknown or older
        than :data:`TELEMETRY_MAX_AGE_S`, and ``start`` (the last good GPS fix) when known."""
        from geoloc.localize import Prior

        t = self.telemetry
        now = time.monotonic()
        out: dict[str, Any] = {
            "heading_deg": None,
            "pitch_deg": None,
            "roll_deg": None,
            "altitude_m": t.altitude_m if now - t.altitude_at <= TELEMETRY_MAX_AGE_S else None,
        }
        if t.heading_deg is not None and now - t.attitude_at <= TELEMETRY_MAX_AGE_S:
            if self.mount == "body":
                h, p, r = nadir_camera_angles(t.heading_deg, t.pitch_deg or 0.0, t.roll_deg or 0.0)
            else:
                h, p, r = t.heading_deg, -90.0, 0.0
            out.update(heading_deg=h, pitch_deg=p, roll_deg=r)
        if t.gps_lat is not None and t.gps_lon is not None:
            out["start"] = Prior(t.gps_lat, t.gps_lon, max(100.0, 3.0 * (t.gps_eph_m or 0.0)))
        return out

    # ------------------------------------------------------------------------------ output
    def send_fix(self, fix: dict[str, Any]) -> bool:
        """Send one ``ok`` fix (a ``locate`` or ``TrackFix`` dict); False when skipped."""
        if fix.get("status") not in POSITION_STATUSES or fix.get("lat") is None:
            return False
        now = time.monotonic()
        with self._lock:
            if self._mav is None or now - self._last_send < self.min_dt:
                return False
            self._last_send = now
            try:
                getattr(self, f"_send_{self.out}")(self._mav.mav, fix)
            except OSError as exc:
                log.warning("MAVLink send failed (%s)", exc)
                return False
            self.sent += 1
        return True

    def _send_gps_input(self, mav: Any, fix: dict[str, Any]) -> None:
        err = fix.get("error_m_est")
        ve, vn = fix.get("vel_east_mps"), fix.get("vel_north_mps")
        ignore = IGNORE_VDOP | IGNORE_VEL_VERT | IGNORE_VERT_ACCURACY
        alt = self.telemetry.altitude_m
        if alt is None:
            ignore |= IGNORE_ALT
        if err is None:
            ignore |= IGNORE_HDOP | IGNORE_HORIZ_ACCURACY
        if ve is None or vn is None:
            ignore |= IGNORE_VEL_HORIZ | IGNORE_SPEED_ACCURACY
        stamp = _stamp(fix)
        week, week_ms = gps_time(stamp)
        heading = fix.get("heading_deg")
        mav.gps_input_send(
            int(stamp * 1e6),
            0,  # gps_id
            ignore,
            week_ms,
            week,
            3,  # fix_type: 3D
            int(round(fix["lat"] * 1e7)),
            int(round(fix["lon"] * 1e7)),
            float(alt or 0.0),
            float(err / HDOP_UERE_M) if err is not None else 0.0,  # hdop
            0.0,  # vdop
            float(vn or 0.0),
            float(ve or 0.0),
            0.0,  # vd
            float(err / 10.0) if (err is not None and ve is not None) else 0.0,  # speed acc
            float(err or 0.0),  # horiz_accuracy
            0.0,  # vert_accuracy
            SATELLITES_VISIBLE,
            int(round((heading % 360.0) * 100)) or 36000 if heading is not None else 0,
        )

    def _local(self, fix: dict[str, Any]) -> tuple[float, float, float, float]:
        if self._origin is None:
            self._origin = (float(fix["lat"]), float(fix["lon"]))
        n, e = _local_ned(float(fix["lat"]), float(fix["lon"]), self._origin)
        down = -(self.telemetry.altitude_m or 0.0)
        var = float(fix.get("error_m_est") or 10.0) ** 2
        return n, e, down, var

    @staticmethod
    def _covariance(var: float) -> list[float]:
        """Upper-triangular 6x6 (x y z roll pitch yaw); unknown z and angles get a huge variance."""
        cov = [0.0] * 21
        big = 1e6
        for i, v in zip((0, 6, 11, 15, 18, 20), (var, var, big, big, big, big), strict=True):
            cov[i] = v
        return cov

    def origin(self) -> tuple[float, float] | None:
        """lat/lon of the local frame's origin (the first fix sent), None before."""
        return self._origin

    def _send_vision_position_estimate(self, mav: Any, fix: dict[str, Any]) -> None:
        n, e, d, var = self._local(fix)
        yaw = math.radians(fix["heading_deg"]) if fix.get("heading_deg") is not None else 0.0
        mav.vision_position_estimate_send(
            int(_stamp(fix) * 1e6), n, e, d, 0.0, 0.0, yaw, self._covariance(var), 0
        )

    def _send_odometry(self, mav: Any, fix: dict[str, Any]) -> None:
        from pymavlink.dialects.v20 import common as mavlink

        n, e, d, var = self._local(fix)
        yaw = math.radians(fix["heading_deg"]) if fix.get("heading_deg") is not None else 0.0
        q = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        vn, ve = fix.get("vel_north_mps"), fix.get("vel_east_mps")
        nan = float("nan")
        vel_cov = [nan] * 21  # NaN first element: velocity covariance unknown
        mav.odometry_send(
            int(_stamp(fix) * 1e6),
            mavlink.MAV_FRAME_LOCAL_NED,
            mavlink.MAV_FRAME_BODY_FRD,
            n,
            e,
            d,
            q,
            float(vn) if vn is not None else nan,
            float(ve) if ve is not None else nan,
            nan,
            nan,
            nan,
            nan,
            self._covariance(var),
            vel_cov,
            0,
            mavlink.MAV_ESTIMATOR_TYPE_VISION,
            0,
        )


def _stamp(fix: dict[str, Any]) -> float:
    """Unix time of the measurement: when its frame arrived (now when unknown)."""
    t = fix.get("received_unix")
    return float(t) if isinstance(t, (int, float)) and math.isfinite(t) else time.time()
