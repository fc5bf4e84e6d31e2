"""Fixtures of the reliability tests: one small real ingest, cheap clones of it, CLI runners.

``base`` ingests a 1000 x 800 px crop of the bundled Turku sample (0.28 m/px) once per session
into its own database and GEOLOC_HOME. Tests that only read use it directly; tests that break
things get a ``clone``: ``CREATE DATABASE ... TEMPLATE <base>`` plus a copy of the FAISS
directory (~0.3 s, no re-encoding).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from tests.conftest import REPO, SAMPLE_RASTER, crop_sample

#: The ingested crop of the sample: (col_off, row_off, width, height) in sample pixels.
CROP = (500, 150, 1000, 800)
#: Frame centres (sample pixels) well inside the crop, and the frame side in sample pixels.
FRAME_CENTRE = (1000.0, 560.0)
FRAME_PX = 400  # 112 m at 0.28 m/px: one tile of ground at the ingest GSD (224 px x 0.5 m)
GSD = 0.28

_clone_counter = itertools.count()


def sample_view(cx: float, cy: float, size: int, heading_deg: float = 0.0) -> np.ndarray:
    """A ``size`` px square view of the sample centred on source pixel (cx, cy), image-up at
    ``heading_deg`` clockwise from north, at the sample's resolution."""
    from tests.localize.views import sample_rgb, view

    return view(sample_rgb(), cx, cy, size, heading_deg=heading_deg)


def truth_lonlat(cx: float, cy: float) -> tuple[float, float]:
    """lon/lat of source pixel (cx, cy) of the sample (pixel-centre convention)."""
    import rasterio
    from pyproj import Transformer

    with rasterio.open(SAMPLE_RASTER) as ds:
        x, y = ds.transform @ (cx + 0.5, cy + 0.5)
        tr = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(x, y)
    return float(lon), float(lat)


@dataclass
class Base:
    """The session's ingested state: database name, settings and the crop's path."""

    dbname: str
    settings: Settings
    raster: Path
    tiles: int


@pytest.fixture(scope="session")
def encoder() -> Any:
    """The default encoder, loaded once per session and optimised for inference."""
    from geoloc.models import load_encoder

    enc = load_encoder("sgmnet")
    enc.optimize_for_inference()
    return enc


def _terminate(pg_server: Any, dbname: str) -> None:
    """Close every connection to ``dbname`` (a template must have none)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_server.admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": dbname},
            )
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def base(pg_server: Any, encoder: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    """A database + GEOLOC_HOME holding the ingested crop (``CROP`` of the sample)."""
    from geoloc.ingest import ingest

    d = tmp_path_factory.mktemp("rel-base")
    raster = crop_sample(d / "rasters" / "turku crop.tif", *CROP)
    name = pg_server.create_database()
    settings = Settings(home=d / "home", database_url=pg_server.url_for(name))
    (res,) = ingest([raster], encoder=encoder, settings=settings, progress=False)
    assert res.status == "ingested", res.message
    _terminate(pg_server, name)
    try:
        yield Base(name, settings, raster, res.tiles_kept)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def clone(pg_server: Any, base: Base, tmp_path: Path) -> Iterator[Callable[[], Settings]]:
    """Factory of writable copies of ``base`` (database + FAISS directory)."""
    made: list[str] = []

    def make() -> Settings:
        name = f"geoloc_rel_{os.getpid()}_{next(_clone_counter)}"
        _terminate(pg_server, base.dbname)
        pg_server._admin(f'CREATE DATABASE "{name}" TEMPLATE "{base.dbname}"')
        made.append(name)
        home = tmp_path / name
        shutil.copytree(base.settings.home, home)
        return Settings(home=home, database_url=pg_server.url_for(name))

    try:
        yield make
    finally:
        for name in made:
            pg_server.drop_database(name)


# -------------------------------------------------------------------------------------- state
COUNTS_SQL = (
    "SELECT (SELECT count(*) FROM encoders) AS encoders,"
    " (SELECT count(*) FROM orthomosaics) AS orthomosaics,"
    " (SELECT count(*) FROM tiles) AS tiles,"
    " (SELECT count(*) FROM tile_embeddings) AS tile_embeddings"
)


def snapshot(settings: Settings) -> dict[str, Any]:
    """Row counts of every table, the max tile id, FAISS ids and `index verify` of each encoder."""
    from sqlalchemy import text

    from geoloc.store import OmegaIndex, open_database
    from geoloc.store import repository as repo
    from geoloc.store.maintenance import verify_index

    db = open_database(settings)
    try:
        out: dict[str, Any] = {}
        with db.engine.connect() as conn:
            counts = conn.execute(text(COUNTS_SQL)).one()
            out.update(counts._asdict())
            out["statuses"] = sorted(
                (r.path, r.status)
                for r in conn.execute(text("SELECT path, status FROM orthomosaics"))
            )
        for e in repo.list_encoders(db):
            if not OmegaIndex.exists(settings, e.weights_sha256):
                out[f"faiss:{e.name}"] = None
                continue
            ix = OmegaIndex.open(settings, e.weights_sha256, create=False)
            out[f"faiss:{e.name}"] = sorted(int(i) for i in ix.ids())
            out[f"verify:{e.name}"] = verify_index(db, settings, e).ok
    finally:
        db.dispose()
    return out


# ---------------------------------------------------------------------------------------- CLI
@dataclass
class Result:
    """Exit code, stdout and stderr of one CLI run."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """Non-empty stderr lines."""
        return [x for x in self.err.splitlines() if x.strip()]


def env_for(settings: Settings) -> dict[str, str]:
    """Environment of a ``geoloc`` subprocess pointed at ``settings``."""
    env = dict(os.environ)
    env.update(
        GEOLOC_HOME=str(settings.home),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    if settings.database_url:
        env["GEOLOC_DATABASE_URL"] = settings.database_url
    else:
        env.pop("GEOLOC_DATABASE_URL", None)
    return env


def run_sub(
    settings: Settings, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
) -> Result:
    """Run ``python -m geoloc.cli.main ARGS`` as a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "geoloc.cli.main", *args],
        cwd=REPO,
        env=env or env_for(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], encoder: Any
) -> Callable[..., Result]:
    """In-process ``geoloc ARGS`` against the given settings.

    ``load_encoder("sgmnet")`` (no checkpoint) returns the session's encoder, the same weights
    a fresh process would load, to avoid re-building it for every call.
    """
    import geoloc.models

    real = geoloc.models.load_encoder

    def cached(name: str = "sgmnet", checkpoint: Any = None, **kw: Any) -> Any:
        if name == "sgmnet" and checkpoint is None and not kw:
            return encoder
        return real(name, checkpoint=checkpoint, **kw)

    monkeypatch.setattr(geoloc.models, "load_encoder", cached)

    def run(settings: Settings, *args: str) -> Result:
        from geoloc.cli.main import main

        monkeypatch.setenv("GEOLOC_HOME", str(settings.home))
        if settings.database_url:
            monkeypatch.setenv("GEOLOC_DATABASE_URL", settings.database_url)
        else:
            monkeypatch.delenv("GEOLOC_DATABASE_URL", raising=False)
        capsys.readouterr()
        with pytest.raises(SystemExit) as ei:
            main(list(args))
        out, err = capsys.readouterr()
        return Result(int(ei.value.code or 0), out, err)

    return run


def assert_one_error_line(res: Result, path: Path | str) -> str:
    """The run failed with exactly one ``geoloc: error:`` line naming ``path``, no traceback."""
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    errors = [x for x in res.err_lines if x.startswith("geoloc: error:")]
    named = [x for x in errors if str(path) in x]
    assert len(named) == 1, res.err
    return named[0]


@dataclass
class BackgroundIngest:
    """A ``geoloc ingest`` process whose stderr a thread collects line by line."""

    proc: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread

    @property
    def stderr(self) -> str:
        """Everything the process wrote to stderr so far."""
        return "".join(self.lines)

    def finish(self, timeout: float = 180.0) -> str:
        """Wait for the process (not ``communicate()``: the thread owns stderr); return stdout."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.reader.join(10)
        assert self.proc.stdout is not None
        return self.proc.stdout.read()


def start_ingest(settings: Settings, raster: Path, timeout: float = 180.0) -> BackgroundIngest:
    """Start ``geoloc ingest RASTER`` as a real process; return once it logs ``ingesting``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoloc.cli.main", "ingest", str(raster), "--no-progress"],
        cwd=REPO,
        env=env_for(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "ingesting " in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    run = BackgroundIngest(proc, lines, reader)
    if not started.wait(timeout):
        run.finish(timeout=10)
        raise AssertionError(f"ingest of {raster} never started: {run.stderr}")
    return run
