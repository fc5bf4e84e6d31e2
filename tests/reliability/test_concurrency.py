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
    settings = clone()
    base_ids = set(snapshot(settings)["faiss:sgmnet"])
    east = crop_sample(tmp_path / "east.tif", *EAST)
    f_base = _jpeg(tmp_path / "base.jpg", *FRAME_CENTRE)
    f_east = _jpeg(tmp_path / "east.jpg", *EAST_CENTRE)
    run = start_ingest(settings, east)
    proc = run.proc
    try:
        seen_ingesting = False
        answers: list[dict[str, Any]] = []
        while proc.poll() is None and len(answers) < 4:
            seen_ingesting |= "ingesting" in _ortho_statuses(settings)
            res = cli(settings, "locate", str(f_base), str(f_east), "--preset", "fast")
            assert res.code in (0, 3), res.err
            answers.extend(json.loads(x) for x in res.out.splitlines())
            if proc.poll() is None:
                seen_ingesting |= "ingesting" in _ortho_statuses(settings)
    finally:
        out = run.finish()
    assert proc.returncode == 0, run.stderr
    assert seen_ingesting, "the ingest finished before any locate overlapped it"
    overlapped = answers[:2]  # the first locate ran while the ingest was in progress
    assert overlapped[0]["status"] == "ok"
    for a in overlapped:
        ids = {c["tile_id"] for c in a["candidates"]} | {a["tile_id"]}
        assert ids <= base_ids, (a["frame"], ids - base_ids)  # nothing of the unfinished raster
    after = snapshot(settings)
    assert _ortho_statuses(settings) == ["complete", "complete"]
    assert after["verify:sgmnet"] is True
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
