"""``ingest(paths, ...)``: tiler -> encoder -> store, pipelined, transactional and resumable.

Per raster, under the store's advisory ingest lock (so concurrent ingests serialise):

1. **Recover**: orthomosaics of this encoder left ``ingesting``/``failed`` by a killed run are
   deleted (the lock proves their writer is gone), then the FAISS index is reconciled with the
   database: every id that is not a tile of a ``complete`` orthomosaic is removed, and the
   index is saved atomically.
2. **Idempotence**: the raster's SHA-256 is looked up with the encoder; a ``complete`` match is
   skipped (``--force`` deletes it first: database rows, then FAISS ids, then an atomic save).
   An orthomosaic of the same path with another SHA-256 (the file changed) is replaced the
   same way: its tiles would point at pixels that are no longer there.
3. **Write**: an ``ingesting`` orthomosaic row is committed; batches of tiles are read in a
   background thread, encoded in the main thread and written (tiles + Φ by binary COPY, one
   transaction per batch; Ω added to the in-memory FAISS index) in a writer thread.
4. **Commit**: the FAISS index is saved atomically (temp file + rename), *then* the orthomosaic
   becomes ``complete``. Only ``complete`` orthomosaics are ever answered by ``locate``.

A crash (SIGKILL, power loss) at any point therefore leaves either the previous state or an
``ingesting`` row (invisible to ``locate``) plus possibly FAISS ids of it; step 1 of the next
run removes both. A failure inside a raster (unreadable pixels, Ctrl-C) deletes that raster's
rows before returning/raising, and leaves the saved index untouched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.exc import DBAPIError

from geoloc.config import Settings
from geoloc.errors import DatabaseError, GeolocError, IngestError
from geoloc.ingest.paths import expand_paths, sha256_file
from geoloc.ingest.pipeline import BackgroundWorker, Prefetcher

if TYPE_CHECKING:
    from rich.progress import Progress

    from tiling import Raster, Tile

log = logging.getLogger("geoloc.ingest")

#: Default ingest ground sample distance (metres per pixel). A 224 px tile then covers
#: 112 m x 112 m of ground: the size of a drone frame seen from ~100 m (100-200 m across).
#: At the imagery's native 0.14-0.28 m/px a tile would cover only 30-60 m, mostly one field
#: (see shared/notes/baseline-retrieval.md: such tiles hold too little structure to retrieve).
#: Rasters coarser than this are tiled at their native GSD (never upsampled).
#: Measured (benchmarks/ingest.py gsd_sweep: 24 synthetic 150 m views of the bundled sample,
#: heading unknown, top-1 tile by Ω): share within 25 m 0.29 at 0.28 m/px (63 m tiles), 0.42 at
#: 0.5 m/px (112 m), 0.00 at 0.75 m/px (168 m tiles, larger than the frames).
DEFAULT_GSD_M = 0.5

#: Default stride as a fraction of the tile: half a tile (56 m at the default GSD), so any
#: frame centre lies within a quarter tile of some tile centre along each axis.
DEFAULT_STRIDE_FRACTION = 0.5

#: Default minimum fraction of valid pixels for a tile to be kept.
DEFAULT_MIN_VALID = 0.5


@dataclass
class IngestTimings:
    """Seconds spent per stage for one raster (stages overlap, so they can exceed the wall)."""

    read_s: float = 0.0
    encode_s: float = 0.0
    db_s: float = 0.0
    faiss_add_s: float = 0.0
    faiss_save_s: float = 0.0
    recover_s: float = 0.0
    lock_wait_s: float = 0.0


@dataclass
class IngestResult:
    """Outcome of ingesting one raster (one entry of the JSON summary)."""

    path: str
    status: str  # "ingested" | "skipped" | "failed"
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


def resolve_tiling(
    native_gsd_m: float, tile_size: int, gsd: float | None, stride: int | None
) -> tuple[float, int]:
    """Return the (target GSD in metres, stride in px) actually used for a raster.

    ``gsd=None`` gives ``max(DEFAULT_GSD_M, native)``; ``stride=None`` gives half a tile.
    """
    if gsd is not None and not (math.isfinite(gsd) and gsd > 0):
        raise IngestError(f"--gsd must be a positive number of metres, got {gsd!r}")
    if stride is not None and stride < 1:
        raise IngestError(f"--stride must be >= 1 pixel, got {stride!r}")
    target = float(gsd) if gsd is not None else max(DEFAULT_GSD_M, float(native_gsd_m))
    step = int(stride) if stride is not None else max(1, int(tile_size * DEFAULT_STRIDE_FRACTION))
    return target, step


def _np(x: Any) -> np.ndarray:
    """Tensor or array -> contiguous float32 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


@dataclass
class _Batch:
    tiles: list[Tile]
    pixels: np.ndarray  # (B, 3, S, S) uint8
    position: int  # candidate tiles visited so far (row-major grid position + 1)


@dataclass
class _Encoded:
    tiles: list[Tile]
    omega: np.ndarray
    phi: np.ndarray
    node_areas: np.ndarray
    node_centroids: np.ndarray
    position: int


def _batches(raster: Raster, cfg: Any, cols: int, batch_size: int) -> Iterator[_Batch]:
    buf: list[Tile] = []
    for tile in raster.tiles(cfg):
        buf.append(tile)
        if len(buf) >= batch_size:
            yield _Batch(
                buf, np.stack([t.pixels for t in buf]), buf[-1].row * cols + buf[-1].col + 1
            )
            buf = []
    if buf:
        yield _Batch(buf, np.stack([t.pixels for t in buf]), buf[-1].row * cols + buf[-1].col + 1)


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


def _reconcile(db: Any, encoder_id: int, index: Any | None) -> None:
    """Delete the encoder's incomplete orthomosaics, then drop FAISS ids not in the database."""
    from geoloc.store import repository as repo

    for ortho in repo.incomplete_orthomosaics(db, encoder_id):
        log.warning(
            "cleaning up an interrupted ingest of %s (orthomosaic %d, status %s)",
            ortho.path,
            ortho.id,
            ortho.status,
        )
        repo.delete_orthomosaic(db, int(ortho.id))
    if index is None:
        return
    complete = np.asarray(repo.complete_tile_ids(db, encoder_id), dtype=np.int64)
    in_index = np.asarray(index.ids(), dtype=np.int64)
    stale = np.setdiff1d(in_index, complete)
    if stale.size:
        log.warning("removing %d stale ids from the FAISS index", stale.size)
        index.remove(stale)
        index.save()
    missing = np.setdiff1d(complete, in_index)
    if missing.size:
        log.warning(
            "FAISS lacks %d tiles of complete orthomosaics; run `geoloc index rebuild`",
            missing.size,
        )


class _Ingester:
    """State shared by the rasters of one ``ingest`` call (encoder, database, encoder id)."""

    def __init__(
        self,
        settings: Settings,
        encoder: Any,
        db: Any,
        encoder_id: int,
        *,
        gsd: float | None,
        stride: int | None,
        batch_size: int,
        force: bool,
        min_valid: float,
        progress: _ProgressSink,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.db = db
        self.encoder_id = encoder_id
        self.gsd = gsd
        self.stride = stride
        self.batch_size = batch_size
        self.force = force
        self.min_valid = min_valid
        self.progress = progress

    # -- recovery -----------------------------------------------------------------------------
    def open_index(self) -> Any:
        from geoloc.store import OmegaIndex

        return OmegaIndex.open(
            self.settings,
            self.encoder.weights_sha256,
            encoder_id=self.encoder_id,
            omega_dim=int(self.encoder.omega_dim),
        )

    def recover(self, index: Any) -> None:
        """Delete orthomosaics a dead run left incomplete; make FAISS hold only complete ids.

        Done for this encoder's ``index``, and for any other encoder that has incomplete
        orthomosaics (an interrupted ingest with another encoder). Must be called with the
        ingest lock held (so no live writer owns those rows).
        """
        from geoloc.store import OmegaIndex
        from geoloc.store import repository as repo

        _reconcile(self.db, self.encoder_id, index)
        for other in repo.list_encoders(self.db):
            if other.id == self.encoder_id or not repo.incomplete_orthomosaics(self.db, other.id):
                continue
            other_index = (
                OmegaIndex.open(self.settings, other.weights_sha256)
                if OmegaIndex.exists(self.settings, other.weights_sha256)
                else None
            )
            _reconcile(self.db, other.id, other_index)

    # -- one raster ---------------------------------------------------------------------------
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
        from geoloc.store import repository as repo
        from tiling import TileConfig, open_raster

        res.sha256 = sha256_file(path)
        with open_raster(path) as raster:
            tile_size = int(self.encoder.input_size)
            target_gsd, step = resolve_tiling(raster.gsd_m, tile_size, self.gsd, self.stride)
            cfg = TileConfig(
                tile_size=tile_size, stride=step, gsd=target_gsd, min_valid=self.min_valid
            )
            grid = raster.grid(cfg)
            res.gsd_m, res.stride_px, res.tile_size_px = float(grid.gsd_m), step, tile_size

            t_lock = time.perf_counter()
            with repo.ingest_lock(self.db):
                res.timings.lock_wait_s = time.perf_counter() - t_lock
                t_rec = time.perf_counter()
                index = self.open_index()  # fresh from disk: another process may have saved it
                self.recover(index)
                res.timings.recover_s = time.perf_counter() - t_rec

                existing = repo.find_orthomosaic(self.db, res.sha256, self.encoder_id)
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
                # Replace the same content (--force) and older contents of the same path: their
                # tiles would point at pixels that are no longer in the file.
                stale = [existing] if existing is not None else []
                stale += [
                    o
                    for o in repo.list_orthomosaics(self.db, self.encoder_id)
                    if o.path == str(path) and o.sha256 != res.sha256
                ]
                for old in stale:
                    why = "--force" if old.sha256 == res.sha256 else "the file changed"
                    log.info("replacing orthomosaic %d of %s (%s)", old.id, old.path, why)
                    removed = np.asarray(repo.delete_orthomosaic(self.db, int(old.id)))
                    if removed.size:
                        index.remove(removed.astype(np.int64))
                        index.save()

                oid = repo.begin_orthomosaic(
                    self.db,
                    path=str(path),
                    sha256=res.sha256,
                    encoder_id=self.encoder_id,
                    raster=raster,
                    tile_size=tile_size,
                    stride=step,
                    target_gsd=float(grid.gsd_m),
                )
                res.id = int(oid)
                log.info(
                    "ingesting %s: %d candidate tiles of %d px at %.3f m/px, stride %d px",
                    path,
                    len(grid),
                    tile_size,
                    grid.gsd_m,
                    step,
                )
                try:
                    kept = self._stream(raster, cfg, grid, oid, index, res, path)
                    skipped = int(len(grid)) - kept
                    if kept == 0:
                        raise IngestError(
                            f"no tile has at least {self.min_valid:.0%} valid pixels",
                            path=str(path),
                        )
                    t_save = time.perf_counter()
                    index.save()
                    res.timings.faiss_save_s = time.perf_counter() - t_save
                    log.debug("ingest %s: FAISS saved", path)
                    repo.finish_orthomosaic(self.db, oid, kept, skipped)
                    log.debug("ingest %s: orthomosaic %d complete", path, oid)
                except BaseException:
                    # Leave nothing half-written: the unsaved FAISS additions die with `index`;
                    # the rows go now (or, if this fails too, at the next run's recovery).
                    with contextlib.suppress(Exception):
                        repo.delete_orthomosaic(self.db, oid)
                    raise
                res.status, res.tiles_kept, res.tiles_skipped = "ingested", kept, skipped
                res.message = None

    def _stream(
        self,
        raster: Raster,
        cfg: Any,
        grid: Any,
        oid: int,
        index: Any,
        res: IngestResult,
        path: Path,
    ) -> int:
        from geoloc.store import repository as repo

        kept = 0
        timings = res.timings

        def write(batch: _Encoded) -> None:
            t0 = time.perf_counter()
            ids = repo.add_tiles(
                self.db,
                oid,
                self.encoder_id,
                batch.tiles,
                batch.phi,
                batch.node_areas,
                batch.node_centroids,
            )
            t1 = time.perf_counter()
            index.add(np.asarray(ids, dtype=np.int64), batch.omega)
            t2 = time.perf_counter()
            timings.db_s += t1 - t0
            timings.faiss_add_s += t2 - t1
            log.debug("ingest %s: batch of %d tiles written", path, len(batch.tiles))

        self.progress.start(Path(path).name, int(len(grid)))
        reader: Prefetcher[_Batch] = Prefetcher(
            _batches(raster, cfg, int(grid.cols), self.batch_size), maxsize=3
        )
        with reader, BackgroundWorker(write, maxsize=2) as writer:
            for batch in reader:
                t0 = time.perf_counter()
                out = self.encoder.encode(batch.pixels)
                enc = _Encoded(
                    batch.tiles,
                    _np(out.omega),
                    _np(out.phi),
                    _np(out.node_areas),
                    _np(out.node_centroids),
                    batch.position,
                )
                timings.encode_s += time.perf_counter() - t0
                writer.submit(enc)
                kept += len(batch.tiles)
                self.progress.update(batch.position)
            writer.join()
        timings.read_s = reader.busy_s
        self.progress.finish()
        return kept


def ingest(
    paths: Sequence[str | Path] | str | Path,
    *,
    encoder: str | Any = "sgmnet",
    checkpoint: str | Path | None = None,
    gsd: float | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    force: bool = False,
    settings: Settings | None = None,
    progress: bool = True,
    min_valid: float = DEFAULT_MIN_VALID,
) -> list[IngestResult]:
    """Ingest rasters (files, directories walked recursively, globs) into the tile database.

    Args:
        paths: rasters, directories or glob patterns.
        encoder: encoder plugin name (``geoloc encoders list``), or an encoder already loaded
            with :func:`geoloc.models.load_encoder` (reused as is).
        checkpoint: optional checkpoint of that encoder (head weights).
        gsd: target ground sample distance in m/px; default ``max(0.5, native GSD)``.
        stride: tile step in output pixels; default half a tile (112 px for 224 px tiles).
        batch_size: tiles per encoder batch (and per database transaction).
        force: replace rasters already ingested with this encoder.
        settings: where the database and the index live (default: from the environment).
        progress: show a rich progress bar on stderr.
        min_valid: minimum valid-pixel fraction of a kept tile.

    Returns:
        One ``failed`` :class:`IngestResult` per input path that yielded no raster, then one
        result per raster in input order. Per-raster failures are reported there,
        never raised; database or encoder failures raise :class:`GeolocError`; Ctrl-C raises
        ``KeyboardInterrupt`` after removing the partial raster.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if batch_size < 1:
        raise IngestError(f"--batch-size must be >= 1, got {batch_size}")
    resolve_tiling(1.0, 224, gsd, stride)  # validate the parameters before any heavy work
    settings = settings or Settings.from_env()
    rasters, problems = expand_paths(paths)
    results = [
        IngestResult(path=p.path, status="failed", message=f"{p.path}: {p.message}")
        for p in problems
    ]
    for r in results:
        log.error("%s", r.message)
    if not rasters:
        return results

    from geoloc.models import load_encoder
    from geoloc.store import open_database
    from geoloc.store import repository as repo

    db = open_database(settings)  # first: an unreachable database fails fast
    try:
        if isinstance(encoder, str):
            enc = load_encoder(encoder, checkpoint=checkpoint)
            if hasattr(enc, "optimize_for_inference"):
                enc.optimize_for_inference()
        else:
            enc = encoder  # an already loaded encoder (tests, benchmarks, notebooks)
        encoder_id = repo.get_or_create_encoder(
            db,
            name=enc.name,
            config=enc.config(),
            weights_sha256=enc.weights_sha256,
            omega_dim=int(enc.omega_dim),
            phi_dim=int(enc.phi_dim),
        )
        _run_all(
            settings,
            enc,
            db,
            int(encoder_id),
            rasters,
            results,
            gsd=gsd,
            stride=stride,
            batch_size=batch_size,
            force=force,
            min_valid=min_valid,
            progress=progress,
        )
    except DBAPIError as exc:
        # The database went away mid-run (server killed, network): one clear line; whatever
        # was not committed is cleaned up by the next run's recovery.
        reason = (str(exc.orig or exc).strip().splitlines() or ["connection lost"])[0]
        raise DatabaseError(f"{db.url}: database error during ingest: {reason}") from exc
    finally:
        with contextlib.suppress(Exception):
            db.dispose()
    return results


def _run_all(
    settings: Settings,
    enc: Any,
    db: Any,
    encoder_id: int,
    rasters: list[Path],
    results: list[IngestResult],
    *,
    gsd: float | None,
    stride: int | None,
    batch_size: int,
    force: bool,
    min_valid: float,
    progress: bool,
) -> None:
    with _progress_bar(progress) as prog:
        ingester = _Ingester(
            settings,
            enc,
            db,
            int(encoder_id),
            gsd=gsd,
            stride=stride,
            batch_size=batch_size,
            force=force,
            min_valid=min_valid,
            progress=_ProgressSink(prog),
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
