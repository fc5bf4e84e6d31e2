"""tiling.crs: axis order, round trips, geodesic distances and GSD in metres."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from pyproj import Geod

from tiling.crs import (
    crs_string,
    from_lonlat,
    geodesic_distance_m,
    gsd_metres,
    gsd_xy_metres,
    local_utm_crs,
    to_lonlat,
)

LON, LAT = 22.462133333333334, 60.403241666666666  # drone_image_1 of the Turku data


def test_always_xy_for_epsg4326() -> None:
    # EPSG:4326 declares lat/lon axis order; the helper must still take and give (lon, lat).
    assert from_lonlat("EPSG:4326", LON, LAT) == pytest.approx((LON, LAT))
    assert to_lonlat("EPSG:4326", LON, LAT) == pytest.approx((LON, LAT))


def test_utm_central_meridian_and_round_trip() -> None:
    x, y = from_lonlat("EPSG:32634", 21.0, 60.0)  # zone 34 central meridian
    assert x == pytest.approx(500_000.0, abs=1e-6)
    assert 6_650_000 < y < 6_660_000
    xs, ys = from_lonlat(32634, np.array([LON, 22.47]), np.array([LAT, 60.40]))
    lon, lat = to_lonlat("EPSG:32634", xs, ys)
    np.testing.assert_allclose(lon, [LON, 22.47], atol=1e-10)
    np.testing.assert_allclose(lat, [LAT, 60.40], atol=1e-10)
    # README of the Turku data: drone_image_1 is pixel (row 557, col 623) of the 0.14 m mosaic.
    xm, ym = from_lonlat("EPSG:32634", LON, LAT)
    assert int((xm - 580468.14) / 0.14) == 623 and int((6697292.56 - ym) / 0.14) == 557


def test_geodesic_distance() -> None:
    # One degree of latitude at the equator on WGS 84: 110,574.4 m.
    assert geodesic_distance_m(0.0, 0.0, 0.0, 1.0) == pytest.approx(110_574.4, abs=1.0)
    d = geodesic_distance_m(
        np.array([0.0, LON]), np.array([0.0, LAT]), np.array([1.0, LON]), np.array([0.0, LAT])
    )
    assert isinstance(d, np.ndarray) and d.shape == (2,)
    assert d[0] == pytest.approx(111_319.5, abs=1.0) and d[1] == 0.0


def test_gsd_of_geographic_raster_is_geodesic_metres() -> None:
    t = Affine(9e-6, 0, 22.46, 0, -4.5e-6, 60.405)
    w, h = 450, 300
    gx, gy = gsd_xy_metres("EPSG:4326", t, w, h)
    lon_c, lat_c = t.c + t.a * w / 2, t.f + t.e * h / 2
    geod = Geod(ellps="WGS84")
    ex = geod.inv(lon_c - 50 * t.a, lat_c, lon_c + 50 * t.a, lat_c)[2] / 100
    ey = geod.inv(lon_c, lat_c + 50 * t.e, lon_c, lat_c - 50 * t.e)[2] / 100
    assert gx == pytest.approx(ex, rel=1e-4) and gy == pytest.approx(ey, rel=1e-4)
    assert 0.49 < gx < 0.51 and 0.49 < gy < 0.51  # metres, not degrees
    assert gsd_metres("EPSG:4326", t, w, h) == pytest.approx((gx * gy) ** 0.5)


def test_gsd_of_web_mercator_is_ground_metres() -> None:
    # 1 m Web Mercator pixels at 60.4 N are cos(60.4) ~ 0.494 m on the ground.
    t = Affine(1.0, 0, 2_500_300.0, 0, -1.0, 8_505_200.0)
    lon, lat = to_lonlat("EPSG:3857", 2_500_300.0, 8_505_200.0)
    g = gsd_metres("EPSG:3857", t, 100, 100)
    assert g == pytest.approx(np.cos(np.radians(lat)), rel=5e-3)


@pytest.mark.parametrize(
    ("lon", "lat", "crs"),
    [
        (LON, LAT, "EPSG:32634"),
        (-70.6, -33.4, "EPSG:32719"),
        (180.0, 0.0, "EPSG:32660"),
        (-180.0, 10.0, "EPSG:32601"),
    ],
)
def test_local_utm_crs(lon: float, lat: float, crs: str) -> None:
    assert local_utm_crs(lon, lat) == crs


def test_crs_string() -> None:
    assert crs_string("EPSG:32634") == "EPSG:32634"
    custom = "+proj=tmerc +lat_0=0 +lon_0=22.5 +k=1 +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs"
    assert crs_string(custom).startswith(("PROJCS", "PROJCRS"))
