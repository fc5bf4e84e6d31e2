"""Camera model: --camera files (JSON/YAML), HFOV, EXIF focal length, resizing, undistortion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from geoloc.camera import (
    Camera,
    CameraFileError,
    FrameMetadata,
    camera_from_exif,
    camera_from_hfov,
    load_camera,
)
from geoloc.camera.intrinsics import SENSORS
from geoloc.errors import ConfigError

K = [[1000.0, 0.0, 639.5], [0.0, 1002.0, 479.5], [0.0, 0.0, 1.0]]
DIST = [-0.12, 0.03, 0.001, -0.0005, 0.0]


def test_json_camera_file(tmp_path: Path) -> None:
    p = tmp_path / "cam.json"
    p.write_text(json.dumps({"K": K, "dist": DIST, "width": 1280, "height": 960}))
    cam = load_camera(p)
    assert np.allclose(cam.K, K) and cam.width == 1280 and cam.height == 960
    assert cam.dist is not None and np.allclose(cam.dist, DIST)
    assert cam.source == "file" and cam.detail == str(p)
    assert cam.as_dict()["K"] == K


def test_yaml_camera_file_and_opencv_shapes(tmp_path: Path) -> None:
    p = tmp_path / "cam.yaml"
    flat = [v for row in K for v in row]
    p.write_text(f"K: {flat}\ndist: [{DIST}]\nwidth: 1280\nheight: 960\n")
    cam = load_camera(p)
    assert np.allclose(cam.K, K) and cam.dist is not None and np.allclose(cam.dist, DIST)


def test_zero_distortion_means_none(tmp_path: Path) -> None:
    p = tmp_path / "cam.json"
    p.write_text(json.dumps({"K": K, "dist": [0, 0, 0, 0, 0], "width": 1280, "height": 960}))
    assert load_camera(p).dist is None


BAD = {
    "k_2x3.json": ({"K": [[1, 0, 1], [0, 1, 1]], "width": 10, "height": 10}, "3x3"),
    "negative_focal.json": (
        {"K": [[-800, 0, 5], [0, 800, 5], [0, 0, 1]], "width": 10, "height": 10},
        "focal lengths must be positive",
    ),
    "non_numeric.json": (
        {"K": [["f", 0, 5], [0, 800, 5], [0, 0, 1]], "width": 10, "height": 10},
        "must be a number",
    ),
    "missing_keys.json": ({"K": K}, "missing key(s) width, height"),
    "bad_last_row.json": (
        {"K": [[800, 0, 5], [0, 800, 5], [0, 1, 1]], "width": 10, "height": 10},
        "last row",
    ),
    "fractional_width.json": ({"K": K, "width": 10.5, "height": 10}, "positive integer"),
    "dist_length.json": ({"K": K, "dist": [0.1, 0.2, 0.3], "width": 10, "height": 10}, "dist"),
    "not_mapping.json": ([1, 2, 3], "mapping"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_camera_file_is_one_line_exit_2(tmp_path: Path, name: str) -> None:
    data, needle = BAD[name]
    p = tmp_path / name
    p.write_text(json.dumps(data))
    with pytest.raises(CameraFileError) as ei:
        load_camera(p)
    msg = str(ei.value)
    assert isinstance(ei.value, ConfigError) and ei.value.exit_code == 2
    assert "\n" not in msg and msg.startswith(str(p)) and needle in msg


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("broken.json", '{"K": [[1, 0', "not valid JSON"),
        ("broken.yaml", "K: [1, 2\nwidth: :", "not valid YAML"),
    ],
)
def test_unparseable_camera_file(tmp_path: Path, name: str, text: str, needle: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(CameraFileError, match=needle):
        load_camera(p)


def test_missing_camera_file(tmp_path: Path) -> None:
    with pytest.raises(CameraFileError, match="no such file"):
        load_camera(tmp_path / "nope.json")


def test_hfov_camera() -> None:
    cam = camera_from_hfov(70.0, 800, 600)
    assert cam.fx == pytest.approx(400.0 / math.tan(math.radians(35.0)))
    assert cam.fx == cam.fy and (cam.cx, cam.cy) == (399.5, 299.5)
    assert cam.hfov_deg == pytest.approx(70.0)
    for bad in (0.0, 180.0, float("nan")):
        with pytest.raises(ValueError):
            camera_from_hfov(bad, 800, 600)


def test_scaled_camera_projects_like_the_resized_image() -> None:
    cam = Camera(np.array(K), 1280, 960)
    half = cam.scaled(640, 480)
    pts = np.array([[0.1, -0.2, 1.0], [0.3, 0.25, 2.0]])
    full_px = (pts @ cam.K.T)[:, :2] / pts[:, 2:3]
    half_px = (pts @ half.K.T)[:, :2] / pts[:, 2:3]
    assert np.allclose(half_px, (full_px + 0.5) * 0.5 - 0.5)
    turned = cam.fitted_to(480, 640)  # a portrait image of the same sensor
    assert turned.fx == pytest.approx(cam.fy * 0.5) and turned.width == 480


def test_undistortion_of_points_and_pixels() -> None:
    import cv2

    cam = Camera(np.array(K), 1280, 960, np.array(DIST))
    ideal = np.array([[100.0, 80.0], [1200.0, 900.0], [640.0, 480.0], [300.0, 700.0]])
    rays = np.column_stack([ideal, np.ones(4)]) @ np.linalg.inv(cam.K).T
    distorted, _ = cv2.projectPoints(rays[:, None], np.zeros(3), np.zeros(3), cam.K, cam.dist)
    distorted = distorted.reshape(-1, 2)
    assert np.abs(distorted - ideal).max() > 5.0  # the lens moves the corners
    assert np.allclose(cam.undistort_points(distorted), ideal, atol=0.05)
    # a bright dot where the lens put it ends up where a pinhole camera would see it
    img = np.zeros((960, 1280, 3), np.uint8)
    x, y = np.round(distorted[0]).astype(int)
    img[y - 2 : y + 3, x - 2 : x + 3] = 255
    out = cam.undistort(img)
    ys, xs = np.nonzero(out[..., 0] > 100)
    assert abs(xs.mean() - ideal[0, 0]) < 1.5 and abs(ys.mean() - ideal[0, 1]) < 1.5


def test_camera_from_exif_sources() -> None:
    w, h = 4000, 2250
    known = camera_from_exif(
        FrameMetadata(model="FC300S", focal_length_mm=3.61, focal_35mm=20), w, h
    )
    assert known is not None and known.source == "exif"
    assert known.fx == pytest.approx(3.61 / SENSORS["FC300S"].sensor_width_mm * w)
    by35 = camera_from_exif(FrameMetadata(model="XYZ", focal_length_mm=4.5, focal_35mm=24), w, h)
    assert by35 is not None and by35.fx == pytest.approx(24 / 36 * w)
    plane = camera_from_exif(
        FrameMetadata(focal_length_mm=5.0, focal_plane_px_per_mm=500.0, exif_long_side=4000),
        2000,
        1125,
    )
    assert plane is not None and plane.fx == pytest.approx(5.0 * 500.0 * 0.5)
    assert camera_from_exif(FrameMetadata(model="FC300S"), w, h) is None
    assert camera_from_exif(FrameMetadata(), w, h) is None


def test_sensor_table_is_cited() -> None:
    assert len(SENSORS) >= 10
    for key, spec in SENSORS.items():
        assert key == key.upper() and spec.source.startswith("https://www.dji.com/")
        assert 5.0 < spec.sensor_width_mm < 20.0


def test_opencv_filestorage_yaml(tmp_path: Path) -> None:
    import cv2

    p = tmp_path / "calib.yaml"
    fs = cv2.FileStorage(str(p), cv2.FILE_STORAGE_WRITE)
    fs.write("K", np.array(K))
    fs.write("dist", np.array([DIST]))
    fs.write("width", 1280)
    fs.write("height", 960)
    fs.release()
    assert p.read_text().startswith("%YAML")
    cam = load_camera(p)
    assert np.allclose(cam.K, K) and cam.dist is not None and np.allclose(cam.dist, DIST)
