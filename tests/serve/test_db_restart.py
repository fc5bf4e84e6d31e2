"""The database restarted under a running service: requests during the outage get a 503 with a
one-line reason, the service stays up and answers again by itself once the server is back.

The database is the separate loopback Postgres of ``tests/fixtures_extpg.py`` (a server of its
own that can be stopped and started), the service a real uvicorn on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SAMPLE_RASTER
from tests.fixtures_extpg import ExternalPostgres
from tests.serve.conftest import Running, frame_bytes, run_app, stop_app

pytestmark = pytest.mark.timeout(1800)
DB = "geoloc_serve_restart"


@pytest.fixture(scope="module")
def ext_served(
    external_pg: ExternalPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Running, Any]]:
    """The sample ingested into the external server, a Service on it behind uvicorn."""
    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.serve import Service, create_app
    from geoloc.store.database import upgrade

    url = external_pg.create_database(DB)
    settings = Settings(home=tmp_path_factory.mktemp("serve-extpg"), database_url=url)
    svc = None
    run = None
    try:
        upgrade(url)  # an external database is migrated by its operator (`geoloc db upgrade`)
        (res,) = ingest([SAMPLE_RASTER], settings=settings, progress=False)
        assert res.status == "ingested", res
        svc = Service.open(settings, preset="fast")
        run = run_app(create_app(svc))
        yield run, svc
    finally:
        if run is not None:
            stop_app(run)
        if svc is not None:
            svc.close()
        if not external_pg.running():
            external_pg.start()
        external_pg.admin(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


def _locate(run: Running) -> httpx.Response:
    return httpx.post(f"{run.url}/v1/locate?gsd=0.3128", content=frame_bytes(0), timeout=300)


def test_database_restart_fails_clearly_then_recovers(
    ext_served: tuple[Running, Any], external_pg: ExternalPostgres
) -> None:
    run, svc = ext_served
    r = _locate(run)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert httpx.get(f"{run.url}/health", timeout=60).json()["database"] == "ok"

    external_pg.stop("fast")  # every session cut, as an operator's restart does
    try:
        r = _locate(run)
        assert r.status_code == 503, r.text
        reason = r.json()["error"]
        assert "database unavailable" in reason and "\n" not in reason, reason
        assert external_pg.password not in reason
        r = httpx.post(
            f"{run.url}/v1/track/outage/frames?gsd=0.3128", content=frame_bytes(0), timeout=300
        )
        assert r.status_code == 503 and "database" in r.json()["error"], r.text
        h = httpx.get(f"{run.url}/health", timeout=60)
        assert h.status_code == 503 and h.json()["database"] == "unreachable", h.text
        # bad requests are still the client's fault, and answered as such
        assert httpx.post(f"{run.url}/v1/locate", content=b"", timeout=30).status_code == 400
    finally:
        external_pg.start()
    external_pg.wait_ready()

    # no restart of the service: its pool reconnects (bounded wait for the server to settle)
    for _ in range(30):
        r = _locate(run)
        if r.status_code == 200:
            break
        time.sleep(1.0)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    h = httpx.get(f"{run.url}/health", timeout=60).json()
    assert h["database"] == "ok" and h["tiles"] > 0
    assert h["frames"]["error"] >= 2  # the outage's requests were counted
    svc.end_session("outage")
