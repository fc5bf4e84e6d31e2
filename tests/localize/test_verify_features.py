"""Verification from tile features (the coarse-then-learned cascade) against the real store.

The bundled sample is ingested into an embedded Postgres; views cut from it are verified once by
reading the map's pixels and once from tile features, and must agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from geoloc.localize.consistency import Consistency, NodeCentroidConsistency
from geoloc.localize.prepare import FramePreparation
from geoloc.localize.priors import GnssRadiusPrior, HeadingPrior
from geoloc.localize.recall import FaissRecall, Recall
from geoloc.localize.regions import MapRegions
from geoloc.localize.rerank import PhiCosineRerank, Rerank
from geoloc.localize.schedule import VerificationScheduler
from geoloc.localize.state import FrameRequest, FrameState
from geoloc.localize.verify import HomographyVerifier, xfeat_lighterglue
from tests.localize.conftest import truth_lonlat
from tests.localize.views import sample_rgb, view

pytestmark = pytest.mark.slow

CX, CY = 1000.0, 600.0  # a view centre in sample pixels (0.28 m/px)


def _dist(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    from tiling.crs import geodesic_distance_m

    return float(geodesic_distance_m(lon1, lat1, lon2, lat2))


@pytest.fixture(scope="module")
def store(ingested: Any, encoder: Any) -> Iterator[Any]:
    from geoloc.store import TileStore

    with TileStore.open(
        ingested, encoder_sha256=encoder.weights_sha256, encoder_name=encoder.name
    ) as s:
        yield s


@pytest.fixture(scope="module")
def verifier() -> HomographyVerifier:
    return xfeat_lighterglue()


class Counted:
    """Counts the calls of one method of an object (the method still runs)."""

    def __init__(self, obj: Any, method: str) -> None:
        self.calls = 0
        inner = getattr(obj, method)

        def wrapper(*a: Any, **kw: Any) -> Any:
            self.calls += 1
            return inner(*a, **kw)

        self._obj, self._method = obj, method
        setattr(obj, method, wrapper)

    def undo(self) -> None:
        delattr(self._obj, self._method)


def _ranked(store: Any, encoder: Any, rgb: np.ndarray) -> FrameState:
    """A frame through preparation, recall, rerank and consistency."""
    state = FrameState(FrameRequest(image=rgb, name="v", gsd_m=0.28))
    FramePreparation(
        {"rotations": 8},
        encoder,
        [GnssRadiusPrior(), HeadingPrior()],
        map_gsd_m=store.map_gsd_m,
        tile_px=store.tile_px,
    ).run(state)
    Recall({}, FaissRecall(), [GnssRadiusPrior()], store).run(state)
    Rerank({}, PhiCosineRerank(), store).run(state)
    Consistency({}, NodeCentroidConsistency()).run(state)
    return state


def _copy(state: FrameState) -> FrameState:
    """A fresh state with the same ranked candidates (verification not run)."""
    out = FrameState(state.request)
    out.frame, out.headings, out.image, out.mask = (
        state.frame,
        state.headings,
        state.image,
        state.mask,
    )
    out.candidates = list(state.candidates)
    return out


def _scheduler(
    store: Any, verifier: HomographyVerifier, regions: MapRegions, **conf: Any
) -> VerificationScheduler:
    return VerificationScheduler(conf, verifier, regions, tile_px=store.tile_px, store=store)


def test_features_give_the_raster_answer(store: Any, encoder: Any, verifier: Any) -> None:
    state = _ranked(store, encoder, view(sample_rgb(), CX, CY, 400, heading_deg=20.0))
    regions = MapRegions(store.map_gsd_m)
    raster = _scheduler(store, verifier, regions, verify_features="raster")
    assert raster.feature_regions is None
    cascade = _scheduler(store, verifier, regions, verify_features="extract")
    assert cascade.feature_regions is not None
    a, b = _copy(state), _copy(state)
    t0 = time.perf_counter()
    raster.run(a)
    t1 = time.perf_counter()
    cascade.run(b)  # includes extracting the tile features (stored ones skip that)
    t2 = time.perf_counter()
    fine, coarse = Counted(verifier, "verify_features"), Counted(verifier, "coarse")
    glue = Counted(verifier.matcher, "match")
    cascade.run(c := _copy(state))  # warm: tile features already in memory
    print("fine", fine.calls, "coarse", coarse.calls, "glue", glue.calls, c.timings)
    fine.undo(), coarse.undo(), glue.undo()
    t3 = time.perf_counter()
    print(
        f"raster {1e3 * (t1 - t0):.0f} ms, cascade cold {1e3 * (t2 - t1):.0f} ms, warm "
        f"{1e3 * (t3 - t2):.0f} ms",
        b.timings,
    )
    assert a.match is not None and b.match is not None and c.match is not None
    assert "verify.coarse" in b.timings and "verify.coarse" not in a.timings
    lon, lat = truth_lonlat(CX, CY)
    assert _dist(a.match.lon, a.match.lat, lon, lat) < 2.0
    assert _dist(b.match.lon, b.match.lat, a.match.lon, a.match.lat) < 1.0
    assert (c.match.lat, c.match.lon) == (b.match.lat, b.match.lon)
    assert b.match.result.accepted and b.match.result.ncc >= verifier.min_ncc
    assert abs((b.match.heading_deg - 20.0 + 180.0) % 360.0 - 180.0) < 25.0
    regions.close()
