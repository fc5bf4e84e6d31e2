"""The tile -> encode -> sink stream shared by ``geoloc ingest`` and ``geoloc index rebuild``.

Tiles are read in a background thread, encoded in the main thread (so Ctrl-C lands there) and
handed to ``sink`` in a writer thread; see :mod:`geoloc.ingest.pipeline`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc.ingest.pipeline import BackgroundWorker, Prefetcher

if TYPE_CHECKING:
    from tiling import Raster, Tile, TileConfig


def as_array(x: Any) -> np.ndarray:
    """Tensor or array -> contiguous float32 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


@dataclass
class Batch:
    """Tiles read together; ``position`` = grid cells visited so far (row-major index + 1)."""

    tiles: list[Tile]
    pixels: np.ndarray  # (B, 3, S, S) uint8
    position: int


@dataclass
class Encoded:
    """A batch of tiles with the encoder's outputs as float32 arrays."""

    tiles: list[Tile]
    omega: np.ndarray
    phi: np.ndarray | None
    node_areas: np.ndarray | None
    node_centroids: np.ndarray | None
    position: int
    #: per tile (xy tile px, desc, score) when the stream extracts local features, else None
    features: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None


#: ``(tiles, pixels (B, 3, S, S) uint8) -> per tile (xy tile px, desc, score)``
FeatureFn = Callable[[list[Any], np.ndarray], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]


def batches(
    raster: Raster,
    cfg: TileConfig,
    cols: int,
    batch_size: int,
    keep: Callable[[Tile], bool] | None = None,
) -> Iterator[Batch]:
    """The raster's kept tiles (and ``keep`` ones only, if given) in batches of ``batch_size``."""
    buf: list[Tile] = []
    position = 0
    for tile in raster.tiles(cfg):
        position = tile.row * cols + tile.col + 1
        if keep is not None and not keep(tile):
            continue
        buf.append(tile)
        if len(buf) >= batch_size:
            yield Batch(buf, np.stack([t.pixels for t in buf]), position)
            buf = []
    if buf:
        yield Batch(buf, np.stack([t.pixels for t in buf]), buf[-1].row * cols + buf[-1].col + 1)


@dataclass
class StreamTimings:
    """Seconds spent reading (background thread) and encoding (main thread)."""

    read_s: float = 0.0
    encode_s: float = 0.0
    features_s: float = 0.0


def encode_stream(
    source: Iterator[Batch],
    encoder: Any,
    sink: Callable[[Encoded], None],
    *,
    omega_only: bool = False,
    on_batch: Callable[[Batch], None] | None = None,
    features: FeatureFn | None = None,
) -> StreamTimings:
    """Encode every batch of ``source`` and hand it to ``sink`` (run in a writer thread).

    ``omega_only`` keeps only Ω (a rebuild needs nothing else). ``on_batch`` is called in the
    main thread after each batch is submitted (progress). ``features(tiles, pixels)`` (e.g.
    :class:`geoloc.ingest.features.TileFeatures`) fills :attr:`Encoded.features`. Returns the
    read/encode/feature seconds.
    """
    timings = StreamTimings()
    reader: Prefetcher[Batch] = Prefetcher(source, maxsize=3)
    with reader, BackgroundWorker(sink, maxsize=2) as writer:
        for batch in reader:
            t0 = time.perf_counter()
            out = encoder.encode(batch.pixels)
            enc = Encoded(
                batch.tiles,
                as_array(out.omega),
                None if omega_only else as_array(out.phi),
                None if omega_only else as_array(out.node_areas),
                None if omega_only else as_array(out.node_centroids),
                batch.position,
            )
            t1 = time.perf_counter()
            timings.encode_s += t1 - t0
            if features is not None:
                enc.features = features(batch.tiles, batch.pixels)
                timings.features_s += time.perf_counter() - t1
            writer.submit(enc)
            if on_batch is not None:
                on_batch(batch)
        writer.join()
    timings.read_s = reader.busy_s
    return timings
