"""The product defaults end to end: a store ingested with the defaults (no Ω index, the default
number of stored keypoints) answers the default chain, the CLI's way (real encoder, real
Postgres)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLE_RASTER
from tests.localize.conftest import truth_lonlat, write_jpeg
from tests.localize.views import sample_rgb, view

pytestmark = [pytest.mark.default_omega, pytest.mark.slow]


@pytest.fixture
def default_store(pg_server: Any, encoder: Any, tmp_path: Path) -> Iterator[Any]:
    from geoloc.config import Settings
    from geoloc.ingest import ingest

    name = pg_server.create_database()
    settings = Settings(home=tmp_path / "home", database_url=pg_server.url_for(name))
    res = ingest([SAMPLE_RASTER], encoder=encoder, settings=settings, progress=False)
    assert [r.status for r in res] == ["ingested"], res
    try:
        yield settings
    finally:
        pg_server.drop_database(name)


def test_default_store_has_no_omega_and_the_default_chain_locates(
    default_store: Any, encoder: Any, tmp_path: Path
) -> None:
    from geoloc.localize import Localizer
    from geoloc.store import OmegaIndex
    from geoloc.store.tile_features import DEFAULT_MAX_PER_TILE
    from tiling.crs import geodesic_distance_m

    assert not OmegaIndex.exists(default_store, encoder.weights_sha256)
    cx, cy = 900.0, 700.0
    f = write_jpeg(tmp_path / "v.jpg", view(sample_rgb(), cx, cy, 400, heading_deg=35.0))
    with Localizer.open(default_store, encoder=encoder) as loc:  # the default preset
        assert loc.store.index is None and not loc.store.has_omega
        spec = loc.store.feature_spec
        assert spec is not None and spec.max_per_tile == DEFAULT_MAX_PER_TILE
        fix = loc.locate(f, gsd=0.28)
    assert fix.status == "ok", fix.as_dict()
    assert fix.lon is not None and fix.lat is not None
    assert float(geodesic_distance_m(fix.lon, fix.lat, *truth_lonlat(cx, cy))) < 3.0
