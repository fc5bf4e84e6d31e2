"""Each stage of the locate chain on its own, over a FrameState, against the real tile store.

The stages run one by one here (the Localizer chains them the same way), so every test can look
at what one stage added to the state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from geoloc.localize.answer import Answer
from geoloc.localize.consistency import Consistency, NodeCentroidConsistency
from geoloc.localize.pipeline import preset
from geoloc.localize.prepare import FramePreparation, heading_known
from geoloc.localize.priors import GnssRadiusPrior, HeadingPrior, Prior
from geoloc.localize.recall import (
    FaissRecall,
    NearPositionRecall,
    PgvectorRecall,
    Recall,
    merge_headings,
)
from geoloc.localize.regions import MapRegions
from geoloc.localize.rerank import PhiCosineRerank, Rerank
from geoloc.localize.schedule import SWEEP_DEG, VerificationScheduler
from geoloc.localize.state import Candidate, Fix, FrameRequest, FrameState
from geoloc.localize.verify import sift
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


def _state(heading: float | None = None, prior: Prior | None = None, **kw: Any) -> FrameState:
    rgb = view(sample_rgb(), CX, CY, 400, heading_deg=kw.pop("view_heading", 0.0))
    return FrameState(
        FrameRequest(image=rgb, name="v", gsd_m=0.28, heading_deg=heading, prior=prior, **kw)
    )


def _prepare(store: Any, encoder: Any, rotations: int = 8) -> FramePreparation:
    return FramePreparation(
        {"rotations": rotations},
        encoder,
        [GnssRadiusPrior(), HeadingPrior()],
        map_gsd_m=store.map_gsd_m,
        tile_px=store.tile_px,
    )


def _ranked(store: Any, encoder: Any, state: FrameState) -> FrameState:
    """``state`` through preparation, recall and rerank (the inputs of the later stages)."""
    _prepare(store, encoder).run(state)
    Recall({}, FaissRecall(), [GnssRadiusPrior()], store).run(state)
    Rerank({}, PhiCosineRerank(), store).run(state)
    return state


def test_frame_preparation_encodes_one_row_per_heading(store: Any, encoder: Any) -> None:
    state = _state()
    _prepare(store, encoder).run(state)
    assert state.headings == [45.0 * i for i in range(8)] and not heading_known(state)
    assert state.omega is not None and state.omega.shape[0] == 8
    assert state.phi is not None and state.phi.shape[0] == 8
    assert state.node_centroids is not None and state.node_centroids.shape[-1] == 2
    # 400 px at 0.28 m/px brought to the map's GSD
    assert state.image is not None and state.mask is not None and state.mask.all()
    assert state.image.shape[0] == round(400 * 0.28 / store.map_gsd_m)
    assert {"load", "rotate", "encode"} <= set(state.timings)
    known = _state(heading=30.0)
    _prepare(store, encoder).run(known)
    assert known.headings == [30.0] and heading_known(known)
    assert known.omega is not None and known.omega.shape[0] == 1


def test_merge_headings_keeps_each_tiles_best_heading() -> None:
    scores = np.array([[0.9, 0.5, -np.inf], [0.7, 0.95, 0.2]], dtype=np.float32)
    ids = np.array([[3, 1, -1], [1, 7, 3]])
    assert merge_headings(scores, ids, 10) == [
        (7, pytest.approx(0.95), 1),
        (3, pytest.approx(0.9), 0),
        (1, pytest.approx(0.7), 1),
    ]
    assert [t for t, _, _ in merge_headings(scores, ids, 2)] == [7, 3]


def test_recall_finds_the_view_and_stops_on_an_empty_prior(store: Any, encoder: Any) -> None:
    lon, lat = truth_lonlat(CX, CY)
    state = _state()
    _prepare(store, encoder).run(state)
    Recall({}, FaissRecall(), [GnssRadiusPrior()], store).run(state)
    assert 0 < len(state.recalled) <= 50 and not state.stopped
    near = store.candidates([t for t, _, _ in state.recalled[:10]])
    assert min(_dist(c.center_lon, c.center_lat, lon, lat) for c in near) < 56.0
    far = _state(prior=Prior(lat + 0.1, lon, 50.0))
    _prepare(store, encoder).run(far)
    Recall({}, FaissRecall(), [GnssRadiusPrior()], store).run(far)
    assert far.stopped and far.message == "no tile lies within the prior"


def test_phi_recall_scanning_the_sign_bits_recalls_what_the_index_does(
    store: Any, encoder: Any
) -> None:
    from geoloc.errors import ConfigError

    got, scores = {}, {}
    for prefilter, rescore in (("hnsw", "postgres"), ("scan", "postgres"), ("scan", "memory")):
        state = _state()
        _prepare(store, encoder).run(state)
        Recall({}, PgvectorRecall(prefilter=prefilter, rescore=rescore), [], store).run(state)
        got[prefilter, rescore] = [t for t, _, _ in state.recalled]
        scores[prefilter, rescore] = {t: s for t, s, _ in state.recalled}
    # the sample store holds fewer tiles than either prefilter's candidates: the same recall
    assert got["scan", "postgres"] == got["hnsw", "postgres"] and len(got["hnsw", "postgres"]) == 50
    # re-ranked by Φ's int8 codes in memory: the same tiles and best tile, each score within
    # the codes' rounding of the halfvec cosine (neighbours a few thousandths apart may swap)
    mem, exact = scores["scan", "memory"], scores["hnsw", "postgres"]
    assert set(mem) == set(exact) and got["scan", "memory"][0] == got["hnsw", "postgres"][0]
    assert max(abs(mem[t] - exact[t]) for t in mem) < 0.01
    lon, lat = truth_lonlat(CX, CY)
    near = store.candidates(got["scan", "memory"][:10])
    assert min(_dist(c.center_lon, c.center_lat, lon, lat) for c in near) < 56.0
    with pytest.raises(ConfigError, match="prefilter"):
        PgvectorRecall(prefilter="ivf")
    with pytest.raises(ConfigError, match="rescore must be one of postgres, memory"):
        PgvectorRecall(rescore="disk")


def test_near_position_recall_stays_inside_the_predicted_circle(store: Any, encoder: Any) -> None:
    lon, lat = truth_lonlat(CX, CY)
    state = _state(prior=Prior(lat, lon, 120.0), top_n=8)
    _prepare(store, encoder).run(state)
    Recall({}, NearPositionRecall(), [], store).run(state)
    ids = [t for t, _, _ in state.recalled]
    assert 0 < len(ids) <= 8 and set(ids) <= set(store.within(lat, lon, 120.0).tolist())
    tiles = store.candidates(ids)
    d = [_dist(t.center_lon, t.center_lat, lon, lat) for t in tiles]
    assert d == sorted(d)  # nearest first
    none = _state()
    _prepare(store, encoder).run(none)
    Recall({}, NearPositionRecall(), [], store).run(none)
    assert none.recalled == []
    Rerank({}, PhiCosineRerank(), store).run(none)
    assert none.stopped and none.message == "no candidate tile"


def test_rerank_orders_by_phi_at_each_tiles_best_heading(store: Any, encoder: Any) -> None:
    state = _ranked(store, encoder, _state())
    cands = state.candidates
    assert len(cands) == len(state.recalled)
    assert [c.score for c in cands] == sorted((c.score for c in cands), reverse=True)
    assert state.phi is not None
    best = cands[0]
    again = PhiCosineRerank().rerank(state.phi, best.tile.phi[None])[:, 0]
    assert best.score == pytest.approx(float(again.max())) and best.heading_idx == int(
        again.argmax()
    )
    # without a rerank plugin the Ω order stays
    plain = _state()
    _prepare(store, encoder).run(plain)
    Recall({}, FaissRecall(), [], store).run(plain)
    Rerank({}, None, store).run(plain)
    assert [c.tile_id for c in plain.candidates] == [t for t, _, _ in plain.recalled]


def test_consistency_scores_the_top_m_and_lowers_the_others(store: Any, encoder: Any) -> None:
    state = _ranked(store, encoder, _state(top_m=3))
    before = {c.tile_id: c.score for c in state.candidates}
    cs = NodeCentroidConsistency(weight=0.4)
    Consistency({}, cs).run(state)
    scored = [c for c in state.candidates if c.node_match is not None]
    assert len(scored) == 3
    for c in state.candidates:
        if c.node_match is None:
            assert c.final == pytest.approx(0.6 * before[c.tile_id])
        else:
            assert c.final == pytest.approx(0.6 * before[c.tile_id] + 0.4 * c.node_match.score)
    assert [c.final for c in state.candidates] == sorted(
        (c.final for c in state.candidates), reverse=True
    )
    off = _ranked(store, encoder, _state(consistency=False))
    order = [c.tile_id for c in off.candidates]
    Consistency({}, cs).run(off)
    assert [c.tile_id for c in off.candidates] == order and "consistency" in off.timings


def test_scheduler_plan_order() -> None:
    tiles = [type("T", (), {"tile_id": i})() for i in range(3)]
    cands = [Candidate(t, 0.0, 1.0 - 0.1 * i, i, 1.0) for i, t in enumerate(tiles)]
    headings = [0.0, 120.0, 240.0]
    learned, fb = sift(), sift()
    learned.fallback = fb
    sched = VerificationScheduler({}, learned, MapRegions(0.5), tile_px=224)
    plan = [(c.tile_id, h, v is fb) for c, h, v in sched.plan(cands, headings, sweep=True)]
    assert plan[:5] == [(0, 0.0, False), (0, 0.0, True), (1, 120.0, False), (2, 240.0, False)] + [
        (1, 120.0, True)
    ]
    assert plan[5] == (2, 240.0, True)
    sweep = plan[6:]
    assert [h for _, h, _ in sweep[:2]] == [45.0, 45.0] and {t for t, _, _ in sweep} == {0, 1}
    assert len(sweep) == 2 * len(SWEEP_DEG)  # the two best candidates at every sweep heading
    assert not any(v for _, _, v in sweep)
    no_sweep = sched.plan(cands, headings, sweep=False)
    assert len(no_sweep) == 6


def test_scheduler_verifies_the_view_and_answer_reports_it(store: Any, encoder: Any) -> None:
    state = _ranked(store, encoder, _state(view_heading=20.0))
    Consistency({}, NodeCentroidConsistency()).run(state)
    regions = MapRegions(store.map_gsd_m)
    VerificationScheduler({}, sift(), regions, tile_px=store.tile_px).run(state)
    assert state.verifying and state.match is not None
    lon, lat = truth_lonlat(CX, CY)
    assert _dist(state.match.lon, state.match.lat, lon, lat) < 2.0
    assert {"verify", "verify.frame_features", "verify.read_region", "verify.match"} <= set(
        state.timings
    )
    answer = Answer({}, None, tile_ground_m=store.tile_px * store.map_gsd_m, rotations=8)
    fix = answer.run(state, Fix(frame="v", status="no_match"))
    assert fix.status == "ok" and fix.method == "verified"
    assert (fix.lat, fix.lon) == (state.match.lat, state.match.lon)
    assert fix.verification is not None and fix.verification["attempts"] == state.match.attempts
    assert fix.heading_deg is not None and abs((fix.heading_deg - 20.0 + 180) % 360 - 180) < 5
    regions.close()


def test_answer_without_verification(store: Any, encoder: Any) -> None:
    cs = NodeCentroidConsistency()
    ground = store.tile_px * store.map_gsd_m
    state = _ranked(store, encoder, _state())
    Consistency({}, cs).run(state)
    fast = Answer(
        {"answer": "tile-centre", "min_confidence": 0.0}, cs, tile_ground_m=ground, rotations=8
    )
    fix = fast.run(state, Fix(frame="v", status="no_match"))
    top = state.candidates[0]
    assert fix.method == "tile-centre" and fix.tile_id == top.tile_id
    assert (fix.lat, fix.lon) == (top.tile.center_lat, top.tile.center_lon)
    assert fix.error_m_est == pytest.approx(0.5 * ground) and fix.status == "ok"
    assert fix.confidence == pytest.approx(fast.margin_confidence(state.candidates))
    assert len(fix.candidates) == 5
    # the same state when verification ran and failed: weak evidence, never ok by default
    state.verifying = True
    weak = Answer({}, cs, tile_ground_m=ground, rotations=8).run(
        state, Fix(frame="v", status="no_match")
    )
    assert weak.confidence == pytest.approx(0.45 * fast.margin_confidence(state.candidates))
    assert weak.status == "no_match" and weak.message is not None
    assert weak.message.endswith("; no candidate verified")
    if top.node_match is not None and cs.refined_centre(top.node_match) is not None:
        assert weak.method == "refined"
    stopped = FrameState(FrameRequest(image="x", name="x"))
    stopped.stop("no candidate tile")
    out = fast.run(stopped, Fix(frame="x", status="no_match"))
    assert out.status == "no_match" and out.message == "no candidate tile" and out.lat is None


def test_presets_only_override_stage_defaults() -> None:
    """Every preset value not overridden is the default_conf of the stage that uses it."""
    from geoloc.localize.pipeline import CHAIN_STAGES, GLOBAL_KEYS, PRESETS

    for name, overrides in PRESETS.items():
        cfg = preset(name)
        for stage in CHAIN_STAGES:
            for key, default in stage.default_conf.items():
                if key in GLOBAL_KEYS and key not in overrides:
                    assert getattr(cfg, key) == default, (name, key)
