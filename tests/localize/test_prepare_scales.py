"""The scale search of frame preparation: a frame whose GSD nothing gives is tried at a few
scales, and the verified match measures its GSD (and, with a camera model, the altitude)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from geoloc.localize.prepare import FramePreparation
from geoloc.localize.priors import HeadingPrior
from geoloc.localize.state import FrameRequest, FrameState
from tests.localize.conftest import truth_lonlat, write_jpeg
from tests.localize.views import sample_rgb, view

pytestmark = pytest.mark.slow

SAMPLE_GSD = 0.28


def _prep(encoder: Any, **conf: Any) -> FramePreparation:
    return FramePreparation(conf, encoder, [HeadingPrior()], map_gsd_m=0.5, tile_px=224)


def test_unknown_gsd_builds_the_scale_hypotheses_and_steps_through_them(encoder: Any) -> None:
    rgb = view(sample_rgb(), 1000.0, 600.0, 320)
    prep = _prep(encoder)
    state = FrameState(FrameRequest(image=rgb, name="v", heading_deg=0.0))
    prep.run(state)
    search = state.scale_search
    assert search is not None and search.relative == [1.0, 2.0, 0.5]
    # the first hypothesis is the one-tile assumption: the 320 px side spans 224 map px
    assert search.default_factor == pytest.approx(224 / 320)
    assert state.image is not None and state.image.shape[0] == 224
    seen = [state.image.shape[0]]
    first = state.omega
    while prep.next_scale(state):
        assert state.image is not None and state.map_scale == pytest.approx(search.factor)
        assert state.omega is not None and state.omega.shape == (1, encoder.omega_dim)
        seen.append(state.image.shape[0])
    assert seen == [224, 448, 112]
    assert first is not None and state.omega is not None
    assert not np.allclose(first, state.omega)  # re-encoded
    assert not prep.next_scale(state)  # none left
    # without a verified match the report names the hypotheses and measures nothing
    rep = prep.scale_report(state)
    assert rep is not None and rep["tried"] == 3 and rep["verified"] is None
    assert rep["gsd_m"] is None and rep["default_gsd_m"] == pytest.approx(0.5 * 320 / 224)


def test_known_gsd_or_a_single_scale_means_no_search(encoder: Any) -> None:
    rgb = view(sample_rgb(), 1000.0, 600.0, 320)
    known = FrameState(FrameRequest(image=rgb, name="v", gsd_m=SAMPLE_GSD))
    _prep(encoder).run(known)
    assert known.scale_search is None and not _prep(encoder).next_scale(known)
    single = FrameState(FrameRequest(image=rgb, name="v"))
    p = _prep(encoder, scales=(1.0,))
    p.run(single)
    assert single.scale_search is None and p.scale_report(single) is None


def test_a_view_at_twice_the_map_gsd_is_located_without_gsd(
    ingested: Any, encoder: Any, tmp_path: Path
) -> None:
    """300 px at 1 m/px (the map is 0.5 m/px): the one-tile assumption is 2.7x too fine and
    verifies nothing; the 2x hypothesis verifies and the match measures 1 m/px, and with the
    HFOV the altitude (the pose, solved independently, agrees)."""
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m

    cx, cy, gsd, heading, hfov = 1053.0, 593.0, 1.0, 37.0, 60.0
    rgb = view(sample_rgb(), cx, cy, 300, heading_deg=heading, scale=SAMPLE_GSD / gsd)
    frame = write_jpeg(tmp_path / "coarse.jpg", rgb)
    lon, lat = truth_lonlat(cx, cy)
    altitude = gsd * 150.0 / math.tan(math.radians(hfov / 2.0))  # nadir pinhole, 300 px wide
    with Localizer.open(ingested, encoder=encoder) as loc:
        assert loc.map_gsd_m == pytest.approx(0.5)
        loc.prepare.conf["scales"] = (1.0,)  # the one-tile assumption alone
        alone = loc.locate(frame, heading=heading, hfov_deg=hfov)
        loc.prepare.conf["scales"] = FramePreparation.default_conf["scales"]
        fix = loc.locate(frame, heading=heading, hfov_deg=hfov)
    assert alone.method != "verified" and alone.scale is None
    assert fix.status == "ok" and fix.method == "verified", fix.message
    # the pose stage is part of the chain the answer records
    assert fix.pipeline["chain"][-3:] == [
        "verify:xfeat-lighterglue",
        "pose:pnp-plane",
        "answer:verified",
    ]
    assert fix.lat is not None and fix.lon is not None
    assert geodesic_distance_m(fix.lon, fix.lat, lon, lat) < 2.0
    rep = fix.scale
    assert rep is not None and rep["verified"] == 2.0 and rep["tried"] == 2
    assert rep["gsd_m"] == pytest.approx(gsd, rel=0.03)
    assert rep["altitude_m"] == pytest.approx(altitude, rel=0.03)
    assert fix.camera is not None, fix.camera_reason
    assert fix.camera["alt_agl_m"] == pytest.approx(altitude, rel=0.03)
