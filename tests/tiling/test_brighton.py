"""A small real map (../shared/data/brighton_beach): the default tiling gives a usable database.

At the default 0.5 m/px the 106 m x 98 m map is one tile with too few valid pixels; the policy
falls back to the map's native 0.1 m/px, and its real DJI photos locate against it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from geoloc.config import Settings
from tiling import TilingPolicy, open_raster
from tiling.crs import geodesic_distance_m
from tiling.policy import DEFAULT_GSD_M

pytestmark = pytest.mark.realdata
MAP = "map_pointcloud_10cm.tif"


def _truth(d: Path, name: str) -> dict[str, str]:
    with open(d / "gt.csv", newline="") as f:
        return next(r for r in csv.DictReader(f) if r["name"] == name)


def test_policy_falls_back_to_the_native_gsd(brighton_dir: Path) -> None:
    with open_raster(brighton_dir / MAP) as r:
        default_kept, _ = r.count_tiles(TilingPolicy().config(DEFAULT_GSD_M))
        cfg, reason = TilingPolicy().resolve(r)
        kept, _ = r.count_tiles(cfg)
        gsd = r.grid(cfg).gsd_m
    assert default_kept == 0  # the newcomer's "no tile has at least 50% valid pixels"
    assert cfg.gsd is None and gsd == pytest.approx(0.1, rel=0.01) and kept > 12
    assert reason.startswith("native GSD 0.1 m/px") and "106 m x 98 m" in reason


@pytest.fixture(scope="module")
def encoder() -> Any:
    from geoloc.models import load_encoder

    enc = load_encoder()
    enc.optimize_for_inference()
    return enc


def test_ingest_with_default_options(
    brighton_dir: Path, pg_settings: Settings, database: Any, encoder: Any
) -> None:
    from geoloc.ingest import ingest

    (res,) = ingest([brighton_dir / MAP], encoder=encoder, settings=pg_settings, progress=False)
    assert res.status == "ingested", res.message
    assert res.tiles_kept > 12 and res.gsd_m == pytest.approx(0.1, rel=0.01)


@pytest.mark.slow
def test_a_photo_locates_with_its_gsd(
    brighton_dir: Path, pg_settings: Settings, database: Any, encoder: Any
) -> None:
    """DJI_0033 (40 m up, 0.017 m/px) against the map at the GSD the policy picks."""
    from geoloc.ingest import ingest
    from geoloc.localize import Localizer

    with open_raster(brighton_dir / MAP) as r:
        cfg, _ = TilingPolicy().resolve(r)
        gsd = cfg.gsd if cfg.gsd is not None else r.grid(cfg).gsd_m
    (res,) = ingest(
        [brighton_dir / MAP], encoder=encoder, settings=pg_settings, progress=False, gsd=gsd
    )
    assert res.status == "ingested", res.message
    truth = _truth(brighton_dir, "DJI_0033.JPG")
    with Localizer.open(pg_settings, encoder=encoder) as lz:
        fix = lz.locate(brighton_dir / "DJI_0033.JPG", gsd=float(truth["gsd_m"]))
    assert fix.status == "ok", fix
    assert fix.lat is not None and fix.lon is not None
    # registration truth: the photo centre measured in this very map (README: ~0.2-0.5 m)
    err = geodesic_distance_m(fix.lon, fix.lat, float(truth["reg_lon"]), float(truth["reg_lat"]))
    assert err < 1.0, err
