"""``--source``: a video written here, tracked continuously by the service behind a real uvicorn,
its fixes sent as GPS_INPUT to a pymavlink peer playing the autopilot on loopback UDP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

os.environ.setdefault("MAVLINK20", "1")

from tests.serve.conftest import run_app, stop_app  # noqa: E402
from tests.serve.test_mavlink import _peer, _udp_port, _wait  # noqa: E402
from tests.serve.test_security import _env  # noqa: E402

pytestmark = pytest.mark.timeout(1800)


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """Lossless FFV1 in Matroska (the tracker's first fix is the subject, not JPEG loss)."""
    from benchmarks.video import write_video as write

    return write(path, frames, fps, codec="ffv1", pix_fmt="bgr0")


def test_video_source_tracks_drops_and_reaches_the_autopilot(service: Any, tmp_path: Path) -> None:
    from geoloc.localize import Prior
    from geoloc.serve import create_app
    from geoloc.serve.mavlink import MavlinkBridge
    from geoloc.serve.source import SESSION, FrameSource
    from tests.track.flight import synthetic_flight

    n, fps = 10, 25.0
    flight = synthetic_flight(n=n, fps=fps)
    video = write_video(tmp_path / "flight.mkv", flight.frames, fps)
    lon0, lat0 = flight.truth[0]

    port = _udp_port()
    peer = _peer(port)
    bridge = MavlinkBridge(f"udpout:127.0.0.1:{port}", out="gps_input", rate_hz=100).start()
    fixes: list[dict[str, Any]] = []
    run = run_app(create_app(service))
    src = FrameSource(service, str(video), priors={"gsd": 0.28}, start=Prior(lat0, lon0, 150.0))
    service.add_sink(fixes.append)
    service.add_sink(bridge.send_fix)
    service.source = src
    try:
        assert _wait(peer, "HEARTBEAT") is not None  # the link is up before frames flow
        src.start()
        assert src.wait(900.0), "the source did not end"
        msgs = []
        while (m := _wait(peer, "GPS_INPUT", 3.0)) is not None:
            msgs.append(m)

        st = src.stats
        assert st.state == "ended" and st.read == n
        assert st.tracked + st.dropped + st.errors == n and st.errors == 0, st
        # 25 frames/s is far faster than one map fix: frames arriving meanwhile are dropped
        assert st.dropped >= 1 and st.tracked >= 2, st
        positioned = [f for f in fixes if f.get("session") == SESSION]
        assert positioned and positioned[0]["status"] == "map_fix", positioned
        sent = {
            (round(f["lat"] * 1e7), round(f["lon"] * 1e7)): round(f["received_unix"] * 1e6)
            for f in positioned
        }
        assert msgs, "no GPS_INPUT reached the autopilot"
        for m in msgs:
            assert (m.lat, m.lon) in sent, ((m.lat, m.lon), sent)
            # stamped with the time its frame arrived, not the time it was sent
            assert abs(m.time_usec - sent[(m.lat, m.lon)]) <= 1
        # the service keeps serving after the file ended, and reports the source
        h = httpx.get(f"{run.url}/health", timeout=30).json()
        assert h["source"]["state"] == "ended" and h["source"]["frames_read"] == n
        assert h["source"]["frames_dropped"] == st.dropped
        m_text = httpx.get(f"{run.url}/metrics", timeout=30).text
        assert f'geoloc_source_frames_total{{outcome="dropped"}} {st.dropped}' in m_text
    finally:
        src.stop()
        service.remove_sink(fixes.append)
        service.remove_sink(bridge.send_fix)
        service.source = None
        service.end_session(SESSION)
        stop_app(run)
        bridge.stop()
        peer.close()


def test_source_stops_cleanly_while_reading(service: Any, tmp_path: Path) -> None:
    """stop() during a long file ends both threads (the service's shutdown path)."""
    from geoloc.serve.source import SESSION, FrameSource
    from tests.track.flight import synthetic_flight

    flight = synthetic_flight(n=6, fps=1.0)
    video = write_video(tmp_path / "slow.mkv", flight.frames, 1.0)  # 6 s of video
    src = FrameSource(service, str(video), priors={"gsd": 0.28}).start()
    try:
        time.sleep(0.5)
    finally:
        src.stop(timeout=600)
        service.end_session(SESSION)
    assert src.stats.state == "stopped" and src.stats.read < 6
    assert not any(th.is_alive() for th in src._threads)


@pytest.mark.parametrize("kind", ["missing", "not_a_video", "url"])
def test_source_that_cannot_be_opened_exits_1(
    serve_settings: Any, tmp_path: Path, kind: str
) -> None:
    spec = {
        "missing": str(tmp_path / "nope.mp4"),
        "not_a_video": str(tmp_path / "junk.mp4"),
        "url": "rtsp://user:secret@127.0.0.1:1/stream",
    }[kind]
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video at all" * 10)
    p = subprocess.run(
        [sys.executable, "-m", "geoloc.cli", "serve", "--source", spec],
        env=_env(serve_settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--source" in lines[0], p.stderr
    assert "secret" not in p.stderr  # a URL's password is masked


def test_display_spec_and_kind() -> None:
    from geoloc.serve.source import display_spec, source_kind

    assert display_spec("rtsp://u:pw@cam/live") == "rtsp://u:***@cam/live"
    assert display_spec("/videos/a.mp4") == "/videos/a.mp4"
    assert [source_kind(s) for s in ("0", "/dev/video2", "udp://0.0.0.0:5600", "a.mp4")] == [
        "device",
        "device",
        "url",
        "file",
    ]


def test_serve_command_with_a_source(serve_settings: Any, tmp_path: Path) -> None:
    """``geoloc serve --source VIDEO``: the file is tracked, /health reports it ended, HTTP still
    answers, SIGTERM exits 143."""
    import signal

    from tests.serve.conftest import free_port
    from tests.track.flight import synthetic_flight

    flight = synthetic_flight(n=4, fps=5.0)
    video = write_video(tmp_path / "flight.mkv", flight.frames, 5.0)
    lon0, lat0 = flight.truth[0]
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "geoloc.cli", "serve", "--port", str(port), "--preset", "fast"]
        + ["--source", str(video), "--gsd", "0.28", "--start", f"{lat0},{lon0}"],
        env=_env(serve_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        src: dict[str, Any] = {}
        for _ in range(1200):  # bounded: model load, then 4 frames tracked
            try:
                src = httpx.get(url + "/health", timeout=5).json().get("source", {})
                if src.get("state") == "ended":
                    break
            except httpx.TransportError:
                pass
            assert p.poll() is None, p.communicate()[1]
            time.sleep(0.5)
        assert src.get("state") == "ended" and src["frames_read"] == 4, src
        assert src["frames_tracked"] >= 1 and src["frame_errors"] == 0, src
        r = httpx.get(url + "/v1/state", timeout=30).json()
        assert r["last"] is not None and r["last"]["session"] == "@source"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 143, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
