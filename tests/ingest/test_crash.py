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

import pytest

from geoloc.config import Settings
from geoloc.ingest import ingest
from tests.conftest import REPO
from tests.ingest.test_ingest_db import (
    assert_consistent,
    db_state,
    expected_tiles,
    run_cli,
)

MARKER = "ingesting "  # the INFO line ingest logs once it holds the lock and begins a raster
BATCH = "tiles written"  # the DEBUG line the writer logs after each committed batch


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Run:
    """A ``geoloc ingest`` subprocess whose stderr is read line by line in a thread."""

    def __init__(self, settings: Settings, *args: str, debug: bool = False) -> None:
        env = dict(os.environ)
        env.update(
            GEOLOC_HOME=str(settings.home),
            GEOLOC_DATABASE_URL=str(settings.database_url),
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        cmd = [sys.executable, "-m", "geoloc.cli.main", *(["--debug"] * debug), "ingest", *args]
        cmd.append("--no-progress")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A background shell may have left SIGINT ignored; Ctrl-C must reach the child.
            preexec_fn=_default_signals,  # noqa: PLW1509
        )
        self.lines: list[str] = []
        self.started = threading.Event()
        self.started_at = 0.0
        self.batches = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if BATCH in line:
                self.batches += 1
            if MARKER in line and not self.started.is_set():
                self.started_at = time.monotonic()
                self.started.set()

    def wait_started(self, timeout: float) -> bool:
        """True once the marker line is seen; False if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.started.wait(timeout=0.05):
                return True
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                return self.started.is_set()
        return False

    def wait_batches(self, n: int, timeout: float) -> bool:
        """True once ``n`` batches are written; False if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.batches >= n:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.01)
        return False

    def wait(self, timeout: float = 120.0) -> tuple[int, str]:
        """Exit code and stdout (stderr stays with the reader thread)."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()  # small: the JSON summary; EOF when the process ends
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code, out

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


def _complete(database: Any, path: Path, enc: Any) -> bool:
    from geoloc.ingest import sha256_file
    from geoloc.store import repository as repo

    enc_row = repo.find_encoder(database, enc.weights_sha256)
    if enc_row is None:
        return False
    o = repo.find_orthomosaic(database, sha256_file(path), enc_row.id)
    return o is not None and o.status == "complete"


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = expected_tiles(crops["a"], encoder)
    # Another complete orthomosaic that no crash may disturb.
    (other,) = ingest([crops["b"]], encoder=encoder, settings=pg_settings, progress=False)
    assert other.status == "ingested"
    # Kill points: right after the orthomosaic row is begun (k = 0) or after the k-th of the
    # 7 batches is committed (k = 1..6), each plus a random delay of up to 0.3 s, so the
    # kills land in tiling/encoding, in a COPY, in a FAISS add, and near the final save.
    rng = random.Random(20261124)
    points = sorted(rng.sample(range((expected + 1) // 2), 5))
    landed: list[str] = []
    for k in points:
        # When a run got through to the end anyway, the next one --forces a re-ingest.
        force = _complete(database, crops["a"], encoder)
        run = Run(
            pg_settings,
            str(crops["a"]),
            "--batch-size",
            "2",
            "--write-tiles",
            "2",
            *(["--force"] * force),
            debug=True,
        )
        assert run.wait_started(timeout=120), run.stderr[-2000:]
        assert run.wait_batches(k, timeout=120) or run.proc.poll() is not None
        time.sleep(rng.uniform(0.0, 0.3))
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGKILL)
            assert run.wait()[0] == -signal.SIGKILL
            landed.append(f"after batch {run.batches}")
        else:
            assert run.wait()[0] == 0, run.stderr[-2000:]
            landed.append("finished first")
        _assert_never_partial(database, pg_settings, encoder.weights_sha256, expected)
    assert sum(x != "finished first" for x in landed) >= 4, landed

    final = Run(pg_settings, str(crops["a"]), "--batch-size", "2", "--write-tiles", "2")
    code, out = final.wait()
    assert code == 0, final.stderr
    (res,) = json.loads(out)
    assert res["status"] in ("ingested", "skipped")
    assert res["tiles_kept"] == expected
    st = db_state(database, pg_settings, encoder)
    assert sorted(o.status for o in st["orthos"]) == ["complete", "complete"]
    assert len(st["complete_ids"]) == expected + other.tiles_kept
    assert_consistent(st, monkeypatch, pg_settings)


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
    assert_consistent(st, monkeypatch, pg_settings)


@pytest.mark.slow
def test_second_ingest_waits_for_the_lock_with_a_message(
    pg_settings: Settings, database: Any, crops: dict[str, Path], encoder: Any
) -> None:
    from geoloc.store import repository as repo

    with repo.ingest_lock(database):  # this test process plays the first ingest
        run = Run(pg_settings, str(crops["b"]), "--batch-size", "4")
        deadline = time.monotonic() + 120
        while "another ingest is running" not in run.stderr:
            assert run.proc.poll() is None, run.stderr
            assert time.monotonic() < deadline, run.stderr
            time.sleep(0.05)
        time.sleep(0.5)
        assert run.proc.poll() is None and not run.started.is_set()  # still waiting
        assert not repo.list_orthomosaics(database)
    code, out = run.wait()
    assert code == 0, run.stderr
    assert json.loads(out)[0]["status"] == "ingested"
    st = db_state(database, pg_settings, encoder)
    assert len(st["complete_ids"]) == expected_tiles(crops["b"], encoder)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_exits_cleanly_and_leaves_nothing(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
    signum: int,
    exit_code: int,
) -> None:
    """Ctrl-C (130) and SIGTERM (143, e.g. ``timeout``, systemd, Docker) roll the raster back."""
    run = Run(pg_settings, str(crops["a"]), "--batch-size", "2", "--write-tiles", "2", debug=True)
    assert run.wait_started(timeout=120), run.stderr[-2000:]
    assert run.wait_batches(2, timeout=120), run.stderr[-2000:]
    run.proc.send_signal(signum)
    code, out = run.wait()
    assert code == exit_code, run.stderr[-2000:]
    assert ("terminated" if signum == signal.SIGTERM else "interrupted") in run.stderr
    assert "Traceback" not in run.stderr
    st = db_state(database, pg_settings, encoder)
    assert st["orthos"] == [] and len(st["complete_ids"]) == 0
    assert st["faiss_ids"] is None or len(st["faiss_ids"]) == 0
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 0
