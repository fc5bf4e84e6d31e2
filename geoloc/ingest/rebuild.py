"""``geoloc index rebuild``: re-create an encoder's Ω index (or its per-tile features) from the
rasters.

The database is the source of truth, but Ω (50,176 floats per tile) is not kept there: it would
dwarf everything else stored per tile. So a rebuild re-reads every tile of every complete
orthomosaic from its raster (same grid: tile size, stride, target GSD), re-encodes it with the
encoder the tiles were ingested with, and adds Ω under the tile's id. It needs the rasters at
their ingested paths, unchanged (their SHA-256 is checked).

``geoloc index rebuild --features`` re-reads the same tiles and re-extracts their local features
(:func:`rebuild_features`), all of them or only those without intact features (``--missing``: a
corrupt segment, an ingest with ``--no-features`` or on a cluster).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoloc.errors import EncoderMismatchError, IndexError_
from geoloc.ingest.paths import sha256_file
from geoloc.ingest.stream import Batch, Encoded, FeatureTuple, batches, encode_stream

if TYPE_CHECKING:
    from geoloc.ingest.features import TileFeatures
    from geoloc.store import OmegaIndex, TileStore
    from geoloc.store import repository as repo
    from geoloc.store.tile_features import FeatureStore

log = logging.getLogger("geoloc.ingest")


def rebuild_index(
    store: TileStore,
    *,
    model: Any = None,
    checkpoint: str | Path | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    runtime: str | None = None,
    add_omega: bool = False,
    **index_kwargs: Any,
) -> OmegaIndex:
    """Re-create the Ω index of ``store``'s encoder from the rasters; return the saved index.

    ``model`` is a loaded encoder (default: the encoder by name with ``checkpoint``, loaded as
    ingest loads it: :func:`geoloc.models.runtime.load_for_inference` on ``runtime``, None for
    ``GEOLOC_ENCODER_RUNTIME`` or ``auto``); its weights must be the ones the tiles were
    ingested with. Runs under the ingest lock; the new index
    replaces the old one atomically when complete. ``progress(done, total)`` is called per
    batch; ``index_kwargs`` are :class:`~geoloc.store.OmegaIndex` parameters. ``add_omega``
    builds the index of a store ingested without one (``--no-omega``), which keeps it from then
    on; without it such a store is a NoOmegaIndexError.
    """
    from geoloc.store import repository as repo
    from tiling import open_raster

    encoder = repo.get_encoder(store.db, store.encoder_id)
    if not (encoder.has_omega or add_omega):
        from geoloc.errors import NoOmegaIndexError

        raise NoOmegaIndexError(
            f"{store.db.url}: the store of encoder {encoder.name} has no Ω index (ingested "
            "with --no-omega): `geoloc index rebuild --omega` adds it"
        )
    if model is None:
        from geoloc.models.runtime import load_for_inference

        model = load_for_inference(encoder.name, checkpoint, runtime)
    if str(model.weights_sha256) != encoder.weights_sha256:
        raise EncoderMismatchError(
            f"encoder {encoder.name} loaded with weights {str(model.weights_sha256)[:12]}, but "
            f"the database holds tiles of weights {encoder.weights_sha256[:12]}: pass the "
            "checkpoint they were ingested with (--checkpoint)"
        )
    with store.locked():
        plan = store.tiles_to_readd()
        total, done = sum(len(cells) for _, cells in plan), 0
        store.reset_index(add_omega=add_omega, **index_kwargs)
        for ortho, cells in plan:
            cfg = _stored_grid(ortho)
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
            _check_seen(ortho, seen, len(cells))
        index = store.save_index()
    log.info("rebuilt the Ω index of %s: %d tiles", encoder.name, len(index))
    return index


def _stored_grid(ortho: repo.OrthomosaicRow) -> Any:
    """The ``TileConfig`` the orthomosaic was ingested with, once its raster is checked to be
    there and unchanged."""
    from tiling import TileConfig

    if not Path(ortho.path).is_file():
        raise IndexError_(
            f"raster of orthomosaic {ortho.id} is gone; cannot re-read its tiles",
            path=ortho.path,
        )
    if sha256_file(Path(ortho.path)) != ortho.sha256:
        raise IndexError_(
            f"raster changed since it was ingested (orthomosaic {ortho.id}): re-ingest "
            "it with `geoloc ingest --force`",
            path=ortho.path,
        )
    return TileConfig(
        tile_size=ortho.tile_size,
        stride=ortho.stride,
        gsd=ortho.target_gsd_m,
        min_valid=0.0,  # every stored tile, whatever its valid fraction
    )


def _with_features(
    source: Iterable[Batch], extract: TileFeatures
) -> Iterator[tuple[list[Any], list[FeatureTuple]]]:
    """``(tiles, their features)`` as the extractor answers (one may hold tiles back, see
    :class:`geoloc.ingest.stream.FeatureExtractor`), in the order of ``source``."""
    held: list[Any] = []
    for batch in source:
        held += batch.tiles
        feats = extract.add(batch.tiles, batch.pixels)
        if feats:
            yield held[: len(feats)], feats
            held = held[len(feats) :]
    feats = extract.finish()
    if feats:
        yield held[: len(feats)], feats


def _check_seen(ortho: repo.OrthomosaicRow, seen: int, stored: int) -> None:
    if seen != stored:
        raise IndexError_(
            f"orthomosaic {ortho.id}: the raster yields {seen} of its {stored} tiles "
            "(tiling changed?); re-ingest it with `geoloc ingest --force`",
            path=ortho.path,
        )


def rebuild_features(
    store: TileStore,
    *,
    max_per_tile: int | None = None,
    only_missing: bool = False,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureStore:
    """Re-extract the per-tile local features of ``store``'s encoder from the rasters.

    Every complete tile, or (``only_missing``, when the stored spec is kept) only the tiles
    without intact features. ``max_per_tile`` None keeps the stored setting (or the default).
    Runs under the ingest lock; the features are replaced atomically when complete.
    """
    from geoloc.ingest.features import TileFeatures, feature_spec
    from geoloc.ingest.pipeline import Prefetcher
    from tiling import open_raster

    with store.locked():
        old = store.feature_spec
        if max_per_tile is None and old is not None and old.extractor == "xfeat":
            max_per_tile = old.max_per_tile
        spec = store.reset_features(feature_spec(max_per_tile), keep=only_missing)
        have = set(store.feature_ids().tolist())
        plan = [
            (o, {rc: tid for rc, tid in cells.items() if tid not in have})
            for o, cells in store.tiles_to_readd()
        ]
        plan = [(o, cells) for o, cells in plan if cells]
        total, done = sum(len(cells) for _, cells in plan), 0
        for ortho, cells in plan:
            cfg = _stored_grid(ortho)
            seen = 0

            def stored(tile: Any, cells: dict[tuple[int, int], int] = cells) -> bool:
                return (tile.row, tile.col) in cells

            with open_raster(ortho.path) as raster:
                grid = raster.grid(cfg)
                extract = TileFeatures(
                    spec,
                    rows=int(grid.rows),
                    cols=int(grid.cols),
                    tile_size=int(cfg.tile_size),
                    stride=int(grid.stride),
                )
                source = batches(raster, cfg, int(grid.cols), batch_size, keep=stored)
                with Prefetcher(source, maxsize=3) as reader:
                    for tiles, feats in _with_features(reader, extract):
                        ids = [cells[(t.row, t.col)] for t in tiles]
                        store.readd_features(tiles, ids, int(grid.stride), feats)
                        seen += len(ids)
                        done += len(ids)
                        if progress is not None:
                            progress(done, total)
            _check_seen(ortho, seen, len(cells))
        saved = store.save_features()
    log.info("rebuilt the features of %d tiles (%d stored)", total, len(saved))
    return saved
