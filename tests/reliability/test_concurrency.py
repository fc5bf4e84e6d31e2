"""Concurrency: ``locate`` while an ingest runs answers from the last complete state; several
``locate`` processes at once all answer. (Two concurrent ingests: tests/ingest/test_crash.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geoloc.config import Settings
from tests.conftest import REPO
from tests.reliability.conftest import (
    FRAME_CENTRE,
    FRAME_PX,
    Result,
    crop_sample,
    env_for,
    sample_view,
    snapshot,
    start_ingest,
)

#: A second crop east of the base one (sample columns 1500..2100): not ingested in ``base``.
EAST = (1500, 150, 600, 800)
EAST_CENTRE = (1800.0, 560.0)


def _jpeg(path: Path, cx: float, cy: float, heading: float = 0.0) -> Path:
    from PIL import Image

    Image.fromarray(sample_view(cx, cy, FRAME_PX, heading)).save(path, quality=92)
    return path


def _ortho_statuses(settings: Settings) -> list[str]:
    return [s for _, s in snapshot(settings)["statuses"]]


def test_locate_during_an_ingest_answers_from_the_last_complete_state(
    clone: Callable[[], Settings], cli: Callable[..., Result], tmp_path: Path
) -> None:
    """The worst moment of an ingest: its tiles are in the database and its Ω in the saved FAISS
    index (which ``locate`` re-opens), but the orthomosaic is not ``complete`` yet. The test holds
    the row lock that the final status UPDATE needs, so the ingest waits exactly there."""
    from sqlalchemy import text

    from geoloc.store import OmegaIndex, open_database
    from geoloc.store import repository as repo

    settings = clone()
    base_ids = set(snapshot(settings)["faiss:sgmnet"])
    east = crop_sample(tmp_path / "east.tif", *EAST)
    f_base = _jpeg(tmp_path / "base.jpg", *FRAME_CENTRE)
    f_east = _jpeg(tmp_path / "east.jpg", *EAST_CENTRE)
    db = open_database(settings)
    (enc,) = [e for e in repo.list_encoders(db) if e.name == "sgmnet"]
    conn = db.engine.connect()
    run = None
    try:
        tx = conn.begin()
        # every existing orthomosaic row, and the new one as soon as the ingest commits it
        run = start_ingest(settings, east)
        deadline = time.monotonic() + 120
        locked = 0
        while locked == 0:
            assert run.proc.poll() is None and time.monotonic() < deadline, run.stderr
            locked = len(
                conn.execute(
                    text(
                        "SELECT id FROM orthomosaics WHERE status = 'ingesting' "
                        "FOR NO KEY UPDATE"  # blocks the final UPDATE, not the tiles' FK checks
                    )
                ).all()
            )
        while len(OmegaIndex.open(settings, enc.weights_sha256).ids()) <= len(base_ids):
            assert run.proc.poll() is None and time.monotonic() < deadline, run.stderr
            time.sleep(0.2)  # the ingest saved FAISS and now waits for the status UPDATE
        assert "ingesting" in _ortho_statuses(settings)
        res = cli(settings, "locate", str(f_base), str(f_east), "--preset", "fast")
        assert res.code in (0, 3), res.err
        answers = [json.loads(x) for x in res.out.splitlines()]
        assert "ingesting" in _ortho_statuses(settings)  # the whole call ran at that moment
        assert answers[0]["status"] == "ok"
        for a in answers:
            ids = {c["tile_id"] for c in a["candidates"]} | {a["tile_id"]}
            assert ids <= base_ids, (a["frame"], ids - base_ids)  # nothing of the unfinished raster
        tx.rollback()  # release the lock: the ingest completes
        out = run.finish()
    finally:
        conn.close()
        db.dispose()
        if run is not None and run.proc.poll() is None:
            run.proc.kill()
            run.finish()
    assert run.proc.returncode == 0, run.stderr
    assert _ortho_statuses(settings) == ["complete", "complete"]
    assert snapshot(settings)["verify:sgmnet"] is True
    (new,) = [r for r in json.loads(out)]
    res = cli(settings, "locate", str(f_east), "--preset", "fast")
    (a,) = [json.loads(x) for x in res.out.splitlines()]
    assert a["tile_id"] not in base_ids and new["status"] == "ingested"  # now it is answered


@pytest.mark.slow
def test_eight_locate_processes_in_parallel(base: Any, tmp_path: Path) -> None:
    """8 processes x 2 frames (fast preset): all answer, every frame located."""
    frames = [
        _jpeg(tmp_path / f"f{i}.jpg", FRAME_CENTRE[0] + 40 * (i - 1), FRAME_CENTRE[1], 90.0 * i)
        for i in range(3)
    ]
    env = env_for(base.settings)
    procs = []
    t0 = time.monotonic()
    for i in range(8):
        args = [str(frames[i % 3]), str(frames[(i + 1) % 3])]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "geoloc.cli.main", "-q", "locate", *args]
                + ["--gsd", "0.28", "--preset", "fast"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate(timeout=300) for p in procs]
    wall = time.monotonic() - t0
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
        rows = [json.loads(x) for x in out.splitlines()]
        assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
    print(f"8 locate processes x 2 frames: {wall:.1f} s wall")
