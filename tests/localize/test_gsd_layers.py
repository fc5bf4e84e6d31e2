"""A store holding two GSD layers: a 0.5 m/px map of one place and a 0.1 m/px map of another.

A frame is prepared at every layer's GSD it is plausible for, recalls among that layer's tiles
and verifies at that GSD, so a view of each place at about its layer's GSD is located there
(before, every frame was scaled to the one most common GSD and the 0.1 m map never answered).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.store.repository import OrthomosaicRow
from geoloc.store.tile_store import gsd_layers
from tests.conftest import SAMPLE_RASTER
from tests.localize.conftest import truth_lonlat
from tests.localize.test_scale_distractors import FAKE_CRS, procedural_scene, write_fake
from tests.localize.views import sample_rgb, view

FINE_GSD = 0.1


def _row(oid: int, gsd: float, tiles: int, *, size: int = 224, status: str = "complete") -> Any:
    return OrthomosaicRow(
        id=oid,
        encoder_id=1,
        path=f"/r/{oid}.tif",
        sha256=f"{oid:064d}",
        crs="EPSG:32634",
        width=1000,
        height=1000,
        gsd_m=gsd,
        min_lon=0.0,
        min_lat=0.0,
        max_lon=1.0,
        max_lat=1.0,
        footprint_wkt="",
        tile_size=size,
        stride=size // 2,
        target_gsd_m=None,
        status=status,
        error=None,
        started_at=datetime(2026, 1, 1),
        finished_at=None,
        tiles_kept=tiles,
        tiles_skipped=0,
    )


def test_layers_group_gsds_within_tolerance_main_layer_first() -> None:
    rows = [
        _row(1, 0.5, 100),
        _row(2, 0.505, 300),  # within 2 %: the same layer, whose GSD is the one with most tiles
        _row(3, 0.1, 250),
        _row(4, 0.3, 50, size=256),
        _row(5, 0.3, 10),
        _row(6, 0.2, 999, status="ingesting"),  # not complete: no layer
    ]
    layers = gsd_layers(rows)
    assert [(la.gsd_m, la.tile_px, la.orthomosaic_ids, la.tiles) for la in layers] == [
        (0.505, 224, (1, 2), 400),
        (0.1, 224, (3,), 250),
        (0.3, 256, (4,), 50),
        (0.3, 224, (5,), 10),
    ]
    assert layers[0].tile_ground_m == pytest.approx(224 * 0.505)
    assert gsd_layers([replace(rows[5])]) == []


def _fine_truth(index: int, cx: float, cy: float) -> tuple[float, float]:
    from pyproj import Transformer

    x = 300_000.0 + 5_000.0 * index + (cx + 0.5) * FINE_GSD
    y = 7_000_000.0 - (cy + 0.5) * FINE_GSD
    lon, lat = Transformer.from_crs(FAKE_CRS, "EPSG:4326", always_xy=True).transform(x, y)
    return float(lon), float(lat)


@pytest.fixture(scope="module")
def two_layer_db(
    pg_server: Any, encoder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, np.ndarray]]:
    """Settings of a database with the sample at 0.5 m/px and a generated place at 0.1 m/px."""
    from geoloc.config import Settings
    from geoloc.ingest import ingest

    d = tmp_path_factory.mktemp("layers-rasters")
    scene = procedural_scene(7, size=784)  # fewer tiles than the sample's 0.5 m layer
    fine = write_fake(d / "fine.tif", scene, FINE_GSD, 1)
    name = pg_server.create_database()
    settings = Settings(
        home=tmp_path_factory.mktemp("layers-home"), database_url=pg_server.url_for(name)
    )
    for path, gsd in ((SAMPLE_RASTER, 0.5), (fine, FINE_GSD)):
        (res,) = ingest([Path(path)], encoder=encoder, settings=settings, gsd=gsd, progress=False)
        assert res.status == "ingested", res
    try:
        yield settings, scene
    finally:
        pg_server.drop_database(name)


def test_a_view_of_each_layer_is_located_on_its_layer(
    two_layer_db: tuple[Any, np.ndarray], encoder: Any
) -> None:
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m

    settings, scene = two_layer_db
    with Localizer.open(settings, encoder=encoder) as loc:
        layers = loc.layers
        assert [la.gsd_m for la in layers] == [0.5, FINE_GSD]
        assert loc.map_gsd_m == 0.5 and loc.tile_ground_m == pytest.approx(112.0)
        # the fine place, 0.12 m/px, heading unknown: only the 0.1 m layer is plausible
        cx, cy, heading = 400.0, 370.0, 70.0
        frame = view(scene, cx, cy, 320, heading_deg=heading, scale=FINE_GSD / 0.12)
        fix = loc.locate(frame, gsd=0.12)
        st = loc.last_state
        assert st is not None and [v.layers for v in st.views] == [(1,)]
        assert fix.status == "ok" and fix.method == "verified", fix.message
        assert st.match is not None and st.match.candidate.layer == 1
        assert all(c.layer == 1 for c in st.candidates)  # recall kept to the layer's tiles
        assert fix.lat is not None and fix.lon is not None
        lon, lat = _fine_truth(1, cx, cy)
        assert float(geodesic_distance_m(fix.lon, fix.lat, lon, lat)) <= 1.5
        assert fix.error_m_est is not None and fix.error_m_est < 2.0
        # the sample, 0.35 m/px: the 0.1 m layer would need a 3.5x enlargement, so 0.5 m only
        cx, cy = 1100.0, 600.0
        frame = view(sample_rgb(), cx, cy, 320, heading_deg=137.0, scale=0.8)
        fix = loc.locate(frame, gsd=0.28 / 0.8)
        st = loc.last_state
        assert st is not None and [v.layers for v in st.views] == [(0,)]
        assert fix.status == "ok" and fix.method == "verified", fix.message
        assert st.match is not None and st.match.candidate.layer == 0
        assert fix.lat is not None and fix.lon is not None
        lon, lat = truth_lonlat(cx, cy)
        assert float(geodesic_distance_m(fix.lon, fix.lat, lon, lat)) <= 5.0
        # a 600 px frame of the sample at 0.2 m/px is plausible for both layers (it covers a
        # 0.5 m tile, and 0.1 m is a 2x enlargement): one view each, recalled each among its
        # layer's tiles and merged by score; the sample's layer answers
        big = view(sample_rgb(), cx, cy, 600, heading_deg=0.0, scale=0.28 / 0.2)
        fix = loc.locate(big, gsd=0.2, heading=0.0)
        st = loc.last_state
        assert st is not None and [v.layers for v in st.views] == [(0,), (1,)]
        assert [v.factor for v in st.views] == pytest.approx([0.4, 2.0])
        assert fix.status == "ok" and st.match is not None and st.match.candidate.layer == 0
        assert fix.lat is not None and fix.lon is not None
        assert float(geodesic_distance_m(fix.lon, fix.lat, lon, lat)) <= 5.0


def test_a_warm_localizer_without_the_omega_index_sees_a_layer_ingested_meanwhile(
    pg_server: Any, encoder: Any, tmp_path: Path
) -> None:
    """Φ recall keeps no Ω index in memory; the layers still follow an ingest that adds a GSD."""
    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.localize import Localizer

    fine = write_fake(tmp_path / "fine.tif", procedural_scene(7, size=784), FINE_GSD, 1)
    name = pg_server.create_database()
    settings = Settings(home=tmp_path / "home", database_url=pg_server.url_for(name))
    try:
        (res,) = ingest(
            [SAMPLE_RASTER], encoder=encoder, settings=settings, gsd=0.5, progress=False
        )
        assert res.status == "ingested", res
        with Localizer.open(settings, encoder=encoder) as loc:
            assert loc.store.index is None  # the default recall searches Φ in Postgres
            assert [la.gsd_m for la in loc.store.layers] == [0.5]
            assert loc.store.reopen_if_changed() is False
            (res,) = ingest(
                [fine], encoder=encoder, settings=settings, gsd=FINE_GSD, progress=False
            )
            assert res.status == "ingested", res
            loc.store.reopen_if_changed()
            assert [la.gsd_m for la in loc.store.layers] == [0.5, FINE_GSD]
    finally:
        pg_server.drop_database(name)
