"""The camera wired through the chain: a rendered oblique view located by ``geoloc locate``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SAMPLE_RASTER
from tests.localize.conftest import write_jpeg
from tests.localize.views import sample_rgb, view

pytestmark = pytest.mark.slow


def _cli(argv: list[str], settings: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    from geoloc.cli.main import main

    monkeypatch.setenv("GEOLOC_HOME", str(settings.home))
    monkeypatch.setenv("GEOLOC_DATABASE_URL", settings.database_url)
    with pytest.raises(SystemExit) as ei:
        main(argv)
    return int(ei.value.code or 0)


def _flat_dem(path: Path, height_m: float) -> Path:
    """A flat DEM at ``height_m`` in EPSG:4326 (not the map's CRS) over the whole sample."""
    import rasterio
    from affine import Affine

    from tiling import open_raster
    from tiling.crs import to_lonlat

    with open_raster(SAMPLE_RASTER) as r:
        lon0, lat0 = to_lonlat(r.crs_str, *(r.transform @ (-50.0, -50.0)))
    n = 1200
    with rasterio.open(
        path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32",
        crs="EPSG:4326", transform=Affine(1e-5, 0.0, float(lon0), 0.0, -1e-5, float(lat0)),
    ) as ds:  # fmt: skip
        ds.write(np.full((n, n), height_m, np.float32), 1)
    return path


def _oblique(
    tmp_path: Path, heading: float, tilt: float, alt: float, ground_z: float = 0.0
) -> tuple[Path, Path, Any]:
    """A rendered view of the sample's centre, its camera file and the rendered view (truth)."""
    from geoloc.camera import CameraPose, camera_from_hfov
    from geoloc.camera.render import render_view
    from tiling import open_raster

    cam = camera_from_hfov(60.0, 640, 480)
    with open_raster(SAMPLE_RASTER) as r:
        gx, gy = r.transform @ (r.width / 2.0, r.height / 2.0)
        crs = r.crs_str
    back = alt * math.tan(math.radians(tilt))
    # UTM grid north is within a degree of true north here; the pose's heading is from true north
    cx = gx - back * math.sin(math.radians(heading))
    cy = gy - back * math.cos(math.radians(heading))
    truth = CameraPose.from_angles(cx, cy, ground_z + alt, heading, tilt - 90.0, 0.0, crs)
    rendered = render_view(SAMPLE_RASTER, cam, truth, ground_z=ground_z)
    assert rendered.mask.mean() > 0.99  # the whole view lies on the map
    frame = write_jpeg(tmp_path / f"oblique_{heading:.0f}.jpg", rendered.rgb)
    cam_file = tmp_path / "camera.json"
    cam_file.write_text(json.dumps({"K": cam.K.tolist(), "width": 640, "height": 480}))
    return frame, cam_file, rendered


@pytest.mark.parametrize("heading_known", [True, False])
def test_oblique_view_recovers_the_camera_pose(
    ingested: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    heading_known: bool,
) -> None:
    """The known-heading run also has a DEM (flat, 25 m, another CRS): heights in its datum."""
    from tiling.crs import geodesic_distance_m, to_lonlat

    heading, tilt, alt = 35.0, 30.0, 90.0
    ground_z = 25.0 if heading_known else 0.0
    frame, cam_file, rendered = _oblique(tmp_path, heading, tilt, alt, ground_z)
    argv = ["locate", str(frame), "--camera", str(cam_file), "--pitch", str(tilt - 90.0)]
    argv += ["--altitude", str(alt)]
    if heading_known:
        dem = _flat_dem(tmp_path / "dem.tif", ground_z)
        argv += ["--heading", str(heading), "--dem", str(dem)]
    code = _cli(argv, ingested, monkeypatch)
    out, err = capsys.readouterr()
    assert out.strip(), err
    d = json.loads(out.splitlines()[0])
    assert code == 0, (d.get("message"), err)
    cam = d["camera"]
    assert cam is not None, d["camera_reason"]
    lon, lat = to_lonlat(rendered.pose.crs, rendered.pose.x, rendered.pose.y)
    # One view: the targets (2 m camera, 1 m ground) are medians over many views
    # (benchmarks/camera.py). The matches are found on the map's 0.5 m pixels, and at this tilt
    # a fraction of a map pixel trades pitch for position along the view direction; the pose
    # stage refines them at the frame's resolution first, so one map pixel (0.5 m) of slack
    # each way is left, and the answer's own error estimate must cover the error it makes.
    cam_err = geodesic_distance_m(cam["lon"], cam["lat"], float(lon), float(lat))
    assert cam_err < 1.0
    assert cam_err <= 2.0 * cam["error_m_est"]
    assert abs(cam["alt_agl_m"] - alt) < 0.03 * alt
    if heading_known:
        assert abs(cam["alt_msl_m"] - (ground_z + alt)) < 0.03 * alt
    else:
        assert cam["alt_msl_m"] is None
    assert abs((cam["heading_deg"] - heading + 180.0) % 360.0 - 180.0) < 2.0
    assert abs(cam["pitch_deg"] - (tilt - 90.0)) < 2.0
    glon, glat = to_lonlat(rendered.pose.crs, *rendered.centre_ground())
    assert geodesic_distance_m(d["lon"], d["lat"], float(glon), float(glat)) < 1.0
    assert d["priors"]["pitch"] == {"value": tilt - 90.0, "source": "flag"}
    assert d["priors"]["altitude"]["source"] == "flag"
    assert d["priors"]["camera"]["source"] == "file"
    assert ("heading" in d["priors"]) == heading_known
    pose_stage = "pose:pnp-dem" if heading_known else "pose:pnp-plane"
    assert d["pipeline"]["chain"][-2:] == [pose_stage, "answer:verified"]


@pytest.mark.parametrize("heading_known", [True, False])
def test_low_view_smaller_than_a_tile_is_located_with_its_heading_known(
    ingested: Any, encoder: Any, tmp_path: Path, heading_known: bool
) -> None:
    """From 70 m the frame covers about half a tile: the learned matcher's matches come and go
    with a few degrees of rotation there, so one known heading used to find nothing where the
    sweep's other rotations did; the coarse check's model now guides the matching again."""
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m, to_lonlat

    heading, tilt, alt = 0.0, 17.5, 70.0
    frame, cam_file, rendered = _oblique(tmp_path, heading, tilt, alt)
    with Localizer.open(ingested, encoder=encoder) as loc:
        fix = loc.locate(
            frame,
            camera=cam_file,
            pitch=tilt - 90.0,
            altitude_m=alt,
            heading=heading if heading_known else None,
        )
    assert fix.status == "ok", fix.message
    glon, glat = to_lonlat(rendered.pose.crs, *rendered.centre_ground())
    assert fix.lat is not None and fix.lon is not None
    assert geodesic_distance_m(fix.lon, fix.lat, float(glon), float(glat)) < 1.0
    assert fix.camera is not None, fix.camera_reason
    lon, lat = to_lonlat(rendered.pose.crs, rendered.pose.x, rendered.pose.y)
    assert geodesic_distance_m(fix.camera["lon"], fix.camera["lat"], float(lon), float(lat)) < 2.0


def test_bad_camera_file_is_a_one_line_usage_error(
    ingested: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frame = write_jpeg(tmp_path / "f.jpg", view(sample_rgb(), 1000.0, 600.0, 400))
    bad = tmp_path / "cam.json"
    bad.write_text(json.dumps({"K": [[-500, 0, 320], [0, 500, 240]], "width": 640, "height": 480}))
    code = _cli(["locate", str(frame), "--camera", str(bad)], ingested, monkeypatch)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cam.json" in lines[0], err


def test_without_a_camera_model_camera_is_null_with_the_reason(
    ingested: Any, encoder: Any, tmp_path: Path
) -> None:
    from geoloc.localize import Localizer

    frame = write_jpeg(tmp_path / "nadir.jpg", view(sample_rgb(), 1000.0, 600.0, 400))
    with Localizer.open(ingested, encoder=encoder) as loc:
        fix = loc.locate(frame, gsd=0.28)
    assert fix.status == "ok" and fix.method == "verified"
    d = fix.as_dict()
    assert d["camera"] is None and "no camera model" in str(d["camera_reason"])
    assert np.isfinite(d["lat"]) and d["priors"] == {}
