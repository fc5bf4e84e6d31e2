"""The tile -> encode -> sink stream shared by ``geoloc ingest`` and ``geoloc index rebuild``.

Tiles are read in a background thread, encoded in the main thread (or, on an OpenVINO backbone,
in a pool of one thread per stream that the main thread waits on in order, so Ctrl-C lands
there) and handed to ``sink`` in a writer thread; see :mod:`geoloc.ingest.pipeline`.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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

    @staticmethod
    def concat(parts: Sequence[Encoded]) -> Encoded:
        """Consecutive batches as one (their tiles in order; ``position`` of the last)."""
        if len(parts) == 1:
            return parts[0]

        def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            return None if any(a is None for a in arrays) else np.concatenate(arrays)  # type: ignore[arg-type]

        feats = [p.features for p in parts]
        omega = cat([p.omega for p in parts])
        assert omega is not None
        return Encoded(
            [t for p in parts for t in p.tiles],
            omega,
            cat([p.phi for p in parts]),
            cat([p.node_areas for p in parts]),
            cat([p.node_centroids for p in parts]),
            parts[-1].position,
            None if any(f is None for f in feats) else [t for f in feats for t in f],  # type: ignore[union-attr]
        )


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


def encoded(
    encoder: Any,
    source: Iterable[Batch],
    streams: int = 1,
    *,
    omega_only: bool = False,
    omega: bool = True,
) -> Iterator[tuple[Batch, Encoded, float]]:
    """``(batch, its encoding, encode seconds)`` for every batch of ``source``, in order, with
    up to ``streams`` batches encoding at once in a thread pool (what
    :func:`geoloc.models.runtime.throughput` yields; 1: in this thread). The encode seconds of
    concurrent batches overlap: their sum is the encoder's busy time, not wall time.
    ``omega=False`` hands on an empty ``(B, 0)`` Ω (a store without an Ω index keeps none)."""

    def one(batch: Batch) -> tuple[Batch, Encoded, float]:
        t0 = time.perf_counter()
        out = encoder.encode(batch.pixels)
        enc = Encoded(
            batch.tiles,
            as_array(out.omega) if omega else np.empty((len(batch.tiles), 0), np.float32),
            None if omega_only else as_array(out.phi),
            None if omega_only else as_array(out.node_areas),
            None if omega_only else as_array(out.node_centroids),
            batch.position,
        )
        return batch, enc, time.perf_counter() - t0

    if streams <= 1:
        for batch in source:
            yield one(batch)
        return
    with ThreadPoolExecutor(streams, thread_name_prefix="geoloc-encode") as pool:
        running: deque[Future[tuple[Batch, Encoded, float]]] = deque()
        try:
            for batch in source:
                running.append(pool.submit(one, batch))
                if len(running) >= streams:
                    yield running.popleft().result()
            while running:
                yield running.popleft().result()
        finally:
            for f in running:  # an error or Ctrl-C: do not start the queued ones
                f.cancel()


@dataclass
class StreamTimings:
    """Seconds spent reading (background thread) and encoding (main thread); CPU seconds of
    the reader and writer threads (what they take from the encoder on a busy machine)."""

    read_s: float = 0.0
    encode_s: float = 0.0
    features_s: float = 0.0
    read_cpu_s: float = 0.0
    write_cpu_s: float = 0.0


def encode_stream(
    source: Iterator[Batch],
    encoder: Any,
    sink: Callable[[Encoded], None],
    *,
    omega_only: bool = False,
    omega: bool = True,
    on_batch: Callable[[Batch], None] | None = None,
    features: FeatureExtractor | None = None,
    write_tiles: int = 1,
) -> StreamTimings:
    """Encode every batch of ``source`` and hand it to ``sink`` (run in a writer thread).

    ``omega_only`` keeps only Ω (a rebuild needs nothing else). ``on_batch`` is called in the
    main thread after each batch is encoded (progress). ``features`` (e.g.
    :class:`geoloc.ingest.features.StripFeatures`) fills :attr:`Encoded.features`; a batch waits
    for the features of all its tiles before it is handed on. Without ``features`` the stream
    encodes under :func:`geoloc.models.runtime.throughput` (several batches at once on an
    OpenVINO backbone; the feature extractor runs on torch and keeps its threads).
    ``write_tiles``: consecutive batches are handed to ``sink`` as one (:meth:`Encoded.concat`)
    once they hold that many tiles (and the rest at the end): each ``sink`` call of an ingest is
    a database transaction, whose fixed cost then falls on more tiles. ``omega=False``: Ω is
    not handed on (an empty array per batch). Returns the
    read/encode/feature seconds (encode: the encoder's busy seconds) and the reader and writer
    threads' CPU seconds.
    """
    from geoloc.models.runtime import throughput

    timings = StreamTimings()
    reader: Prefetcher[Batch] = Prefetcher(source, maxsize=3)
    waiting: deque[Encoded] = deque()  # encoded, some of their tiles' features not made yet
    made: list[FeatureTuple] = []  # features of the first tiles of ``waiting``
    group: list[Encoded] = []  # complete batches not handed to the writer yet

    def hand_on(writer: BackgroundWorker[Encoded], enc: Encoded | None) -> None:
        """Queue ``enc`` for the writer once the group holds ``write_tiles``; None: the rest."""
        if enc is not None:
            group.append(enc)
        if group and (enc is None or sum(len(e.tiles) for e in group) >= write_tiles):
            writer.submit(Encoded.concat(group))
            group.clear()

    def settle(writer: BackgroundWorker[Encoded], new: list[FeatureTuple]) -> None:
        nonlocal made
        made += new
        while waiting and len(made) >= len(waiting[0].tiles):
            enc = waiting.popleft()
            k = len(enc.tiles)
            enc.features, made = made[:k], made[k:]
            hand_on(writer, enc)

    mode = throughput(encoder) if features is None else contextlib.nullcontext(1)
    with mode as streams, reader, BackgroundWorker(sink, maxsize=2) as writer:
        for batch, enc, seconds in encoded(
            encoder, reader, streams, omega_only=omega_only, omega=omega
        ):
            t1 = time.perf_counter()
            timings.encode_s += seconds
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
        hand_on(writer, None)
        writer.join()
        timings.write_cpu_s = writer.cpu_s
    timings.read_s, timings.read_cpu_s = reader.busy_s, reader.cpu_s
    return timings
