"""NMEA sentences: format, checksum, and delivery over loopback UDP."""

from __future__ import annotations

import socket

import pytest


def _parse_latlon(v: str, h: str, deg_digits: int) -> float:
    x = int(v[:deg_digits]) + float(v[deg_digits:]) / 60.0
    return -x if h in "SW" else x


def test_gga_rmc_round_trip_over_udp() -> None:
    from geoloc.errors import ConfigError
    from geoloc.serve.nmea import NmeaUdp

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    tx = NmeaUdp(f"udp:127.0.0.1:{port}")
    try:
        tx.send_fix({"status": "no_match", "lat": None, "lon": None})
        tx.send_fix({"status": "ok", "lat": 60.402, "lon": -22.4638, "error_m_est": 7.5})
        data = rx.recv(4096).decode("ascii")
    finally:
        tx.close()
        rx.close()
    lines = data.strip().split("\r\n")
    assert [ln[:6] for ln in lines] == ["$GPGGA", "$GPRMC"]
    for ln in lines:
        body, cs = ln[1:].split("*")
        c = 0
        for ch in body.encode():
            c ^= ch
        assert f"{c:02X}" == cs
    gga = lines[0].split(",")
    assert _parse_latlon(gga[2], gga[3], 2) == pytest.approx(60.402, abs=1e-6)
    assert _parse_latlon(gga[4], gga[5], 3) == pytest.approx(-22.4638, abs=1e-6)
    assert gga[6] == "1" and gga[8] == "1.5"
    with pytest.raises(ConfigError):
        NmeaUdp("tcp:127.0.0.1:1")
