"""The Localizer: one drone frame in, one :class:`Fix` (lat/lon + confidence) out.

``locate`` runs a chain of stages over one :class:`~geoloc.localize.state.FrameState`:

1. :class:`~geoloc.localize.prepare.FramePreparation`: load the frame, bring it to the GSD of
   each of the store's GSD layers it is plausible for, rotate it under each heading hypothesis
   (one when the heading is known), encode;
2. :class:`~geoloc.localize.recall.Recall`: top-N tiles per heading (per layer, among that
   layer's tiles), merged over the headings (and layers);
3. :class:`~geoloc.localize.rerank.Rerank`: the tiles' records, re-ordered by Φ;
4. :class:`~geoloc.localize.consistency.Consistency`: node-centroid agreement on the top-M;
5. :class:`~geoloc.localize.schedule.VerificationScheduler`: local-feature verification of the
   top-M (fallback verifier, heading sweep, budget);
6. :class:`~geoloc.localize.pose.PoseStage` (with a verifier): the camera pose from the
   verified matches when the frame has a camera model;
7. :class:`~geoloc.localize.answer.Answer`: ground point, camera, confidence and status.

When nothing gives the frame's GSD, preparation holds a few scale hypotheses: while nothing
verifies, the chain from recall on runs again at the next one
(:meth:`~geoloc.localize.prepare.FramePreparation.next_scale`), and the fix's ``scale`` says
which verified and the GSD (and altitude, with a camera model) the match measures.

Each stage has its ``default_conf``; the pipeline config (:mod:`.pipeline`) overrides them and
names the plugin behind each pluggable stage. Only tiles of ``complete`` orthomosaics answer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from geoloc import plugins
from geoloc.camera.dem import Dem
from geoloc.config import DEFAULT_ENCODER, Settings
from geoloc.errors import ConfigError
from geoloc.localize.answer import Answer
from geoloc.localize.consistency import Consistency
from geoloc.localize.pipeline import PipelineConfig, StageConfig, load_pipeline, preset
from geoloc.localize.pose import PoseStage
from geoloc.localize.prepare import FramePreparation
from geoloc.localize.priors import Prior
from geoloc.localize.recall import Recall, RecallStage
from geoloc.localize.regions import MapRegions
from geoloc.localize.rerank import Rerank
from geoloc.localize.schedule import VerificationScheduler
from geoloc.localize.state import ChainStage, Fix, FrameRequest, FrameState
from geoloc.models.runtime import limit_blas_threads

log = logging.getLogger(__name__)

__all__ = ["Fix", "Localizer"]


def _plugin_version(group: str, name: str) -> str:
    from geoloc import __version__

    info = plugins.available(group).get(name)
    if info is not None and info.version:
        return f"{info.package or name} {info.version}"
    return f"geoloc {__version__}"


def _build(stage: str, sc: StageConfig | None) -> Any:
    return None if sc is None else plugins.instantiate(f"geoloc.{stage}", sc.name, dict(sc.params))


class Localizer:
    """A loaded encoder + tile store + the chain of stages; ``locate`` many frames warm.

    ``recall`` replaces the configured recall plugin (e.g. a tracker's
    :class:`~geoloc.localize.recall.NearPositionRecall`); the other stages stay as configured.
    Opening one puts numpy's BLAS on one thread for the process
    (:func:`~geoloc.models.runtime.limit_blas_threads`).
    """

    def __init__(
        self,
        encoder: Any,
        store: Any,
        config: PipelineConfig,
        *,
        recall: RecallStage | None = None,
        dem: Dem | None = None,
    ) -> None:
        config.validate()
        limit_blas_threads()
        self.dem = dem
        self.encoder, self.store, self.config = encoder, store, config
        self.map_gsd_m, self.tile_px = float(store.map_gsd_m), int(store.tile_px)
        self.regions = MapRegions(self.map_gsd_m)
        priors = [_build("priors", p) for p in config.priors]
        recall_plugin = recall if recall is not None else _build("recall", config.recall)
        consistency = _build("consistency", config.consistency)
        verifier = _build("verify", config.verify)
        self.prepare = FramePreparation(
            config.stage_conf(FramePreparation),
            encoder,
            priors,
            map_gsd_m=self.map_gsd_m,
            tile_px=self.tile_px,
            layers=lambda: getattr(store, "layers", []),
        )
        self.recall = Recall(config.stage_conf(Recall), recall_plugin, priors, store)
        self.rerank = Rerank({}, _build("rerank", config.rerank), store)
        self.consistency = Consistency(config.stage_conf(Consistency), consistency)
        self.verify = (
            VerificationScheduler(
                config.stage_conf(VerificationScheduler),
                verifier,
                self.regions,
                tile_px=self.tile_px,
                store=store,
            )
            if verifier is not None
            else None
        )
        self.answer = Answer(
            config.stage_conf(Answer),
            consistency,
            tile_ground_m=self.tile_ground_m,
            rotations=config.rotations,
            map_gsd_m=self.map_gsd_m,
        )
        self.chain: list[ChainStage] = [self.prepare, self.recall, self.rerank, self.consistency]
        self.pose = PoseStage({}, dem=dem, regions=self.regions)
        if self.verify is not None:
            self.chain += [self.verify, self.pose]
        self.pipeline_info = self._describe(recall_plugin)
        self.last_state: FrameState | None = None

    def _describe(self, recall_plugin: RecallStage) -> dict[str, Any]:
        """What every fix records about the pipeline (preset, chain, plugins and versions)."""
        cfg = self.config
        stages: dict[str, Any] = {}
        for stage in ("recall", "rerank", "consistency", "verify"):
            sc: StageConfig | None = getattr(cfg, stage)
            if sc is not None:
                version = _plugin_version(f"geoloc.{stage}", sc.name)
                stages[stage] = {"name": sc.name, "version": version, **sc.params}
        chain = cfg.stage_chain()
        if recall_plugin.name != cfg.recall.name:  # replaced by the caller
            version = _plugin_version("geoloc.recall", recall_plugin.name)
            stages["recall"] = {"name": recall_plugin.name, "version": version}
            chain[1] = f"recall:{recall_plugin.name}"
        if self.verify is not None:  # the pose stage runs after verification, before the answer
            chain.insert(len(chain) - 1, f"pose:{self.pose.name}")
        stages["priors"] = [p.name for p in cfg.priors]
        return {
            "preset": cfg.preset,
            "chain": chain,
            "rotations": cfg.rotations,
            "top_n": cfg.top_n,
            "top_m": cfg.top_m,
            "verify_budget_ms": cfg.verify_budget_ms,
            "stages": stages,
            "encoder": {"name": self.encoder.name, "weights_sha256": self.encoder.weights_sha256},
        }

    # -------------------------------------------------------------------------------- set-up
    @staticmethod
    def resolve_config(
        preset_name: str | None = None, pipeline: PipelineConfig | str | Path | None = None
    ) -> PipelineConfig:
        """The pipeline from ``pipeline`` (config or TOML path) or the named preset."""
        if isinstance(pipeline, PipelineConfig):
            return pipeline
        if pipeline is not None:
            return load_pipeline(pipeline)
        return preset(preset_name or "accurate")

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        encoder: str | Any = DEFAULT_ENCODER,
        checkpoint: str | Path | None = None,
        preset: str = "accurate",
        pipeline: PipelineConfig | str | Path | None = None,
        *,
        recall: RecallStage | None = None,
        dem: str | Path | None = None,
    ) -> Localizer:
        """Load the encoder, open the tile store (with the Ω index if recall searches it), build
        the stages.

        ``dem`` is a terrain raster (``--dem``) opened once for the pose stage (DemFileError).
        ``encoder`` is a plugin name (``geoloc encoders list``), loaded on the runtime ingest uses
        (:func:`geoloc.models.runtime.load_for_inference`), or an already loaded encoder.

        Raises ConfigError (bad preset / pipeline / plugin), EmptyDatabaseError (nothing
        ingested), EncoderMismatchError (the database was built with other encoder weights).
        """
        settings = settings or Settings.from_env()
        config = cls.resolve_config(preset, pipeline)
        for stage in ("recall", "rerank", "consistency", "verify"):  # fail fast, before I/O
            sc = getattr(config, stage)
            if sc is not None and sc.name not in plugins.available(f"geoloc.{stage}"):
                plugins.load(f"geoloc.{stage}", sc.name)  # raises listing the valid ones
        from geoloc.models.runtime import load_for_inference
        from geoloc.store import TileStore

        if isinstance(encoder, str):
            # the runtime ingest encodes with (ONNX Runtime when installed, GEOLOC_ENCODER_RUNTIME):
            # the frame's encodings come from the backbone its tiles' came from, and it is faster
            enc = load_for_inference(encoder, checkpoint)
        else:
            enc = encoder  # an encoder already loaded (tests, benchmarks, notebooks)
        # only an Ω search needs the FAISS index in memory
        omega = (recall.name if recall is not None else config.recall.name) == "faiss"
        from geoloc.camera.dem import open_dem

        dem_obj = open_dem(dem) if dem is not None else None
        try:
            store = TileStore.open(
                settings, encoder_sha256=enc.weights_sha256, encoder_name=enc.name, omega=omega
            )
        except BaseException:
            if dem_obj is not None:
                dem_obj.close()
            raise
        try:
            return cls(enc, store, config, recall=recall, dem=dem_obj)
        except BaseException:
            store.close()
            if dem_obj is not None:
                dem_obj.close()
            raise

    def close(self) -> None:
        """Close the rasters opened for verification, the DEM and the tile store."""
        if self.verify is not None:
            self.verify.close()
        self.regions.close()
        if self.dem is not None:
            self.dem.close()
        self.store.close()

    def __enter__(self) -> Localizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def layers(self) -> list[Any]:
        """The store's GSD layers (:class:`~geoloc.store.tile_store.GsdLayer`), main first;
        ``map_gsd_m``, ``tile_px`` and ``tile_ground_m`` are the main layer's."""
        return list(self.store.layers)

    @property
    def tile_ground_m(self) -> float:
        """Side of one tile on the ground (m) of the main GSD layer."""
        return self.tile_px * self.map_gsd_m

    # -------------------------------------------------------------------------------- locate
    @staticmethod
    def _run_chain(state: FrameState, stages: list[ChainStage]) -> None:
        for stage in stages:
            stage.run(state)
            if state.stopped:
                break

    def warm(self) -> float:
        """Locate one frame of generated texture and discard the answer, so that the first real
        frame finds the encoder and matcher compiled and their buffers allocated, and the parts
        of the store read on first use in memory (the Φ sign codes a scan recall holds, the GSD
        layers, the feature index, the grids of the orthomosaics: a frame's candidates come
        from anywhere on the map, and their regions are slices of those grids). Returns the
        seconds it took (``geoloc serve`` calls it before it accepts frames)."""
        import time

        import cv2

        t0 = time.perf_counter()
        self.store.preload_grids()
        rng = np.random.default_rng(0)
        # smooth blobs, not white noise: the matcher finds keypoints and the cascade runs
        small = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
        frame = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
        layers = self.layers
        gsd = float(layers[0].gsd_m) if layers else None
        self.locate(frame, gsd=gsd, name="<warm-up>")
        self.last_state = None
        return time.perf_counter() - t0

    def locate(
        self,
        image: str | Path | np.ndarray,
        *,
        prior: Prior | str | None = None,
        gsd: float | None = None,
        altitude_m: float | None = None,
        hfov_deg: float | None = None,
        heading: float | None = None,
        camera: str | Path | None = None,
        pitch: float | None = None,
        roll: float | None = None,
        name: str | None = None,
        top_n: int | None = None,
        top_m: int | None = None,
        consistency: bool | None = None,
    ) -> Fix:
        """Locate one frame (a path or an RGB array). FrameError when it cannot be read.

        ``prior`` restricts the answer to a circle (``LAT,LON,RADIUS_M``); ``gsd`` (or
        ``altitude_m`` with ``hfov_deg``) and ``heading`` are what the caller knows of the
        frame; ``camera`` (a camera file: CameraFileError when bad), ``pitch`` and ``roll`` (deg,
        the DJI gimbal convention: -90 looks straight down) describe the camera; ``top_n``,
        ``top_m`` and ``consistency`` override the pipeline for this frame.
        """
        n, m = int(top_n or self.recall.conf["top_n"]), int(top_m or self.consistency.conf["top_m"])
        if n < 1 or m < 1:
            raise ConfigError(f"--top-n and --top-m must be >= 1 ({n}, {m})")
        label = name or (str(image) if not isinstance(image, np.ndarray) else "<array>")
        use_consistency = consistency is not False
        state = FrameState(
            FrameRequest(
                image=image,
                name=label,
                prior=Prior.parse(prior) if isinstance(prior, str) else prior,
                gsd_m=gsd,
                altitude_m=altitude_m,
                hfov_deg=hfov_deg,
                heading_deg=heading,
                camera_file=camera,
                pitch_deg=pitch,
                roll_deg=roll,
                top_n=n,
                top_m=m,
                consistency=use_consistency,
            )
        )
        self.store.reopen_if_changed()
        fix = Fix(frame=label, status="no_match", pipeline=dict(self.pipeline_info))
        if not use_consistency and self.consistency.stage is not None:
            fix.pipeline["consistency"] = "disabled (--no-consistency)"
        self._run_chain(state, self.chain)
        # GSD unknown: the next scale hypothesis while the verifier has found nothing
        while (
            self.verify is not None
            and not state.stopped
            and not state.budget_stopped_after
            and self.prepare.next_scale(state)
        ):
            self._run_chain(state, self.chain[1:])
        self.prepare.settle(state)
        fix = self.answer.run(state, fix)
        fix.scale = self.prepare.scale_report(state)
        fix.timings_ms = state.timings_ms()
        self.last_state = state  # for benchmarks and diagnostics (per-stage trace, candidates)
        return fix
