"""read_image on odd and bad images (tests/data/frames/data.py) and the one stretch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.frames import data as frames
from tiling import open_raster, read_image, stretch_to_uint8
from tiling.errors import ImageError, TilingError
from tiling.image import decode_image, stretch_limits


@pytest.fixture(scope="module")
def view(sample_raster: Path) -> np.ndarray:
    """A 256 px north-up view of real ground from the bundled sample."""
    with open_raster(sample_raster) as r:
        pixels, _ = r.read_window(800, 400, 1.0, 1.0, 256, 256)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, view: np.ndarray) -> dict[str, Path]:
    return frames.generate(tmp_path_factory.mktemp("images"), view)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize("name", sorted(frames.ODD))
def test_odd_images_decode_to_the_right_pixels(
    made: dict[str, Path], view: np.ndarray, name: str
) -> None:
    img = decode_image(made[name])
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == view.shape and img.mask.dtype == bool
    if name in ("grayscale", "png16_gray"):
        assert np.array_equal(img.rgb[..., 0], img.rgb[..., 2])
        grey = np.asarray(Image.fromarray(view).convert("L"), dtype=np.float64)
        # the 2-98 % stretch clips the tails, so compare correlation, not values
        assert np.corrcoef(img.rgb[..., 0].ravel(), grey.ravel())[0, 1] > 0.95
    elif name == "png16_rgb":
        for c in range(3):
            assert np.corrcoef(img.rgb[..., c].ravel(), view[..., c].ravel())[0, 1] > 0.99
    else:
        assert _mad(img.rgb, view) < {"cmyk_jpeg": 6.0, "animated_gif": 8.0}.get(name, 3.0)
    if name == "png_alpha":
        assert not img.mask[:, :20].any() and img.mask[:, 20:].all()
    else:
        assert img.mask.all()
    if name == "exif_rotated":
        assert img.meta["exif_orientation"] == frames.ORIENTATION_ROT90_CW
    if name == "animated_gif":
        assert img.meta["n_frames"] == 3


# a 10 px image is a valid image; only a frame needs more pixels
@pytest.mark.parametrize("name", sorted(set(frames.BAD) - {"tiny_10px"}))
def test_bad_images_raise_one_line(made: dict[str, Path], name: str) -> None:
    with pytest.raises(ImageError) as ei:
        read_image(made[name])
    msg = str(ei.value)
    assert isinstance(ei.value, TilingError) and ei.value.exit_code == 1
    assert "\n" not in msg and msg.startswith(f"{made[name]}: ")


def test_missing_directory_and_bytes(tmp_path: Path, made: dict[str, Path]) -> None:
    with pytest.raises(ImageError, match="no such file$"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(ImageError, match=r"^<bytes>: not a readable image"):
        read_image(b"<html>404</html>")
    rgb, mask = read_image(made["grayscale"].read_bytes())
    assert rgb.shape[2] == 3 and mask.all()


def test_arrays(view: np.ndarray) -> None:
    rgb, mask = read_image(view.transpose(2, 0, 1))  # (C, H, W)
    assert np.array_equal(rgb, view) and mask.all()
    rgba = np.dstack([view, np.full(view.shape[:2], 255, np.uint8)])
    rgba[:10, :, 3] = 0
    rgb, mask = read_image(rgba)
    assert not mask[:10].any() and mask[10:].all()
    grey16 = view[..., 0].astype(np.uint16) * 200
    rgb, mask = read_image(grey16)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and rgb.min() == 0 and rgb.max() == 255
    floats = view.astype(np.float32)
    floats[0, 0] = np.nan
    rgb, mask = read_image(floats)
    assert not mask[0, 0] and mask.sum() == mask.size - 1 and rgb[0, 0].tolist() == [0, 0, 0]
    with pytest.raises(ImageError, match=r"^<array>: array of shape \(4, 5, 6, 7\)"):
        read_image(np.zeros((4, 5, 6, 7), np.uint8))


def test_16bit_tiff_through_gdal_and_max_side(tmp_path: Path, view: np.ndarray) -> None:
    import rasterio

    p = tmp_path / "rgb16.tif"
    data = view.transpose(2, 0, 1).astype(np.uint16) * 200
    with rasterio.open(
        p, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint16"
    ) as ds:
        ds.write(data)
    rgb, mask = read_image(p)
    assert mask.all() and np.array_equal(rgb.transpose(2, 0, 1), stretch_to_uint8(data))
    small, small_mask = read_image(p, max_side=100)
    assert small.shape == (100, 100, 3) and small_mask.shape == (100, 100)


def test_one_stretch_for_rasters_and_images(fake: dict[str, Path]) -> None:
    """A 16-bit raster's tiles and the same pixels read as an image get the same stretch."""
    import rasterio

    with rasterio.open(fake["uint16"]) as ds:
        data = ds.read((1, 2, 3))
    with open_raster(fake["uint16"]) as r:
        assert r.stretch == stretch_limits(list(data))
        pixels, _ = r.read_window(0, 0, 1.0, 1.0, r.width, r.height)
    assert np.array_equal(pixels, stretch_to_uint8(data))
    rgb, _ = read_image(data)
    assert np.array_equal(rgb.transpose(2, 0, 1), pixels)
