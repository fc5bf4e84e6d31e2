"""Distributed ingest on Ray: encoder actors read and encode bands of the grid, the driver writes.

``geoloc ingest PATH... --cluster auto|ray://HOST:PORT [--workers N]``. The grid of a raster is
cut into *bands* (consecutive tile rows); each band is a task of one of ``N`` encoder actors,
which opens the raster from its path (every worker must see the same path), reads the band's
tiles with rasterio, encodes them and returns the tile records with Ω/Φ/areas/centroids (and,
when the store keeps them, each tile's local features, extracted from the pixels the actor has
already read: the driver reads no pixels). The driver is the ONE writer: it takes the bands
back in grid order and hands them to the same :class:`~geoloc.store.TileStore`
``begin/add/commit`` as the single-process ingest, in batches of the same size, so tile ids,
the FAISS index and the database are those of a local run.

Failures: an actor killed mid-band is restarted by Ray and its band retried
(``max_restarts``/``max_task_retries``); a killed driver leaves an ``ingesting`` orthomosaic that
the next run's :meth:`TileStore.recover` removes, exactly as for the single-process ingest.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc.errors import IngestError

if TYPE_CHECKING:
    from geoloc.store.records import TileRecord
    from geoloc.store.tile_features import FeatureSpec
    from tiling import Grid, TileConfig

#: per tile (xy tile px, desc, score), as :class:`geoloc.ingest.features.TileFeatures` makes
FeatureTuple = tuple[np.ndarray, np.ndarray, np.ndarray]

log = logging.getLogger("geoloc.ingest")

#: Tiles per band (rounded to whole grid rows): large enough to amortise a Ray round trip,
#: small enough that a retried band costs little and the driver's writes overlap the encoders.
BAND_TILES = 128
#: Bands queued per actor beyond the one it is encoding (keeps every actor busy while the
#: driver writes, bounded so memory stays constant whatever the raster size).
IN_FLIGHT_PER_WORKER = 2
ACTOR_NAME = "geoloc-encode-{}"
NAMESPACE = "geoloc"

__all__ = ["BandFeatures", "BandResult", "DistributedEncoder", "check_cluster", "ray_cluster"]


def check_cluster(cluster: str) -> str:
    """Validate ``--cluster``: ``auto`` or ``ray://HOST:PORT`` (IngestError otherwise)."""
    if cluster == "auto":
        return cluster
    if cluster.startswith("ray://"):
        host, _, port = cluster[len("ray://") :].rpartition(":")
        if host and port.isdigit():
            return cluster
    raise IngestError(f"--cluster must be 'auto' or 'ray://HOST:PORT', got {cluster!r}")


@contextlib.contextmanager
def ray_cluster(cluster: str, workers: int | None = None) -> Iterator[None]:
    """Connect to the Ray cluster of ``--cluster`` for the duration of the block.

    ``auto`` attaches to the cluster this process is already connected to (tests, notebooks) or
    starts a local one on 127.0.0.1 with ``workers`` CPUs (default: all), no dashboard;
    ``ray://HOST:PORT`` connects through Ray Client. A cluster this call started is shut down.
    """
    check_cluster(cluster)
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is in the distributed extra
        raise IngestError("--cluster needs Ray: pip install 'geoloc[distributed]'") from exc
    if ray.is_initialized():
        yield
        return
    try:
        if cluster == "auto":
            ray.init(
                address="local",
                num_cpus=max(1, int(workers or os.cpu_count() or 1)),
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                namespace=NAMESPACE,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=cluster, namespace=NAMESPACE, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - any Ray start/connect failure is one clear line
        reason = (str(exc).strip().splitlines() or ["unknown error"])[0]
        raise IngestError(f"{cluster}: cannot start or reach the Ray cluster: {reason}") from exc
    try:
        yield
    finally:
        ray.shutdown()


@dataclass
class BandResult:
    """What an actor returns for one band: kept tiles (grid order), their encoder outputs and,
    when asked for, their local features (one tuple per tile)."""

    tiles: list[TileRecord]
    omega: np.ndarray
    phi: np.ndarray
    node_areas: np.ndarray
    node_centroids: np.ndarray
    weights_sha256: str
    features: list[FeatureTuple] | None = None


@dataclass(frozen=True)
class BandFeatures:
    """What an actor needs to extract a band's stored features: the store's spec and the grid
    shape the core cells are cut from (:class:`geoloc.ingest.features.TileFeatures`)."""

    spec: FeatureSpec
    rows: int
    cols: int
    tile_size: int
    stride: int


def band_rows(grid: Grid, band_tiles: int | None = None) -> list[tuple[int, int]]:
    """The grid's tile rows cut into ``[r0, r1)`` bands of about ``band_tiles`` tiles (default
    :data:`BAND_TILES`, read at call time)."""
    band_tiles = BAND_TILES if band_tiles is None else band_tiles
    step = max(1, math.ceil(band_tiles / max(1, int(grid.cols))))
    return [(r, min(int(grid.rows), r + step)) for r in range(0, int(grid.rows), step)]


class EncodeWorker:
    """A Ray actor body: one encoder, loaded once, encoding bands of rasters it opens itself."""

    def __init__(
        self,
        encoder: str,
        checkpoint: str | None,
        threads: int,
        runtime: str = "torch",
        cache_dir: str | None = None,
    ) -> None:
        import torch

        from geoloc.models import load_encoder
        from geoloc.models.runtime import use_runtime

        torch.set_num_threads(max(1, threads))
        self.encoder = load_encoder(encoder, checkpoint=checkpoint)
        if hasattr(self.encoder, "optimize_for_inference"):
            self.encoder.optimize_for_inference()
        self.runtime = use_runtime(
            self.encoder, runtime, cache_dir=None if cache_dir is None else Path(cache_dir)
        )

    def pid(self) -> int:
        """This actor's process id (tests kill it)."""
        return os.getpid()

    def encode_band(
        self,
        path: str,
        cfg: TileConfig,
        rows: tuple[int, int],
        batch_size: int,
        features: BandFeatures | None = None,
        omega: bool = True,
    ) -> BandResult:
        """Read and encode the kept tiles of rows ``[r0, r1)`` of the raster at ``path``; with
        ``features``, also extract each tile's stored local features from the same pixels.
        ``omega`` False (a store without an Ω index): Ω is not sent back (an ``(n, 0)`` array),
        which is most of a band's bytes through the object store."""
        from geoloc.ingest.stream import as_array
        from geoloc.store.records import TileRecord
        from tiling import open_raster

        extract = None
        if features is not None:
            from geoloc.ingest.features import TileFeatures

            extract = TileFeatures(
                features.spec,
                rows=features.rows,
                cols=features.cols,
                tile_size=features.tile_size,
                stride=features.stride,
            )
        with open_raster(path) as raster:
            # the reads of a local ingest (row bands of native or downsampled pixels, a window
            # per upsampled tile); only the first row of a band reads all the source rows under it
            tiles = list(raster.tiles(cfg, rows=rows))
        outs: list[tuple[np.ndarray, ...]] = []
        feats: list[FeatureTuple] = []
        for i in range(0, len(tiles), batch_size):
            chunk = tiles[i : i + batch_size]
            pixels = np.stack([t.pixels for t in chunk])
            o = self.encoder.encode(pixels)
            om = as_array(o.omega) if omega else np.zeros((len(chunk), 0), np.float32)
            outs.append((om, *(as_array(x) for x in (o.phi, o.node_areas, o.node_centroids))))
            if extract is not None:
                feats.extend(extract.add(chunk, pixels))
        if extract is not None:
            feats.extend(extract.finish())
        enc = self.encoder
        band_feats = None if extract is None else feats
        sha = str(enc.weights_sha256)
        if not outs:
            empty = np.zeros((0, int(enc.omega_dim)), np.float32)
            return BandResult([], empty, empty, empty, empty, sha, band_feats)
        om, phi, areas, cents = (np.concatenate([o[k] for o in outs]) for k in range(4))
        records = [TileRecord.from_tile(t) for t in tiles]
        return BandResult(records, om, phi, areas, cents, sha, band_feats)


class DistributedEncoder:
    """``N`` encoder actors on the connected Ray cluster, fed bands in grid order.

    Args:
        encoder: encoder plugin name (every worker loads it; its weights' SHA-256 must match
            ``weights_sha256``, the one the store was opened for).
        checkpoint: optional checkpoint path (seen by every worker).
        weights_sha256: what the driver's encoder reports.
        workers: actors to start (default: the cluster's CPUs).
        threads: torch threads per actor.
        runtime: backbone runtime of the actors' encoders (:mod:`geoloc.models.runtime`).
        cache_dir: where the actors cache an exported ONNX backbone (a path they all see).
    """

    def __init__(
        self,
        encoder: str,
        checkpoint: str | Path | None,
        weights_sha256: str,
        *,
        workers: int | None = None,
        threads: int = 1,
        runtime: str = "torch",
        cache_dir: str | Path | None = None,
    ) -> None:
        import ray

        n = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_cpus=1, max_restarts=3, max_task_retries=3)(EncodeWorker)
        self.weights_sha256 = weights_sha256
        self.actors: list[Any] = [
            actor.options(name=ACTOR_NAME.format(i), namespace=NAMESPACE).remote(
                encoder,
                None if checkpoint is None else str(checkpoint),
                threads,
                runtime,
                None if cache_dir is None else str(cache_dir),
            )
            for i in range(int(n))
        ]
        # wait for every actor's encoder (load, optimisation, ONNX session) here, once per run:
        # otherwise the first bands of the first raster wait for it
        t0 = time.perf_counter()
        try:
            ray.get([a.pid.remote() for a in self.actors])
        except Exception as exc:  # noqa: BLE001 - an actor that cannot start is one clear line
            self.close()
            reason = (str(exc).strip().splitlines() or ["actor failed"])[0]
            raise IngestError(f"Ray encoder actors did not start: {reason}") from exc
        self.startup_s = time.perf_counter() - t0
        log.info("%d Ray encoder actors ready in %.1f s", len(self.actors), self.startup_s)

    def close(self) -> None:
        """Stop the actors."""
        import ray

        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        self.actors = []

    def __enter__(self) -> DistributedEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bands(
        self,
        path: str,
        cfg: TileConfig,
        grid: Grid,
        batch_size: int,
        features: FeatureSpec | None = None,
        omega: bool = True,
    ) -> Iterator[tuple[BandResult, int]]:
        """Yield ``(band result, grid position reached)`` in grid order; a band whose actor died
        is retried by Ray; a band that keeps failing raises :class:`IngestError`. With
        ``features`` (the store's spec) the actors also return each tile's local features;
        ``omega`` False: they do not return Ω (the store keeps no Ω index)."""
        import ray
        from ray.exceptions import RayError

        band_feats = None
        if features is not None:
            band_feats = BandFeatures(
                features, int(grid.rows), int(grid.cols), int(grid.tile_size), int(grid.stride)
            )
        todo = deque(band_rows(grid))
        pending: deque[tuple[Any, tuple[int, int]]] = deque()
        limit = len(self.actors) * (1 + IN_FLIGHT_PER_WORKER)
        i = 0
        while todo or pending:
            while todo and len(pending) < limit:
                rows = todo.popleft()
                a = self.actors[i % len(self.actors)]
                i += 1
                ref = a.encode_band.remote(path, cfg, rows, batch_size, band_feats, omega)
                pending.append((ref, rows))
            ref, rows = pending.popleft()
            try:
                res: BandResult = ray.get(ref)
            except RayError as exc:
                reason = (str(exc).strip().splitlines() or ["worker failed"])[0]
                raise IngestError(
                    f"rows {rows[0]}-{rows[1] - 1} failed on the Ray cluster: {reason}", path=path
                ) from exc
            if res.weights_sha256 != self.weights_sha256:
                raise IngestError(
                    f"a Ray worker loaded encoder weights {res.weights_sha256[:12]}, "
                    f"the driver {self.weights_sha256[:12]}",
                    path=path,
                )
            log.debug("ingest %s: band rows %d-%d encoded", path, rows[0], rows[1] - 1)
            yield res, rows[1] * int(grid.cols)


def write_bands(
    source: Iterator[tuple[BandResult, int]],
    add: Callable[..., Any],
    write_tiles: int,
    on_position: Callable[[int], None] | None = None,
) -> int:
    """Hand the bands' tiles to ``add(tiles, omega, phi, areas, centroids, features=...)`` in
    writes of ``write_tiles`` tiles (a local ingest's :data:`~geoloc.ingest.core.WRITE_TILES`;
    both write the same rows in the same order, so with the same ids; ``features`` None when
    the bands carry none); returns the tiles written."""
    buf: list[BandResult] = []
    n_buf = 0
    written = 0

    def flush(final: bool) -> None:
        nonlocal buf, n_buf, written
        if not buf:
            return
        tiles = [t for b in buf for t in b.tiles]
        arrays = [
            np.concatenate([getattr(b, k) for b in buf])
            for k in ("omega", "phi", "node_areas", "node_centroids")
        ]
        feats = None
        if buf[0].features is not None:
            feats = [f for b in buf for f in (b.features or [])]
        cut = len(tiles) if final else (len(tiles) // write_tiles) * write_tiles
        for s in range(0, cut, write_tiles):
            e = min(cut, s + write_tiles)
            add(
                tiles[s:e],
                *(a[s:e] for a in arrays),
                features=None if feats is None else feats[s:e],
            )
            log.debug("ingest: batch of %d tiles written", e - s)
        written += cut
        rest = tiles[cut:]
        om, phi, areas, cents = (a[cut:] for a in arrays)
        rest_feats = None if feats is None else feats[cut:]
        buf = [BandResult(rest, om, phi, areas, cents, "", rest_feats)] if rest else []
        n_buf = len(rest)

    for band, position in source:
        if band.tiles:
            buf.append(band)
            n_buf += len(band.tiles)
        if n_buf >= write_tiles:
            flush(final=False)
        if on_position is not None:
            on_position(position)
    flush(final=True)
    return written
