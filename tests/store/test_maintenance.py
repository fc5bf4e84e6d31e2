"""index verify / rebuild / info on a real database, with a tiny deterministic fake encoder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from geoloc.config import Settings
from geoloc.errors import EncoderMismatchError
from geoloc.ingest.rebuild import rebuild_index
from geoloc.store import TileStore
from geoloc.store import repository as repo
from geoloc.store.database import Database
from geoloc.store.faiss_store import OmegaIndex
from geoloc.store.maintenance import resolve_encoder, verify_index
from tiling import TileConfig, open_raster

SHA = "c0ffee00" * 8
OMEGA_D = 96


@dataclass
class _Out:
    omega: np.ndarray


class FakeEncoder:
    """Ω = a fixed random projection of the (downsampled) pixels, L2-normalised."""

    name = "fake"
    weights_sha256 = SHA
    omega_dim = OMEGA_D

    def __init__(self) -> None:
        self.proj = np.random.default_rng(0).standard_normal((3 * 28 * 28, OMEGA_D))

    def encode(self, images: np.ndarray) -> _Out:
        small = images[:, :, ::8, ::8].reshape(len(images), -1).astype(np.float64) / 255.0
        x = small @ self.proj
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return _Out(omega=x.astype(np.float32))


def ingest_real(
    db: Database, settings: Settings, raster: Path, model: FakeEncoder
) -> tuple[int, list[int], np.ndarray]:
    enc = repo.get_or_create_encoder(db, "fake", {}, SHA, OMEGA_D, 1024)
    cfg = TileConfig(tile_size=224, stride=112, gsd=0.5, min_valid=0.5)
    with open_raster(raster) as r:
        tiles = list(r.tiles(cfg))
        oid = repo.begin_orthomosaic(
            db,
            path=str(raster),
            sha256=_sha(raster),
            encoder_id=enc,
            raster=r,
            tile_size=224,
            stride=112,
            target_gsd=0.5,
        )
    n = len(tiles)
    rng = np.random.default_rng(1)
    phi = rng.standard_normal((n, 1024)).astype(np.float32)
    ids = repo.add_tiles(
        db, oid, enc, tiles, phi, np.ones((n, 4), np.float32), np.zeros((n, 4, 2), np.float32)
    )
    omega = model.encode(np.stack([t.pixels for t in tiles])).omega
    ix = OmegaIndex.open(settings, SHA, omega_dim=OMEGA_D, encoder_id=enc)
    ix.add(np.asarray(ids), omega)
    ix.save()
    repo.finish_orthomosaic(db, oid, n, 0)
    return enc, ids, omega


def _rebuild(settings: Settings, spec: str | None, **kwargs: Any) -> OmegaIndex:
    """``geoloc index rebuild`` in-process: a re-ingest of Ω through the ingest stream."""
    with TileStore.for_registered(settings, spec) as store:
        return rebuild_index(store, **kwargs)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_verify_detects_an_injected_mismatch_and_rebuild_repairs_it(
    database: Database, pg_settings: Settings, sample_raster: Path
) -> None:
    model = FakeEncoder()
    enc_id, ids, omega = ingest_real(database, pg_settings, sample_raster, model)
    enc = resolve_encoder(database, None)
    assert enc.id == enc_id
    assert verify_index(database, pg_settings, enc).ok
    # inject: one id removed from FAISS, one bogus id added
    ix = OmegaIndex.open(pg_settings, SHA)
    ix.remove(np.array([ids[3]]))
    ix.add(np.array([10**9]), omega[:1])
    ix.save()
    report = verify_index(database, pg_settings, enc)
    assert not report.ok
    assert report.missing_in_index == [ids[3]] and report.extra_in_index == [10**9]
    # rebuild re-encodes every tile from the raster: same ids, same vectors
    rebuilt = _rebuild(pg_settings, None, model=model, batch_size=7)
    assert verify_index(database, pg_settings, enc).ok
    assert rebuilt.ids().tolist() == sorted(ids)
    _, found = OmegaIndex.open(pg_settings, SHA).search(omega[:5], 1)
    assert found[:, 0].tolist() == ids[:5]


def test_rebuild_refits_the_refine_codes_of_an_index_without_them(
    database: Database, pg_settings: Settings, sample_raster: Path
) -> None:
    model = FakeEncoder()
    enc_id, ids, omega = ingest_real(database, pg_settings, sample_raster, model)
    small = {
        "target_dim": 8,
        "max_dim": 16,
        "refine_channels": 16,
        "refine_dims": 16,
        "refine_bits": 8,
    }
    # an index past its first truncation without refine codes (as format 1 wrote them)
    old = OmegaIndex.create(pg_settings, SHA, omega_dim=OMEGA_D, **{**small, "refine_dims": 0})
    old.add(np.asarray(ids), omega)
    old.save()
    assert not OmegaIndex.open(pg_settings, SHA).has_refine
    enc = resolve_encoder(database, None)
    rebuilt = _rebuild(pg_settings, None, model=model, batch_size=16, **small)
    assert rebuilt.has_refine and not rebuilt.is_exact
    again = OmegaIndex.open(pg_settings, SHA)
    info = again.info()
    assert info["refine"]["count"] == len(ids) and info["refine"]["bytes_per_tile"] == 6 * 16
    assert verify_index(database, pg_settings, enc).ok
    _, found = again.search(omega[:5], 1)
    assert found[:, 0].tolist() == ids[:5]


def test_rebuild_refuses_other_weights(
    database: Database, pg_settings: Settings, sample_raster: Path
) -> None:
    model = FakeEncoder()
    ingest_real(database, pg_settings, sample_raster, model)
    other = FakeEncoder()
    other.weights_sha256 = "d" * 64
    with pytest.raises(EncoderMismatchError, match="--checkpoint"):
        _rebuild(pg_settings, "fake", model=other)


def test_cli_verify_exit_codes_and_info(
    database: Database, pg_settings: Settings, sample_raster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoloc.cli.main import app

    model = FakeEncoder()
    _, ids, _ = ingest_real(database, pg_settings, sample_raster, model)
    monkeypatch.setenv("GEOLOC_HOME", str(pg_settings.home))
    monkeypatch.setenv("GEOLOC_DATABASE_URL", pg_settings.database_url or "")
    runner = CliRunner()
    ok = runner.invoke(app, ["index", "verify"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    info = runner.invoke(app, ["index", "info", "--encoder", "fake"])
    assert info.exit_code == 0 and json.loads(info.stdout)["count"] == len(ids)
    ix = OmegaIndex.open(pg_settings, SHA)
    ix.remove(np.array(ids[:2]))
    ix.save()
    bad = runner.invoke(app, ["index", "verify", "-e", SHA[:10]])
    assert bad.exit_code == 1
    diff = json.loads(bad.stdout)
    assert diff["missing_in_index"] == sorted(ids[:2]) and diff["extra_in_index"] == []
    status = runner.invoke(app, ["db", "status"])
    assert status.exit_code == 0
    st = json.loads(status.stdout)
    assert (
        st["at_head"] is True and st["tiles"] == len(ids) and st["orthomosaics"] == {"complete": 1}
    )
    url = runner.invoke(app, ["db", "url"])
    assert url.exit_code == 0 and url.stdout.startswith("postgresql://")
