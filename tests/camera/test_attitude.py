"""Heading / pitch / roll conventions and the grid convergence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoloc.camera import angles_from_rotation, camera_to_world
from geoloc.camera.attitude import grid_convergence_deg


@pytest.mark.parametrize(
    "angles",
    [(0, -90, 0), (37, -60, 5), (200, -45, -10), (359, -89.9, 0), (90, -20, 3), (123, -90, 4)],
)
def test_round_trip(angles: tuple[float, float, float]) -> None:
    r = camera_to_world(*angles)
    assert np.allclose(r.T @ r, np.eye(3)) and np.linalg.det(r) == pytest.approx(1.0)
    assert np.allclose(angles_from_rotation(r), angles, atol=1e-9)


def test_conventions() -> None:
    up_image = lambda r: -r[:, 1]  # noqa: E731 - the world direction of image-up
    nadir_north = camera_to_world(0, -90, 0)
    assert np.allclose(nadir_north[:, 2], [0, 0, -1]) and np.allclose(
        up_image(nadir_north), [0, 1, 0]
    )
    nadir_east = camera_to_world(90, -90, 0)
    assert np.allclose(up_image(nadir_east), [1, 0, 0])  # heading = where image-up points
    level = camera_to_world(0, 0, 0)
    assert np.allclose(level[:, 2], [0, 1, 0]) and np.allclose(up_image(level), [0, 0, 1])
    right_down = camera_to_world(0, 0, 10)
    assert right_down[2, 0] < 0  # positive roll: the image's right side goes down


def test_grid_convergence_utm() -> None:
    # Turku, UTM 34N (central meridian 21 E): east of it grid north is clockwise of true north
    from tiling.crs import from_lonlat

    lon, lat = 22.4659, 60.4047
    x, y = from_lonlat("EPSG:32634", lon, lat)
    expected = math.degrees(
        math.atan(math.tan(math.radians(lon - 21.0)) * math.sin(math.radians(lat)))
    )
    assert grid_convergence_deg("EPSG:32634", x, y) == pytest.approx(expected, abs=0.01)
    xw, yw = from_lonlat("EPSG:32634", 19.0, lat)
    assert grid_convergence_deg("EPSG:32634", xw, yw) < 0
