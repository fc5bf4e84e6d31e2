"""Distributed ingest on a real local Ray cluster (loopback, 2 CPUs, started by the tests).

The same raster is ingested by this process alone and by Ray encoder actors; both must store the
same tiles with the same Ω/Φ. A worker killed mid-ingest is retried; a driver killed mid-ingest
leaves nothing half-visible and the next run completes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from geoloc.config import Settings
from geoloc.ingest import ingest
from tests.conftest import REPO, SAMPLE_RASTER
from tests.ingest.test_ingest_db import assert_consistent, db_state

ray = pytest.importorskip("ray")  # in the distributed extra, which CI installs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray cluster on 127.0.0.1 with 2 CPUs, for this module's in-process ingests."""
    from geoloc.ingest.distributed import NAMESPACE

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace=NAMESPACE,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def small_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands of two tile rows, so the sample raster spans several bands and both actors."""
    monkeypatch.setattr("geoloc.ingest.distributed.BAND_TILES", 16)


def stored(
    database: Any, settings: Settings, enc: Any, orthomosaic_id: int, *, omega: bool = True
) -> dict[str, Any]:
    """Per grid cell of one orthomosaic: its window, Φ (database) and Ω (FAISS index; None
    without ``omega``, a store that keeps no Ω index)."""
    from geoloc.store import OmegaIndex

    with database.session() as s:
        rows = s.execute(
            text(
                "SELECT t.id, t.row, t.col, e.phi::text FROM tiles t "
                "JOIN tile_embeddings e ON e.tile_id = t.id "
                "WHERE t.orthomosaic_id = :oid ORDER BY t.id"
            ),
            {"oid": orthomosaic_id},
        ).all()
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    return {
        "cells": [(int(r[1]), int(r[2])) for r in rows],
        "phi": np.asarray([np.fromstring(r[3].strip("[]"), sep=",") for r in rows]),
        "omega": OmegaIndex.open(settings, enc.weights_sha256)._reconstruct(ids) if omega else None,
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Same cells in the same (tile id) order, Ω and Φ within 1e-4."""
    assert a["cells"] == b["cells"]
    np.testing.assert_allclose(a["omega"], b["omega"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(a["phi"], b["phi"], atol=1e-4, rtol=0)


def test_ray_ingest_matches_single_process(
    ray_local: None,
    small_bands: None,
    pg_settings: Settings,
    database: Any,
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (local,) = ingest([SAMPLE_RASTER], encoder=encoder, settings=pg_settings, progress=False)
    assert local.status == "ingested", local.message
    want = stored(database, pg_settings, encoder, int(local.id or 0))

    (dist,) = ingest(
        [SAMPLE_RASTER],
        encoder=encoder,
        settings=pg_settings,
        progress=False,
        force=True,
        cluster="auto",
        workers=2,
    )
    assert dist.status == "ingested", dist.message
    assert (dist.tiles_kept, dist.tiles_skipped) == (local.tiles_kept, local.tiles_skipped)
    assert dist.id != local.id  # --force replaced it
    assert_same(want, stored(database, pg_settings, encoder, int(dist.id or 0)))
    assert_consistent(db_state(database, pg_settings, encoder), monkeypatch, pg_settings)


@pytest.mark.default_omega
def test_ray_ingest_without_omega_index_sends_no_omega_and_matches(
    ray_local: None,
    small_bands: None,
    pg_settings: Settings,
    database: Any,
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store without an Ω index (the product default): the actors return no Ω (it would be
    most of what crosses the object store), and the rows match the single-process ingest."""
    from geoloc.ingest import distributed

    sent: list[tuple[int, ...]] = []
    real = distributed.write_bands

    def spy(source: Any, *a: Any, **k: Any) -> int:
        def seen() -> Any:
            for band, pos in source:
                sent.append(tuple(band.omega.shape))
                yield band, pos

        return real(seen(), *a, **k)

    monkeypatch.setattr(distributed, "write_bands", spy)

    (local,) = ingest([SAMPLE_RASTER], encoder=encoder, settings=pg_settings, progress=False)
    assert local.status == "ingested", local.message
    want = stored(database, pg_settings, encoder, int(local.id or 0), omega=False)  # before --force
    (dist,) = ingest(
        [SAMPLE_RASTER],
        encoder=encoder,
        settings=pg_settings,
        progress=False,
        force=True,
        cluster="auto",
        workers=2,
    )
    assert dist.status == "ingested", dist.message
    assert sent and all(len(shape) == 2 and shape[1] == 0 for shape in sent)

    got = stored(database, pg_settings, encoder, int(dist.id or 0), omega=False)
    assert got["cells"] == want["cells"] and len(want["cells"]) == local.tiles_kept
    np.testing.assert_allclose(got["phi"], want["phi"], atol=1e-4, rtol=0)


class _KillWorkerOnFirstBand(logging.Handler):
    """Kill encoder actor 0 with SIGKILL when the driver logs its first encoded band."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.killed: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        from geoloc.ingest.distributed import ACTOR_NAME, NAMESPACE

        if self.killed is None and "encoded" in record.getMessage():
            actor = ray.get_actor(ACTOR_NAME.format(0), namespace=NAMESPACE)
            self.killed = int(ray.get(actor.pid.remote()))
            os.kill(self.killed, signal.SIGKILL)


def test_killed_worker_is_retried_and_the_result_is_identical(
    ray_local: None,
    small_bands: None,
    pg_settings: Settings,
    database: Any,
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (local,) = ingest([SAMPLE_RASTER], encoder=encoder, settings=pg_settings, progress=False)
    want = stored(database, pg_settings, encoder, int(local.id or 0))

    killer = _KillWorkerOnFirstBand()
    logger = logging.getLogger("geoloc.ingest")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(killer)
    try:
        (dist,) = ingest(
            [SAMPLE_RASTER],
            encoder=encoder,
            settings=pg_settings,
            progress=False,
            force=True,
            cluster="auto",
            workers=2,
        )
    finally:
        logger.removeHandler(killer)
        logger.setLevel(old_level)
    assert killer.killed is not None, "the worker was never killed"
    assert _gone(killer.killed), "the killed worker is still running"  # it really died
    assert dist.status == "ingested", dist.message
    assert_same(want, stored(database, pg_settings, encoder, int(dist.id or 0)))
    assert_consistent(db_state(database, pg_settings, encoder), monkeypatch, pg_settings)


def _gone(pid: int, timeout_s: float = 30.0) -> bool:
    """True once ``pid`` has exited (no such process, or a zombie its parent has not reaped yet)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.2)
    return False


def _cli(settings: Settings, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.update(
        GEOLOC_HOME=str(settings.home),
        GEOLOC_DATABASE_URL=str(settings.database_url),
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    cmd = [sys.executable, "-m", "geoloc.cli.main", "--debug", "ingest", *args, "--no-progress"]
    # Its own session: the Ray processes it starts are then ended with it, by group id.
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_killed_driver_leaves_nothing_half_visible_and_the_next_run_completes(
    pg_settings: Settings, database: Any, encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver (a ``geoloc ingest --cluster auto`` subprocess) is killed after its first
    committed batch; the raster must not be visible, and a second run ingests it whole."""
    args = (str(SAMPLE_RASTER), "--gsd", "0.28", "--cluster", "auto", "--workers", "2")
    proc = _cli(pg_settings, *args)
    seen = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "tiles written" in line:
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert seen.wait(timeout=240), "the driver never wrote a batch"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        time.sleep(1.0)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    st = db_state(database, pg_settings, encoder)
    assert [o.status for o in st["orthos"]] == ["ingesting"]  # begun, never complete
    assert st["complete_ids"].size == 0
    np.testing.assert_array_equal(st["faiss_ids"], st["complete_ids"])  # nothing searchable

    proc = _cli(pg_settings, *args)
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err[-2000:]
    st = db_state(database, pg_settings, encoder)
    assert [o.status for o in st["orthos"]] == ["complete"]
    assert st["complete_ids"].size == st["orthos"][0].tiles_kept > 0
    assert_consistent(st, monkeypatch, pg_settings)


@pytest.mark.parametrize("bad", ["local", "ray://nohost", "ray://:1", "http://h:1"])
def test_bad_cluster_is_one_clear_error(bad: str, pg_settings: Settings) -> None:
    from geoloc.errors import IngestError

    with pytest.raises(IngestError, match="--cluster must be 'auto' or 'ray://HOST:PORT'"):
        ingest([SAMPLE_RASTER], settings=pg_settings, progress=False, cluster=bad)


def test_bands_cover_the_grid_in_order() -> None:
    from geoloc.ingest.distributed import band_rows
    from tiling import TilingPolicy, open_raster

    with open_raster(SAMPLE_RASTER) as r:
        cfg, _ = TilingPolicy(tile_size=224).resolve(r)
        grid = r.grid(cfg)
    bands = band_rows(grid, band_tiles=3 * int(grid.cols) - 1)
    assert [r for b in bands for r in range(*b)] == list(range(int(grid.rows)))
    assert all(b[1] - b[0] == 3 for b in bands[:-1])
