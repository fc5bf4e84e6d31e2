"""Faults: FAISS files deleted or truncated, database unreachable, embedded Postgres killed,
disk full while saving the index. Each ends in a clear one-line error or a recovery, and the
data ingested before the fault is never lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from tests.reliability.conftest import (
    CROP,
    FRAME_CENTRE,
    FRAME_PX,
    Base,
    Result,
    crop_sample,
    run_sub,
    sample_view,
    snapshot,
    start_ingest,
)


@pytest.fixture(scope="module")
def frame(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain JPEG view inside the ingested crop."""
    from PIL import Image

    p = tmp_path_factory.mktemp("fault-frame") / "frame.jpg"
    Image.fromarray(sample_view(*FRAME_CENTRE, FRAME_PX)).save(p, quality=92)
    return p


def _index_dir(settings: Settings, encoder: Any) -> Path:
    from geoloc.store import OmegaIndex

    return OmegaIndex.path_for(settings, encoder.weights_sha256)


def _locate(
    cli: Callable[..., Result], settings: Settings, frame: Path, preset: str = "fast"
) -> Result:
    return cli(settings, "locate", str(frame), "--gsd", "0.28", "--preset", preset)


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_damaged_faiss_index_says_rebuild_and_rebuild_restores_it(
    clone: Callable[[], Settings],
    encoder: Any,
    frame: Path,
    cli: Callable[..., Result],
    damage: str,
) -> None:
    import shutil

    settings = clone()
    before = snapshot(settings)
    # `seed` recalls by Ω, so it reads the FAISS index; the other presets search Φ in Postgres
    ok = _locate(cli, settings, frame, "seed")
    assert ok.code == 0, ok.err
    answer = json.loads(ok.out)
    d = _index_dir(settings, encoder)
    if damage == "deleted":
        shutil.rmtree(d)
    else:
        (faiss_file,) = d.glob("omega.*.faiss")
        data = faiss_file.read_bytes()
        faiss_file.write_bytes(data[: len(data) // 2])
    res = _locate(cli, settings, frame, "seed")
    assert res.code == 1 and res.out == "", (res.out, res.err)
    (line,) = res.err_lines
    assert line.startswith("geoloc: error: ") and "geoloc index rebuild" in line, line
    assert "Traceback" not in res.err
    phi = _locate(cli, settings, frame)  # Φ recall does not need the Ω index
    assert phi.code == 0 and json.loads(phi.out)["status"] == "ok", phi.err
    verify = cli(settings, "index", "verify")
    assert verify.code == 1 and "geoloc index rebuild" in verify.err, verify.err
    rebuilt = cli(settings, "index", "rebuild")
    assert rebuilt.code == 0, rebuilt.err
    assert json.loads(rebuilt.out)["ok"] is True
    assert snapshot(settings) == before  # same rows, same FAISS ids, verify passes
    again = _locate(cli, settings, frame, "seed")
    assert again.code == 0, again.err
    fixed = json.loads(again.out)
    assert fixed["tile_id"] == answer["tile_id"]
    assert fixed["lat"] == pytest.approx(answer["lat"], abs=1e-6)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: nothing listens there


@pytest.mark.parametrize("command", ["locate", "ingest", "index verify", "db status"])
def test_unreachable_database_is_clear_fast_and_masks_the_password(
    tmp_path: Path, frame: Path, base: Base, cli: Callable[..., Result], command: str
) -> None:
    port = _closed_port()
    url = f"postgresql+psycopg2://geoloc:s3cr%40t-pw@127.0.0.1:{port}/geoloc"
    settings = Settings(home=tmp_path / "home", database_url=url)
    args = {
        "locate": ["locate", str(frame)],
        "ingest": ["ingest", str(base.raster), "--no-progress"],
        "index verify": ["index", "verify"],
        "db status": ["db", "status"],
    }[command]
    t0 = time.monotonic()
    res = cli(settings, *args)
    elapsed = time.monotonic() - t0
    assert elapsed < 10.0, elapsed
    assert "s3cr" not in res.err and "s3cr" not in res.out and "%40t" not in res.err
    if command == "db status":  # a status report by design: exit 0, reachable false, masked
        st = json.loads(res.out)
        assert res.code == 0 and st["reachable"] is False and "Connection refused" in st["error"]
        assert st["url"] == f"postgresql+psycopg2://geoloc:***@127.0.0.1:{port}/geoloc"
        return
    assert res.code == 1, (res.out, res.err)
    errors = [x for x in res.err_lines if x.startswith("geoloc: error: ")]
    assert len(errors) == 1, res.err
    assert "Traceback" not in res.err and "internal error" not in res.err
    assert f"127.0.0.1:{port}" in errors[0] and "***" in errors[0], errors[0]


def test_embedded_postgres_killed_while_idle_recovers_without_loss(
    tmp_path: Path, encoder: Any, cli: Callable[..., Result]
) -> None:
    """SIGKILL of the embedded postmaster between two commands: the next command restarts it
    (stale pid file / holder list) and every ingested tile is still there."""
    from geoloc.ingest import ingest
    from geoloc.store import embedded

    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"geoloc-rel-emb-{os.getpid()}"
    settings = Settings(home=home, database_url=None)
    raster = crop_sample(tmp_path / "small.tif", CROP[0], CROP[1], 500, 450)
    try:
        (res,) = ingest([raster], encoder=encoder, settings=settings, progress=False)
        assert res.status == "ingested" and res.tiles_kept > 0, res.message
        before = snapshot(settings)
        assert before["tiles"] == res.tiles_kept and before["verify:sgmnet"] is True
        pid = embedded.status(settings).pid
        assert pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while embedded.status(settings).running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not embedded.status(settings).running
        # the next command (a new process; this one still holds the server) restarts it
        verify = run_sub(settings, "index", "verify")
        assert verify.code == 0, verify.err
        assert json.loads(verify.out)["ok"] is True
        assert "Traceback" not in verify.err
        assert snapshot(settings) == before
    finally:
        try:
            embedded.stop(settings)
        finally:
            import shutil

            shutil.rmtree(home, ignore_errors=True)


def test_embedded_postgres_killed_recovers_in_the_same_process() -> None:
    """A long-lived process (notebook, service) using the library: the server dies under it;
    the next open_database should restart it as a new process does."""
    import shutil

    from geoloc.store import embedded, open_database

    home = Path("/tmp") / f"geoloc-rel-emb2-{os.getpid()}"
    settings = Settings(home=home, database_url=None)
    try:
        open_database(settings).dispose()
        pid = embedded.status(settings).pid
        assert pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while embedded.status(settings).running and time.monotonic() < deadline:
            time.sleep(0.1)
        open_database(settings).dispose()
    finally:
        try:
            embedded.stop(settings)
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _live_files(d: Path) -> dict[str, bytes]:
    meta = json.loads((d / "meta.json").read_text())
    names = ["meta.json"]
    for v in meta["files"].values():  # refine code segments are a list
        names += v if isinstance(v, list) else [v]
    return {n: (d / n).read_bytes() for n in names}


def _fail_index_write(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    def full(index: Any, path: str) -> None:
        Path(path).write_bytes(b"\0" * 4096)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(faiss, "write_index", full)


def test_failed_save_leaves_no_orphan_files(
    clone: Callable[[], Settings], encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a full disk, the files written for the failed generation should be removed."""
    from geoloc.store import OmegaIndex

    settings = clone()
    d = _index_dir(settings, encoder)
    names = sorted(p.name for p in d.iterdir())
    ix = OmegaIndex.open(settings, encoder.weights_sha256, create=False, mmap=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, ix.omega_dim)).astype(np.float32)
    ix.add(np.array([10_001, 10_002, 10_003]), x / np.linalg.norm(x, axis=1, keepdims=True))
    _fail_index_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        ix.save()
    assert sorted(p.name for p in d.iterdir()) == names


def test_disk_full_while_saving_the_index_keeps_the_previous_one(
    clone: Callable[[], Settings],
    encoder: Any,
    cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """ENOSPC from the FAISS writer during an ingest: the raster fails, the previous index
    and the database are exactly as before, and the next ingest succeeds."""
    import faiss

    settings = clone()
    before = snapshot(settings)
    d = _index_dir(settings, encoder)
    live_before = _live_files(d)
    raster = crop_sample(tmp_path / "more.tif", 0, 0, 500, 450)
    real_write = faiss.write_index
    _fail_index_write(monkeypatch)
    res = cli(settings, "ingest", str(raster), "--no-progress")
    assert res.code == 1, (res.out, res.err)
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    assert "No space left on device" in res.out + res.err
    monkeypatch.setattr(faiss, "write_index", real_write)
    assert snapshot(settings) == before
    assert _live_files(d) == live_before  # meta.json and the files it names, byte for byte
    again = cli(settings, "ingest", str(raster), "--no-progress")
    assert again.code == 0, again.err
    after = snapshot(settings)
    assert after["tiles"] > before["tiles"] and after["verify:sgmnet"] is True
    assert np.all(np.isin(before["faiss:sgmnet"], after["faiss:sgmnet"]))


def _stop_quietly(settings: Settings) -> None:
    """Stop the embedded server of ``settings`` whatever state a failed test left it in."""
    import contextlib

    from geoloc.store import embedded

    with contextlib.suppress(Exception):
        embedded.stop(settings)
    pid = embedded.status(settings).pid
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _kill_postmaster_during_ingest(
    tmp_path: Path, encoder: Any, check: Callable[[Settings, dict[str, Any], int, str], None]
) -> None:
    """Ingest a crop, then SIGKILL the embedded postmaster while another process ingests the
    whole sample; ``check(settings, before, exit_code, stderr)`` runs before the cleanup."""
    import shutil

    from geoloc.ingest import ingest
    from geoloc.store import embedded
    from tests.conftest import SAMPLE_RASTER

    home = Path("/tmp") / f"geoloc-rel-emb3-{os.getpid()}"
    settings = Settings(home=home, database_url=None)
    first = crop_sample(tmp_path / "first.tif", CROP[0], CROP[1], 500, 450)
    second = tmp_path / "second.tif"  # the whole sample: ~50 tiles, several batches
    shutil.copyfile(SAMPLE_RASTER, second)
    try:
        (res,) = ingest([first], encoder=encoder, settings=settings, progress=False)
        assert res.status == "ingested", res.message
        before = snapshot(settings)
        before["second"] = str(second)
        run = start_ingest(settings, second)
        pid = embedded.status(settings).pid
        assert pid
        os.kill(pid, signal.SIGKILL)
        run.finish()
        check(settings, before, int(run.proc.returncode), run.stderr)
    finally:
        _stop_quietly(settings)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_embedded_postgres_killed_while_ingesting_loses_nothing(
    tmp_path: Path, encoder: Any
) -> None:
    """The killed ingest fails (exit 1); the next command restarts the server; the first
    raster's rows and FAISS ids are intact; re-running the ingest completes, verify passes."""

    def check(settings: Settings, before: dict[str, Any], code: int, err: str) -> None:
        assert code == 1, err
        verify = run_sub(settings, "index", "verify")  # a new process restarts the server
        assert verify.code == 0, verify.err
        after = snapshot(settings)
        assert after["tiles"] >= before["tiles"]  # nothing ingested before the crash is lost
        assert set(before["faiss:sgmnet"]) <= set(after["faiss:sgmnet"])
        again = run_sub(settings, "ingest", before["second"], "--no-progress")
        assert again.code == 0, again.err
        final = snapshot(settings)
        assert [s for _, s in final["statuses"]] == ["complete", "complete"]
        assert final["verify:sgmnet"] is True
        assert set(before["faiss:sgmnet"]) <= set(final["faiss:sgmnet"])

    _kill_postmaster_during_ingest(tmp_path, encoder, check)


@pytest.mark.slow
def test_embedded_postgres_killed_while_ingesting_is_one_clear_line(
    tmp_path: Path, encoder: Any
) -> None:
    def check(settings: Settings, before: dict[str, Any], code: int, err: str) -> None:
        assert code == 1, err
        assert "internal error" not in err and "Traceback" not in err, err
        errors = [x for x in err.splitlines() if x.startswith("geoloc: error: ")]
        assert len(errors) >= 1 and "\n" not in errors[0], err
        assert "[SQL:" not in err, err

    _kill_postmaster_during_ingest(tmp_path, encoder, check)
