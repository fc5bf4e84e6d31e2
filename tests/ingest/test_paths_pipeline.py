"""Pure parts of ingest: path expansion, hashing, tiling defaults, the reader/writer threads."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from geoloc.ingest import (
    DEFAULT_GSD_M,
    IngestError,
    expand_paths,
    policy_for,
    sha256_file,
)
from geoloc.ingest.pipeline import BackgroundWorker, Prefetcher


def _touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_expand_files_directories_globs(tmp_path: Path) -> None:
    a = _touch(tmp_path / "a.tif")
    b = _touch(tmp_path / "sub" / "deep" / "b.TIFF")
    c = _touch(tmp_path / "sub" / "c.vrt")
    _touch(tmp_path / "sub" / "notes.txt")
    _touch(tmp_path / "sub" / ".hidden.tif")
    odd = _touch(tmp_path / "we'ird; DROP TABLE tiles; --ü.tif")
    rasters, problems = expand_paths([tmp_path / "sub", str(tmp_path / "*.tif"), a])
    assert problems == []
    assert rasters == [c.resolve(), b.resolve(), a.resolve(), odd.resolve()]
    # A recursive glob finds the nested one; an explicit file of any extension is accepted.
    txt = tmp_path / "sub" / "notes.txt"
    rasters, problems = expand_paths([str(tmp_path / "**" / "*.TIFF"), txt])
    assert rasters == [b.resolve(), txt.resolve()] and problems == []


def test_expand_reports_problems_and_keeps_going(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _touch(empty / "readme.md")
    good = _touch(tmp_path / "good.tif")
    rasters, problems = expand_paths(
        [empty, tmp_path / "missing.tif", str(tmp_path / "nothing*.tif"), good]
    )
    assert rasters == [good.resolve()]
    msgs = {p.path: p.message for p in problems}
    assert "contains no raster" in msgs[str(empty)]
    assert msgs[str(tmp_path / "missing.tif")] == "no such file or directory"
    assert "matches no raster" in msgs[str(tmp_path / "nothing*.tif")]


def test_sha256_streams_large_files(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 2 chunks of 1 MiB
    p = _touch(tmp_path / "big.tif", data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    assert sha256_file(_touch(tmp_path / "empty.tif", b"")) == hashlib.sha256(b"").hexdigest()


def test_ingest_options_make_the_tiling_policy() -> None:
    # Half-tile stride by default; the GSD is the policy's choice unless given (see
    # tests/tiling/test_policy.py for the choice itself); bad options name themselves.
    p = policy_for(224, None, None, 0.5)
    assert (p.gsd, p.step, p.default_gsd_m, p.min_valid) == (None, 112, DEFAULT_GSD_M, 0.5)
    p = policy_for(224, 0.3, 50, 0.25)
    assert (p.gsd, p.step, p.min_valid) == (0.3, 50, 0.25)
    with pytest.raises(IngestError, match="--gsd"):
        policy_for(224, -1.0, None, 0.5)
    with pytest.raises(IngestError, match="--stride"):
        policy_for(224, None, 0, 0.5)
    with pytest.raises(IngestError, match="--min-valid"):
        policy_for(224, None, None, 1.5)


def test_prefetcher_yields_in_order_and_runs_ahead() -> None:
    produced: list[int] = []

    def source():  # type: ignore[no-untyped-def]
        for i in range(20):
            produced.append(i)
            yield i

    with Prefetcher(source(), maxsize=3) as pf:
        it = iter(pf)
        assert next(it) == 0
        time.sleep(0.3)
        # The thread filled the bounded queue ahead of the consumer, but not beyond it.
        assert 3 <= len(produced) <= 6
        assert list(it) == list(range(1, 20))


def test_prefetcher_reraises_source_errors() -> None:
    def source():  # type: ignore[no-untyped-def]
        yield 1
        raise ValueError("bad pixels")

    with Prefetcher(source()) as pf, pytest.raises(ValueError, match="bad pixels"):
        list(pf)


def test_prefetcher_stops_when_consumer_leaves_early() -> None:
    def endless():  # type: ignore[no-untyped-def]
        i = 0
        while True:
            yield i
            i += 1

    pf = Prefetcher(endless(), maxsize=2, name="test-reader")
    with pf:
        for x in pf:
            if x == 5:
                break
    assert not any(t.name == "test-reader" for t in threading.enumerate())


def test_background_worker_order_and_errors() -> None:
    seen: list[int] = []
    with BackgroundWorker(seen.append, maxsize=2) as w:
        for i in range(10):
            w.submit(i)
        w.join()
    assert seen == list(range(10))

    def fail(x: int) -> None:
        if x == 3:
            raise RuntimeError("disk full")

    w2: BackgroundWorker[int] = BackgroundWorker(fail, maxsize=1)
    with pytest.raises(RuntimeError, match="disk full"), w2:
        for i in range(50):
            w2.submit(i)
        w2.join()


def test_background_worker_abort_drops_pending() -> None:
    done: list[int] = []

    def slow(x: int) -> None:
        time.sleep(0.05)
        done.append(x)

    w: BackgroundWorker[int] = BackgroundWorker(slow, maxsize=5)
    with pytest.raises(KeyboardInterrupt), w:
        for i in range(5):
            w.submit(i)
        raise KeyboardInterrupt
    assert len(done) < 5


def _burn(n: int) -> int:
    """CPU work (no sleep): a sum over ``n`` integers in Python."""
    return sum(i * i for i in range(n))


def test_threads_report_their_own_cpu_time() -> None:
    # The reader and the writer burn CPU in their threads; the main thread burns more in its
    # own. Each reports its thread's CPU: some, and less than the process spent.
    def source():  # type: ignore[no-untyped-def]
        for i in range(4):
            _burn(200_000)
            yield i

    c0, m0 = time.process_time(), time.thread_time()
    with Prefetcher(source(), maxsize=1) as pf, BackgroundWorker(_burn, maxsize=1) as w:
        for _ in pf:
            _burn(1_000_000)
            w.submit(200_000)
        w.join()
    main_cpu, process_cpu = time.thread_time() - m0, time.process_time() - c0
    assert 0 < pf.cpu_s < main_cpu and 0 < w.cpu_s < main_cpu
    assert pf.cpu_s + w.cpu_s + main_cpu <= process_cpu + 0.05
