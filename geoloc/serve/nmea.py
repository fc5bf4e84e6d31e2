"""NMEA 0183 GGA + RMC sentences of a fix, sent over UDP (``--nmea udp:HOST:PORT``)."""

from __future__ import annotations

import socket
import time
from typing import Any

from geoloc.errors import ConfigError
from geoloc.serve.mavlink import HDOP_UERE_M, SATELLITES_VISIBLE
from geoloc.serve.service import POSITION_STATUSES


def _checksum(body: str) -> str:
    c = 0
    for ch in body.encode("ascii"):
        c ^= ch
    return f"{c:02X}"


def _sentence(body: str) -> str:
    return f"${body}*{_checksum(body)}\r\n"


def _lat(lat: float) -> tuple[str, str]:
    a = abs(lat)
    d = int(a)
    return f"{d:02d}{(a - d) * 60:07.4f}", "N" if lat >= 0 else "S"


def _lon(lon: float) -> tuple[str, str]:
    a = abs(lon)
    d = int(a)
    return f"{d:03d}{(a - d) * 60:07.4f}", "E" if lon >= 0 else "W"


def sentences(
    fix: dict[str, Any], now: float | None = None, altitude_m: float | None = None
) -> str:
    """``$GPGGA`` + ``$GPRMC`` for one fix (speed/course when the fix has a velocity)."""
    t = time.gmtime(now if now is not None else time.time())
    hms, dmy = time.strftime("%H%M%S.00", t), time.strftime("%d%m%y", t)
    la, ns = _lat(float(fix["lat"]))
    lo, ew = _lon(float(fix["lon"]))
    err = fix.get("error_m_est")
    hdop = f"{err / HDOP_UERE_M:.1f}" if err is not None else ""
    alt = f"{altitude_m:.1f}" if altitude_m is not None else ""
    gga = f"GPGGA,{hms},{la},{ns},{lo},{ew},1,{SATELLITES_VISIBLE:02d},{hdop},{alt},M,,M,,"
    ve, vn = fix.get("vel_east_mps"), fix.get("vel_north_mps")
    spd = crs = ""
    if ve is not None and vn is not None:
        spd = f"{((ve**2 + vn**2) ** 0.5) * 1.943844:.2f}"  # m/s -> knots
        import math

        crs = f"{math.degrees(math.atan2(ve, vn)) % 360.0:.1f}"
    rmc = f"GPRMC,{hms},A,{la},{ns},{lo},{ew},{spd},{crs},{dmy},,,A"
    return _sentence(gga) + _sentence(rmc)


class NmeaUdp:
    """Sends GGA + RMC of every ok fix to ``udp:HOST:PORT`` (a fix sink)."""

    def __init__(self, conn: str) -> None:
        kind, _, rest = conn.partition(":")
        host, _, port = rest.rpartition(":")
        if kind != "udp" or not host or not port.isdigit():
            raise ConfigError(f"--nmea must be udp:HOST:PORT, got {conn!r}")
        self.addr = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.altitude_m: float | None = None

    def send_fix(self, fix: dict[str, Any]) -> None:
        """Send the sentences of an ``ok`` fix (nothing otherwise)."""
        if fix.get("lat") is None or fix.get("status") not in POSITION_STATUSES:
            return
        self.sock.sendto(sentences(fix, altitude_m=self.altitude_m).encode("ascii"), self.addr)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
