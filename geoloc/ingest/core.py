"""``ingest(paths, ...)``: tiles -> encode -> :class:`~geoloc.store.TileStore`, per raster.

Per raster, under the store's advisory ingest lock (so concurrent ingests serialise):

1. **Recover** (:meth:`TileStore.recover`): what a killed run left (``ingesting``/``failed``
   orthomosaics, FAISS ids that are not complete tiles) is removed.
2. **Idempotence**: the raster's SHA-256 is looked up with the encoder; a ``complete`` match is
   skipped unless ``--force``. :meth:`TileStore.begin` replaces it (and any older content of
   the same path, whose tiles would point at pixels that are no longer there).
3. **Write**: batches of tiles are read in a background thread, encoded (and their local
   features extracted, :mod:`geoloc.ingest.features`) in the main thread and handed to
   :meth:`TileStore.add` in a writer thread (:mod:`geoloc.ingest.stream`).
4. **Commit** (:meth:`TileStore.commit`): the FAISS index and the features are saved atomically,
   *then* the orthomosaic becomes ``complete``; on any failure :meth:`TileStore.abort`.

The grid is the one of :class:`tiling.TilingPolicy` (the same ``geoloc tiles`` lays); the GSD
it picks, and why, is logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError

from geoloc.config import Settings
from geoloc.errors import DatabaseError, GeolocError, IngestError
from geoloc.ingest.paths import expand_paths, sha256_file
from geoloc.ingest.stream import Encoded, batches, encode_stream
from tiling.policy import DEFAULT_GSD_M, DEFAULT_MIN_VALID, DEFAULT_STRIDE_FRACTION, TilingPolicy

if TYPE_CHECKING:
    from rich.progress import Progress

    from geoloc.store import TileStore

log = logging.getLogger("geoloc.ingest")

#: Tiles per database write (consecutive encoder batches merged): each write is a transaction
#: whose round trips and commit cost the same whatever its size, on the cores the encoder uses.
#: Nothing is visible before the orthomosaic's commit, so its size changes no guarantee.
WRITE_TILES = 64

__all__ = [
    "DEFAULT_GSD_M",
    "DEFAULT_MIN_VALID",
    "DEFAULT_STRIDE_FRACTION",
    "IngestError",
    "IngestResult",
    "IngestTimings",
    "ingest",
]


@dataclass
class IngestTimings:
    """Seconds spent per stage for one raster (stages overlap, so they can exceed the wall)."""

    read_s: float = 0.0
    encode_s: float = 0.0
    db_s: float = 0.0
    faiss_add_s: float = 0.0
    faiss_save_s: float = 0.0
    features_s: float = 0.0
    features_save_s: float = 0.0
    recover_s: float = 0.0
    lock_wait_s: float = 0.0
    #: CPU seconds of the reader (tiler) and writer (DB, index) threads of a local ingest
    read_cpu_s: float = 0.0
    write_cpu_s: float = 0.0


@dataclass
class IngestResult:
    """Outcome of ingesting one raster (one entry of the JSON summary)."""

    path: str
    status: str  # "ingested" | "skipped" | "relinked" | "failed"
    id: int | None = None
    sha256: str | None = None
    tiles_kept: int = 0
    tiles_skipped: int = 0
    seconds: float = 0.0
    message: str | None = None
    gsd_m: float | None = None
    stride_px: int | None = None
    tile_size_px: int | None = None
    timings: IngestTimings = field(default_factory=IngestTimings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the per-raster summary printed by ``geoloc ingest``)."""
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["timings"] = {k: round(v, 4) for k, v in asdict(self.timings).items()}
        return d


def policy_for(
    tile_size: int, gsd: float | None, stride: int | None, min_valid: float
) -> TilingPolicy:
    """The tiling policy of these ingest options (IngestError naming the bad option)."""
    from tiling import TilingError

    try:
        return TilingPolicy(tile_size=int(tile_size), gsd=gsd, stride=stride, min_valid=min_valid)
    except TilingError as exc:
        raise IngestError(str(exc)) from exc


class _ProgressSink:
    """Thin wrapper over an optional rich progress bar (tiles done / total, tiles/s, ETA)."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, name: str, total: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(name, total=total)

    def update(self, completed: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=completed)

    def finish(self) -> None:
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, completed=task.total)
            self._progress.stop_task(self._task)
            self._task = None


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- tiles/s" if speed is None else f"{speed:.1f} tiles/s")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as prog:
        yield prog


class _Ingester:
    """State shared by the rasters of one ``ingest`` call (encoder, store, options)."""

    def __init__(
        self,
        encoder: Any,
        store: TileStore,
        policy: TilingPolicy,
        *,
        batch_size: int,
        write_tiles: int,
        force: bool,
        progress: _ProgressSink,
        distributed: Any = None,
        features: Any = None,
    ) -> None:
        self.distributed = distributed  # a DistributedEncoder (--cluster), or None: local
        self.encoder = encoder
        self.store = store
        self.policy = policy
        self.batch_size = batch_size
        self.write_tiles = write_tiles
        self.force = force
        self.progress = progress
        self.features = features  # the FeatureSpec to write local features with, or None

    def run(self, path: Path) -> IngestResult:
        """Ingest one raster; expected failures become a ``failed`` result, Ctrl-C propagates."""
        from tiling import TilingError

        t0 = time.perf_counter()
        res = IngestResult(path=str(path), status="failed")
        try:
            self._run(path, res)
        except (GeolocError, TilingError, OSError) as exc:
            res.status = "failed"
            msg = str(exc)
            res.message = msg if str(path) in msg else f"{path}: {msg}"
            log.error("%s", res.message)
        finally:
            res.seconds = time.perf_counter() - t0
        return res

    def _run(self, path: Path, res: IngestResult) -> None:
        from geoloc.store.records import RasterRecord
        from tiling import open_raster

        store = self.store
        res.sha256 = sha256_file(path)
        with open_raster(path) as raster:
            cfg, reason = self.policy.resolve(raster)
            grid = raster.grid(cfg)
            res.gsd_m, res.stride_px = float(grid.gsd_m), self.policy.step
            res.tile_size_px = int(cfg.tile_size)

            t_lock = time.perf_counter()
            with store.locked():
                res.timings.lock_wait_s = time.perf_counter() - t_lock
                t_rec = time.perf_counter()
                store.recover()
                res.timings.recover_s = time.perf_counter() - t_rec

                existing = store.find(res.sha256)
                if (
                    existing is not None
                    and str(existing.status) == "complete"
                    and not self.force
                    and existing.path != os.path.abspath(path)
                    and not os.path.exists(existing.path)
                ):
                    # the same bytes at a new path and none at the old one: the raster moved and
                    # its tiles are intact (a copy beside a present original stays "skipped")
                    moved = store.relink(res.sha256, str(path))
                    res.status, res.id = "relinked", int(existing.id)
                    res.tiles_kept = int(existing.tiles_kept or 0)
                    res.tiles_skipped = int(existing.tiles_skipped or 0)
                    res.message = f"{path}: relinked from {existing.path} ({len(moved)} rows)"
                    log.info("%s", res.message)
                    return
                if existing is not None and str(existing.status) == "complete" and not self.force:
                    res.status, res.id = "skipped", int(existing.id)
                    res.tiles_kept = int(existing.tiles_kept or 0)
                    res.tiles_skipped = int(existing.tiles_skipped or 0)
                    res.message = (
                        f"{path}: already ingested with encoder {self.encoder.name} "
                        f"(orthomosaic {existing.id}); use --force to replace it"
                    )
                    log.info("%s", res.message)
                    return
                record = RasterRecord.from_raster(
                    raster,
                    path=str(path),
                    sha256=res.sha256,
                    tile_size=int(cfg.tile_size),
                    stride=self.policy.step,
                    target_gsd_m=cfg.gsd,  # None: the native pixels, as a rebuild re-reads them
                )
                res.id = store.begin(record)
                log.info(
                    "ingesting %s: %d candidate tiles of %d px at %.3f m/px, stride %d px (%s)",
                    path,
                    len(grid),
                    cfg.tile_size,
                    grid.gsd_m,
                    self.policy.step,
                    reason,
                )
                reduction = max(grid.scale_x, grid.scale_y)
                if reduction >= 4.0 and not raster.overview_factors:
                    # every source pixel is decoded: an overview level would be read instead
                    log.info(
                        "%s: tiles are %.1fx coarser than its pixels and it has no overviews; "
                        "`gdaladdo -r average %s` (or a COG) lets ingest read fewer pixels",
                        path,
                        reduction,
                        path,
                    )
                try:
                    kept = self._stream(raster, cfg, grid, res, path)
                    if kept == 0:
                        raise IngestError(
                            self.policy.no_tiles_message(cfg, float(raster.gsd_m)), path=str(path)
                        )
                    store.commit(kept, int(len(grid)) - kept)
                except BaseException:
                    store.abort()
                    raise
                finally:
                    w = store.write_timings
                    res.timings.db_s, res.timings.faiss_add_s = w.db_s, w.faiss_add_s
                    res.timings.faiss_save_s = w.faiss_save_s
                    res.timings.features_save_s = w.features_save_s
                res.status, res.tiles_kept = "ingested", kept
                res.tiles_skipped = int(len(grid)) - kept
                res.message = None

    def _stream(self, raster: Any, cfg: Any, grid: Any, res: IngestResult, path: Path) -> int:
        from geoloc.store.records import TileRecord

        def write(batch: Encoded) -> None:
            assert batch.phi is not None and batch.node_areas is not None
            assert batch.node_centroids is not None
            self.store.add(
                [TileRecord.from_tile(t) for t in batch.tiles],
                batch.omega,
                batch.phi,
                batch.node_areas,
                batch.node_centroids,
                features=batch.features,
            )
            log.debug("ingest %s: batch of %d tiles written", path, len(batch.tiles))

        kept = 0

        def advanced(batch: Any) -> None:
            nonlocal kept
            kept += len(batch.tiles)
            self.progress.update(batch.position)

        self.progress.start(Path(path).name, int(len(grid)))
        extract = None
        if self.features is not None:
            from geoloc.ingest.features import TileFeatures

            extract = TileFeatures(
                self.store.use_features(self.features),
                rows=int(grid.rows),
                cols=int(grid.cols),
                tile_size=int(cfg.tile_size),
                stride=int(grid.stride),
            )
        if extract is None and self.store.feature_spec is not None:
            log.warning(
                "%s: its tiles get no local features while the store keeps them; "
                "`geoloc index rebuild --features --missing` adds them",
                path,
            )
        if self.distributed is not None:
            from geoloc.ingest.distributed import write_bands

            # the actors extract the features from the pixels they read (None: they make none)
            spec = None if extract is None else extract.spec
            kept = write_bands(
                self.distributed.bands(
                    str(path), cfg, grid, self.batch_size, features=spec, omega=self.store.has_omega
                ),
                self.store.add,
                self.write_tiles,
                on_position=self.progress.update,
            )
            self.progress.finish()
            return kept
        t = encode_stream(
            batches(raster, cfg, int(grid.cols), self.batch_size),
            self.encoder,
            write,
            omega=self.store.has_omega,
            on_batch=advanced,
            features=extract,
            write_tiles=self.write_tiles,
        )
        res.timings.read_s, res.timings.encode_s = t.read_s, t.encode_s
        res.timings.features_s = t.features_s
        res.timings.read_cpu_s, res.timings.write_cpu_s = t.read_cpu_s, t.write_cpu_s
        self.progress.finish()
        return kept


@contextlib.contextmanager
def _distributed(
    cluster: str,
    workers: int | None,
    enc: Any,
    spec: str | Any,
    checkpoint: str | Path | None,
) -> Iterator[Any]:
    from geoloc.ingest.distributed import DistributedEncoder, ray_cluster
    from geoloc.models.runtime import default_cache_dir, runtime_of

    name = spec if isinstance(spec, str) else str(enc.name)
    # the actors run the backbone on the runtime the driver's encoder ended up on
    runtime = runtime_of(enc)
    with (
        ray_cluster(cluster, workers),
        DistributedEncoder(
            name,
            checkpoint,
            str(enc.weights_sha256),
            workers=workers,
            runtime=runtime,
            cache_dir=default_cache_dir(),
        ) as dist,
    ):
        yield dist


def ingest(
    paths: Sequence[str | Path] | str | Path,
    *,
    encoder: str | Any = "sgmnet",
    checkpoint: str | Path | None = None,
    gsd: float | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    write_tiles: int | None = None,
    force: bool = False,
    settings: Settings | None = None,
    progress: bool = True,
    min_valid: float = DEFAULT_MIN_VALID,
    cluster: str | None = None,
    workers: int | None = None,
    features: bool | None = None,
    features_max: int | None = None,
    runtime: str | None = None,
    omega: bool | None = None,
) -> list[IngestResult]:
    """Ingest rasters (files, directories walked recursively, globs) into the tile store.

    Args:
        paths: rasters, directories or glob patterns.
        encoder: encoder plugin name (``geoloc encoders list``), or an encoder already loaded
            with :func:`geoloc.models.load_encoder` (reused as is).
        checkpoint: optional checkpoint of that encoder (head weights).
        gsd: target ground sample distance in m/px; default: :class:`tiling.TilingPolicy`'s
            choice (``max(0.5, native)``, or native on a map too small for that).
        stride: tile step in output pixels; default half a tile (112 px for 224 px tiles).
        batch_size: tiles per encoder batch.
        write_tiles: tiles per database transaction (consecutive batches merged; at least
            one batch); None: :data:`WRITE_TILES`.
        force: replace rasters already ingested with this encoder.
        settings: where the database and the index live (default: from the environment).
        progress: show a rich progress bar on stderr.
        min_valid: minimum valid-pixel fraction of a kept tile.
        cluster: ``None`` (default): this process encodes. ``"auto"`` (a local Ray cluster on
            127.0.0.1, or the one already connected) or ``"ray://HOST:PORT"``: encoder actors
            on Ray do, this process writes (:mod:`geoloc.ingest.distributed`).
        workers: encoder actors on the cluster (default: its CPUs).
        features: extract and store each tile's local features (XFeat keypoints of its core
            cell) for verification; None: ``settings.features`` (``GEOLOC_FEATURES``, on by
            default). With ``cluster`` this process extracts them (the workers encode).
        features_max: keypoints kept per tile (None: ``settings.features_max`` or the default);
            a store that has features keeps its own setting.
        runtime: backbone runtime of an encoder loaded by name (``auto`` | ``torch`` | ``onnx``,
            :mod:`geoloc.models.runtime`; default ``GEOLOC_ENCODER_RUNTIME`` or ``auto``). An
            encoder passed in already loaded keeps the runtime it has.
        omega: keep the Ω FAISS index (only ``--preset seed`` reads it); None:
            ``settings.omega`` (``GEOLOC_OMEGA``), else the store's setting, a new store's
            :data:`geoloc.store.tile_store.DEFAULT_OMEGA`. A store with tiles keeps its own.

    Returns:
        One ``failed`` :class:`IngestResult` per input path that yielded no raster, then one
        result per raster in input order. Per-raster failures are reported there,
        never raised; database or encoder failures raise :class:`GeolocError`; Ctrl-C raises
        ``KeyboardInterrupt`` after removing the partial raster.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if cluster is not None:
        from geoloc.ingest.distributed import check_cluster

        check_cluster(cluster)
    if workers is not None and workers < 1:
        raise IngestError(f"--workers must be >= 1, got {workers}")
    if batch_size < 1:
        raise IngestError(f"--batch-size must be >= 1, got {batch_size}")
    write_tiles = WRITE_TILES if write_tiles is None else write_tiles
    if write_tiles < 1:
        raise IngestError(f"--write-tiles must be >= 1, got {write_tiles}")
    policy_for(224, gsd, stride, min_valid)  # validate the options before any heavy work
    from geoloc.models.runtime import check_runtime, default_runtime, load_for_inference

    runtime = default_runtime() if runtime is None else check_runtime(runtime)
    settings = settings or Settings.from_env()
    spec = None
    if settings.features if features is None else features:
        from geoloc.ingest.features import feature_spec

        spec = feature_spec(features_max if features_max is not None else settings.features_max)
    rasters, problems = expand_paths(paths)
    results = [
        IngestResult(path=p.path, status="failed", message=f"{p.path}: {p.message}")
        for p in problems
    ]
    for r in results:
        log.error("%s", r.message)
    if not rasters:
        return results

    from geoloc.store import TileStore
    from geoloc.store.database import open_database

    db = open_database(settings)  # first: an unreachable database fails fast
    try:
        if isinstance(encoder, str):
            enc = load_for_inference(encoder, checkpoint, runtime)
        else:
            enc = encoder  # an already loaded encoder (tests, benchmarks, notebooks)
        policy = policy_for(int(enc.input_size), gsd, stride, min_valid)
        store = TileStore.for_encoder(
            settings,
            name=enc.name,
            config=enc.config(),
            weights_sha256=enc.weights_sha256,
            omega_dim=int(enc.omega_dim),
            phi_dim=int(enc.phi_dim),
            db=db,
            omega=settings.omega if omega is None else omega,
        )
    except BaseException:
        db.dispose()
        raise
    try:
        with contextlib.ExitStack() as stack:
            dist = None
            if cluster is not None:
                dist = stack.enter_context(_distributed(cluster, workers, enc, encoder, checkpoint))
            prog = stack.enter_context(_progress_bar(progress))
            ingester = _Ingester(
                enc,
                store,
                policy,
                batch_size=batch_size,
                write_tiles=write_tiles,
                force=force,
                progress=_ProgressSink(prog),
                distributed=dist,
                features=spec,
            )
            for path in rasters:
                res = ingester.run(path)
                if res.status == "ingested":
                    log.info(
                        "%s: %d tiles (%d skipped) in %.1f s",
                        path,
                        res.tiles_kept,
                        res.tiles_skipped,
                        res.seconds,
                    )
                results.append(res)
    except DBAPIError as exc:
        # The database went away mid-run (server killed, network): one clear line; whatever
        # was not committed is cleaned up by the next run's recovery.
        reason = (str(exc.orig or exc).strip().splitlines() or ["connection lost"])[0]
        raise DatabaseError(f"{store.db.url}: database error during ingest: {reason}") from exc
    finally:
        with contextlib.suppress(Exception):
            store.close()
    return results
