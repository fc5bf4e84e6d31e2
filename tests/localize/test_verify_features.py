"""Verification from tile features (the coarse-then-learned cascade) against the real store.

The bundled sample is ingested into an embedded Postgres; views cut from it are verified once by
reading the map's pixels and once from tile features, and must agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from geoloc.errors import ConfigError
from geoloc.localize.consistency import Consistency, NodeCentroidConsistency
from geoloc.localize.prepare import FramePreparation
from geoloc.localize.priors import GnssRadiusPrior, HeadingPrior
from geoloc.localize.recall import FaissRecall, Recall
from geoloc.localize.regions import MapRegions
from geoloc.localize.rerank import PhiCosineRerank, Rerank
from geoloc.localize.schedule import CASCADE_CHUNK, VerificationScheduler
from geoloc.localize.state import FrameRequest, FrameState
from geoloc.localize.tile_regions import FeatureRegions, StoredTileFeatures
from geoloc.localize.verify import HomographyVerifier, xfeat_lighterglue
from tests.localize.conftest import truth_lonlat
from tests.localize.counting import Counted
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


@pytest.fixture(scope="module")
def regions(store: Any) -> Iterator[MapRegions]:
    r = MapRegions(store.map_gsd_m)
    yield r
    r.close()


@pytest.fixture(scope="module")
def cascade(store: Any, verifier: Any, regions: MapRegions) -> VerificationScheduler:
    """The cascade over tile features extracted from the sample (kept for the module)."""
    return _scheduler(store, verifier, regions, verify_features="extract")


@pytest.fixture(scope="module")
def located(store: Any, encoder: Any) -> FrameState:
    return _ranked(store, encoder, view(sample_rgb(), CX, CY, 400, heading_deg=20.0))


@pytest.fixture(scope="module")
def stored(store: Any, verifier: Any, regions: MapRegions) -> VerificationScheduler:
    """The cascade over the features the ingest stored (the default when a store has them)."""
    sched = _scheduler(store, verifier, regions)
    assert sched.conf["verify_features"] == "auto"
    assert isinstance(sched.feature_regions, FeatureRegions)
    assert isinstance(sched.feature_regions.source, StoredTileFeatures)
    return sched


@pytest.mark.parametrize("which", ["stored", "cascade"])
def test_features_give_the_raster_answer(
    store: Any,
    verifier: Any,
    regions: MapRegions,
    located: FrameState,
    which: str,
    request: pytest.FixtureRequest,
) -> None:
    """Stored and extracted tile features answer as the raster path does (within 1 m)."""
    features: VerificationScheduler = request.getfixturevalue(which)
    raster = _scheduler(store, verifier, regions, verify_features="raster")
    assert raster.feature_regions is None
    a, b = _copy(located), _copy(located)
    raster.run(a)
    features.run(b)
    assert a.match is not None and b.match is not None
    assert "verify.coarse" in b.timings and "verify.coarse" not in a.timings
    lon, lat = truth_lonlat(CX, CY)
    assert _dist(a.match.lon, a.match.lat, lon, lat) < 2.0
    assert _dist(b.match.lon, b.match.lat, a.match.lon, a.match.lat) < 1.0
    # the map's pixels were readable: the photometric check ran on the accepted match
    assert b.match.result.accepted and b.match.result.ncc >= verifier.min_ncc
    assert abs((b.match.heading_deg - 20.0 + 180.0) % 360.0 - 180.0) < 25.0
    assert b.match.result.inliers >= verifier.min_inliers


def test_early_stop_runs_the_matcher_once(verifier: Any, stored: Any, located: FrameState) -> None:
    state = _copy(located)
    coarse, glue = Counted(verifier, "coarse"), Counted(verifier.matcher, "match")
    fine = Counted(verifier, "verify_features")
    try:
        stored.run(state)
    finally:
        coarse.undo()
        glue.undo()
        fine.undo()
    assert state.match is not None
    # the true tile's neighbours pass the coarse check too; the first accepted ends the plan
    assert fine.calls == 1
    # matches guided by the coarse model verified it: the learned matcher never ran
    assert state.match.result.matcher == "xfeat-lighterglue+guided"
    assert glue.calls == 0
    assert 1 <= coarse.calls < len(state.candidates)
    assert state.match.attempts == coarse.calls


def _hopper() -> np.ndarray:
    """A real photo that is not aerial imagery at all (ships with matplotlib)."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.asarray(Image.open(fh).convert("RGB").resize((400, 400)))


def _mirrored() -> np.ndarray:
    """A mirrored view: real aerial texture, but no place of the map looks like it (only its
    mirror axis matches itself, on a line)."""
    return np.ascontiguousarray(view(sample_rgb(), CX, CY, 400)[:, ::-1])


def test_mirrored_view_is_rejected(store: Any, encoder: Any, stored: Any) -> None:
    state = _ranked(store, encoder, _mirrored())
    stored.run(state)
    assert state.candidates and state.match is None


@pytest.mark.parametrize("make", [_hopper])
def test_elsewhere_is_rejected_by_the_coarse_check(
    store: Any, encoder: Any, verifier: Any, stored: Any, make: Any
) -> None:
    ranked = _ranked(store, encoder, make())
    assert ranked.candidates
    calls = {}
    for stop in (False, True):
        state = _copy(ranked)
        sched = _scheduler(
            store, verifier, stored.regions, first_round_stop=stop, skip_covered=False
        )
        coarse, glue = Counted(verifier, "coarse"), Counted(verifier.matcher, "match")
        try:
            sched.run(state)
        finally:
            coarse.undo()
            glue.undo()
        assert state.match is None
        assert glue.calls == 0
        assert state.timings["verify.coarse"] > 0
        calls[stop] = coarse.calls
    top = min(len(ranked.candidates), stored.conf["verify_top"])
    assert calls[False] >= top  # without the stop: every candidate checked, the sweep on top
    # with it: the first round (each heading group's first chunk), then the sweep
    groups: dict[int, int] = {}
    for c in ranked.candidates[:top]:
        groups[c.heading_idx] = groups.get(c.heading_idx, 0) + 1
    first_round = sum(min(n, CASCADE_CHUNK) for n in groups.values())
    assert first_round <= calls[True] <= calls[False]
    if first_round < top:
        assert calls[True] < calls[False]


def test_candidates_inside_checked_regions_are_skipped(
    store: Any, encoder: Any, verifier: Any, stored: Any
) -> None:
    """A frame of another place: candidates whose frame-sized neighbourhood lies inside a
    region already checked at the same heading are not checked again; a view of the map is
    still located, with no more checks."""
    from geoloc.localize import schedule

    inside = schedule._frame_inside
    skipped: list[int] = []

    def noting(region: Any, tile: Any, crop_px: int) -> bool:
        hit = inside(region, tile, crop_px)
        if hit:
            skipped.append(int(tile.tile_id))
        return hit

    located = view(sample_rgb(), CX, CY, 400, heading_deg=20.0)
    for rgb, found in ((_hopper(), False), (located, True)):
        ranked = _ranked(store, encoder, rgb)
        calls: dict[bool, int] = {}
        skipped.clear()
        for skip in (False, True):
            state = _copy(ranked)
            sched = _scheduler(store, verifier, stored.regions, skip_covered=skip)
            coarse = Counted(verifier, "coarse")
            schedule._frame_inside = noting  # type: ignore[assignment]
            try:
                sched.run(state)
            finally:
                coarse.undo()
                schedule._frame_inside = inside  # type: ignore[assignment]
            assert (state.match is not None) is found
            calls[skip] = coarse.calls
        assert calls[True] <= calls[False]
        if not found:
            # the sample's candidates are neighbours of one another: some are skipped, each
            # once per heading it came up at, and every other check still runs
            assert skipped
            assert calls[True] == calls[False] - len(skipped)


def test_frame_inside_a_region() -> None:
    """A crop centred on a tile lies inside the region of a tile one grid step (half a tile)
    away, not inside that of a tile two steps away."""
    from types import SimpleNamespace

    from affine import Affine

    from geoloc.localize.schedule import _frame_inside
    from geoloc.localize.tile_regions import RegionFeatures
    from geoloc.localize.verify import Features

    def tile(col: int, row: int) -> Any:  # 224 px tiles at 0.5 m, 112 px steps
        return SimpleNamespace(
            tile_size=224, transform=Affine(0.5, 0, 1000 + 56 * col, 0, -0.5, 5000 - 56 * row)
        )

    crop, size = 320, 544  # the cascade's crop and region sizes for a 320 px frame
    t = tile(5, 5)
    cx, cy = t.transform @ (112, 112)
    region = RegionFeatures(
        features=Features(np.zeros((0, 2)), np.zeros((0, 64)), (size, size)),
        transform=Affine(0.5, 0, cx - size / 4, 0, -0.5, cy + size / 4),
        tile_ids=(1,),
        size_px=size,
    )
    assert _frame_inside(region, tile(5, 5), crop)
    assert _frame_inside(region, tile(6, 4), crop)
    assert _frame_inside(region, tile(4, 6), crop)
    assert not _frame_inside(region, tile(7, 5), crop)
    assert not _frame_inside(region, tile(5, 3), crop)
    # a smaller crop fits further away
    assert _frame_inside(region, tile(7, 5), 96)


def _noting_thread(inner: Any, threads: list[str]) -> Any:
    """``inner``, noting the name of the thread each call runs in."""
    import threading

    def call(*a: Any, **kw: Any) -> Any:
        threads.append(threading.current_thread().name)
        return inner(*a, **kw)

    return call


def _run_with(sched: Any, ranked: FrameState, verifier: Any, extract: Any) -> FrameState:
    """``sched`` run on a copy of ``ranked`` with the verifier's frame features made by
    ``extract`` (restored after, and the scheduler's thread stopped)."""
    verifier.extract_frame_features = extract
    state = _copy(ranked)
    try:
        sched.run(state)
    finally:
        del verifier.extract_frame_features
        sched.close()
    return state


def _same_match(a: Any, b: Any) -> None:
    """Two runs gave the same answer: tile, heading, attempts and position."""
    assert a is not None and b is not None
    assert (a.candidate.tile_id, a.heading_deg, a.attempts) == (
        b.candidate.tile_id,
        b.heading_deg,
        b.attempts,
    )
    assert abs(a.lat - b.lat) < 1e-9 and abs(a.lon - b.lon) < 1e-9


def test_frame_features_extracted_ahead_in_a_second_thread(
    store: Any, encoder: Any, verifier: Any, stored: Any, located: FrameState
) -> None:
    """The next heading's frame features are extracted in a second thread while regions are
    checked: each (view, heading) a rejected frame's plan needs is extracted once, as without
    it, and a located frame gets the same answer."""
    rejected = _ranked(store, encoder, _hopper())
    runs: dict[tuple[str, bool], tuple[Any, list[str]]] = {}
    for name, ranked in (("rejected", rejected), ("located", located)):
        for ahead in (True, False):
            sched = _scheduler(store, verifier, stored.regions)
            if not ahead:
                sched._ahead = lambda *a, **kw: None  # type: ignore[method-assign]
            threads: list[str] = []
            extract = _noting_thread(verifier.extract_frame_features, threads)
            state = _run_with(sched, ranked, verifier, extract)
            runs[(name, ahead)] = (state.match, threads)
    ahead_threads = runs[("rejected", True)][1]
    assert any(t.startswith("geoloc-frame") for t in ahead_threads)
    assert not any(t.startswith("geoloc-frame") for t in runs[("rejected", False)][1])
    assert runs[("rejected", True)][0] is None and runs[("rejected", False)][0] is None
    assert len(ahead_threads) == len(runs[("rejected", False)][1]) > 1
    a, b = runs[("located", True)][0], runs[("located", False)][0]
    _same_match(a, b)


def test_regions_assembled_while_the_frame_features_are_extracted(
    store: Any, encoder: Any, verifier: Any, stored: Any, located: FrameState
) -> None:
    """While the second thread extracts the frame's features the cascade is about to wait for,
    this one assembles the regions of the candidates it checks next (up to
    ``ahead_regions``): regions are assembled before the first heading's features exist, and
    never without it; the answers are the same either way."""
    import threading
    import time

    rejected = _ranked(store, encoder, _hopper())
    runs: dict[tuple[str, int], tuple[Any, int]] = {}
    for name, ranked in (("rejected", rejected), ("located", located)):
        for ahead in (VerificationScheduler.ahead_regions, 0):
            sched = _scheduler(store, verifier, stored.regions)
            sched.ahead_regions = ahead
            first_done = threading.Event()
            inner = verifier.extract_frame_features

            def slow(*a: Any, _inner: Any = inner, _done: Any = first_done, **kw: Any) -> Any:
                time.sleep(0.05)  # a frame slower to extract than a region is to assemble
                try:
                    return _inner(*a, **kw)
                finally:
                    _done.set()

            fr = sched.feature_regions
            assert fr is not None
            early: list[int] = []
            around = fr.around

            def noted(
                *a: Any,
                _around: Any = around,
                _done: Any = first_done,
                _early: Any = early,
                **kw: Any,
            ) -> Any:
                if not _done.is_set():
                    _early.append(1)
                return _around(*a, **kw)

            fr.around = noted  # type: ignore[method-assign]
            state = _run_with(sched, ranked, verifier, slow)
            runs[(name, ahead)] = (state.match, len(early))
    default = VerificationScheduler.ahead_regions
    assert default > 0
    assert runs[("rejected", default)][0] is None and runs[("rejected", 0)][0] is None
    assert 0 < runs[("rejected", default)][1] <= default
    assert runs[("rejected", 0)][1] == 0
    a, b = runs[("located", default)][0], runs[("located", 0)][0]
    _same_match(a, b)


def test_features_absent_reads_pixels(
    pg_settings: Any, encoder: Any, verifier: Any, tmp_path: Any
) -> None:
    """A database ingested without features: ``auto`` verifies from the raster's pixels."""
    from geoloc.ingest import ingest
    from geoloc.store import TileStore
    from tests.conftest import crop_sample

    crop = crop_sample(tmp_path / "crop.tif", int(CX) - 400, int(CY) - 400, 800, 800)
    (res,) = ingest([crop], encoder=encoder, settings=pg_settings, progress=False, features=False)
    assert res.status == "ingested"
    with TileStore.open(
        pg_settings, encoder_sha256=encoder.weights_sha256, encoder_name=encoder.name
    ) as bare:
        assert bare.feature_spec is None
        regions = MapRegions(bare.map_gsd_m)
        auto = _scheduler(bare, verifier, regions)
        assert auto.feature_regions is None
        state = _ranked(bare, encoder, view(sample_rgb(), CX, CY, 400, heading_deg=20.0))
        glue = Counted(verifier.matcher, "match")
        try:
            auto.run(state)
        finally:
            glue.undo()
        assert state.match is not None and glue.calls >= 1
        assert "verify.read_region" in state.timings and "verify.coarse" not in state.timings
        lon, lat = truth_lonlat(CX, CY)
        assert _dist(state.match.lon, state.match.lat, lon, lat) < 2.0
        with pytest.raises(ConfigError, match="no xfeat tile features"):
            _ = _scheduler(bare, verifier, regions, verify_features="stored").feature_regions
        regions.close()


def test_sift_has_no_feature_path(store: Any, regions: MapRegions) -> None:
    from geoloc.localize.verify import sift

    v = sift()
    assert _scheduler(store, v, regions).feature_regions is None
    with pytest.raises(ConfigError, match="needs a verifier with tile features"):
        _ = _scheduler(store, v, regions, verify_features="extract").feature_regions
    with pytest.raises(ConfigError, match="verify_features must be one of"):
        _scheduler(store, v, regions, verify_features="pixels")


def _same_region(a: Any, b: Any) -> bool:
    return bool(
        np.array_equal(a.features.keypoints, b.features.keypoints)
        and np.array_equal(a.features.descriptors.numpy(), b.features.descriptors.numpy())
        and a.tile_ids == b.tile_ids
        and a.transform == b.transform
    )


def test_region_survives_evicted_tile_records(store: Any) -> None:
    """A warm localizer's region cache stays right when the tile records behind a cached
    neighbourhood were evicted: the region is the one a cold cache assembles, never an empty
    one (the evicted records are fetched again)."""
    tiles = store.candidates(store.within(*_centre_latlon(store), 1e4))
    assert len(tiles) > 12
    cold = FeatureRegions(store, StoredTileFeatures(store), map_gsd_m=store.map_gsd_m)
    want = cold.around(tiles[0], 448)
    assert len(want.features) > 0 and len(want.tile_ids) > 1
    small = FeatureRegions(
        store, StoredTileFeatures(store, cache_size=4), map_gsd_m=store.map_gsd_m, cache_size=8
    )
    assert _same_region(small.around(tiles[0], 448), want)
    for t in tiles[1:]:  # evicts the first neighbourhood's tile records and decoded features
        small.around(t, 448)
    assert _same_region(small.around(tiles[0], 448), want)


class _RecordKinds:
    """A tile feature source that notes the kind of records it is given (and has no
    ``needs_records``: it gets full records)."""

    kind = "xfeat"

    def __init__(self, inner: Any) -> None:
        self.inner, self.seen = inner, set()

    def features(self, tiles: Any) -> dict[int, Any]:
        self.seen |= {type(t).__name__ for t in tiles}
        return dict(self.inner.features(tiles))


class _NoGrids:
    """The store without its orthomosaic grids: regions come from the geographic query."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "grid":
            raise AttributeError(name)
        return getattr(self._inner, name)


def _same_points(a: Any, b: Any) -> bool:
    """The same keypoints with the same descriptors from the same tiles, in any order."""

    def rows(r: Any) -> np.ndarray:
        m = np.concatenate([r.features.keypoints, r.features.descriptors.numpy()], axis=1)
        return m[np.lexsort(m.T[::-1])]

    return bool(
        np.array_equal(rows(a), rows(b))
        and set(a.tile_ids) == set(b.tile_ids)
        and a.transform == b.transform
    )


def test_grid_regions_equal_queried_regions(store: Any) -> None:
    """A region sliced from its orthomosaic's grid holds exactly the keypoints of the region
    whose neighbours a geographic query found, at two sizes and two GSDs."""
    tiles = store.candidates(store.within(*_centre_latlon(store), 1e4))[:12]
    grid = FeatureRegions(store, StoredTileFeatures(store), map_gsd_m=store.map_gsd_m)
    geo = FeatureRegions(_NoGrids(store), StoredTileFeatures(store), map_gsd_m=store.map_gsd_m)
    assert grid._by_grid and not geo._by_grid
    for size, gsd in ((448, None), (672, None), (448, 2 * store.map_gsd_m)):
        for t in tiles:
            a, b = grid.around(t, size, gsd), geo.around(t, size, gsd)
            assert len(a.features) > 0
            assert _same_points(a, b), (t.tile_id, size, gsd)


class _DecodedTiles:
    """Stored features by tile id, decoded tile by tile (no undecoded ``points``)."""

    kind = "xfeat"
    needs_records = False

    def __init__(self, inner: StoredTileFeatures) -> None:
        self.inner = inner

    def by_ids(self, ids: Any) -> dict[int, Any]:
        return self.inner.by_ids(ids)

    def features(self, tiles: Any) -> dict[int, Any]:
        return self.inner.features(tiles)


def test_regions_from_records_equal_regions_from_decoded_tiles(store: Any) -> None:
    """A grid region chosen from its neighbours' undecoded records, decoding only the keypoints
    it keeps, is the region assembled from the decoded tiles: the same keypoints, descriptors
    and tiles in the same order (the RANSAC of the checks depends on it), also when the cap
    on a region's keypoints keeps only the best."""
    tiles = store.candidates(store.within(*_centre_latlon(store), 1e4))[:8]
    for cap in (2048, 97):
        rec = FeatureRegions(
            store, StoredTileFeatures(store), map_gsd_m=store.map_gsd_m, max_keypoints=cap
        )
        dec = FeatureRegions(
            store,
            _DecodedTiles(StoredTileFeatures(store)),
            map_gsd_m=store.map_gsd_m,
            max_keypoints=cap,
        )
        for size, gsd in ((448, None), (672, None), (448, 2 * store.map_gsd_m)):
            for t in tiles:
                a, b = rec.around(t, size, gsd), dec.around(t, size, gsd)
                assert len(a.features) > 0
                assert cap > 100 or len(a.features) == cap
                assert _same_region(a, b), (t.tile_id, size, gsd, cap)


def test_prefetched_regions_equal_one_by_one(store: Any) -> None:
    """A chunk's neighbourhoods looked up together give the regions looked up one by one.
    With stored features they are slices of the orthomosaic's grid: one grid query per
    orthomosaic, no geographic query and no record fetch; from the geographic query, one
    query for the chunk (a source that needs full records gets them in one more)."""
    from geoloc.store import repository

    tiles = store.candidates(store.within(*_centre_latlon(store), 1e4))[:10]
    one = FeatureRegions(store, StoredTileFeatures(store), map_gsd_m=store.map_gsd_m)
    want = [one.around(t, 448) for t in tiles]
    sources = [
        (store, StoredTileFeatures(store), (0, 0, 0)),
        (_NoGrids(store), StoredTileFeatures(store), (0, 1, 0)),
        (store, _RecordKinds(StoredTileFeatures(store)), (1, 0, 1)),
    ]
    for st, source, calls in sources:
        chunk = FeatureRegions(st, source, map_gsd_m=store.map_gsd_m)
        store._grids.clear()
        fetches, queries = Counted(store, "candidates"), Counted(store, "grids_within_many")
        full, grids = Counted(store, "within_many"), Counted(repository, "orthomosaic_grid")
        try:
            chunk.prefetch(tiles, 448)
            got = [chunk.around(t, 448) for t in tiles]
        finally:
            for c in (fetches, queries, full, grids):
                c.undo()
        assert all(_same_points(a, b) for a, b in zip(got, want, strict=True))
        assert (full.calls, queries.calls, fetches.calls) == calls
        if isinstance(source, _RecordKinds):
            assert source.seen == {"Candidate"}
        if st is store and not isinstance(source, _RecordKinds):
            assert grids.calls == len({t.orthomosaic_id for t in tiles})


def test_regions_are_kept_and_dropped_with_the_features(store: Any) -> None:
    """A region asked for again is the one made before (the sweep re-checks its candidates at
    other headings); new stored features (a new feature spec) make it again."""
    t = store.candidates(store.within(*_centre_latlon(store), 1e4))[0]
    fr = FeatureRegions(store, StoredTileFeatures(store), map_gsd_m=store.map_gsd_m)
    a = fr.around(t, 448)
    assert fr.around(t, 448) is a and fr.around(t, 672) is not a
    fr._spec = object()  # as if the store had re-opened new features
    b = fr.around(t, 448)
    assert b is not a and _same_region(a, b)


def _centre_latlon(store: Any) -> tuple[float, float]:
    lon, lat = truth_lonlat(CX, CY)
    return lat, lon
