"""``geoloc serve --source``: frame in -> MAVLink message out latency at 5 frames/s input.

Ingests the bundled sample into a throw-away GEOLOC_HOME (embedded Postgres), writes the synthetic
flight of :mod:`benchmarks.track` as a lossless 5 frames/s video, starts ``geoloc serve --source
VIDEO --mavlink udpout:127.0.0.1:P --mavlink-out gps_input`` and plays the autopilot on that
UDP port with pymavlink. The service stamps each GPS_INPUT with the Unix time its frame arrived
from the video (``time_usec``); this process notes the Unix time each message is received. Both
clocks are this machine's, so the difference is the frame in -> message out latency across
loopback UDP, including the wait for a busy tracker. Frames that arrive while the tracker is busy
are dropped by design and have no message; their count comes from ``/health``.

Reports latency p50/p95/max (ms), messages, frames read/tracked/dropped, and the share of video
frames that produced a message. JSON in ``benchmarks/results/serve_latency.json``.

    python -m benchmarks.serve_latency [--seconds 20] [--fps 5] [--label "idle"]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.serving import free_port, pct, teardown
from benchmarks.video import write_video

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SAMPLE = REPO / "data" / "sample" / "turku_utm34n_0.28m.tif"


def run(
    seconds: float = 20.0, fps: float = 5.0, label: str = "", preset: str = "accurate"
) -> dict[str, Any]:
    """Measure; save ``benchmarks/results/serve_latency.json`` and return the dict."""
    import httpx

    os.environ.setdefault("MAVLINK20", "1")
    from pymavlink import mavutil

    from benchmarks.track import FPS as FLIGHT_FPS
    from benchmarks.track import GSD, flight
    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.store import embedded

    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-latency-", dir="/tmp"))
    settings = Settings(home=home, database_url=None)
    env = dict(os.environ, GEOLOC_HOME=str(home), PYTHONPATH=str(REPO), MAVLINK20="1")
    env.pop("GEOLOC_DATABASE_URL", None)
    env.pop("GEOLOC_API_TOKEN", None)
    out: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "label": label,
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "input_fps": fps,
        "preset": preset,
        "video_seconds": seconds,
    }
    fl = flight(seconds)
    step = max(1, int(round(FLIGHT_FPS / fps)))
    frames = fl["frames"][::step]
    video = write_video(home / "flight.mkv", frames, fps, codec="ffv1", pix_fmt="bgr0")
    lon0, lat0 = fl["truth"][0]
    out["video_frames"] = len(frames)
    server = None
    peer = None
    try:
        embedded.start(settings, keep_running=True)
        (res,) = ingest([SAMPLE], settings=settings, progress=False)
        if res.status != "ingested":
            raise RuntimeError(f"{SAMPLE}: ingest {res.status}: {res.message}")
        udp, port = free_port(socket.SOCK_DGRAM), free_port()
        peer = mavutil.mavlink_connection(f"udpin:127.0.0.1:{udp}", source_system=1)
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "geoloc.cli", "-q", "serve", "--port", str(port)]
            + ["--preset", preset]
            + ["--source", str(video), "--gsd", str(GSD), "--start", f"{lat0},{lon0},150"]
            + ["--mavlink", f"udpout:127.0.0.1:{udp}", "--mavlink-rate", "100"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lat_ms: list[float] = []
        health: dict[str, Any] = {}
        deadline = time.monotonic() + max(600.0, 30 * seconds)
        next_poll = 0.0
        while time.monotonic() < deadline:
            msg = peer.recv_match(type="GPS_INPUT", blocking=True, timeout=0.2)
            if msg is not None:
                lat_ms.append((time.time() - msg.time_usec / 1e6) * 1000.0)
                continue
            if server.poll() is not None:
                raise RuntimeError(f"geoloc serve exited: {server.communicate()[1][-500:]}")
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 1.0
                try:
                    health = httpx.get(url + "/health", timeout=10).json()
                except (httpx.HTTPError, ValueError):
                    continue
                if health.get("source", {}).get("state") == "ended":
                    break
        src = health.get("source", {})
        # the service's time per answered frame (tracker update, its lock wait included)
        per_frame_ms = None
        try:
            metrics = httpx.get(url + "/metrics", timeout=10).text
            vals = dict(
                line.split(" ", 1)
                for line in metrics.splitlines()
                if line.startswith("geoloc_locate")
            )
            n = float(vals["geoloc_locate_seconds_count"])
            if n:
                per_frame_ms = round(float(vals["geoloc_locate_seconds_sum"]) / n * 1000.0, 1)
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        out.update(
            {
                "messages": len(lat_ms),
                "latency_ms": {
                    "p50": pct(lat_ms, 50),
                    "p95": pct(lat_ms, 95),
                    "max": pct(lat_ms, 100),
                },
                "target_p95_ms": 500.0,
                "frames_read": src.get("frames_read"),
                "frames_tracked": src.get("frames_tracked"),
                "frames_dropped": src.get("frames_dropped"),
                "frame_errors": src.get("frame_errors"),
                "tracker_ms_per_answered_frame": per_frame_ms,
                "share_of_frames_with_a_message": round(len(lat_ms) / max(len(frames), 1), 3),
                "source_state": src.get("state"),
                "loadavg_at_end": list(os.getloadavg()),
            }
        )
    finally:
        if peer is not None:
            peer.close()
        code = teardown(server, settings, home)
        if code is not None:
            out["serve_exit_on_sigterm"] = code
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_latency.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    """Command-line entry: print the results as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="Length of the video (s).")
    ap.add_argument("--fps", type=float, default=5.0, help="Frame rate of the video.")
    ap.add_argument("--label", default="", help="How the machine was (e.g. idle, under load).")
    ap.add_argument("--preset", default="accurate", help="geoloc serve --preset.")
    a = ap.parse_args()
    print(json.dumps(run(a.seconds, a.fps, a.label, a.preset), indent=2))


if __name__ == "__main__":
    main()
