"""A distractor-heavy database: the true area is still found and verified, an unseen place is not.

The database is built in the test through the real ingest: the bundled sample at two GSDs, two
mirrored copies of it (the same textures, a layout no rotation reaches: the hardest distractor
there is for a rotation search) and procedural aerial-like scenes, all but the sample at fake
coordinates in the southern hemisphere. A view of a procedural scene that was never ingested must
be answered ``no_match``. The shared-data variant adds real aerial images of other places from
``../shared/data/distractors`` and skips without them.

The size is bounded by the encoder's throughput on two cores (the test stays near 90 s idle):
about 550 tiles, most of them distractors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tests.conftest import SAMPLE_RASTER, SHARED_DATA, crop_sample
from tests.localize.conftest import truth_lonlat
from tests.localize.views import sample_rgb, view

pytestmark = pytest.mark.slow

FAKE_CRS = "EPSG:32719"  # UTM 19S: thousands of km from Turku


def procedural_scene(seed: int, size: int = 1120) -> np.ndarray:
    """An aerial-like RGB scene: fields of smooth colour, roads, roofs with shadows, texture."""
    rng = np.random.default_rng(seed)
    field = np.zeros((size, size), np.float32)
    for scale in (8, 24, 80):  # texture, patches, fields (mostly brightness: muted colours)
        n = rng.normal(size=(size // scale + 2, size // scale + 2)).astype(np.float32)
        field += cv2.resize(n, (size, size), interpolation=cv2.INTER_CUBIC) * (scale / 80.0)
    tint = rng.normal(size=(size // 80 + 2, size // 80 + 2, 3)).astype(np.float32)
    tint = cv2.resize(tint, (size, size), interpolation=cv2.INTER_CUBIC)
    base = np.array(rng.uniform([60, 80, 40], [110, 130, 90]), np.float32)
    img = np.clip(base + 25.0 * field[..., None] + 8.0 * tint, 0, 255)
    for _ in range(int(rng.integers(8, 14))):  # roads
        p0 = rng.integers(0, size, 2)
        p1 = rng.integers(0, size, 2)
        grey = float(rng.uniform(90, 150))
        cv2.line(
            img,
            tuple(map(int, p0)),
            tuple(map(int, p1)),
            (grey, grey, grey),
            int(rng.integers(6, 14)),
        )
    for _ in range(int(rng.integers(120, 200))):  # buildings: a shadow, then the roof
        c = rng.uniform(0, size, 2)
        wh = rng.uniform(10, 40, 2)
        ang = float(rng.uniform(0, 180))
        roof = rng.uniform([90, 60, 50], [200, 170, 160])
        box = cv2.boxPoints(((float(c[0]) + 5, float(c[1]) + 5), (float(wh[0]), float(wh[1])), ang))
        cv2.fillPoly(img, [box.astype(np.int32)], (30.0, 30.0, 35.0))
        box = cv2.boxPoints(((float(c[0]), float(c[1])), (float(wh[0]), float(wh[1])), ang))
        cv2.fillPoly(img, [box.astype(np.int32)], tuple(float(v) for v in roof))
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_fake(path: Path, rgb: np.ndarray, gsd: float, index: int) -> Path:
    """``rgb`` as a GeoTIFF at fake coordinates (its own place per ``index``)."""
    transform = from_origin(300_000.0 + 5_000.0 * index, 7_000_000.0, gsd, gsd)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=rgb.shape[1],
        height=rgb.shape[0],
        count=3,
        dtype="uint8",
        crs=FAKE_CRS,
        transform=transform,
        compress="deflate",
        photometric="RGB",
    ) as dst:
        dst.write(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return path


def _ingest(settings: Any, encoder: Any, layers: list[tuple[Path, float]]) -> int:
    from geoloc.ingest import ingest

    total = 0
    for path, gsd in layers:
        (res,) = ingest([path], encoder=encoder, settings=settings, gsd=gsd, progress=False)
        assert res.status == "ingested", res
        total += res.tiles_kept
    return total


@pytest.fixture(scope="module")
def distractor_db(
    pg_server: Any, encoder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, int]]:
    """Settings of the distractor-heavy database and its tile count."""
    from geoloc.config import Settings

    d = tmp_path_factory.mktemp("scale-rasters")
    rgb = sample_rgb()
    layers: list[tuple[Path, float]] = [(SAMPLE_RASTER, 0.5)]
    # the same place at a coarser GSD: its own file (rasters are keyed by their bytes)
    layers.append(
        (crop_sample(d / "sample_0.4.tif", 1, 1, rgb.shape[1] - 1, rgb.shape[0] - 1), 0.4)
    )
    layers.append((write_fake(d / "mirror_lr.tif", rgb[:, ::-1], 0.28, 1), 0.5))
    layers.append((write_fake(d / "mirror_ud.tif", rgb[::-1], 0.28, 2), 0.5))
    for i in range(4):
        layers.append(
            (write_fake(d / f"scene_{i}.tif", procedural_scene(100 + i), 0.5, 3 + i), 0.5)
        )
    name = pg_server.create_database()
    settings = Settings(
        home=tmp_path_factory.mktemp("scale-home"), database_url=pg_server.url_for(name)
    )
    tiles = _ingest(settings, encoder, layers)
    try:
        yield settings, tiles
    finally:
        pg_server.drop_database(name)


def test_true_view_found_and_unseen_place_rejected(
    distractor_db: tuple[Any, int], encoder: Any
) -> None:
    """Among hundreds of distractor tiles the true view verifies within 5 m and an unseen
    procedural place (never ingested) is no_match."""
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m

    settings, tiles = distractor_db
    assert tiles >= 500
    rgb = sample_rgb()
    cx, cy, heading, scale = 1100.0, 600.0, 137.0, 0.8  # 0.35 m/px, heading unknown to locate
    frame = view(rgb, cx, cy, 320, heading_deg=heading, scale=scale)
    lon, lat = truth_lonlat(cx, cy)
    unseen = procedural_scene(999)
    negative = view(unseen, 560.0, 560.0, 320, heading_deg=40.0, scale=0.5 / 0.35)
    with Localizer.open(settings, encoder=encoder) as loc:
        fix = loc.locate(frame, gsd=0.28 / scale)
        assert fix.status == "ok", fix.message
        assert fix.method == "verified"
        assert fix.lat is not None and fix.lon is not None
        assert float(geodesic_distance_m(fix.lon, fix.lat, lon, lat)) <= 5.0
        st = loc.last_state
        assert st is not None and st.match is not None
        assert st.trace["recall"][: len(st.trace["rerank"])]  # the trace is recorded per stage
        neg = loc.locate(negative, gsd=0.35)
        assert neg.status == "no_match", (neg.confidence, neg.verification)


@pytest.fixture(scope="module")
def shared_distractor_db(
    pg_server: Any, encoder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The sample plus real aerial images of other places (skips without ../shared)."""
    from geoloc.config import Settings

    src = sorted((SHARED_DATA / "distractors").glob("airbus_*.jpg"))
    if len(src) < 4:
        pytest.skip(f"distractor imagery not found under {SHARED_DATA / 'distractors'}")
    from tiling.image import read_image

    d = tmp_path_factory.mktemp("scale-shared")
    layers: list[tuple[Path, float]] = [(SAMPLE_RASTER, 0.5)]
    for i, p in enumerate(src[:3]):
        img, _ = read_image(str(p))
        half = img[:1280, :1280]  # 0.5 m/px as published: 100 tiles each
        layers.append((write_fake(d / f"{p.stem}.tif", half, 0.5, 10 + i), 0.5))
    name = pg_server.create_database()
    settings = Settings(
        home=tmp_path_factory.mktemp("scale-shared-home"), database_url=pg_server.url_for(name)
    )
    _ingest(settings, encoder, layers)
    try:
        yield settings, src[-1]
    finally:
        pg_server.drop_database(name)


def test_real_distractors_true_found_held_out_rejected(
    shared_distractor_db: tuple[Any, Path], encoder: Any
) -> None:
    """With real airports of other places in the database the true view still verifies, and a
    view of an airport image that was not ingested is no_match."""
    from geoloc.localize import Localizer
    from tiling.crs import geodesic_distance_m
    from tiling.image import read_image

    settings, held_out = shared_distractor_db
    rgb = sample_rgb()
    cx, cy = 1100.0, 600.0
    frame = view(rgb, cx, cy, 320, heading_deg=250.0, scale=0.8)
    lon, lat = truth_lonlat(cx, cy)
    other, _ = read_image(str(held_out))
    negative = view(other, 1500.0, 1500.0, 320, heading_deg=75.0, scale=0.5 / 0.35)
    with Localizer.open(settings, encoder=encoder) as loc:
        fix = loc.locate(frame, gsd=0.35)
        assert fix.status == "ok" and fix.method == "verified", fix.message
        assert fix.lat is not None and fix.lon is not None
        assert float(geodesic_distance_m(fix.lon, fix.lat, lon, lat)) <= 5.0
        neg = loc.locate(negative, gsd=0.35)
        assert neg.status == "no_match", (neg.confidence, neg.verification)
