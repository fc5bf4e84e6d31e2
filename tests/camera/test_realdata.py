"""A rendered oblique view of the real Turku imagery, matched with SIFT, gives back its pose."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from geoloc.camera import CameraPose, camera_from_hfov
from geoloc.camera.render import ground_crs, render_view

pytestmark = pytest.mark.realdata


def test_oblique_view_pose_from_sift_matches(turku_dir: Path) -> None:
    from benchmarks.camera import _matcher, match_view
    from tiling import open_raster

    raster = turku_dir / "turku_mosaic_utm34n.tif"
    crs = ground_crs(raster)
    with open_raster(raster) as r:
        x, y = r.transform @ (r.width * 0.4, r.height * 0.5)
    cam = camera_from_hfov(60.0, 800, 600)
    heading, pitch, alt = 233.0, -90.0 + 35.0, 110.0
    truth = CameraPose.from_angles(x, y, alt, heading, pitch, 0.0, crs)
    view = render_view(raster, cam, truth)
    assert view.mask.mean() > 0.9
    m = match_view(view, raster, _matcher("sift"), np.random.default_rng(0), map_gsd=0.25)
    assert m["matches"] >= 30
    res = m["pose"]
    assert res is not None and res.ok, res.reason if res is not None else m["reason"]
    assert res.pose is not None and res.alt_agl_m is not None and res.ground_xy is not None
    assert math.hypot(res.pose.x - truth.x, res.pose.y - truth.y) < 2.0
    assert abs(res.alt_agl_m - alt) / alt < 0.03
    assert abs(((res.heading_deg or 0.0) - heading + 180.0) % 360.0 - 180.0) < 2.0
    assert math.dist(res.ground_xy, view.centre_ground()) < 1.0
