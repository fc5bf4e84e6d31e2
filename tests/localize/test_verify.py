"""Local-feature verification on real pixels: frame centre projected into a map region."""

from __future__ import annotations

import numpy as np
import pytest

from geoloc.errors import ConfigError
from geoloc.localize.frame import rotate_to_north
from geoloc.localize.verify import HomographyVerifier, Verifier, sift, xfeat_lighterglue
from tests.localize.views import map_at, view

# map at 0.56 m/px; region 400 px around (500, 300); the frame is centred at (530, 280)
CX, CY = 530.0, 280.0
R0X, R0Y = 300, 100


@pytest.fixture(scope="module")
def region() -> np.ndarray:
    m = map_at(0.56)
    return np.ascontiguousarray(m[R0Y : R0Y + 400, R0X : R0X + 400])


@pytest.fixture(scope="module")
def xfeat() -> HomographyVerifier:
    return xfeat_lighterglue(max_keypoints=1024)


@pytest.fixture(scope="module")
def sift_v() -> HomographyVerifier:
    return sift()


def _frame(heading: float, scale: float = 1.0) -> np.ndarray:
    return view(map_at(0.56), CX, CY, 220, heading, scale)


@pytest.mark.parametrize("name", ["xfeat", "sift_v"])
@pytest.mark.parametrize("heading", [0.0, 40.0])
def test_projects_frame_centre(
    request: pytest.FixtureRequest, name: str, heading: float, region: np.ndarray
) -> None:
    v: HomographyVerifier = request.getfixturevalue(name)
    assert isinstance(v, Verifier)
    fr = _frame(heading)
    res = v.verify(
        fr, np.ones(fr.shape[:2], bool), region, np.ones(region.shape[:2], bool), scale_known=True
    )
    assert res.accepted, res.reason
    assert res.inliers >= 15
    assert res.centre_xy is not None
    err = np.hypot(res.centre_xy[0] - (CX - R0X), res.centre_xy[1] - (CY - R0Y))
    assert err < 3.0, (res, err)
    assert res.scale == pytest.approx(1.0, abs=0.05)
    # frame rotated so its up points to `heading`: frame -> north-up map is a CW turn
    assert res.rotation_deg == pytest.approx(-heading, abs=3.0)
    assert 0.4 < res.confidence() <= 1.0
    assert res.ncc > 0.8  # the warped frame looks like the map
    assert res.error_px() < 5


def test_rotated_north_up_frame_and_masked_borders(
    xfeat: HomographyVerifier, region: np.ndarray
) -> None:
    fr = _frame(150.0)
    rot, mask = rotate_to_north(fr, np.ones(fr.shape[:2], bool), 150.0)
    # paint the rotated borders bright: keypoints there would be garbage
    rot = rot.copy()
    rot[~mask] = 255
    res = xfeat.verify(rot, mask, region, np.ones(region.shape[:2], bool), scale_known=True)
    assert res.accepted, res.reason
    assert res.centre_xy is not None
    # the canvas grew; its centre is still the frame centre
    err = np.hypot(res.centre_xy[0] - (CX - R0X), res.centre_xy[1] - (CY - R0Y))
    assert err < 2.0
    f = xfeat.matcher.extract(rot, mask)
    ys = np.round(f.keypoints[:, 1]).astype(int).clip(0, mask.shape[0] - 1)
    xs = np.round(f.keypoints[:, 0]).astype(int).clip(0, mask.shape[1] - 1)
    assert mask[ys, xs].all()


def test_wrong_place_rejected(xfeat: HomographyVerifier, sift_v: HomographyVerifier) -> None:
    m = map_at(0.56)
    fr = view(m, 150, 450, 220, 0.0)  # far west/south of the region
    region = np.ascontiguousarray(m[R0Y : R0Y + 400, R0X + 300 : R0X + 700])
    for v in (xfeat, sift_v):
        res = v.verify(
            fr,
            np.ones(fr.shape[:2], bool),
            region,
            np.ones(region.shape[:2], bool),
            scale_known=True,
        )
        assert not res.accepted, (v.name, res)
        assert res.confidence() == 0.0


def test_scale_check(sift_v: HomographyVerifier, region: np.ndarray) -> None:
    fr = view(
        map_at(0.56), CX, CY, 300, 0.0, 1.6
    )  # the frame's true GSD is 1.6x finer than we claim
    ones = np.ones(fr.shape[:2], bool)
    res = sift_v.verify(fr, ones, region, np.ones(region.shape[:2], bool), scale_known=True)
    assert not res.accepted and "scale" in res.reason
    assert res.scale == pytest.approx(1 / 1.6, abs=0.05)
    res2 = sift_v.verify(fr, ones, region, np.ones(region.shape[:2], bool), scale_known=False)
    assert res2.accepted, res2.reason


def test_region_features_cached(sift_v: HomographyVerifier, region: np.ndarray) -> None:
    ones = np.ones(region.shape[:2], bool)
    a = sift_v.region_features(region, ones, key=("t", 1))
    b = sift_v.region_features(region, ones, key=("t", 1))
    assert a is b


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="valid: .*min_inliers"):
        sift(min_inlers=3)
    with pytest.raises(ConfigError, match="min_inliers"):
        sift(min_inliers=2)
