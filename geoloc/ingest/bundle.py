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
) -> BundleSummary:
    """Write the bundle of one encoder's complete orthomosaics to the new folder ``out``.

    Needs every source raster readable (the verification regions are cut from them).
    """
    from PIL import Image

    from geoloc.localize.regions import MapRegions
    from geoloc.store import TileStore
    from geoloc.store import repository as repo
    from geoloc.store.database import current_revision
    from geoloc.store.omega_index import OmegaIndex

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
            if not (index_dir / "meta.json").is_file():
                raise ConfigError(f"no Ω index for encoder {enc.name}", path=str(index_dir))
            shutil.copytree(index_dir, tmp / "index")
            size = region_size_px(store.tile_px)
            regions = MapRegions(store.map_gsd_m, cache_size=1)
            by_ortho = {o.id: o for o in orthos}
            meta: dict[int, dict[str, Any]] = {}
            try:
                for start in range(0, len(ids), 256):
                    for cand in store.candidates(ids[start : start + 256]):
                        o = by_ortho[cand.orthomosaic_id]
                        px, mask, t = regions.around(cand, size)
                        if o.path in regions.unavailable:
                            raise ConfigError(
                                f"raster unavailable ({regions.unavailable[o.path]}); "
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
                regions.close()
            for entry in meta.values():
                entry["gsd_m"] = store.map_gsd_m
                (tmp / "regions" / entry["sha256"] / REGIONS_FILE).write_text(json.dumps(entry))
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
