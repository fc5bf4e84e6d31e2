"""Frame preparation (camera, priors, undistort, rectify, GSD); matches -> pose via the chain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from geoloc.camera import (
    Camera,
    CameraFileError,
    CameraPose,
    FrameMetadata,
    PixelChain,
    Prior,
    Priors,
    camera_from_hfov,
    pose_from_matches,
    prepare_frame,
    resolve_camera,
)
from geoloc.camera.render import render_view
from tests.conftest import SAMPLE_RASTER


def test_pixel_chain_round_trip_and_resize_convention() -> None:
    import cv2

    yy, xx = np.mgrid[0:100, 0:160]
    img = np.exp(-((xx - 70.0) ** 2 + (yy - 40.0) ** 2) / (2 * 4.0**2)).astype(np.float32)
    f = 0.5
    small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(small > 1e-6)
    w = small[ys, xs]
    seen = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
    chain = PixelChain().then_scale(f)
    assert np.allclose(chain.from_source(np.array([[70.0, 40.0]]))[0], seen, atol=0.05)
    rot = cv2.getRotationMatrix2D((40.0, 25.0), 33.0, 1.0)
    chain.then(rot).then_crop(-10.0, 5.0)
    pts = np.array([[3.0, 4.0], [150.0, 90.0], [70.0, 40.0]])
    assert np.allclose(chain.to_source(chain.from_source(pts)), pts)
    with pytest.raises(ValueError):
        chain.then(np.eye(2))


def test_resolve_camera_order(tmp_path: Path) -> None:
    meta = FrameMetadata(model="FC300S", focal_length_mm=3.61)
    cam, why = resolve_camera(800, 450, meta=meta)
    assert cam is not None and cam.source == "exif" and "FC300S" in why
    cam, why = resolve_camera(800, 450, hfov_deg=70.0, meta=meta)
    assert cam is not None and cam.source == "hfov" and cam.hfov_deg == pytest.approx(70.0)
    p = tmp_path / "cam.json"
    p.write_text(
        json.dumps(
            {"K": [[1600, 0, 799.5], [0, 1600, 449.5], [0, 0, 1]], "width": 1600, "height": 900}
        )
    )
    cam, why = resolve_camera(800, 450, camera_file=str(p), hfov_deg=70.0, meta=meta)
    assert cam is not None and cam.source == "file" and cam.fx == pytest.approx(800.0)
    assert str(p) in why
    cam, why = resolve_camera(800, 450, meta=FrameMetadata())
    assert cam is None and "--camera" in why and "--hfov" in why
    p.write_text("{}")
    with pytest.raises(CameraFileError):
        resolve_camera(800, 450, camera_file=str(p))


def test_prepare_nadir_and_oblique(camera: Camera) -> None:
    rgb = np.full((camera.height, camera.width, 3), 120, np.uint8)
    nadir = prepare_frame(
        rgb, None, camera, Priors(pitch=Prior(-90.0, "xmp"), altitude=Prior(100.0, "flag"))
    )
    assert not nadir.rectified and nadir.rgb.shape == rgb.shape
    assert nadir.gsd_m == pytest.approx(100.0 / camera.fx)
    oblique = prepare_frame(
        rgb,
        None,
        camera,
        Priors(
            heading=Prior(200.0, "xmp"),
            pitch=Prior(-60.0, "xmp"),
            roll=Prior(0.0, "xmp"),
            altitude=Prior(100.0, "xmp"),
        ),
    )
    assert oblique.rectified and oblique.heading_deg == 200.0
    assert oblique.rgb.shape[0] > camera.height  # the far side of the footprint is longer
    assert oblique.gsd_m is not None and oblique.gsd_m <= 100.0 / camera.fx + 1e-9
    used = oblique.priors_used()
    assert used["pitch"] == {"value": -60.0, "source": "xmp"} and used["camera"]["source"] == "hfov"
    unknown = prepare_frame(rgb, None, None, Priors(heading=Prior(10.0, "flag")))
    assert unknown.camera is None and unknown.gsd_m is None and unknown.heading_deg == 10.0


def test_pose_from_matches_through_the_whole_chain() -> None:
    """Prepare (rectify) -> map GSD -> north-up -> crop; exact matches give back the pose."""
    import cv2

    from tiling import open_raster
    from tiling.crs import to_lonlat

    cam = camera_from_hfov(55.0, 480, 360)
    with open_raster(SAMPLE_RASTER) as r:
        x, y = r.transform @ (r.width / 2.0, r.height / 2.0)
        crs = r.crs_str
    heading, pitch, alt = 140.0, -58.0, 90.0
    truth = CameraPose.from_angles(x, y, alt, heading, pitch, 0.0, crs)
    view = render_view(SAMPLE_RASTER, cam, truth)
    priors = Priors(
        heading=Prior(heading, "xmp"), pitch=Prior(pitch, "xmp"), altitude=Prior(alt, "xmp")
    )
    prep = prepare_frame(view.rgb, view.mask, cam, priors)
    map_gsd = 0.5
    assert prep.gsd_m is not None
    f = prep.gsd_m / map_gsd
    prep.chain.then_scale(f)
    h, w = (round(s * f) for s in prep.rgb.shape[:2])
    rot = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), heading, 1.0)  # north-up
    prep.chain.then(rot).then_crop(w / 2.0 - 112, h / 2.0 - 112)
    # ground points the frame sees, as the matcher would find them in the frame and the region
    rng = np.random.default_rng(0)
    src = np.column_stack(
        [rng.uniform(20, cam.width - 20, 120), rng.uniform(20, cam.height - 20, 120)]
    )
    ground = view.ground_points(src)
    frame_px = prep.chain.from_source(src)
    lon, lat = to_lonlat(crs, *view.centre_ground())
    with open_raster(SAMPLE_RASTER) as r:
        _, _, rt = r.read_region(float(lon), float(lat), 512, map_gsd)
    inv = ~rt
    region_px = (
        np.column_stack(
            [
                inv.a * ground[:, 0] + inv.b * ground[:, 1] + inv.c,
                inv.d * ground[:, 0] + inv.e * ground[:, 1] + inv.f,
            ]
        )
        - 0.5
    )
    res = pose_from_matches(
        prep.chain, cam, frame_px, region_px, rt, crs, frame_size=(cam.width, cam.height)
    )
    assert res.ok, res.reason
    assert res.pose is not None and np.linalg.norm(res.pose.centre - truth.centre) < 0.05
    assert res.ground_xy is not None and math.dist(res.ground_xy, view.centre_ground()) < 0.05
    assert abs((res.heading_deg or 0.0) - heading) < 0.05
