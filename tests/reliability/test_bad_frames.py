"""Bad and odd query frames through ``geoloc locate`` (frames from tests/data/frames/data.py).

Bad frames: one ``geoloc: error: PATH: ...`` line, exit 1, no traceback, the other frames of
the batch still answered, the database and FAISS unchanged. Odd-but-valid frames (grayscale,
CMYK, alpha, 16-bit, EXIF-rotated, animated GIF, hostile file name): decoded to the right
pixels and located at the right place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.data.frames import data as frames
from tests.reliability.conftest import (
    FRAME_CENTRE,
    FRAME_PX,
    GSD,
    Base,
    Result,
    assert_one_error_line,
    run_sub,
    sample_view,
    snapshot,
    truth_lonlat,
)


@pytest.fixture(scope="module")
def view_rgb() -> np.ndarray:
    """The north-up view every frame is made from (112 m of ground at 0.28 m/px)."""
    return sample_view(*FRAME_CENTRE, FRAME_PX)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, view_rgb: np.ndarray) -> dict[str, Path]:
    """Every bad and odd frame, plus ``good``: the plain JPEG of the view."""
    d = tmp_path_factory.mktemp("frames")
    out = frames.generate(d, view_rgb)
    from PIL import Image

    good = d / "good.jpg"
    Image.fromarray(view_rgb).save(good, quality=92)
    out["good"] = good
    return out


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _dist_m(d: dict[str, Any]) -> float:
    from tiling.crs import geodesic_distance_m

    lon, lat = truth_lonlat(*FRAME_CENTRE)
    return float(geodesic_distance_m(d["lon"], d["lat"], lon, lat))


# ------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("name", sorted(frames.ODD))
def test_odd_frames_decode_to_the_right_pixels(
    made: dict[str, Path], view_rgb: np.ndarray, name: str
) -> None:
    from PIL import Image

    from geoloc.localize.frame import load_frame

    f = load_frame(made[name])
    assert f.rgb.dtype == np.uint8 and f.rgb.shape == view_rgb.shape, f.rgb.shape
    gray = np.asarray(Image.fromarray(view_rgb).convert("L"), dtype=np.float64)
    if name in ("grayscale", "png16_gray"):
        # all three channels equal the luminance (16-bit: stretched, so compare correlation)
        assert np.array_equal(f.rgb[..., 0], f.rgb[..., 1])
        assert np.array_equal(f.rgb[..., 0], f.rgb[..., 2])
        corr = np.corrcoef(f.rgb[..., 0].ravel().astype(np.float64), gray.ravel())[0, 1]
        assert corr > 0.98, corr
    elif name == "png16_rgb":
        # the 16-bit channels (x 257) come back as the 8-bit view, possibly contrast-stretched
        for c in range(3):
            corr = np.corrcoef(f.rgb[..., c].ravel(), view_rgb[..., c].ravel())[0, 1]
            assert corr > 0.99, (c, corr)
    else:
        tol = {"cmyk_jpeg": 6.0, "animated_gif": 8.0}.get(name, 3.0)
        assert _mad(f.rgb, view_rgb) < tol, _mad(f.rgb, view_rgb)
    if name == "png_alpha":
        assert not f.mask[:, :20].any() and f.mask[:, 20:].all()
    else:
        assert f.mask.all()
    if name == "exif_rotated":
        # orientation applied: the pixels match the upright view, not the stored sideways one
        stored = np.rot90(view_rgb, k=1)
        assert f.meta["exif_orientation"] == frames.ORIENTATION_ROT90_CW
        assert _mad(f.rgb, view_rgb) < 3.0
        assert _mad(f.rgb, stored) > 10.0 and _mad(f.rgb, np.rot90(view_rgb, 2)) > 10.0
    if name == "animated_gif":
        assert f.meta["n_frames"] == 3


@pytest.mark.parametrize("name", sorted(frames.BAD))
def test_bad_frames_raise_one_line_frame_error(made: dict[str, Path], name: str) -> None:
    from geoloc.errors import FrameError
    from geoloc.localize.frame import load_frame

    with pytest.raises(FrameError) as ei:
        load_frame(made[name])
    msg = str(ei.value)
    assert msg.startswith(f"{made[name]}: ") and "\n" not in msg


# ------------------------------------------------------------------------------------ CLI
def test_each_bad_frame_alone_is_one_line_exit_1(
    base: Base, made: dict[str, Path], cli: Callable[..., Result], tmp_path: Path
) -> None:
    before = snapshot(base.settings)
    cases = {name: made[name] for name in frames.BAD}
    cases["missing"] = tmp_path / "no such frame.jpg"
    cases["directory"] = tmp_path
    for name, path in cases.items():
        res = cli(base.settings, "locate", str(path), "--gsd", str(GSD))
        assert res.code == 1, (name, res.err)
        line = assert_one_error_line(res, path)
        assert line.startswith(f"geoloc: error: {path}: "), line
        (row,) = [json.loads(x) for x in res.out.splitlines() if x.strip()]
        assert row["status"] == "error" and row["frame"] == str(path)
    assert snapshot(base.settings) == before


def _located(name: str, r: dict[str, Any]) -> None:
    assert r["status"] == "ok", (name, r)
    assert _dist_m(r) < 5.0, (name, _dist_m(r), r)
    # the view is north-up: the EXIF-rotated one too, once its orientation is applied
    assert min(r["heading_deg"], 360 - r["heading_deg"]) < 5.0, (name, r["heading_deg"])


def _batch(base: Base, made: dict[str, Path], cli: Callable[..., Result], good: list[str]) -> None:
    before = snapshot(base.settings)
    order = [good[0], *sorted(frames.BAD), *good[1:]]
    paths = [str(made[n]) for n in order]
    res = cli(base.settings, "locate", *paths, "--gsd", str(GSD), "--preset", "accurate")
    assert res.code == 1, res.err  # at least one frame could not be read
    rows = [json.loads(x) for x in res.out.splitlines() if x.strip()]
    assert [r["frame"] for r in rows] == paths  # every frame answered, in order
    by_name = dict(zip(order, rows, strict=True))
    for name in frames.BAD:
        assert by_name[name]["status"] == "error", by_name[name]
        assert_one_error_line(res, made[name])
    for name in good:
        _located(name, by_name[name])
    assert snapshot(base.settings) == before


def test_bad_frames_in_a_batch_do_not_stop_the_others(
    base: Base, made: dict[str, Path], cli: Callable[..., Result]
) -> None:
    """good, every bad frame, then the EXIF-rotated one: bad ones reported, exit 1, the two
    good ones located (the EXIF-rotated one north-up, at the right place)."""
    _batch(base, made, cli, ["good", "exif_rotated"])


@pytest.mark.slow
def test_every_odd_frame_is_located(
    base: Base, made: dict[str, Path], cli: Callable[..., Result]
) -> None:
    """Grayscale, CMYK, alpha, 16-bit RGB and gray, EXIF-rotated, animated GIF, hostile name:
    each located within 5 m, north-up, in one batch with the bad frames."""
    _batch(base, made, cli, ["good", *sorted(frames.ODD)])


@pytest.mark.slow
def test_batch_in_a_real_process_has_no_traceback(base: Base, made: dict[str, Path]) -> None:
    """A subprocess with ``-q``: stderr holds exactly one line per bad frame (plus the GIF's
    warning), no traceback, no library noise."""
    names = ["good", "truncated_jpeg", "not_an_image", "zero_byte", "animated_gif"]
    res = run_sub(base.settings, "-q", "locate", *[str(made[n]) for n in names], "--gsd", "0.28")
    assert res.code == 1, res.err
    assert "Traceback" not in res.err
    rows = [json.loads(x) for x in res.out.splitlines()]
    assert [r["status"] for r in rows] == ["ok", "error", "error", "error", "ok"]
    lines = res.err_lines
    errors = [x for x in lines if x.startswith("geoloc: error: ")]
    assert len(errors) == 3
    for n in ("truncated_jpeg", "not_an_image", "zero_byte"):
        assert sum(str(made[n]) in x for x in errors) == 1
    others = [x for x in lines if x not in errors]
    assert len(others) == 1 and "animated" in others[0] and others[0].startswith("WARNING"), lines


@pytest.mark.slow
def test_huge_12000x9000_frame(
    base: Base, view_rgb: np.ndarray, cli: Callable[..., Result], tmp_path: Path
) -> None:
    """108 Mpx (above Pillow's decompression-bomb warning threshold): decoded and located."""
    path = frames.huge(tmp_path, view_rgb)
    gsd = GSD * FRAME_PX / 9000.0  # same ground as the view, 22.5x finer pixels
    res = cli(base.settings, "locate", str(path), "--gsd", f"{gsd:.8f}", "--preset", "fast")
    assert "Traceback" not in res.err and "internal error" not in res.err, res.err
    assert res.code in (0, 3), res.err
    (row,) = [json.loads(x) for x in res.out.splitlines() if x.strip()]
    assert row["lat"] is not None and _dist_m(row) < 60.0, row
