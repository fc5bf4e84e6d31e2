"""Token and bind rules, in-process and through the real ``geoloc serve`` process (SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.conftest import REPO
from tests.serve.conftest import frame_bytes, free_port, run_app, stop_app

TOKEN = "s3cret-token-for-tests"


def test_bind_rules() -> None:
    from geoloc.cli.serve import check_bind
    from geoloc.errors import ConfigError

    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(ConfigError, match="GEOLOC_API_TOKEN"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError):
        check_bind("192.168.1.10", "")


def test_token_required_on_every_data_route(service: Any) -> None:
    import asyncio

    import websockets

    from geoloc.serve import ServeConfig, create_app

    cfg = ServeConfig(token=TOKEN)
    assert TOKEN not in repr(cfg)
    run = run_app(create_app(service, cfg))
    try:
        for path in ("/health", "/metrics", "/v1/state", "/v1/overview"):
            assert httpx.get(run.url + path, timeout=30).status_code == 401, path
            bad = {"Authorization": "Bearer wrong"}
            assert httpx.get(run.url + path, headers=bad, timeout=30).status_code == 401
            ok = {"Authorization": f"Bearer {TOKEN}"}
            assert httpx.get(run.url + path, headers=ok, timeout=60).status_code == 200, path
        r = httpx.post(f"{run.url}/v1/locate", content=frame_bytes(0), timeout=30)
        assert r.status_code == 401 and TOKEN not in r.text
        assert httpx.get(run.url + "/", timeout=30).status_code == 200  # static page, no data

        async def ws(protos: list[str] | None) -> bool:
            url = run.url.replace("http://", "ws://") + "/v1/ws"
            try:
                async with websockets.connect(url, subprotocols=protos) as c:  # type: ignore[arg-type]
                    await asyncio.wait_for(c.recv(), 10)
                    return True
            except (websockets.exceptions.WebSocketException, OSError):
                return False

        assert not asyncio.run(ws(None))
        assert not asyncio.run(ws(["bearer.wrong"]))
        assert asyncio.run(ws([f"bearer.{TOKEN}"]))
    finally:
        stop_app(run)


def _env(settings: Any, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO),
        GEOLOC_HOME=str(settings.home),
        GEOLOC_DATABASE_URL=str(settings.database_url),
        **extra,
    )
    return env


def test_refuses_public_bind_without_token(serve_settings: Any) -> None:
    env = _env(serve_settings)
    env.pop("GEOLOC_API_TOKEN", None)
    p = subprocess.run(
        [sys.executable, "-m", "geoloc.cli", "serve", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1, p.stderr
    assert "GEOLOC_API_TOKEN" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_serve_process_answers_and_sigterm_drains_with_143(serve_settings: Any) -> None:
    port = free_port()
    p = subprocess.Popen(
        [sys.executable, "-m", "geoloc.cli", "serve", "--port", str(port), "--preset", "fast"],
        env=_env(serve_settings, GEOLOC_API_TOKEN=TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        hdr = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(240):  # bounded wait for the model to load
            try:
                if httpx.get(url + "/health", headers=hdr, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert p.poll() is None, p.communicate()[1]
            time.sleep(0.5)
        r = httpx.post(
            url + "/v1/locate?gsd=0.3128", content=frame_bytes(0), headers=hdr, timeout=120
        )
        assert r.status_code == 200 and r.json()["status"] in ("ok", "no_match")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 143, err
        assert TOKEN not in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
