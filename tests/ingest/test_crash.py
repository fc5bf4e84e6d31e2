"""``geoloc ingest`` subprocesses: SIGKILL at random points, and two ingests at once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from tests.conftest import REPO
from tests.ingest.test_ingest_db import db_state, expected_tiles, run_cli

MARKER = "ingesting "  # the INFO line ingest logs once it holds the lock and begins a raster


class Run:
    """A ``geoloc ingest`` subprocess whose stderr is read line by line in a thread."""

    def __init__(self, settings: Settings, *args: str) -> None:
        env = dict(os.environ)
        env.update(
            GEOLOC_HOME=str(settings.home),
            GEOLOC_DATABASE_URL=str(settings.database_url),
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        cmd = [sys.executable, "-m", "geoloc.cli.main", "ingest", *args, "--no-progress"]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.started = threading.Event()
        self.started_at = 0.0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if MARKER in line and not self.started.is_set():
                self.started_at = time.monotonic()
                self.started.set()

    def wait(self, timeout: float = 120.0) -> tuple[int, str]:
        """Exit code and stdout."""
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(timeout=5)
        return self.proc.returncode, out

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def _assert_never_partial(database: Any, settings: Settings, enc_sha: str, expected: int) -> None:
    """After a crash: a complete orthomosaic always has all its tiles."""
    from geoloc.store import repository as repo

    enc_row = repo.find_encoder(database, enc_sha)
    if enc_row is None:
        return
    for o in repo.list_orthomosaics(database, enc_row.id):
        if o.status == "complete":
            assert o.tiles_kept == expected


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = expected_tiles(crops["a"], encoder)
    # A clean run of a same-sized raster times the window between the marker and the exit.
    ref = Run(pg_settings, str(crops["b"]), "--batch-size", "2")
    code, out = ref.wait()
    assert code == 0, ref.stderr
    window = time.monotonic() - ref.started_at
    assert json.loads(out)[0]["status"] == "ingested"

    rng = random.Random(20261124)
    killed = 0
    delays = []
    for _ in range(5):
        run = Run(pg_settings, str(crops["a"]), "--batch-size", "2")
        assert run.started.wait(timeout=90), run.stderr
        delay = rng.uniform(0.0, window)
        time.sleep(delay)
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGKILL)
            killed += 1
        delays.append(round(delay, 2))
        run.wait()
        _assert_never_partial(database, pg_settings, encoder.weights_sha256, expected)
    assert killed >= 4, f"most runs should die before finishing (delays {delays})"

    final = Run(pg_settings, str(crops["a"]), "--batch-size", "2")
    code, out = final.wait()
    assert code == 0, final.stderr
    (res,) = json.loads(out)
    assert res["status"] in ("ingested", "skipped")
    assert res["tiles_kept"] == expected
    st = db_state(database, pg_settings, encoder)
    assert sorted(o.status for o in st["orthos"]) == ["complete", "complete"]
    assert len(st["complete_ids"]) == expected + expected_tiles(crops["b"], encoder)
    np.testing.assert_array_equal(st["faiss_ids"], st["complete_ids"])
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 0


@pytest.mark.slow
def test_two_concurrent_ingests_serialise(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = Run(pg_settings, str(crops["a"]), "--batch-size", "4")
    b = Run(pg_settings, str(crops["b"]), "--batch-size", "4")
    (code_a, out_a), (code_b, out_b) = a.wait(), b.wait()
    assert code_a == 0, a.stderr
    assert code_b == 0, b.stderr
    assert json.loads(out_a)[0]["status"] == json.loads(out_b)[0]["status"] == "ingested"
    st = db_state(database, pg_settings, encoder)
    assert len(st["orthos"]) == 2 and all(o.status == "complete" for o in st["orthos"])
    n = expected_tiles(crops["a"], encoder) + expected_tiles(crops["b"], encoder)
    assert len(st["complete_ids"]) == len(set(st["complete_ids"].tolist())) == n
    np.testing.assert_array_equal(st["faiss_ids"], st["complete_ids"])
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 0
