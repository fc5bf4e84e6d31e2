"""MAVLink to and from the autopilot (pymavlink): fixes out, telemetry in, heartbeat, reconnect.

Out (``--mavlink-out``): ``GPS_INPUT`` (ArduPilot and PX4), ``VISION_POSITION_ESTIMATE`` or
``ODOMETRY`` (local NED metres from the first fix, with covariance). Only new ``ok`` fixes are
sent, at most ``rate_hz``: when localization fails the autopilot sees messages stop, never a
frozen position. In: ATTITUDE (heading/pitch/roll), GLOBAL_POSITION_INT (altitude above home)
and the last GPS_RAW_INT with a 3D fix (a start prior).
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

# GPS_INPUT_IGNORE_FLAGS
IGNORE_ALT, IGNORE_HDOP, IGNORE_VDOP = 1, 2, 4
IGNORE_VEL_HORIZ, IGNORE_VEL_VERT, IGNORE_SPEED_ACCURACY = 8, 16, 32
IGNORE_HORIZ_ACCURACY, IGNORE_VERT_ACCURACY = 64, 128


@dataclass
class Telemetry:
    """The latest autopilot telemetry (None until received)."""

    heading_deg: float | None = None
    pitch_deg: float | None = None
    roll_deg: float | None = None
    altitude_m: float | None = None  # above home (GLOBAL_POSITION_INT.relative_alt)
    gps_lat: float | None = None  # last GPS_RAW_INT with fix_type >= 3
    gps_lon: float | None = None
    gps_eph_m: float | None = None


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

    def __init__(self, conn: str, out: str = "gps_input", rate_hz: float = 5.0) -> None:
        if out not in OUTPUTS:
            from geoloc.errors import ConfigError

            raise ConfigError(f"--mavlink-out must be one of {', '.join(OUTPUTS)}, got {out!r}")
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
        if kind == "ATTITUDE":
            t.heading_deg = math.degrees(msg.yaw) % 360.0
            t.pitch_deg, t.roll_deg = math.degrees(msg.pitch), math.degrees(msg.roll)
        elif kind == "GLOBAL_POSITION_INT":
            t.altitude_m = msg.relative_alt / 1000.0
        elif kind == "GPS_RAW_INT" and msg.fix_type >= 3:
            t.gps_lat, t.gps_lon = msg.lat / 1e7, msg.lon / 1e7
            t.gps_eph_m = msg.eph / 100.0 if msg.eph != 65535 else None

    def priors(self) -> dict[str, Any]:
        """Telemetry as tracker priors: ``heading_deg`` (vehicle yaw: a camera fixed to the
        body, top forward), ``altitude_m`` and ``start`` (the last good GPS fix) when known."""
        from geoloc.localize import Prior

        t = self.telemetry
        out: dict[str, Any] = {"heading_deg": t.heading_deg, "altitude_m": t.altitude_m}
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
        week, week_ms = gps_time(time.time())
        heading = fix.get("heading_deg")
        mav.gps_input_send(
            int(time.time() * 1e6),
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
            int(time.time() * 1e6), n, e, d, 0.0, 0.0, yaw, self._covariance(var), 0
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
            int(time.time() * 1e6),
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
