"""TilingPolicy: validation, the default GSD, the native fallback on small maps, the hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import crop_sample
from tiling import TilingPolicy, open_raster
from tiling.errors import TileConfigError
from tiling.policy import DEFAULT_GSD_M, MIN_TILES


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"gsd": -1.0}, "--gsd"),
        ({"gsd": float("nan")}, "--gsd"),
        ({"gsd": 0.0}, "--gsd"),
        ({"stride": 0}, "--stride"),
        ({"min_valid": 1.5}, "--min-valid"),
        ({"tile_size": 0}, "--tile-size"),
        ({"tile_size": 2.5}, "--tile-size"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict[str, float], option: str) -> None:
    with pytest.raises(TileConfigError, match=f"^{option} must be"):
        TilingPolicy(**kwargs)  # type: ignore[arg-type]


def test_stride_defaults_to_half_a_tile() -> None:
    assert TilingPolicy().step == 112 and TilingPolicy(tile_size=100).step == 50
    assert TilingPolicy(stride=30).step == 30
    p = TilingPolicy.from_options(tile_size=None, gsd=None, stride=None, min_valid=None)
    assert p == TilingPolicy()


def test_default_gsd_on_a_map_large_enough(sample_raster: Path) -> None:
    with open_raster(sample_raster) as r:  # 590 m x 332 m at 0.28 m/px
        cfg, reason = TilingPolicy().resolve(r)
        kept, _ = r.count_tiles(cfg)
    assert (cfg.gsd, cfg.step, cfg.tile_size, cfg.min_valid) == (DEFAULT_GSD_M, 112, 224, 0.5)
    assert kept >= MIN_TILES and reason.startswith("default GSD 0.5 m/px")


def test_small_map_falls_back_to_native(sample_raster: Path, tmp_path: Path) -> None:
    small = crop_sample(tmp_path / "small.tif", 0, 0, 500, 450)  # 140 m x 126 m
    with open_raster(small) as r:
        default_kept, _ = r.count_tiles(TilingPolicy().config(DEFAULT_GSD_M))
        cfg, reason = TilingPolicy().resolve(r)
        kept, _ = r.count_tiles(cfg)
        assert r.grid(cfg).gsd_m == pytest.approx(r.gsd_m)
    assert default_kept < MIN_TILES and cfg.gsd is None and kept > default_kept
    assert reason.startswith("native GSD 0.28 m/px") and f"only {default_kept} tile" in reason
    assert "--gsd" in reason
    # the threshold is the policy's: a smaller one keeps the default GSD
    with open_raster(small) as r:
        cfg_low, _ = TilingPolicy(min_tiles=default_kept).resolve(r)
    assert cfg_low.gsd == DEFAULT_GSD_M


def test_explicit_gsd_and_coarse_rasters(fake: dict[str, Path], sample_raster: Path) -> None:
    with open_raster(sample_raster) as r:
        cfg, reason = TilingPolicy(gsd=0.3, stride=50).resolve(r)
    assert (cfg.gsd, cfg.step) == (0.3, 50) and reason == "--gsd 0.3 m/px as given"
    with open_raster(fake["webmerc"]) as r:  # ~0.49 m on the ground: default 0.5 m
        cfg, _ = TilingPolicy(min_tiles=0).resolve(r)
        assert cfg.gsd == DEFAULT_GSD_M
    with open_raster(fake["utm"]) as r:  # native 0.5 m: never upsampled
        cfg, reason = TilingPolicy(default_gsd_m=0.25).resolve(r)
        assert cfg.gsd == pytest.approx(r.gsd_m) and "would upsample" in reason


def test_no_tiles_message_says_what_to_do() -> None:
    p = TilingPolicy()
    msg = p.no_tiles_message(p.config(0.5), native_gsd_m=0.1)
    assert msg.startswith("no tile has at least 50% valid pixels at 0.5 m/px")
    assert "--gsd" in msg and "--min-valid" in msg and "\n" not in msg
    native = p.no_tiles_message(p.config(None), native_gsd_m=0.1)
    assert "--gsd" not in native and "--min-valid" in native
