"""The synthetic view generator keeps its truth right."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Geod
from rasterio.transform import from_origin

from geoloc.training.synthetic import SyntheticError, ViewParams, ViewSynthesizer

GEOD = Geod(ellps="WGS84")


def _write_raster(path: Path, crs: str, transform: rasterio.Affine, size: int = 600) -> Path:
    """Smooth random texture with two bright markers: at the centre and 40 px north of it."""
    rng = np.random.default_rng(1)
    base = rng.integers(40, 120, size=(3, size // 8, size // 8)).astype(np.uint8)
    img = np.kron(base, np.ones((1, 8, 8), dtype=np.uint8))
    c = size // 2
    img[:, c - 1 : c + 2, c - 1 : c + 2] = 255  # centre marker, 3x3 px
    img[0, c - 41 : c - 38, c - 1 : c + 2] = 255  # red-only marker 40 px north
    img[1:, c - 41 : c - 38, c - 1 : c + 2] = 0
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=transform,
    ) as ds:
        ds.write(img)
    return path


@pytest.fixture(scope="module", params=["utm", "lonlat"])
def raster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("syn")
    if request.param == "utm":
        return _write_raster(d / "utm.tif", "EPSG:32634", from_origin(580000, 6697000, 0.25, 0.25))
    # about 0.25 m in both directions at 60.4 N
    return _write_raster(d / "ll.tif", "EPSG:4326", from_origin(22.46, 60.40, 4.5e-6, 2.25e-6))


def _marker_lonlat(s: ViewSynthesizer) -> tuple[float, float]:
    c = s.width // 2
    return s.px_to_lonlat(float(c), float(c))


def _brightest(img: np.ndarray) -> tuple[float, float]:
    w = img.astype(float).min(axis=2)  # white only (the red marker has G=B=0)
    ys, xs = np.nonzero(w >= w.max() - 30)
    wt = w[ys, xs] - w[ys, xs].min() + 1
    return float((xs * wt).sum() / wt.sum()), float((ys * wt).sum() / wt.sum())


def test_recorded_centre_maps_back_to_ground_point(raster: Path) -> None:
    s = ViewSynthesizer(raster, size=96)
    lon, lat = _marker_lonlat(s)
    rng = np.random.default_rng(0)
    for _ in range(10):
        p = s.sample_params(rng)
        v = s.render(lon, lat, p)
        col, row = v.view_to_raster(*v.center_px)
        glon, glat = s.px_to_lonlat(col, row)
        # the recorded truth is where the centre pixel maps to, within 1 px of ground
        assert GEOD.inv(glon, glat, v.lon, v.lat)[2] < s.gsd_m
        # and the truth moved from the requested point by exactly the requested offset
        d = GEOD.inv(lon, lat, v.lon, v.lat)[2]
        assert d == pytest.approx(math.hypot(*p.offset_m), abs=0.05)


def test_marker_appears_at_view_centre(raster: Path) -> None:
    """Independent of the homography: the bright marker under the point is seen at the centre."""
    s = ViewSynthesizer(raster, size=97)
    lon, lat = _marker_lonlat(s)
    rng = np.random.default_rng(3)
    for _ in range(8):
        p = s.sample_params(rng)
        p = ViewParams(
            heading_deg=p.heading_deg,
            scale=p.scale,
            tilt_deg=p.tilt_deg,
            tilt_azimuth_deg=p.tilt_azimuth_deg,
        )
        v = s.render(lon, lat, p)
        x, y = _brightest(v.image)
        cx, cy = v.center_px
        assert math.hypot(x - cx, y - cy) <= 1.0, (p, x, y)


@pytest.mark.parametrize(("heading", "direction"), [(0, (0, -1)), (90, (-1, 0)), (180, (0, 1))])
def test_heading_convention(raster: Path, heading: float, direction: tuple[int, int]) -> None:
    """Heading = where the top of the view points: a marker north of the centre appears
    above it at heading 0, left of it at heading 90 (top points east), below at 180."""
    s = ViewSynthesizer(raster, size=129)
    lon, lat = _marker_lonlat(s)
    v = s.render(lon, lat, ViewParams(heading_deg=heading))
    red = v.image[:, :, 0].astype(int) - v.image[:, :, 1].astype(int)
    ys, xs = np.nonzero(red > 200)
    cx, cy = v.center_px
    dx, dy = xs.mean() - cx, ys.mean() - cy
    assert math.hypot(dx, dy) == pytest.approx(40, abs=1.5)
    assert dx / 40 == pytest.approx(direction[0], abs=0.05)
    assert dy / 40 == pytest.approx(direction[1], abs=0.05)


def test_random_views_are_reproducible_and_valid(sample_raster: Path) -> None:
    s = ViewSynthesizer(sample_raster, size=64)
    a = [s.random_view(*s.random_point(r), r) for r in [np.random.default_rng(7)]][0]
    b = [s.random_view(*s.random_point(r), r) for r in [np.random.default_rng(7)]][0]
    assert np.array_equal(a.image, b.image) and (a.lon, a.lat) == (b.lon, b.lat)
    assert a.valid_fraction >= 0.98
    assert s.gsd_m / 1.4 - 1e-9 <= a.gsd_m <= s.gsd_m / 0.7 + 1e-9
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64, 3)


def test_point_outside_raster_is_an_error(raster: Path) -> None:
    s = ViewSynthesizer(raster, size=32)
    with pytest.raises(SyntheticError, match="outside the raster"):
        s.render(0.0, 0.0)


def test_unreadable_raster_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(SyntheticError, match="bad.tif"):
        ViewSynthesizer(bad)


@pytest.mark.parametrize("name", ["uint16", "float_nan"])
def test_wide_rasters_train_on_the_pixels_they_are_searched_with(tmp_path: Path, name: str) -> None:
    """A non-uint8 raster's in-memory view pixels are the tiler's stretched pixels."""
    from tests.data.rasters.data import generate
    from tiling import open_raster

    path = generate(tmp_path, [name])[name]
    s = ViewSynthesizer(path, size=32)
    with open_raster(path) as r:
        pixels, mask = r.read_window(0, 0, 1.0, 1.0, r.width, r.height)
    assert np.array_equal(s.valid.astype(bool), mask)
    assert np.array_equal(s.pixels[mask], pixels.transpose(1, 2, 0)[mask])
