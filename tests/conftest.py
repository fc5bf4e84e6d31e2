"""Shared test set-up: an isolated GEOLOC_HOME; DB fixtures live in tests/fixtures_db.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_RASTER = REPO / "data" / "sample" / "turku_utm34n_0.28m.tif"

pytest_plugins = ["tests.fixtures_db", "tests.fixtures_extpg"]

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config: pytest.Config) -> None:
    """New stores keep their Ω index throughout the suite, in this process and in CLI
    subprocesses (also for session and module fixtures): most of it checks FAISS, features and
    database together (crashes, verify, rebuild, bundles, ``--preset seed``). Tests marked
    ``default_omega`` get the product default of a new store instead: no Ω index."""
    config.addinivalue_line(
        "markers",
        "default_omega: run with the product default for the Ω index (a new store keeps none)",
    )
    import geoloc.store.tile_store as tile_store

    tile_store.DEFAULT_OMEGA = True
    os.environ["GEOLOC_OMEGA"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a pytest-xdist worker (``make test`` runs ``-n 2 --dist loadfile``), the files that hold
    slow tests come first: whole files are handed out in collection order, so the long ones start
    early and the workers finish together, instead of one running a long file alone at the end.
    A plain ``pytest`` run keeps the collection order."""
    if not hasattr(config, "workerinput"):
        return
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: a file's order is kept


@pytest.fixture(autouse=True)
def _default_omega(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The product default for tests marked ``default_omega``."""
    if request.node.get_closest_marker("default_omega") is None:
        return
    import geoloc.store.tile_store as tile_store

    monkeypatch.setattr(tile_store, "DEFAULT_OMEGA", False)
    monkeypatch.delenv("GEOLOC_OMEGA", raising=False)


def crop_sample(dst: Path, col_off: int, row_off: int, width: int, height: int) -> Path:
    """Write a GeoTIFF crop of the bundled sample (its own georeference, same CRS and GSD)."""
    import rasterio
    from rasterio.windows import Window

    win = Window(col_off, row_off, width, height)
    with rasterio.open(SAMPLE_RASTER) as src:
        data = src.read(window=win)
        profile = src.profile.copy()
        profile.update(
            width=width,
            height=height,
            transform=src.window_transform(win),
            driver="GTiff",
            compress="deflate",
            tiled=False,
            photometric="RGB",
        )
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


@pytest.fixture(scope="session")
def sample_raster() -> Path:
    """The bundled real sample (UTM 34N, 0.28 m/px)."""
    return SAMPLE_RASTER


@pytest.fixture(scope="session")
def turku_dir() -> Path:
    """``../shared/data/turku``; skips the test when it is absent."""
    d = SHARED_DATA / "turku"
    if not d.is_dir():
        pytest.skip(f"real imagery not found at {d}")
    return d
