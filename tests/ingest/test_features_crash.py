"""Local features survive a SIGKILL between the writes of an ingest, and bad feature files are
detected by ``geoloc index verify`` and rebuilt from the rasters by ``index rebuild --features``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.ingest import ingest
from tests.conftest import REPO
from tests.ingest.test_ingest_db import db_state, run_cli

# Runs one ingest of argv[2] that SIGKILLs itself at the point named by argv[1]: each point lies
# between two of the writes a commit makes (FAISS save, feature segments, feature meta.json,
# the orthomosaic row becoming complete).
_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.store import tile_features as tf, tile_store

    def die(*_a, **_k):
        os.kill(os.getpid(), signal.SIGKILL)

    point = sys.argv[1]
    if point == "before-features":      # FAISS saved, features not
        tf.FeatureStore.save = die
    elif point == "mid-features":       # feature segments written, their meta.json not
        write = tf.fsync_write
        def fsync_write(path, saver):
            if Path(path).name == "meta.json":
                die()
            write(path, saver)
        tf.fsync_write = fsync_write
    elif point == "before-complete":    # FAISS and features saved, the row not complete
        tile_store.repo.finish_orthomosaic = die
    ingest([sys.argv[2]], settings=Settings.from_env(), progress=False, batch_size=4)
    """
)


def _kill_at(settings: Settings, point: str, raster: Path) -> int:
    env = dict(os.environ)
    env.update(
        GEOLOC_HOME=str(settings.home),
        GEOLOC_DATABASE_URL=str(settings.database_url),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, point, str(raster)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc.returncode


def _feature_ids(settings: Settings, enc: Any) -> np.ndarray:
    from geoloc.store.faiss_store import OmegaIndex
    from geoloc.store.tile_features import FeatureStore

    return FeatureStore.open(
        FeatureStore.path_for(OmegaIndex.path_for(settings, enc.weights_sha256))
    ).ids()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before-features", "mid-features", "before-complete"])
def test_killed_between_writes_then_recovered_and_resumed(
    point: str,
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from geoloc.store import TileStore

    (other,) = ingest([crops["b"]], encoder=encoder, settings=pg_settings, progress=False)
    kept_before = _feature_ids(pg_settings, encoder)
    _kill_at(pg_settings, point, crops["a"])
    # a reader sees only the complete raster, features included
    with TileStore.open(pg_settings, encoder_sha256=encoder.weights_sha256) as store:
        ids = store.within(0.0, 0.0, 1e8)
        assert ids.size == other.tiles_kept
        assert sorted(store.features(ids)) == sorted(ids.tolist())
    # recovery (what the next writer does first) makes FAISS, features and the database agree
    with TileStore.for_registered(pg_settings) as store:
        store.recover()
        report = store.verify()
    assert report.ok, report.as_dict()
    np.testing.assert_array_equal(_feature_ids(pg_settings, encoder), kept_before)
    # the next run completes, with features of every tile
    (res,) = ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    assert res.status == "ingested", res.message
    st = db_state(database, pg_settings, encoder)
    np.testing.assert_array_equal(st["faiss_ids"], st["complete_ids"])
    np.testing.assert_array_equal(_feature_ids(pg_settings, encoder), st["complete_ids"])
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 0


@pytest.mark.slow
def test_corrupt_feature_file_detected_then_rebuilt(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from geoloc.store import TileStore
    from geoloc.store.faiss_store import OmegaIndex
    from geoloc.store.tile_features import FeatureStore

    ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    with TileStore.open(pg_settings, encoder_sha256=encoder.weights_sha256) as store:
        ids = store.within(0.0, 0.0, 1e8)
        before = store.features(ids)
    fdir = FeatureStore.path_for(OmegaIndex.path_for(pg_settings, encoder.weights_sha256))
    meta = json.loads((fdir / "meta.json").read_text())
    points = fdir / meta["segments"][0]["points"]
    raw = bytearray(points.read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    points.write_bytes(bytes(raw))
    capsys.readouterr()
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and points.name in err[0] and "SHA-256" in err[0], err
    with TileStore.open(pg_settings, encoder_sha256=encoder.weights_sha256) as store:
        assert 0 < len(store.features(ids)) < ids.size  # the bad tile is not trusted
    assert run_cli(monkeypatch, pg_settings, "index", "rebuild", "--features") == 0
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 0
    with TileStore.open(pg_settings, encoder_sha256=encoder.weights_sha256) as store:
        after = store.features(ids)
    assert sorted(after) == sorted(before)
    for tid, kp in before.items():
        np.testing.assert_allclose(after[tid].xy, kp.xy, atol=1.0 / 32)
