"""The HTTP API against a real uvicorn on loopback, a real Postgres and the bundled sample."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from tests.serve.conftest import Running, frame_bytes


def _dist_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    dlat = (a[0] - b[0]) * 111_320.0
    dlon = (a[1] - b[1]) * 111_320.0 * math.cos(math.radians(a[0]))
    return math.hypot(dlat, dlon)


def test_locate_raw_body_matches_cli_json_shape(served: Running, truth: Any) -> None:
    r = httpx.post(f"{served.url}/v1/locate?gsd=0.3128", content=frame_bytes(0), timeout=120)
    assert r.status_code == 200, r.text
    d = r.json()
    keys = {"frame", "status", "lat", "lon", "confidence", "error_m_est", "tile_id"}
    assert keys <= set(d), d.keys()
    assert {"orthomosaic", "heading_deg", "candidates", "timings_ms", "pipeline"} <= set(d)
    assert d["status"] == "ok", d
    assert _dist_m((d["lat"], d["lon"]), truth["frame_00.jpg"]) < 30.0


def test_locate_multipart_and_health_metrics(served: Running) -> None:
    files = {"file": ("whatever.txt", frame_bytes(1), "text/plain")}  # decoded by content
    r = httpx.post(f"{served.url}/v1/locate", files=files, params={"gsd": 0.2526}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("ok", "no_match")
    h = httpx.get(f"{served.url}/health", timeout=30).json()
    assert h["database"] == "ok" and h["tiles"] > 0
    assert h["model"]["name"] == "sgmnet"
    assert h["last_fix_age_s"] is not None and h["last_fix_age_s"] >= 0
    m = httpx.get(f"{served.url}/metrics", timeout=30)
    assert m.headers["content-type"].startswith("text/plain")
    assert 'geoloc_frames_total{status="ok"}' in m.text
    assert "geoloc_locate_seconds_count" in m.text


@pytest.mark.parametrize(
    ("path", "body", "kwargs", "code"),
    [
        ("/v1/locate", b"", {}, 400),
        ("/v1/locate", b"not an image at all", {}, 415),
        ("/v1/locate", b"GIF89a" + b"\0" * 64, {}, 415),
        ("/v1/locate?gsd=abc", b"x", {}, 400),
        ("/v1/locate?gsd=-1", b"x", {}, 400),
        ("/v1/locate?prior=1,2", b"x", {}, 400),
        ("/v1/locate?altitude=100", b"x", {}, 400),
        ("/v1/locate?gsd=0.3&altitude=100&hfov=60", b"x", {}, 400),
    ],
)
def test_malformed_requests_get_4xx_with_a_reason(
    served: Running, path: str, body: bytes, kwargs: dict[str, Any], code: int
) -> None:
    r = httpx.post(served.url + path, content=body, timeout=30, **kwargs)
    assert r.status_code == code, r.text
    reason = r.json()["error"]
    assert reason and "\n" not in reason


def test_truncated_jpeg_and_bad_multipart(served: Running) -> None:
    r = httpx.post(f"{served.url}/v1/locate", content=frame_bytes(0)[:300], timeout=30)
    assert r.status_code in (415, 422), r.text
    r = httpx.post(
        f"{served.url}/v1/locate",
        content=b"--xx\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=xx"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    r = httpx.post(f"{served.url}/v1/locate", files={"other": ("a", b"b")}, timeout=30)
    assert r.status_code == 400 and "file" in r.json()["error"]


def test_body_size_limit(service: Any) -> None:
    from geoloc.serve import ServeConfig, create_app
    from tests.serve.conftest import run_app, stop_app

    run = run_app(create_app(service, ServeConfig(max_body_bytes=1000)))
    try:
        r = httpx.post(f"{run.url}/v1/locate", content=frame_bytes(0), timeout=30)
        assert r.status_code == 413, r.text

        def gen() -> Any:  # chunked: no Content-Length, the stream is counted
            for _ in range(10):
                yield b"\xff" * 500

        r = httpx.post(f"{run.url}/v1/locate", content=gen(), timeout=30)
        assert r.status_code == 413, r.text
    finally:
        stop_app(run)


def test_no_client_path_reaches_the_filesystem(served: Running) -> None:
    for path in ("/../../etc/passwd", "/static/../../pyproject.toml", "/v1/overview.png/../x"):
        r = httpx.get(served.url + path, timeout=30)
        assert r.status_code == 404, (path, r.status_code)
    r = httpx.options(f"{served.url}/v1/locate", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_websocket_pushes_new_fixes(served: Running) -> None:
    import asyncio

    import websockets

    async def run() -> dict[str, Any]:
        ws_url = served.url.replace("http://", "ws://") + "/v1/ws"
        async with websockets.connect(ws_url) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            async with httpx.AsyncClient() as client:
                r = await client.post(
                    f"{served.url}/v1/locate?gsd=0.3128", content=frame_bytes(0), timeout=120
                )
                assert r.status_code == 200
            for _ in range(20):
                snap: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if snap["seq"] > first["seq"]:
                    return snap
        raise AssertionError("no new fix pushed")

    snap = asyncio.run(run())
    assert snap["last"]["status"] == "ok" and snap["track"]


def test_overview_and_page(served: Running) -> None:
    png = httpx.get(f"{served.url}/v1/overview.png", timeout=60)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    b = httpx.get(f"{served.url}/v1/overview", timeout=30).json()
    assert 60.39 < b["min_lat"] < b["max_lat"] < 60.41
    page = httpx.get(served.url + "/", timeout=30)
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets
