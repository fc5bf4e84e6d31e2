"""``geoloc bundle export``: cut each tile's verification region from its raster and write a bundle.

It lives above the store because it reads map regions through the localizer's
:class:`~geoloc.localize.regions.MapRegions`; the bundle format, verification and import are in
:mod:`geoloc.store.bundle`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc.errors import ConfigError
from geoloc.store.bundle import (
    FORMAT,
    MANIFEST,
    REGIONS_FILE,
    VERSION,
    BundleSummary,
    _copy_out,
    _sha256,
    region_size_px,
)

if TYPE_CHECKING:
    from geoloc.config import Settings


def export_bundle(
    settings: Settings,
    out: str | os.PathLike[str],
    encoder: str | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    regions: bool = True,
) -> BundleSummary:
    """Write the bundle of one encoder's complete orthomosaics to the new folder ``out``.

    The per-tile local features travel inside the Ω index folder (checked first: a bundle never
    carries a corrupt feature file). Needs every source raster readable when ``regions`` (the
    verification regions are cut from them); ``regions=False`` leaves the region images out,
    which needs stored features for every tile (verification then matches those).
    """
    from PIL import Image

    from geoloc.localize.regions import MapRegions
    from geoloc.store import TileStore
    from geoloc.store import repository as repo
    from geoloc.store.database import current_revision
    from geoloc.store.omega_index import OmegaIndex
    from geoloc.store.tile_features import FeatureStore

    dst = Path(out)
    if dst.exists() and any(dst.iterdir()):
        raise ConfigError("bundle folder exists and is not empty", path=str(dst))
    with TileStore.for_registered(settings, encoder) as store:
        db = store.db
        enc = repo.get_encoder(db, store.encoder_id)
        orthos = [o for o in repo.list_orthomosaics(db, store.encoder_id) if o.status == "complete"]
        if not orthos:
            raise ConfigError(f"no complete orthomosaic for encoder {enc.name}", path=str(db.url))
        ids = np.sort(repo.complete_tile_ids(db, store.encoder_id)).astype(np.int64)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=dst.parent))
        try:
            with db.engine.connect() as conn:
                revision = current_revision(conn)
            _copy_out(db, tmp / "tables", store.encoder_id, [o.id for o in orthos])
            index_dir = OmegaIndex.path_for(settings, enc.weights_sha256)
            if enc.has_omega and not (index_dir / "meta.json").is_file():
                raise ConfigError(f"no Ω index for encoder {enc.name}", path=str(index_dir))
            _check_features(FeatureStore.path_for(index_dir), ids, need_all=not regions)
            if index_dir.is_dir():
                shutil.copytree(index_dir, tmp / "index")
            else:  # a store without Ω index and without features
                (tmp / "index").mkdir()
            size = region_size_px(store.tile_px)
            reader = MapRegions(store.map_gsd_m, cache_size=1)
            by_ortho = {o.id: o for o in orthos}
            meta: dict[int, dict[str, Any]] = {}
            if not regions:  # the region folders only say the images were left out
                for o in orthos:
                    meta[o.id] = {"sha256": o.sha256, "size_px": size, "tiles": {}, "images": False}
            try:
                for start in range(0, len(ids) if regions else 0, 256):
                    for cand in store.candidates(ids[start : start + 256]):
                        o = by_ortho[cand.orthomosaic_id]
                        px, mask, t = reader.around(cand, size)
                        if o.path in reader.unavailable:
                            raise ConfigError(
                                f"raster unavailable ({reader.unavailable[o.path]}); "
                                "run `geoloc db check`",
                                path=o.path,
                            )
                        d = tmp / "regions" / o.sha256
                        d.mkdir(parents=True, exist_ok=True)
                        rgba = np.dstack([px, mask.astype(np.uint8) * 255])
                        Image.fromarray(rgba, "RGBA").save(d / f"{cand.tile_id}.png", optimize=True)
                        entry = meta.setdefault(
                            o.id, {"sha256": o.sha256, "size_px": size, "tiles": {}}
                        )
                        entry["tiles"][str(cand.tile_id)] = list(t)[:6]
                    if progress is not None:
                        progress(min(start + 256, len(ids)), len(ids))
            finally:
                reader.close()
            for entry in meta.values():
                entry["gsd_m"] = store.map_gsd_m
                folder = tmp / "regions" / entry["sha256"]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / REGIONS_FILE).write_text(json.dumps(entry))
            files: dict[str, dict[str, Any]] = {
                p.relative_to(tmp).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "schema_revision": revision,
                "encoder": {"name": enc.name, "weights_sha256": enc.weights_sha256},
                "orthomosaics": len(orthos),
                "tiles": int(len(ids)),
                "files": files,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if dst.exists():
                dst.rmdir()
            tmp.rename(dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    total = sum(f["bytes"] for f in files.values())
    return BundleSummary(str(dst), enc.name, len(orthos), int(len(ids)), int(total))


def _check_features(fdir: Path, ids: np.ndarray, *, need_all: bool) -> None:
    """Refuse to bundle features that fail their checks, or (``need_all``) that miss tiles."""
    from geoloc.store.tile_features import REBUILD_FEATURES_HINT, FeatureStore

    if not FeatureStore.exists(fdir):
        if need_all:
            raise ConfigError(
                "no stored features: a bundle without region images needs them "
                f"({REBUILD_FEATURES_HINT})",
                path=str(fdir),
            )
        return
    feats = FeatureStore.open(fdir, warn=False)
    problems = feats.check()
    if problems:
        raise ConfigError(f"{problems[0]}: {REBUILD_FEATURES_HINT}")
    missing = np.setdiff1d(ids, feats.ids())
    if need_all and missing.size:
        raise ConfigError(
            f"{missing.size} tiles have no stored features: a bundle without region images "
            f"needs them ({REBUILD_FEATURES_HINT} --missing)",
            path=str(fdir),
        )
