"""MAVLink out/in against a pymavlink peer on 127.0.0.1 UDP playing the autopilot."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("MAVLINK20", "1")

from tests.serve.conftest import frame_bytes  # noqa: E402


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(peer: Any, kind: str, seconds: float = 5.0) -> Any:
    """The next ``kind`` message within ``seconds`` (None when none came)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        msg = peer.recv_match(type=kind, blocking=True, timeout=0.2)
        if msg is not None:
            return msg
    return None


@pytest.fixture(scope="module")
def located(service: Any) -> dict[str, Any]:
    """A real ``ok`` fix of sample frame 0 from the warm service."""
    from geoloc.serve.decode import decode_image

    d: dict[str, Any] = service.locate(decode_image(frame_bytes(0)), name="f0", gsd=0.3128)
    assert d["status"] == "ok", d
    return d


def _peer(port: int) -> Any:
    from pymavlink import mavutil

    return mavutil.mavlink_connection(
        f"udpin:127.0.0.1:{port}", source_system=1, source_component=1
    )


@pytest.fixture
def link() -> Iterator[tuple[Any, Any, int]]:
    """(autopilot peer, helper to start a bridge, port)."""
    port = _udp_port()
    peer = _peer(port)
    yield peer, port, port
    peer.close()


def _telemetry(peer: Any) -> None:
    peer.mav.attitude_send(1000, 0.05, -0.02, math.radians(90.0), 0.0, 0.0, 0.0)
    peer.mav.global_position_int_send(1000, 0, 0, 0, 120_000, 0, 0, 0, 0)


@pytest.mark.parametrize("out", ["gps_input", "vision_position_estimate", "odometry"])
def test_fix_reaches_the_autopilot(link: Any, located: dict[str, Any], out: str) -> None:
    from geoloc.serve.mavlink import COMPONENT_ID, SATELLITES_VISIBLE, MavlinkBridge

    peer, port, _ = link
    bridge = MavlinkBridge(f"udpout:127.0.0.1:{port}", out=out, rate_hz=50).start()
    try:
        hb = _wait(peer, "HEARTBEAT")
        assert hb is not None and hb.get_srcComponent() == COMPONENT_ID
        _telemetry(peer)
        for _ in range(50):  # bounded: the bridge reads telemetry in its own thread
            if bridge.telemetry.altitude_m is not None and bridge.telemetry.heading_deg:
                break
            time.sleep(0.1)
        assert bridge.telemetry.altitude_m == pytest.approx(120.0)
        assert bridge.telemetry.heading_deg == pytest.approx(90.0, abs=0.01)
        pri = bridge.priors()
        assert pri["altitude_m"] == pytest.approx(120.0) and "start" not in pri

        assert not bridge.send_fix({"status": "no_match", "lat": None, "lon": None})
        assert _wait(peer, out.upper(), 1.0) is None  # nothing without a fix
        assert bridge.send_fix(located)
        msg = _wait(peer, out.upper())
        assert msg is not None
        if out == "gps_input":
            assert msg.lat == round(located["lat"] * 1e7) and msg.lon == round(located["lon"] * 1e7)
            assert msg.fix_type == 3 and msg.satellites_visible == SATELLITES_VISIBLE
            assert msg.horiz_accuracy == pytest.approx(located["error_m_est"], rel=1e-4)
            assert msg.alt == pytest.approx(120.0)
            assert msg.ignore_flags & 8  # no velocity from a single-frame fix
        else:
            # the first fix is the local origin: north/east 0 m
            assert bridge.origin() == (located["lat"], located["lon"])
            assert abs(msg.x) < 1e-6 and abs(msg.y) < 1e-6
            cov = msg.covariance if out == "vision_position_estimate" else msg.pose_covariance
            assert cov[0] == pytest.approx(located["error_m_est"] ** 2, rel=1e-4)
    finally:
        bridge.stop()


def test_link_lost_and_restored(link: Any) -> None:
    from geoloc.serve.mavlink import MavlinkBridge

    peer, port, _ = link
    bridge = MavlinkBridge(f"udpout:127.0.0.1:{port}").start()
    try:
        assert _wait(peer, "HEARTBEAT") is not None
        peer.close()
        time.sleep(2.0)  # heartbeats into a closed port: the bridge must survive
        assert bridge._thread is not None and bridge._thread.is_alive()
        peer2 = _peer(port)
        try:
            assert _wait(peer2, "HEARTBEAT", 8.0) is not None
            # reconnected, but no new fix: nothing stale is replayed to the autopilot
            assert _wait(peer2, "GPS_INPUT", 1.5) is None
            assert bridge.sent == 0
        finally:
            peer2.close()
    finally:
        bridge.stop()


def test_gps_time() -> None:
    from geoloc.serve.mavlink import gps_time

    # 2024-01-01T00:00:00Z is GPS week 2295, Monday 00:00:18 (18 leap seconds)
    week, ms = gps_time(1_704_067_200)
    assert week == 2295 and ms == (86_400 + 18) * 1000


def test_camera_angles_of_a_body_fixed_nadir_camera() -> None:
    from geoloc.serve.mavlink import nadir_camera_angles

    h, p, r = nadir_camera_angles(30.0, 0.0, 0.0)
    assert (h, p, r) == pytest.approx((30.0, -90.0, 0.0), abs=1e-6)
    # nose up: the belly, and the camera, turn forward
    assert nadir_camera_angles(30.0, 10.0, 0.0)[1] == pytest.approx(-80.0, abs=1e-6)
    # right wing down: the camera's right side goes down
    assert nadir_camera_angles(0.0, 0.0, 10.0)[2] == pytest.approx(10.0, abs=1e-6)


def test_altitude_prefers_terrain_and_stale_telemetry_is_dropped(link: Any) -> None:
    from geoloc.serve.mavlink import TELEMETRY_MAX_AGE_S, MavlinkBridge

    peer, port, _ = link
    bridge = MavlinkBridge(f"udpout:127.0.0.1:{port}", mount="gimbal").start()
    try:
        assert _wait(peer, "HEARTBEAT") is not None
        nan = float("nan")
        peer.mav.altitude_send(1000, 50.0, 60.0, 40.0, 45.0, 80.0, nan)
        peer.mav.global_position_int_send(1000, 0, 0, 0, 120_000, 0, 0, 0, 0)
        _telemetry(peer)
        for _ in range(50):
            if bridge.telemetry.altitude_key and bridge.telemetry.heading_deg is not None:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # GLOBAL_POSITION_INT, sent after ALTITUDE, is read too
        t = bridge.telemetry
        assert t.altitude_m == pytest.approx(80.0) and t.altitude_key == "ALTITUDE.altitude_terrain"
        pri = bridge.priors()
        assert pri["heading_deg"] == pytest.approx(90.0, abs=0.01)
        assert pri["pitch_deg"] == -90.0 and pri["roll_deg"] == 0.0  # gimbal: nadir
        t.attitude_at -= TELEMETRY_MAX_AGE_S + 1
        t.altitude_at -= TELEMETRY_MAX_AGE_S + 1
        pri = bridge.priors()
        assert pri["heading_deg"] is None and pri["pitch_deg"] is None
        assert pri["altitude_m"] is None
    finally:
        bridge.stop()


def test_locate_takes_unset_priors_from_telemetry(service: Any, link: Any) -> None:
    """/v1/locate: heading/pitch/roll (and altitude with a known hfov) from ATTITUDE/ALTITUDE
    when the request does not set them; the answer names the source of each."""
    import httpx

    from geoloc.serve import create_app
    from geoloc.serve.mavlink import MavlinkBridge
    from tests.serve.conftest import run_app, stop_app

    peer, port, _ = link
    bridge = MavlinkBridge(f"udpout:127.0.0.1:{port}").start()
    run = run_app(create_app(service))
    service.telemetry = bridge.priors
    try:
        assert _wait(peer, "HEARTBEAT") is not None

        def fresh() -> None:  # telemetry goes stale after TELEMETRY_MAX_AGE_S
            peer.mav.attitude_send(1000, 0.02, -0.01, math.radians(90.0), 0.0, 0.0, 0.0)
            peer.mav.altitude_send(1000, 50.0, 60.0, 40.0, 45.0, 80.0, float("nan"))
            for _ in range(50):
                if bridge.priors()["heading_deg"] is not None and bridge.priors()["altitude_m"]:
                    return
                time.sleep(0.1)
            raise AssertionError("telemetry not received")

        fresh()
        r = httpx.post(f"{run.url}/v1/locate?gsd=0.3128", content=frame_bytes(0), timeout=300)
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["prior_sources"] == {
            "heading": "mavlink",
            "pitch": "mavlink",
            "roll": "mavlink",
            "gsd": "request",
            "altitude": None,
        }
        assert d["priors"]["heading"]["source"] == "mavlink"
        assert d["priors"]["heading"]["value"] == pytest.approx(bridge.priors()["heading_deg"])
        assert d["priors"]["pitch"]["source"] == "mavlink"

        fresh()
        r = httpx.post(
            f"{run.url}/v1/locate?gsd=0.3128&heading=10&pitch=-90&roll=0",
            content=frame_bytes(0),
            timeout=300,
        )
        assert r.status_code == 200, r.text
        d = r.json()
        assert {d["prior_sources"][k] for k in ("heading", "pitch", "roll")} == {"request"}
        assert d["priors"]["heading"] == {"value": 10.0, "source": "flag"}

        service.hfov_deg = 60.0  # the camera's field of view: the altitude gives the GSD
        fresh()
        r = httpx.post(f"{run.url}/v1/locate", content=frame_bytes(0), timeout=300)
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["prior_sources"]["altitude"] == "mavlink" and d["prior_sources"]["gsd"] is None
        assert d["priors"]["altitude"] == {"value": 80.0, "source": "mavlink"}

        fresh()  # a tracked frame: the tracker's heading and altitude priors
        r = httpx.post(
            f"{run.url}/v1/track/tele/frames?gsd=0.3128", content=frame_bytes(0), timeout=300
        )
        assert r.status_code == 200, r.text
        assert r.json()["prior_sources"] == {"heading_deg": "mavlink", "altitude_m": "mavlink"}
    finally:
        service.end_session("tele")
        service.telemetry = None
        service.hfov_deg = None
        stop_app(run)
        bridge.stop()
