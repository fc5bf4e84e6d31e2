"""``geoloc index rebuild``: re-create an encoder's Ω index by re-ingesting Ω only.

The database is the source of truth, but Ω (50,176 floats per tile) is not kept there: it would
dwarf everything else stored per tile. So a rebuild re-reads every tile of every complete
orthomosaic from its raster (same grid: tile size, stride, target GSD), re-encodes it with the
encoder the tiles were ingested with, and adds Ω under the tile's id. It needs the rasters at
their ingested paths, unchanged (their SHA-256 is checked).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoloc.errors import EncoderMismatchError, IndexError_
from geoloc.ingest.paths import sha256_file
from geoloc.ingest.stream import Encoded, batches, encode_stream

if TYPE_CHECKING:
    from geoloc.store import OmegaIndex, TileStore

log = logging.getLogger("geoloc.ingest")


def rebuild_index(
    store: TileStore,
    *,
    model: Any = None,
    checkpoint: str | Path | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    **index_kwargs: Any,
) -> OmegaIndex:
    """Re-create the Ω index of ``store``'s encoder from the rasters; return the saved index.

    ``model`` is a loaded encoder (default: ``load_encoder(name, checkpoint)``); its weights
    must be the ones the tiles were ingested with. Runs under the ingest lock; the new index
    replaces the old one atomically when complete. ``progress(done, total)`` is called per
    batch; ``index_kwargs`` are :class:`~geoloc.store.OmegaIndex` parameters.
    """
    from geoloc.store import repository as repo
    from tiling import TileConfig, open_raster

    encoder = repo.get_encoder(store.db, store.encoder_id)
    if model is None:
        from geoloc.models import load_encoder

        model = load_encoder(encoder.name, checkpoint=checkpoint)
    if str(model.weights_sha256) != encoder.weights_sha256:
        raise EncoderMismatchError(
            f"encoder {encoder.name} loaded with weights {str(model.weights_sha256)[:12]}, but "
            f"the database holds tiles of weights {encoder.weights_sha256[:12]}: pass the "
            "checkpoint they were ingested with (--checkpoint)"
        )
    with store.locked():
        plan = store.tiles_to_readd()
        total, done = sum(len(cells) for _, cells in plan), 0
        store.reset_index(**index_kwargs)
        for ortho, cells in plan:
            if not Path(ortho.path).is_file():
                raise IndexError_(
                    f"raster of orthomosaic {ortho.id} is gone; cannot re-encode its tiles",
                    path=ortho.path,
                )
            if sha256_file(Path(ortho.path)) != ortho.sha256:
                raise IndexError_(
                    f"raster changed since it was ingested (orthomosaic {ortho.id}): re-ingest "
                    "it with `geoloc ingest --force`",
                    path=ortho.path,
                )
            cfg = TileConfig(
                tile_size=ortho.tile_size,
                stride=ortho.stride,
                gsd=ortho.target_gsd_m,
                min_valid=0.0,  # every stored tile, whatever its valid fraction
            )
            seen = 0

            def stored(tile: Any, cells: dict[tuple[int, int], int] = cells) -> bool:
                return (tile.row, tile.col) in cells

            def readd(batch: Encoded, cells: dict[tuple[int, int], int] = cells) -> None:
                store.readd([cells[(t.row, t.col)] for t in batch.tiles], batch.omega)

            def advanced(batch: Any) -> None:
                nonlocal seen, done
                seen += len(batch.tiles)
                done += len(batch.tiles)
                if progress is not None:
                    progress(done, total)

            with open_raster(ortho.path) as raster:
                grid = raster.grid(cfg)
                encode_stream(
                    batches(raster, cfg, int(grid.cols), batch_size, keep=stored),
                    model,
                    readd,
                    omega_only=True,
                    on_batch=advanced,
                )
            if seen != len(cells):
                raise IndexError_(
                    f"orthomosaic {ortho.id}: the raster yields {seen} of its {len(cells)} tiles "
                    "(tiling changed?); re-ingest it with `geoloc ingest --force`",
                    path=ortho.path,
                )
        index = store.save_index()
    log.info("rebuilt the Ω index of %s: %d tiles", encoder.name, len(index))
    return index
