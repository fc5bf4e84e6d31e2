"""Rebuild the bundled sample from ../shared/data/turku (run from the repo root).

The sample is the Turku UTM 34N mosaic resampled 2x (0.28 m/px) with average resampling,
stored as a tiled, JPEG-compressed GeoTIFF with internal overviews, so it stays a few MB.
"""

from __future__ import annotations

import sys
from pathlib import Path

import rasterio
from rasterio.enums import Resampling

SRC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "turku" / "turku_mosaic_utm34n.tif"
DST = Path(__file__).resolve().parent / "turku_utm34n_0.28m.tif"
FACTOR = 2


def main() -> int:
    with rasterio.open(SRC) as src:
        h, w = src.height // FACTOR, src.width // FACTOR
        data = src.read(out_shape=(src.count, h, w), resampling=Resampling.average)
        transform = src.transform * src.transform.scale(src.width / w, src.height / h)
        profile = src.profile | {
            "width": w, "height": h, "transform": transform, "compress": "JPEG",
            "jpeg_quality": 90, "photometric": "YCBCR", "tiled": True,
            "blockxsize": 256, "blockysize": 256, "interleave": "pixel",
        }
        profile.pop("predictor", None)
        profile.pop("zlevel", None)
    with rasterio.open(DST, "w", **profile) as dst:
        dst.write(data)
        dst.build_overviews([2, 4, 8], Resampling.average)
        dst.update_tags(ns="rio_overview", resampling="average")
        dst.update_tags(SOURCE="TIERS/wildnav map tiles via shared/data/turku (BSD-3-Clause)")
    print(DST, DST.stat().st_size, "bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
