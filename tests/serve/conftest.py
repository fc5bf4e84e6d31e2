"""Serve tests: the bundled sample ingested once, a warm Service, uvicorn on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, SAMPLE_RASTER

SAMPLE_FRAMES = REPO / "data" / "sample" / "frames"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def serve_settings(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Settings of a database holding the whole bundled sample."""
    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.models import load_encoder

    enc = load_encoder("sgmnet")
    enc.optimize_for_inference()
    name = pg_server.create_database()
    settings = Settings(
        home=tmp_path_factory.mktemp("serve-home"), database_url=pg_server.url_for(name)
    )
    res = ingest([SAMPLE_RASTER], encoder=enc, settings=settings, progress=False)
    assert [r.status for r in res] == ["ingested"], res
    try:
        yield settings
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def service(serve_settings: Any) -> Iterator[Any]:
    """One warm Service for the session (as ``geoloc serve`` keeps one per process)."""
    from geoloc.serve import Service

    svc = Service.open(serve_settings, preset="accurate")
    try:
        yield svc
    finally:
        svc.close()


@dataclass
class Running:
    """A uvicorn server running an app in a thread."""

    url: str
    server: Any
    thread: threading.Thread


def run_app(app: Any) -> Running:
    """Start uvicorn on a random free loopback port and wait (bounded) until it serves."""
    import uvicorn

    port = free_port()
    cfg = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(cfg)
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    return Running(f"http://127.0.0.1:{port}", server, th)


def stop_app(run: Running) -> None:
    """Stop a server started by :func:`run_app`."""
    run.server.should_exit = True
    run.thread.join(timeout=10)


@pytest.fixture
def served(service: Any) -> Iterator[Running]:
    """The service's app (no token) on a loopback port."""
    from geoloc.serve import create_app

    run = run_app(create_app(service))
    try:
        yield run
    finally:
        stop_app(run)


def frame_bytes(i: int = 0) -> bytes:
    """The bytes of sample frame ``i`` (JPEG)."""
    return (SAMPLE_FRAMES / f"frame_{i:02d}.jpg").read_bytes()


@pytest.fixture(scope="session")
def truth() -> dict[str, tuple[float, float]]:
    """frame file name -> (lat, lon) from the sample's truth.csv."""
    import csv

    out: dict[str, tuple[float, float]] = {}
    with (SAMPLE_FRAMES / "truth.csv").open() as f:
        for row in csv.DictReader(f):
            out[row["name"]] = (float(row["lat"]), float(row["lon"]))
    return out


__all__ = ["Path", "Running", "frame_bytes", "free_port", "run_app", "stop_app"]
