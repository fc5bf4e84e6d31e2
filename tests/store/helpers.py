"""Synthetic tiles and embeddings for the store tests (no raster, no encoder)."""

from __future__ import annotations

import numpy as np
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import box

from geoloc.store import repository as repo
from geoloc.store.database import Database
from tiling.tile import Tile

SHA_A = "a" * 64
K = 8
PHI_DIM = 1024


def make_tiles(
    rows: int, cols: int, lat0: float = 60.45, lon0: float = 22.25, step_deg: float = 0.0005
) -> list[Tile]:
    """A rows x cols grid of tiles around (lat0, lon0), ~55 m apart in latitude."""
    tiles = []
    for r in range(rows):
        for c in range(cols):
            lat = lat0 - r * step_deg
            lon = lon0 + c * step_deg
            h = step_deg
            tiles.append(
                Tile(
                    raster_path="/data/fake.tif",
                    row=r,
                    col=c,
                    window=Window(c * 112.0, r * 112.0, 224.0, 224.0),
                    transform=Affine(0.5, 0.0, 240000.0 + c * 56, 0.0, -0.5, 6700000.0 - r * 56),
                    crs="EPSG:32634",
                    center_lon=lon,
                    center_lat=lat,
                    footprint=box(lon - h, lat - h, lon + h, lat + h),
                    gsd_m=0.5,
                    valid_fraction=1.0 - 0.01 * c,
                    pixels=np.zeros((3, 32, 32), np.uint8),
                    mask=np.ones((32, 32), bool),
                )
            )
    return tiles


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n random unit vectors of dimension d (float32)."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def register_encoder(db: Database, sha: str = SHA_A, phi_dim: int = PHI_DIM) -> int:
    """A test encoder."""
    return repo.get_or_create_encoder(
        db, name="fake", config={"k": K}, weights_sha256=sha, omega_dim=64, phi_dim=phi_dim
    )


def ingest_fake(
    db: Database,
    encoder_id: int,
    tiles: list[Tile],
    phi: np.ndarray,
    sha: str = "f" * 64,
    complete: bool = True,
) -> tuple[int, list[int]]:
    """Write one orthomosaic with these tiles; return (orthomosaic id, tile ids)."""
    lons = [t.center_lon for t in tiles]
    lats = [t.center_lat for t in tiles]
    oid = repo.begin_orthomosaic(
        db,
        path="/data/fake.tif",
        sha256=sha,
        encoder_id=encoder_id,
        crs="EPSG:32634",
        width=1000,
        height=800,
        gsd_m=0.5,
        bounds_lonlat=(min(lons), min(lats), max(lons), max(lats)),
        tile_size=224,
        stride=112,
        target_gsd=0.5,
    )
    n = len(tiles)
    areas = np.full((n, K), 1.0 / K, np.float32)
    cents = np.tile(np.linspace(0, 1, 2 * K, dtype=np.float32), (n, 1)).reshape(n, K, 2)
    ids = repo.add_tiles(db, oid, encoder_id, tiles, phi, areas, cents)
    if complete:
        repo.finish_orthomosaic(db, oid, kept=n, skipped=3)
    return oid, ids


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (ids) found in the same row of ``found``."""
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )
