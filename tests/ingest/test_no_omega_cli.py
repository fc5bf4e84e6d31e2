"""The product default: a new store keeps no Ω index; ``--preset seed`` on it is a one-line
error (exit 2) until ``geoloc index rebuild --omega`` adds the index (real encoder, real
Postgres)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.ingest import ingest

from .test_ingest_db import run_cli

pytestmark = [pytest.mark.default_omega, pytest.mark.slow]


def test_default_ingest_keeps_no_omega_and_rebuild_adds_it(
    pg_settings: Settings,
    database: Any,
    crops: dict[str, Path],
    encoder: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from geoloc.store import OmegaIndex, TileStore
    from geoloc.store import repository as repo
    from geoloc.store.tile_store import DEFAULT_OMEGA

    assert DEFAULT_OMEGA is False
    (res,) = ingest([crops["a"]], encoder=encoder, settings=pg_settings, progress=False)
    assert res.status == "ingested", res.message
    enc = repo.find_encoder(database, encoder.weights_sha256)
    assert enc is not None and not enc.has_omega
    assert not OmegaIndex.exists(pg_settings, encoder.weights_sha256)
    ids = np.sort(repo.complete_tile_ids(database, enc.id))
    capsys.readouterr()

    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["has_omega"] is False
    assert report["features"]["count"] == len(ids)  # the features are there all the same
    assert run_cli(monkeypatch, pg_settings, "index", "info") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["omega"] is None and info["features"]["tiles"] == len(ids)

    # Ω recall on it: one line naming the fix, exit 2 (no traceback)
    assert run_cli(monkeypatch, pg_settings, "locate", str(crops["b"]), "--preset", "seed") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "geoloc index rebuild --omega" in err
    assert "Traceback" not in err
    # a plain rebuild has no index to rebuild: the same hint
    assert run_cli(monkeypatch, pg_settings, "index", "rebuild") == 2
    assert "rebuild --omega" in capsys.readouterr().err

    assert run_cli(monkeypatch, pg_settings, "index", "rebuild", "--omega") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["has_omega"] is True and report["index_count"] == len(ids)
    with TileStore.open(pg_settings, encoder_sha256=encoder.weights_sha256) as store:
        assert store.index is not None
        np.testing.assert_array_equal(np.sort(store.index.ids()), ids)

    # the store keeps Ω from now on: --no-omega on it is warned about and ignored
    assert run_cli(monkeypatch, pg_settings, "ingest", str(crops["b"]), "--no-omega") == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, pg_settings, "index", "verify") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["has_omega"] is True
    assert report["index_count"] == report["db_count"] > len(ids)
