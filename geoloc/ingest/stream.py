"""The tile -> encode -> sink stream shared by ``geoloc ingest`` and ``geoloc index rebuild``.

Tiles are read in a background thread, encoded in the main thread (so Ctrl-C lands there) and
handed to ``sink`` in a writer thread; see :mod:`geoloc.ingest.pipeline`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

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
    features: list[FeatureTuple] | None = None


def merge(parts: list[Encoded]) -> Encoded:
    """One :class:`Encoded` of consecutive ``parts`` (tiles in order; the last position)."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    feats = None
    if parts[0].features is not None:
        feats = [f for p in parts for f in (p.features or [])]
    omega = cat("omega")
    assert omega is not None
    return Encoded(
        [t for p in parts for t in p.tiles],
        omega,
        cat("phi"),
        cat("node_areas"),
        cat("node_centroids"),
        parts[-1].position,
        feats,
    )


#: Tiles per hand-off to the sink (one ``TileStore.add``, one transaction): a few encoder batches,
#: so the per-transaction costs (round trips, the commit's WAL flush) are paid a few times less.
WRITE_TILES = 64

FeatureTuple = tuple[np.ndarray, np.ndarray, np.ndarray]


class FeatureExtractor(Protocol):
    """Makes the stored local features of a stream's tiles, per tile (xy tile px, desc, score),
    in the order given; it may hold tiles back until it has seen their neighbours
    (:class:`geoloc.ingest.features.StripFeatures`)."""

    def add(self, tiles: Sequence[Any], pixels: np.ndarray) -> list[FeatureTuple]:
        """Take a batch (``pixels`` ``(B, 3, S, S)`` uint8); return the features of the next
        tiles (those of earlier batches first), as many as are ready."""
        ...

    def finish(self) -> list[FeatureTuple]:
        """The features of every tile still held back."""
        ...


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
    features: FeatureExtractor | None = None,
    write_tiles: int = WRITE_TILES,
) -> StreamTimings:
    """Encode every batch of ``source`` and hand it to ``sink`` (run in a writer thread), in
    hand-offs of about ``write_tiles`` tiles (whole batches, in order).

    ``omega_only`` keeps only Ω (a rebuild needs nothing else). ``on_batch`` is called in the
    main thread after each batch is encoded (progress). ``features`` (e.g.
    :class:`geoloc.ingest.features.StripFeatures`) fills :attr:`Encoded.features`; a batch waits
    for the features of all its tiles before it is handed on. Returns the read/encode/feature
    seconds.
    """
    timings = StreamTimings()
    reader: Prefetcher[Batch] = Prefetcher(source, maxsize=3)
    pending: list[Encoded] = []  # ready for the sink
    n_pending = 0
    waiting: deque[Encoded] = deque()  # encoded, some of their tiles' features not made yet
    made: list[FeatureTuple] = []  # features of the first tiles of ``waiting``

    def write(parts: list[Encoded]) -> None:
        sink(merge(parts))  # concatenated in the writer thread, off the encoder's

    def hand_on(writer: BackgroundWorker[list[Encoded]], enc: Encoded) -> None:
        nonlocal pending, n_pending
        pending.append(enc)
        n_pending += len(enc.tiles)
        if n_pending >= write_tiles:
            writer.submit(pending)
            pending, n_pending = [], 0

    def settle(writer: BackgroundWorker[list[Encoded]], new: list[FeatureTuple]) -> None:
        nonlocal made
        made += new
        while waiting and len(made) >= len(waiting[0].tiles):
            enc = waiting.popleft()
            k = len(enc.tiles)
            enc.features, made = made[:k], made[k:]
            hand_on(writer, enc)

    with reader, BackgroundWorker(write, maxsize=2) as writer:
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
            if features is None:
                hand_on(writer, enc)
            else:
                waiting.append(enc)
                settle(writer, features.add(batch.tiles, batch.pixels))
                timings.features_s += time.perf_counter() - t1
            if on_batch is not None:
                on_batch(batch)
        if features is not None:
            t1 = time.perf_counter()
            settle(writer, features.finish())
            timings.features_s += time.perf_counter() - t1
            if waiting or made:
                raise RuntimeError(
                    f"the feature extractor answered {len(made)} tiles too many or "
                    f"{sum(len(e.tiles) for e in waiting)} too few"
                )
        if pending:
            writer.submit(pending)
        writer.join()
    timings.read_s = reader.busy_s
    return timings
