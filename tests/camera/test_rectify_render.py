"""Rectification to a virtual nadir camera (GSD) and the pinhole renderer, checked on each other."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from geoloc.camera import Camera, CameraPose, camera_from_hfov, gsd_at_nadir, rectify
from geoloc.camera.rectify import nadir_rotation
from geoloc.camera.render import ground_crs, random_pose, render_view
from tests.conftest import SAMPLE_RASTER


def _sample_centre() -> tuple[float, float, float, str]:
    from tiling import open_raster

    with open_raster(SAMPLE_RASTER) as r:
        x, y = r.transform @ (r.width / 2.0, r.height / 2.0)
        return float(x), float(y), float(r.transform.a), r.crs_str


def test_nadir_rotation_identity_and_gsd(camera: Camera) -> None:
    assert np.allclose(nadir_rotation(-90.0, 0.0), np.eye(3))
    assert gsd_at_nadir(camera, 100.0) == pytest.approx(100.0 / camera.fx)
    with pytest.raises(ValueError):
        gsd_at_nadir(camera, 0.0)
    rgb = np.full((camera.height, camera.width, 3), 90, np.uint8)
    out = rectify(rgb, None, camera, -90.0, 0.0, altitude_m=100.0)
    assert out.rgb.shape[:2] == (camera.height, camera.width) and out.mask.all()
    assert out.tilt_deg == pytest.approx(0.0, abs=1e-6)
    assert out.gsd_m == pytest.approx(100.0 / camera.fx)


def test_nadir_render_is_the_raster_itself() -> None:
    """A nadir camera whose pixels are the raster's, centred on a pixel: an exact crop."""
    from tiling import open_raster

    x, y, gsd, crs = _sample_centre()
    with open_raster(SAMPLE_RASTER) as r:
        col, row = 300, 200
        cx, cy = r.transform @ (col + 0.5, row + 0.5)
        alt = 100.0
        f = alt / gsd
        cam = Camera(np.array([[f, 0, 40.0], [0, f, 30.0], [0, 0, 1]]), 81, 61)
        pose = CameraPose.from_angles(cx, cy, alt, 0.0, -90.0, 0.0, crs)
        # undo the convergence: the raster's columns run along grid east
        from geoloc.camera.attitude import camera_to_world

        pose.r_wc = camera_to_world(0.0, -90.0, 0.0)
        view = render_view(SAMPLE_RASTER, cam, pose)
        crop, _ = r.read_window(col - 40, row - 30, 1.0, 1.0, 81, 61)
    assert view.mask.all()
    diff = np.abs(view.rgb.astype(int) - crop.transpose(1, 2, 0).astype(int))
    assert diff.max() <= 1
    assert view.centre_ground() == pytest.approx((cx, cy), abs=1e-6)


def test_rectified_oblique_matches_a_nadir_render() -> None:
    """Rectify a rendered 35 deg oblique view; a nadir render with the virtual K looks the same."""
    cam = camera_from_hfov(55.0, 480, 360)
    x, y, _, crs = _sample_centre()
    heading, pitch, roll, alt = 70.0, -55.0, 2.0, 80.0
    pose = CameraPose.from_angles(x, y, alt, heading, pitch, roll, crs)
    view = render_view(SAMPLE_RASTER, cam, pose)
    assert view.mask.mean() > 0.95
    rect = rectify(view.rgb, view.mask, cam, pitch, roll, altitude_m=alt)
    assert rect.tilt_deg == pytest.approx(35.0, abs=0.1)
    nadir = CameraPose(pose.x, pose.y, pose.z, pose.r_wc @ nadir_rotation(pitch, roll).T, pose.crs)
    assert nadir.angles()[1] == pytest.approx(-90.0, abs=1e-6)
    assert nadir.angles()[0] == pytest.approx(heading, abs=1e-6)  # the heading is kept
    truth = render_view(SAMPLE_RASTER, rect.camera, nadir)
    both = rect.mask & truth.mask
    both[:2] = both[-2:] = False
    assert both.mean() > 0.5
    a = rect.rgb[both].astype(float).mean(axis=1)
    b = truth.rgb[both].astype(float).mean(axis=1)
    ncc = float(np.corrcoef(a, b)[0, 1])
    assert ncc > 0.9
    # geometry, exactly: ground points land where the virtual nadir camera sees them
    g = np.column_stack([view.ground_points(np.array([[50.0, 60.0], [400.0, 300.0]])), np.zeros(2)])
    src, _ = pose.project(cam, g)
    want, _ = nadir.project(rect.camera, g)
    assert np.allclose(rect.from_source(src), want, atol=1e-6)
    assert np.allclose(rect.to_source(want), src, atol=1e-6)
    # the rectified GSD is uniform: 10 m on the ground = 10 / gsd pixels anywhere
    assert rect.gsd_m == pytest.approx(alt / rect.camera.fx)
    p = np.array([[x, y, 0.0], [x + 10.0, y, 0.0]])
    q, _ = nadir.project(rect.camera, p)
    assert float(np.linalg.norm(q[1] - q[0])) * rect.gsd_m == pytest.approx(10.0, rel=1e-6)


def test_rectify_with_distortion_round_trip() -> None:
    cam = Camera(
        np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]]),
        640,
        480,
        np.array([-0.1, 0.02, 0, 0, 0]),
    )
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    rect = rectify(rgb, None, cam, -70.0, 0.0)
    pts = np.array([[10.0, 10.0], [600.0, 400.0], [320.0, 240.0]])
    assert np.allclose(rect.to_source(rect.from_source(pts)), pts, atol=1e-3)


def test_canvas_is_capped_and_horizon_refused(camera: Camera) -> None:
    rgb = np.zeros((camera.height, camera.width, 3), np.uint8)
    wide = rectify(rgb, None, camera, -30.0, 0.0)  # the top edge looks above the horizon
    assert wide.rgb.shape[0] * wide.rgb.shape[1] <= 4 * camera.width * camera.height + 2 * (
        wide.rgb.shape[0] + wide.rgb.shape[1]
    )
    with pytest.raises(ValueError, match="horizon"):
        rectify(rgb, None, camera, 10.0, 0.0)


def test_random_pose_within_ranges() -> None:
    rng = np.random.default_rng(0)
    crs = ground_crs(SAMPLE_RASTER)
    for _ in range(10):
        p = random_pose(SAMPLE_RASTER, rng, tilt_deg=(0, 45), altitude_m=(60, 150), margin_m=40)
        h, pitch, roll = p.angles()
        assert 60 <= p.z <= 150 and -90.0 <= pitch <= -45.0 + 1e-9 and roll == pytest.approx(0)
        assert p.crs == crs and 0 <= h < 360


def test_view_outside_the_raster_is_masked(camera: Camera) -> None:
    x, y, _, crs = _sample_centre()
    # far off the raster's west edge, looking west: nothing of the raster in view
    pose = CameraPose.from_angles(x - 5000.0, y, 100.0, 270.0, -60.0, 0.0, crs)
    view = render_view(SAMPLE_RASTER, camera, pose)
    assert not view.mask.any() and view.rgb.max() == 0
    level = CameraPose.from_angles(x, y, 100.0, 0.0, 0.0, 0.0, crs)  # horizon in the middle
    v2 = render_view(SAMPLE_RASTER, camera, level)
    assert not v2.mask[: camera.height // 2 - 2].any()
    assert math.isnan(v2.ground_points(np.array([[10.0, 10.0]]))[0, 0])


def test_saved_view_and_truth(tmp_path: Path, camera: Camera) -> None:
    import json

    from PIL import Image

    from geoloc.camera import load_camera
    from tiling.crs import to_lonlat

    x, y, _, crs = _sample_centre()
    pose = CameraPose.from_angles(x, y, 100.0, 30.0, -70.0, 0.0, crs)
    view = render_view(SAMPLE_RASTER, camera, pose)
    png = view.save(tmp_path, "v0")
    assert np.array_equal(np.asarray(Image.open(png)), view.rgb)
    truth = json.loads((tmp_path / "v0.json").read_text())
    assert truth["heading_deg"] == pytest.approx(30.0) and truth["alt_agl_m"] == 100.0
    assert (truth["ground_lon"], truth["ground_lat"]) == pytest.approx(
        to_lonlat(crs, *view.centre_ground())
    )
    assert np.allclose(load_camera(tmp_path / "v0.camera.json").K, camera.K)
