"""Frame loading, GSD, rotation: on real pixels of the bundled sample."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geoloc.errors import FrameError
from geoloc.localize.frame import (
    at_map_scale,
    centre_crop,
    default_headings,
    gsd_from_altitude,
    hfov_from_35mm,
    load_frame,
    parse_dji_xmp,
    rotate_to_north,
    rotation_batch,
)
from tests.localize.views import map_at, view


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return view(map_at(0.28), 1000, 600, 256)


def test_jpeg_png_tiff_roundtrip(tmp_path: Path, rgb: np.ndarray) -> None:
    for ext in ("png", "tif"):
        p = tmp_path / f"f.{ext}"
        Image.fromarray(rgb).save(p)
        f = load_frame(p)
        assert f.rgb.shape == rgb.shape and f.rgb.dtype == np.uint8
        assert np.array_equal(f.rgb, rgb)
        assert f.mask.all() and f.gsd_m is None and f.heading_deg is None
    p = tmp_path / "f.jpg"
    Image.fromarray(rgb).save(p, quality=95)
    f = load_frame(p)
    assert np.abs(f.rgb.astype(int) - rgb).mean() < 6


def test_exif_orientation_applied(tmp_path: Path, rgb: np.ndarray) -> None:
    img = Image.fromarray(rgb[:, :200])  # non-square so the transpose is visible
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif, quality=95)
    f = load_frame(p)
    assert f.rgb.shape == (200, 256, 3)
    expect = np.rot90(rgb[:, :200], -1)  # 90 deg clockwise
    assert np.abs(f.rgb.astype(int) - expect).mean() < 6


def test_modes_converted(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = Image.fromarray(rgb).convert("L")
    gray.save(tmp_path / "g.png")
    f = load_frame(tmp_path / "g.png")
    assert f.rgb.shape == (256, 256, 3) and np.array_equal(f.rgb[..., 0], f.rgb[..., 2])

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:50, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    f = load_frame(tmp_path / "a.png")
    assert f.rgb.shape == (256, 256, 3)
    assert not f.mask[:50].any() and f.mask[50:].all()

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    f = load_frame(tmp_path / "c.jpg")
    assert f.rgb.shape == (256, 256, 3)
    assert np.abs(f.rgb.astype(int) - rgb).mean() < 20

    g16 = (np.asarray(gray).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    f = load_frame(tmp_path / "g16.png")
    assert f.rgb.dtype == np.uint8 and f.rgb.std() > 20


def test_16bit_rgb_tiff_via_rasterio(tmp_path: Path, rgb: np.ndarray) -> None:
    import rasterio

    p = tmp_path / "rgb16.tif"
    data = rgb.transpose(2, 0, 1).astype(np.uint16) * 200
    with rasterio.open(
        p, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint16"
    ) as ds:
        ds.write(data)
    f = load_frame(p)
    assert f.rgb.shape == (256, 256, 3) and f.rgb.dtype == np.uint8
    corr = np.corrcoef(f.rgb[..., 1].ravel(), rgb[..., 1].ravel())[0, 1]
    assert corr > 0.95


def test_animated_gif_first_frame(tmp_path: Path, rgb: np.ndarray) -> None:
    a = Image.fromarray(rgb).convert("P")
    b = Image.fromarray(255 - rgb).convert("P")
    p = tmp_path / "anim.gif"
    a.save(p, save_all=True, append_images=[b])
    f = load_frame(p)
    assert f.meta["n_frames"] == 2
    assert np.abs(f.rgb.astype(int) - rgb).mean() < 25


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"", "empty file"), (b"not an image at all", "not a readable image"), (None, "no such file")],
)
def test_bad_frames_one_line(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    p = tmp_path / "bad.jpg"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(FrameError) as ei:
        load_frame(p)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg and fragment in msg


def test_truncated_jpeg(tmp_path: Path, rgb: np.ndarray) -> None:
    p = tmp_path / "t.jpg"
    Image.fromarray(rgb).save(p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(FrameError, match="t.jpg"):
        load_frame(p)


def test_gsd_sources(tmp_path: Path, rgb: np.ndarray) -> None:
    assert load_frame(rgb, gsd=0.1).gsd_m == 0.1
    f = load_frame(rgb, altitude_m=100.0, hfov_deg=90.0)
    assert f.gsd_source == "altitude+hfov"
    assert f.gsd_m == pytest.approx(200.0 / 256)
    with pytest.raises(FrameError, match="together"):
        load_frame(rgb, altitude_m=100.0)
    with pytest.raises(FrameError, match="positive"):
        load_frame(rgb, gsd=-1.0)
    assert hfov_from_35mm(18.0) == pytest.approx(90.0)
    assert gsd_from_altitude(50, 90, 100) == pytest.approx(1.0)


def test_dji_exif_xmp(tmp_path: Path, rgb: np.ndarray) -> None:
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
        b'drone-dji:RelativeAltitude="+120.50" drone-dji:GimbalYawDegree="-45.3" '
        b'drone-dji:FlightYawDegree="10"/></rdf:RDF></x:xmpmeta>'
    )
    assert parse_dji_xmp(xmp) == {
        "RelativeAltitude": 120.5,
        "GimbalYawDegree": -45.3,
        "FlightYawDegree": 10.0,
    }
    assert parse_dji_xmp(b"<drone-dji:RelativeAltitude>33.0</drone-dji:RelativeAltitude>") == {
        "RelativeAltitude": 33.0
    }
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 24  # FocalLengthIn35mmFilm
    p = tmp_path / "dji.jpg"
    Image.fromarray(rgb).save(p, exif=exif, xmp=xmp)
    f = load_frame(p)
    assert f.gsd_source == "exif"
    expect = gsd_from_altitude(120.5, hfov_from_35mm(24.0), 256)
    assert f.gsd_m == pytest.approx(expect)
    assert f.heading_deg == pytest.approx(360 - 45.3) and f.heading_source == "xmp"
    # the user's values win
    f2 = load_frame(p, gsd=0.3, heading_deg=5)
    assert f2.gsd_m == 0.3 and f2.heading_deg == 5


def test_rotate_to_north_undoes_heading() -> None:
    m = map_at(0.56)
    north = view(m, 500, 300, 160, 0.0)
    for h in (37.0, 90.0, 200.0):
        v = view(m, 500, 300, 240, h)
        r, mask = rotate_to_north(v, np.ones(v.shape[:2], bool), h)
        c = centre_crop(r, 160)
        err = np.abs(c.astype(int) - north.astype(int)).mean()
        assert err < 9, (h, err)
        assert mask[r.shape[0] // 2, r.shape[1] // 2]
    # and a wrong heading does not
    v = view(m, 500, 300, 240, 90.0)
    r, _ = rotate_to_north(v, np.ones(v.shape[:2], bool), 0.0)
    assert np.abs(centre_crop(r, 160).astype(int) - north.astype(int)).mean() > 14


def test_rotation_batch_and_map_scale() -> None:
    m = map_at(0.28)
    v = view(m, 1000, 600, 400, 90.0)
    f = load_frame(v, gsd=0.28)
    img, mask, factor = at_map_scale(f, 0.56, 224)
    assert factor == pytest.approx(0.5) and img.shape[:2] == (200, 200)
    batch, valid = rotation_batch(img, mask, default_headings(8), crop_px=112)
    assert batch.shape == (8, 3, 224, 224) and batch.dtype == np.uint8
    assert valid.min() > 0.99
    ref = view(map_at(0.56), 500, 300, 112, 0.0)
    import cv2

    ref224 = cv2.resize(ref, (224, 224)).transpose(2, 0, 1).astype(int)
    errs = [np.abs(b.astype(int) - ref224).mean() for b in batch]
    assert int(np.argmin(errs)) == 2  # heading hypothesis 90 deg is the right one
    # unknown GSD: the frame's short side is assumed to span one tile
    f2 = load_frame(v)
    img2, _, factor2 = at_map_scale(f2, 0.56, 224)
    assert factor2 == pytest.approx(224 / 400) and min(img2.shape[:2]) == 224
    assert math.isclose(default_headings(4)[1], 90.0)


@pytest.mark.parametrize("angle", [0.0, 90.0, 180.0, 270.0, -35.0, 123.0])
def test_rotation_matrix_follows_rotate(angle: float) -> None:
    """A bright pixel of the frame lands where ``rotation_matrix`` says after ``rotate``."""
    from geoloc.localize.frame import rotate, rotation_matrix

    img = np.zeros((41, 57, 3), np.uint8)
    x, y = 12, 30
    img[y - 1 : y + 2, x - 1 : x + 2] = 255
    out, _ = rotate(img, np.ones((41, 57), bool), angle)
    xp, yp = rotation_matrix(57, 41, angle) @ [x, y, 1.0]
    gray = out[..., 0].astype(float)
    ys, xs = np.nonzero(gray > 0)
    w = gray[ys, xs]
    assert abs(float((xs * w).sum() / w.sum()) - xp) < 0.5
    assert abs(float((ys * w).sum() / w.sum()) - yp) < 0.5
