"""``geoloc index verify|rebuild|info``: keep the FAISS Ω index in step with the database.

The database is the source of truth. Ω (50,176 floats, 196 KiB per tile) is *not* kept there:
it would be ~25x everything else stored per tile. So :func:`rebuild_index` recovers Ω by
re-reading every tile of every complete orthomosaic from its raster (same grid: tile size,
stride, target GSD) and re-encoding it with the encoder whose weights the index was built with.
The trade-off: a rebuild costs one encoder pass over the tiles (the encode step of the original
ingest: 7-18 tiles/s for SGM-Net measured on a busy 2-core CPU) and needs the rasters at their
ingested paths, unchanged (their SHA-256 is checked); in exchange every tile costs ~7 KiB on
disk instead of ~200 KiB.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc.config import Settings
from geoloc.errors import ConfigError, EncoderMismatchError, IndexError_
from geoloc.store import repository as repo
from geoloc.store.faiss_store import OmegaIndex

if TYPE_CHECKING:
    from geoloc.store.database import Database

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """FAISS ids vs database ids of the complete orthomosaics of one encoder."""

    encoder_id: int
    encoder_name: str
    weights_sha256: str
    index_dir: str
    index_exists: bool
    db_count: int
    index_count: int
    missing_in_index: list[int] = field(default_factory=list)
    extra_in_index: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when FAISS and the database hold exactly the same ids."""
        return not self.missing_in_index and not self.extra_in_index

    def as_dict(self, limit: int = 50) -> dict[str, Any]:
        """JSON-able form; id lists are cut to ``limit`` entries (counts are complete)."""
        return {
            "ok": self.ok,
            "encoder_id": self.encoder_id,
            "encoder": self.encoder_name,
            "weights_sha256": self.weights_sha256,
            "index_dir": self.index_dir,
            "index_exists": self.index_exists,
            "db_count": self.db_count,
            "index_count": self.index_count,
            "missing_in_index_count": len(self.missing_in_index),
            "missing_in_index": self.missing_in_index[:limit],
            "extra_in_index_count": len(self.extra_in_index),
            "extra_in_index": self.extra_in_index[:limit],
        }


def resolve_encoder(db: Database, spec: str | None) -> repo.EncoderRow:
    """The encoder named by ``spec``: an id, a weights SHA-256 prefix or a name.

    With ``spec=None`` the database must hold exactly one encoder.
    """
    encoders = repo.list_encoders(db)
    if not encoders:
        from geoloc.errors import EmptyDatabaseError

        raise EmptyDatabaseError(f"{db.url}: no encoder registered (nothing ingested yet)")
    if spec is None:
        if len(encoders) > 1:
            names = ", ".join(f"{e.id}:{e.name}:{e.weights_sha256[:12]}" for e in encoders)
            raise ConfigError(f"several encoders in the database ({names}): pass --encoder")
        return encoders[0]
    matches = [
        e
        for e in encoders
        if spec == str(e.id) or spec == e.name or e.weights_sha256.startswith(spec.lower())
    ]
    if len(matches) != 1:
        what = "no" if not matches else "several"
        raise ConfigError(f"{what} encoder matches {spec!r} (give an id, name or SHA-256 prefix)")
    return matches[0]


def verify_index(db: Database, settings: Settings, encoder: repo.EncoderRow) -> VerifyReport:
    """Compare the FAISS ids of ``encoder`` with its complete tiles in the database."""
    db_ids = repo.complete_tile_ids(db, encoder.id)
    exists = OmegaIndex.exists(settings, encoder.weights_sha256)
    if exists:
        ix_ids = OmegaIndex.open(settings, encoder.weights_sha256, create=False).ids()
    else:
        ix_ids = np.zeros(0, dtype=np.int64)
    return VerifyReport(
        encoder_id=encoder.id,
        encoder_name=encoder.name,
        weights_sha256=encoder.weights_sha256,
        index_dir=str(OmegaIndex.path_for(settings, encoder.weights_sha256)),
        index_exists=exists,
        db_count=int(db_ids.size),
        index_count=int(ix_ids.size),
        missing_in_index=np.setdiff1d(db_ids, ix_ids).tolist(),
        extra_in_index=np.setdiff1d(ix_ids, db_ids).tolist(),
    )


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def rebuild_index(
    db: Database,
    settings: Settings,
    encoder: repo.EncoderRow,
    *,
    model: Any = None,
    checkpoint: str | Path | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    **index_kwargs: Any,
) -> OmegaIndex:
    """Recreate the FAISS index of ``encoder`` by re-encoding its tiles from their rasters.

    ``model`` is a loaded :class:`geoloc.models.Encoder` (default: ``load_encoder(name,
    checkpoint)``); its weights must be the ones the tiles were ingested with. The new index
    replaces the old one atomically when complete. ``progress(done, total)`` is called per batch.
    """
    from tiling import TileConfig, open_raster

    if model is None:
        from geoloc.models import load_encoder

        model = load_encoder(encoder.name, checkpoint=checkpoint)
    if str(model.weights_sha256) != encoder.weights_sha256:
        raise EncoderMismatchError(
            f"encoder {encoder.name} loaded with weights {str(model.weights_sha256)[:12]}, but "
            f"the database holds tiles of weights {encoder.weights_sha256[:12]}: pass the "
            "checkpoint they were ingested with (--checkpoint)"
        )
    refs = repo.tile_refs(db, encoder.id)
    by_ortho: dict[int, dict[tuple[int, int], int]] = {}
    for r in refs:
        by_ortho.setdefault(r.orthomosaic_id, {})[(r.row, r.col)] = r.tile_id
    index = OmegaIndex.create(
        settings,
        encoder.weights_sha256,
        omega_dim=int(encoder.omega_dim),
        encoder_id=encoder.id,
        **index_kwargs,
    )
    total, done = len(refs), 0
    for ortho in repo.list_orthomosaics(db, encoder.id):
        cells = by_ortho.get(ortho.id)
        if ortho.status != "complete" or not cells:
            continue
        if not Path(ortho.path).is_file():
            raise IndexError_(
                f"raster of orthomosaic {ortho.id} is gone; cannot re-encode its tiles",
                path=ortho.path,
            )
        if _sha256_file(ortho.path) != ortho.sha256:
            raise IndexError_(
                f"raster changed since it was ingested (orthomosaic {ortho.id}): re-ingest it "
                "with `geoloc ingest --force`",
                path=ortho.path,
            )
        cfg = TileConfig(
            tile_size=ortho.tile_size, stride=ortho.stride, gsd=ortho.target_gsd_m, min_valid=0.0
        )
        batch_px: list[np.ndarray] = []
        batch_ids: list[int] = []
        seen = 0
        with open_raster(ortho.path) as raster:
            for tile in raster.tiles(cfg):
                tid = cells.get((tile.row, tile.col))
                if tid is None:
                    continue
                batch_px.append(tile.pixels)
                batch_ids.append(tid)
                seen += 1
                if len(batch_ids) >= batch_size:
                    done += _encode_add(model, index, batch_px, batch_ids)
                    if progress is not None:
                        progress(done, total)
            done += _encode_add(model, index, batch_px, batch_ids)
            if progress is not None:
                progress(done, total)
        if seen != len(cells):
            raise IndexError_(
                f"orthomosaic {ortho.id}: the raster yields {seen} of its {len(cells)} tiles "
                "(tiling changed?); re-ingest it with `geoloc ingest --force`",
                path=ortho.path,
            )
    index.save()
    log.info("rebuilt the Ω index of %s: %d tiles", encoder.name, len(index))
    return index


def _encode_add(model: Any, index: OmegaIndex, pixels: list[np.ndarray], ids: list[int]) -> int:
    """Encode a batch of tiles, add their Ω to ``index``, empty the lists; return the count."""
    n = len(ids)
    if n:
        out = model.encode(np.stack(pixels))
        omega = out.omega
        if hasattr(omega, "detach"):
            omega = omega.detach().cpu().numpy()
        index.add(np.asarray(ids, dtype=np.int64), np.asarray(omega, dtype=np.float32))
        pixels.clear()
        ids.clear()
    return n
