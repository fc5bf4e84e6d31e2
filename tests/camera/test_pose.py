"""Camera pose from correspondences: planar PnP, DEM PnP, error estimate, impossible poses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from geoloc.camera import (
    Camera,
    CameraPose,
    PoseConfig,
    correspondences_from_homography,
    open_dem,
    solve_pose,
)
from geoloc.camera.pose import _ground_hit, metric_crs, physical_reason
from tiling.crs import from_lonlat, geodesic_distance_m, to_lonlat

UTM = "EPSG:32634"
X0, Y0 = 580_760.0, 6_697_380.0  # Turku, inside UTM 34N


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _synthetic(
    pose: CameraPose,
    cam: Camera,
    rng: np.random.Generator,
    n: int = 200,
    noise_px: float = 0.5,
    outliers: float = 0.2,
    height_at: object = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels, ground points (x, y, z) they see, and which are outliers."""
    px = np.column_stack([rng.uniform(0, cam.width - 1, n), rng.uniform(0, cam.height - 1, n)])
    d = pose.rays(cam, px)
    pts = []
    for di in d:
        hit = _ground_hit(pose.centre, di, height_at, 0.0)  # type: ignore[arg-type]
        pts.append(hit if hit is not None else np.full(3, np.nan))
    g = np.array(pts)
    bad = rng.random(n) < outliers
    g[bad, :2] += rng.uniform(-40, 40, (int(bad.sum()), 2))
    return px + rng.normal(0, noise_px, px.shape), g, bad


POSES = [
    (0.0, -90.0, 0.0, 60.0),
    (135.0, -70.0, 2.0, 100.0),
    (300.0, -45.0, -3.0, 150.0),
    (20.0, -60.0, 0.0, 120.0),
]


@pytest.mark.parametrize(("heading", "pitch", "roll", "alt"), POSES)
def test_planar_pose_recovered(
    camera: Camera, heading: float, pitch: float, roll: float, alt: float
) -> None:
    truth = CameraPose.from_angles(X0, Y0, alt, heading, pitch, roll, UTM)
    rng = np.random.default_rng(int(heading))
    px, g, bad = _synthetic(truth, camera, rng)
    res = solve_pose(px, g[:, :2], UTM, camera)
    assert res.ok, res.reason
    assert res.pose is not None and res.inlier_mask is not None
    assert np.linalg.norm(res.pose.centre - truth.centre) < 0.5
    assert res.alt_agl_m == pytest.approx(alt, rel=0.01) and res.alt_msl_m is None
    assert _angle_diff(res.heading_deg or 0.0, heading) < 0.5
    assert res.pitch_deg == pytest.approx(pitch, abs=0.5)
    assert res.roll_deg == pytest.approx(roll, abs=0.5)
    assert (res.inlier_mask & bad).sum() <= 2 and res.inliers > 0.7 * len(px)
    # the ground point under the frame centre, through the pose
    d = truth.rays(camera, np.array([[(camera.width - 1) / 2, (camera.height - 1) / 2]]))[0]
    true_ground = truth.centre - truth.z / d[2] * d
    assert res.ground_xy is not None
    assert math.dist(res.ground_xy, true_ground[:2]) < 0.3
    assert res.error_m_est is not None and 0.0 < res.error_m_est < 2.0
    assert res.ground_error_m_est is not None and res.ground_error_m_est > 0
    lon, lat = to_lonlat(UTM, truth.x, truth.y)
    assert geodesic_distance_m(res.lon, res.lat, lon, lat) < 0.5
    answer = res.as_answer()
    keys = "lat lon alt_agl_m alt_msl_m heading_deg pitch_deg roll_deg error_m_est"
    assert answer is not None and set(answer) == set(keys.split())


def test_error_estimate_grows_with_noise(camera: Camera) -> None:
    truth = CameraPose.from_angles(X0, Y0, 100.0, 45.0, -65.0, 0.0, UTM)
    est = []
    for noise in (0.5, 3.0):
        px, g, _ = _synthetic(truth, camera, np.random.default_rng(3), noise_px=noise, outliers=0.0)
        res = solve_pose(px, g[:, :2], UTM, camera, config=PoseConfig(ransac_px=12.0))
        assert res.ok, res.reason
        est.append(res.error_m_est or 0.0)
    assert est[1] > 2.0 * est[0]


def test_geographic_ground_points(camera: Camera) -> None:
    truth = CameraPose.from_angles(X0, Y0, 90.0, 210.0, -55.0, 0.0, UTM)
    px, g, _ = _synthetic(truth, camera, np.random.default_rng(5))
    lon, lat = to_lonlat(UTM, g[:, 0], g[:, 1])
    res = solve_pose(px, np.column_stack([lon, lat]), "EPSG:4326", camera)
    assert res.ok, res.reason
    assert res.pose is not None and res.pose.crs == UTM  # the local UTM zone
    assert np.linalg.norm(res.pose.centre - truth.centre) < 0.5
    assert _angle_diff(res.heading_deg or 0.0, 210.0) < 0.5


def test_web_mercator_is_not_metric() -> None:
    lon, lat = 22.46, 60.40
    assert metric_crs("EPSG:3857", lon, lat) == UTM
    assert metric_crs(UTM, lon, lat) == UTM
    assert metric_crs("EPSG:4326", lon, lat) == UTM


def _write_dem(path: Path) -> None:
    """A hilly DEM in EPSG:4326 (not the points' CRS): 40 m +- 15 m over ~600 m, 1 m cells."""
    import rasterio
    from affine import Affine

    lon0, lat0 = to_lonlat(UTM, X0 - 400.0, Y0 + 400.0)
    dlon, dlat = 1.0 / 55_000.0, 1.0 / 111_300.0
    n = 800
    cols, rows = np.meshgrid(np.arange(n), np.arange(n))
    z = 40.0 + 15.0 * np.sin(cols / 90.0) * np.cos(rows / 70.0) + 0.01 * cols
    with rasterio.open(
        path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32",
        crs="EPSG:4326", transform=Affine(dlon, 0.0, lon0, 0.0, -dlat, lat0), nodata=-9999.0,
    ) as ds:  # fmt: skip
        ds.write(z.astype(np.float32), 1)


def test_dem_pose_in_another_crs(tmp_path: Path, camera: Camera) -> None:
    dem_path = tmp_path / "dem_4326.tif"
    _write_dem(dem_path)
    with open_dem(dem_path) as dem:
        ground_under = float(dem.heights(np.array([X0]), np.array([Y0]), UTM)[0])
        assert 20.0 < ground_under < 60.0
        truth = CameraPose.from_angles(X0, Y0, ground_under + 110.0, 75.0, -50.0, 1.0, UTM)

        def height_at(x: float, y: float) -> float:
            return float(dem.heights(np.array([x]), np.array([y]), UTM)[0])

        px, g, _ = _synthetic(truth, camera, np.random.default_rng(9), height_at=height_at)
        keep = np.isfinite(g).all(axis=1)
        assert np.ptp(g[keep, 2]) > 5.0  # real relief in view
        res = solve_pose(px[keep], g[keep, :2], UTM, camera, dem=dem)
        flat = solve_pose(px[keep], g[keep, :2], UTM, camera)
    assert res.ok, res.reason
    assert res.pose is not None and np.linalg.norm(res.pose.centre - truth.centre) < 0.5
    assert res.alt_msl_m == pytest.approx(truth.z, abs=0.5)
    assert res.alt_agl_m == pytest.approx(110.0, abs=0.5)
    assert _angle_diff(res.heading_deg or 0.0, 75.0) < 0.5
    # the relief is why the DEM is needed: the flat-ground solution is much further off
    if flat.ok and flat.pose is not None:
        assert np.linalg.norm(flat.pose.centre[:2] - truth.centre[:2]) > np.linalg.norm(
            res.pose.centre[:2] - truth.centre[:2]
        )


def test_dem_file_errors(tmp_path: Path) -> None:
    from geoloc.camera import DemFileError

    with pytest.raises(DemFileError, match="no such file") as ei:
        open_dem(tmp_path / "missing.tif")
    assert ei.value.exit_code == 2
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(DemFileError, match="not a readable raster"):
        open_dem(junk)


def test_dem_heights_bilinear_and_nan_outside(tmp_path: Path) -> None:
    import rasterio
    from affine import Affine

    p = tmp_path / "ramp.tif"
    z = np.add.outer(np.zeros(10), np.arange(10.0)).astype(np.float32)  # z = column index
    z[0, 0] = -9999.0
    with rasterio.open(
        p, "w", driver="GTiff", width=10, height=10, count=1, dtype="float32",
        crs=UTM, transform=Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 2000.0), nodata=-9999.0,
    ) as ds:  # fmt: skip
        ds.write(z, 1)
    with open_dem(p) as dem:
        h = dem.heights(
            np.array([1005.0, 1006.0, 900.0, 1001.0]),
            np.array([1990.0, 1990.0, 1990.0, 1999.0]),
            UTM,
        )
    assert h[0] == pytest.approx(2.0) and h[1] == pytest.approx(2.5)  # pixel centres at 1001 + 2 i
    assert math.isnan(h[2]) and math.isnan(h[3])  # outside; next to nodata


def test_physical_reasons() -> None:
    cfg = PoseConfig(min_height_m=1.0, max_height_m=5000.0)
    c = np.array([0.0, 0.0, 100.0])
    assert physical_reason(c, np.array([50.0, 80.0]), 0.0, cfg) is None
    assert "behind the camera" in (physical_reason(c, np.array([50.0, -1.0]), 0.0, cfg) or "")
    assert "below the ground" in (physical_reason(c, np.array([5.0]), 120.0, cfg) or "")
    assert "> 5000" in (physical_reason(np.array([0, 0, 9000.0]), np.array([5.0]), 0.0, cfg) or "")
    assert "< 1" in (physical_reason(np.array([0, 0, 0.5]), np.array([5.0]), 0.0, cfg) or "")


def test_camera_under_the_ground_is_rejected(camera: Camera) -> None:
    # a camera 80 m under the plane looking up sees the same kind of point pattern
    truth = CameraPose.from_angles(X0, Y0, -80.0, 10.0, 70.0, 0.0, UTM)
    px = np.column_stack([rng_u(camera.width, 1), rng_u(camera.height, 2)])
    d = truth.rays(camera, px)
    s = -truth.z / d[:, 2]
    g = truth.centre + s[:, None] * d
    res = solve_pose(px, g[:, :2], UTM, camera)
    assert not res.ok and "below the ground" in res.reason
    assert res.as_answer() is None


def rng_u(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, n - 1, 150)


def test_too_few_points(camera: Camera) -> None:
    res = solve_pose(np.zeros((3, 2)), np.zeros((3, 2)), UTM, camera)
    assert not res.ok and "correspondences" in res.reason
    with pytest.raises(ValueError):
        solve_pose(np.zeros((8, 2)), np.zeros((7, 2)), UTM, camera)


def test_pose_from_a_homography(camera: Camera) -> None:
    truth = CameraPose.from_angles(X0, Y0, 120.0, 250.0, -65.0, 0.0, UTM)
    # ground (x, y, 1) -> pixel is K [r1 r2 t]; its inverse maps frame pixels to the ground
    r_cw = truth.r_wc.T
    t = -r_cw @ truth.centre
    h_ground_to_px = camera.K @ np.column_stack([r_cw[:, 0], r_cw[:, 1], t])
    px, g = correspondences_from_homography(
        np.linalg.inv(h_ground_to_px), camera.width, camera.height
    )
    res = solve_pose(px, g, UTM, camera)
    assert res.ok and res.pose is not None
    assert np.linalg.norm(res.pose.centre - truth.centre) < 0.05


def test_lonlat_of_pose() -> None:
    lon, lat = 22.4659, 60.4047
    x, y = from_lonlat(UTM, lon, lat)
    p = CameraPose.from_angles(x, y, 50.0, 0.0, -90.0, 0.0, UTM)
    assert p.lonlat() == pytest.approx((lon, lat))
    assert p.angles()[0] == pytest.approx(0.0, abs=1e-9)
