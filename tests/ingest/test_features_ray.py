"""A ``--cluster`` ingest stores the same local features as a single-process one."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from geoloc.config import Settings
from geoloc.ingest import ingest
from tests.conftest import SAMPLE_RASTER

pytest.importorskip("ray")  # in the distributed extra, which CI installs

from tests.ingest.test_distributed import ray_local, small_bands  # noqa: E402, F401 (fixtures)

pytestmark = pytest.mark.slow


def _by_cell(settings: Settings, enc: Any, orthomosaic_id: int) -> dict[tuple[int, int], Any]:
    from geoloc.store import TileStore

    with TileStore.open(settings, encoder_sha256=enc.weights_sha256, omega=False) as store:
        cands = [
            c
            for c in store.candidates(store.within(0.0, 0.0, 1e8))
            if c.orthomosaic_id == orthomosaic_id
        ]
        feats = store.features([c.tile_id for c in cands])
        assert store.verify().ok
    return {(c.row, c.col): feats[c.tile_id] for c in cands}


def test_cluster_ingest_stores_the_same_features(
    ray_local: None,  # noqa: F811
    small_bands: None,  # noqa: F811
    pg_settings: Settings,
    database: Any,
    encoder: Any,
) -> None:
    (local,) = ingest([SAMPLE_RASTER], encoder=encoder, settings=pg_settings, progress=False)
    want = _by_cell(pg_settings, encoder, int(local.id or 0))
    (dist,) = ingest(
        [SAMPLE_RASTER],
        encoder=encoder,
        settings=pg_settings,
        progress=False,
        force=True,
        cluster="auto",
        workers=2,
    )
    assert dist.status == "ingested", dist.message
    got = _by_cell(pg_settings, encoder, int(dist.id or 0))
    assert sorted(got) == sorted(want) and len(want) == local.tiles_kept
    for cell, kp in want.items():
        np.testing.assert_array_equal(got[cell].xy, kp.xy)
        np.testing.assert_allclose(got[cell].desc, kp.desc, atol=2e-2)
