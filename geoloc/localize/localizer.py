"""The Localizer: one drone frame in, one :class:`Fix` (lat/lon + confidence) out.

Pipeline per frame (each step timed in ``Fix.timings_ms``):

1. ``load``: decode the frame, GSD and heading from the user or EXIF/XMP (:mod:`.frame`);
2. ``encode``: bring it to the database's GSD, rotate it north-up under each heading hypothesis
   (8 by default, one when the heading is known), centre-crop one tile, encode in one batch;
3. ``recall``: top-N tiles by Ω per heading (restricted by the priors, e.g. ``--prior``);
4. ``fetch`` + ``rerank``: Φ and nodes of the candidates from Postgres; Φ cosine (best heading);
5. ``consistency``: node-centroid agreement on the top-M, combined into the final score;
6. ``verify``: local features of the frame against a map region around each top-M candidate
   (read with a margin), MAGSAC homography, frame centre projected; the first candidate that
   verifies wins. When none does and the heading is unknown, a 4-heading sweep (+90/180/270);
7. confidence from the margin between the best and the next non-overlapping candidate (and
   the verification's inliers); below ``min_confidence`` the status is ``no_match``.

Only tiles of ``complete`` orthomosaics ever answer.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.config import Settings
from geoloc.errors import ConfigError, EmptyDatabaseError, EncoderMismatchError
from geoloc.localize import frame as frames
from geoloc.localize.pipeline import PipelineConfig, StageConfig, load_pipeline, preset
from geoloc.localize.stages import Prior, StoreContext, check_protocol, instantiate

log = logging.getLogger(__name__)

#: A Φ-score margin of this size between the best and the next non-overlapping candidate
#: gives a retrieval confidence of 1 (linear below).
MARGIN_SCALE = 0.1

#: Candidates tried at the three extra headings of the sweep.
SWEEP_TOP = 2

#: When a pipeline verifies and no candidate verified, the retrieval-only confidence is scaled
#: by this: a candidate that verifies beats one that only scores higher, and with the default
#: ``min_confidence`` 0.5 an unverified answer is never "ok" in the ``accurate`` preset.
UNVERIFIED_FACTOR = 0.45


@dataclass
class Fix:
    """The answer for one frame (``as_dict`` is the JSON object of ``geoloc locate``)."""

    frame: str
    status: str  # "ok" | "no_match" | "error"
    lat: float | None = None
    lon: float | None = None
    confidence: float = 0.0
    error_m_est: float | None = None
    tile_id: int | None = None
    orthomosaic: str | None = None
    heading_deg: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    method: str | None = None  # verified | refined | tile-centre
    verification: dict[str, Any] | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


@dataclass
class _Cand:
    tile_id: int
    row: Any  # geoloc.store.repository.CandidateRow
    omega: float
    score: float  # rerank score (best heading)
    heading_idx: int
    final: float
    node_match: Any = None


@contextmanager
def _timer(timings: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t0) * 1000.0


def _plugin_version(group: str, name: str) -> str:
    from geoloc import __version__, plugins

    info = plugins.available(group).get(name)
    if info is not None and info.version:
        return f"{info.package or name} {info.version}"
    return f"geoloc {__version__}"


class Localizer:
    """A loaded encoder + database + Ω index + pipeline; ``locate`` many frames warm."""

    def __init__(
        self,
        encoder: Any,
        store: StoreContext,
        config: PipelineConfig,
        *,
        map_gsd_m: float,
        tile_px: int,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.config = config
        self.map_gsd_m = float(map_gsd_m)
        self.tile_px = int(tile_px)
        self._rasters: dict[str, Any] = {}
        self._reopen_failed = False  # warned once that a re-saved index did not open
        self._regions: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, Any]] = {}
        self._build_stages()

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

    def _build_stages(self) -> None:
        cfg = self.config
        self.recall_stage = self._make("recall", cfg.recall)
        self.rerank_stage = self._make("rerank", cfg.rerank) if cfg.rerank else None
        self.consistency_stage = (
            self._make("consistency", cfg.consistency) if cfg.consistency else None
        )
        self.verify_stage = self._make("verify", cfg.verify) if cfg.verify else None
        self.prior_stages = [self._make("priors", p) for p in cfg.priors]
        versions: dict[str, Any] = {}
        for stage in ("recall", "rerank", "consistency", "verify"):
            sc: StageConfig | None = getattr(cfg, stage)
            if sc is not None:
                versions[stage] = {
                    "name": sc.name,
                    "version": _plugin_version(f"geoloc.{stage}", sc.name),
                    **sc.params,
                }
        versions["priors"] = [p.name for p in cfg.priors]
        self.pipeline_info: dict[str, Any] = {
            "preset": cfg.preset,
            "chain": cfg.stage_chain(),
            "rotations": cfg.rotations,
            "top_n": cfg.top_n,
            "top_m": cfg.top_m,
            "verify_budget_ms": cfg.verify_budget_ms,
            "stages": versions,
            "encoder": {
                "name": getattr(self.encoder, "name", "?"),
                "weights_sha256": getattr(self.encoder, "weights_sha256", "?"),
            },
        }

    @staticmethod
    def _make(stage: str, sc: StageConfig) -> Any:
        obj = instantiate(f"geoloc.{stage}", sc.name, dict(sc.params))
        check_protocol(stage, obj)
        return obj

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        encoder: str | Any = "sgmnet",
        checkpoint: str | Path | None = None,
        preset: str = "accurate",
        pipeline: PipelineConfig | str | Path | None = None,
    ) -> Localizer:
        """Load the encoder, open the database and the encoder's Ω index, build the stages.

        ``encoder`` is a plugin name (``geoloc encoders list``) or an already loaded encoder.

        Raises ConfigError (bad preset / pipeline / plugin), EmptyDatabaseError (nothing
        ingested), EncoderMismatchError (the database was built with other encoder weights).
        """
        settings = settings or Settings.from_env()
        config = cls.resolve_config(preset, pipeline)
        for stage in ("recall", "rerank", "consistency", "verify"):  # fail fast, before I/O
            sc = getattr(config, stage)
            if sc is not None:
                from geoloc import plugins
                from geoloc.localize.stages import ensure_builtins

                ensure_builtins()
                if sc.name not in plugins.available(f"geoloc.{stage}"):
                    plugins.load(f"geoloc.{stage}", sc.name)  # raises listing the valid ones
        from geoloc.models import load_encoder
        from geoloc.store import open_database
        from geoloc.store import repository as repo

        if isinstance(encoder, str):
            enc = load_encoder(encoder, checkpoint=checkpoint)
            if hasattr(enc, "optimize_for_inference"):
                enc.optimize_for_inference()
        else:
            enc = encoder  # an encoder already loaded (tests, benchmarks, notebooks)
        db = open_database(settings)
        sha = enc.weights_sha256
        row = repo.find_encoder(db, sha, name=enc.name)
        if row is None or repo.complete_tile_ids(db, row.id).size == 0:
            others = []
            for e in repo.list_encoders(db):
                if e.weights_sha256 == sha:
                    continue
                if repo.complete_tile_ids(db, e.id).size:
                    others.append(f"{e.name} ({e.weights_sha256[:12]})")
            if others:
                raise EncoderMismatchError(
                    f"the database was built with encoder {', '.join(others)}, not "
                    f"{enc.name} ({sha[:12]}): pass the same --encoder/--checkpoint, or ingest "
                    "again with this one"
                )
            raise EmptyDatabaseError(
                f"{db.url}: no complete orthomosaic for encoder {enc.name} ({sha[:12]}): "
                "run `geoloc ingest RASTER` first"
            )
        orthos = [o for o in repo.list_orthomosaics(db, row.id) if o.status == "complete"]
        gsds = Counter(round(float(o.target_gsd_m or o.gsd_m), 6) for o in orthos)
        sizes = Counter(int(o.tile_size) for o in orthos)
        map_gsd = gsds.most_common(1)[0][0]
        tile_px = sizes.most_common(1)[0][0]
        if len(gsds) > 1:
            log.warning(
                "orthomosaics ingested at %d different GSDs; frames are scaled to %.3f m/px",
                len(gsds),
                map_gsd,
            )
        index = None
        if config.recall.name == "faiss":
            from geoloc.store import OmegaIndex

            index = OmegaIndex.open(settings, sha, create=False)
        store = StoreContext(db=db, encoder_id=int(row.id), index=index, settings=settings)
        return cls(enc, store, config, map_gsd_m=map_gsd, tile_px=tile_px)

    def close(self) -> None:
        """Close the rasters opened for verification and dispose of the database engine."""
        for r in self._rasters.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._rasters.clear()
        dispose = getattr(self.store.db, "dispose", None)
        if callable(dispose):
            dispose()

    def __enter__(self) -> Localizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tile_ground_m(self) -> float:
        """Side of one tile on the ground (m)."""
        return self.tile_px * self.map_gsd_m

    def _refresh_index(self) -> None:
        """Re-open the Ω index when another process saved it (an ingest while this is warm)."""
        index = self.store.index
        if index is None or not index.changed_on_disk():
            return
        from geoloc.errors import GeolocError
        from geoloc.store import OmegaIndex

        try:
            fresh = OmegaIndex.open(self.store.settings, index.encoder_sha256, create=False)
        except GeolocError as exc:  # keep answering from the index already open
            if not self._reopen_failed:
                log.warning("Ω index changed on disk but cannot be re-opened, kept: %s", exc)
            self._reopen_failed = True
            return
        self.store.index, self._reopen_failed = fresh, False
        log.info("Ω index changed on disk: re-opened (%d tiles)", len(fresh))

    def _raster(self, path: str) -> Any:
        r = self._rasters.get(path)
        if r is None:
            from tiling import open_raster

            r = open_raster(path)
            self._rasters[path] = r
        return r

    # -------------------------------------------------------------------------------- locate
    def locate(
        self,
        image: str | Path | np.ndarray,
        *,
        prior: Prior | str | None = None,
        gsd: float | None = None,
        altitude_m: float | None = None,
        hfov_deg: float | None = None,
        heading: float | None = None,
        name: str | None = None,
        top_n: int | None = None,
        top_m: int | None = None,
        consistency: bool | None = None,
    ) -> Fix:
        """Locate one frame (a path or an RGB array). FrameError when it cannot be read."""
        cfg = self.config
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        self._refresh_index()
        label = name or (str(image) if not isinstance(image, np.ndarray) else "<array>")
        if isinstance(prior, str):
            prior = Prior.parse(prior)
        n_top = int(top_n or cfg.top_n)
        m_top = int(top_m or cfg.top_m)
        if n_top < 1 or m_top < 1:
            raise ConfigError(f"--top-n and --top-m must be >= 1 ({n_top}, {m_top})")
        use_consistency = self.consistency_stage is not None and consistency is not False
        fix = Fix(frame=label, status="no_match", pipeline=dict(self.pipeline_info))
        if not use_consistency and self.consistency_stage is not None:
            fix.pipeline["consistency"] = "disabled (--no-consistency)"

        with _timer(timings, "load"):
            fr = frames.load_frame(
                image,
                gsd=gsd,
                altitude_m=altitude_m,
                hfov_deg=hfov_deg,
                heading_deg=heading,
                name=label,
            )
        with _timer(timings, "rotate"):
            headings = frames.default_headings(cfg.rotations)
            for p in self.prior_stages:
                headings = p.headings(fr, headings)
            img, mask, _ = frames.at_map_scale(fr, self.map_gsd_m, self.tile_px)
            batch, _valid = frames.rotation_batch(
                img, mask, headings, crop_px=self.tile_px, size=int(self.encoder.input_size)
            )
        with _timer(timings, "encode"):
            out = self.encoder.encode(batch)
            omega = _np(out.omega)
            phi = _np(out.phi)
            areas = _np(out.node_areas)
            cents = _np(out.node_centroids)
        with _timer(timings, "recall"):
            allowed: np.ndarray | None = None
            for p in self.prior_stages:
                ids = p.allowed_ids(self.store, prior)
                if ids is not None:
                    ids = np.asarray(ids, dtype=np.int64)
                    allowed = ids if allowed is None else np.intersect1d(allowed, ids)
            if allowed is not None and allowed.size == 0:
                fix.message = "no tile lies within the prior"
                fix.timings_ms = _finish(timings, t_all)
                return fix
            o_scores, o_ids = self.recall_stage.recall(self.store, omega, phi, n_top, allowed)
            o_scores, o_ids = np.asarray(o_scores), np.asarray(o_ids)
            best: dict[int, tuple[float, int]] = {}
            for h in range(o_ids.shape[0]):
                for s, i in zip(o_scores[h], o_ids[h], strict=True):
                    if i < 0 or not np.isfinite(s):
                        continue
                    if int(i) not in best or s > best[int(i)][0]:
                        best[int(i)] = (float(s), h)
            ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:n_top]
        with _timer(timings, "fetch"):
            from geoloc.store import repository as repo

            rows = repo.fetch_candidates(
                self.store.db, self.store.encoder_id, [tid for tid, _ in ranked]
            )
        if not rows:
            fix.message = "no candidate tile"
            fix.timings_ms = _finish(timings, t_all)
            return fix
        with _timer(timings, "rerank"):
            om = dict(ranked)
            cands: list[_Cand] = []
            if self.rerank_stage is not None:
                tile_phi = np.stack([r.phi for r in rows]).astype(np.float32)
                s = np.asarray(self.rerank_stage.rerank(phi, tile_phi))  # (H, N)
                hbest = s.argmax(axis=0)
                for j, r in enumerate(rows):
                    sc = float(s[hbest[j], j])
                    cands.append(_Cand(r.tile_id, r, om[r.tile_id][0], sc, int(hbest[j]), sc))
            else:
                for r in rows:
                    o, h = om[r.tile_id]
                    cands.append(_Cand(r.tile_id, r, o, o, h, o))
            cands.sort(key=lambda c: -c.score)
        with _timer(timings, "consistency"):
            if use_consistency and self.consistency_stage is not None:
                cs = self.consistency_stage
                for c in cands[:m_top]:
                    h = c.heading_idx
                    c.node_match = cs.score(
                        phi[h],
                        areas[h],
                        cents[h],
                        c.row.phi,
                        c.row.node_areas,
                        c.row.node_centroids,
                    )
                    c.final = float(cs.combine(c.score, c.node_match))
                for c in cands[m_top:]:
                    c.final = float((1.0 - getattr(cs, "weight", 0.0)) * c.score)
                cands.sort(key=lambda c: -c.final)

        conf_r = self._margin_confidence(cands)
        top = cands[0]
        ver = None
        ver_cand: _Cand | None = None
        ver_heading = 0.0
        budget_stop = 0
        if self.verify_stage is not None:
            with _timer(timings, "verify"):
                ver, ver_cand, ver_heading, budget_stop = self._verify(
                    fr,
                    img,
                    mask,
                    cands[:m_top],
                    headings,
                    known_heading=len(headings) == 1 and fr.heading_deg is not None,
                    timings=timings,
                )
        answer = top
        if ver is not None and ver_cand is not None:
            answer = ver_cand
            lat, lon = ver["lat"], ver["lon"]
            fix.method = "verified"
            conf_v = 1.0 - math.exp(-ver["inliers"] / 15.0)
            fix.confidence = float(1.0 - (1.0 - conf_v) * (1.0 - conf_r))
            fix.error_m_est = float(ver["error_m"])
            fix.heading_deg = float((ver_heading - ver["rotation_deg"]) % 360.0)
            fix.verification = {k: v for k, v in ver.items() if k not in ("lat", "lon")}
        else:
            lat, lon = top.row.center_lat, top.row.center_lon
            fix.method = "tile-centre"
            fix.error_m_est = 0.5 * self.tile_ground_m
            if cfg.answer in ("refined", "verified") and top.node_match is not None:
                assert self.consistency_stage is not None
                rc = self.consistency_stage.refined_centre(top.node_match)
                if rc is not None:
                    lat, lon = self._tile_point(top.row, rc)
                    fix.method = "refined"
                    fix.error_m_est = 0.35 * self.tile_ground_m
            fix.heading_deg = (
                float(headings[top.heading_idx])
                if cfg.rotations > 1 or (fr.heading_deg is not None)
                else None
            )
            # verification ran and failed: the retrieval alone is weak evidence
            fix.confidence = conf_r * (UNVERIFIED_FACTOR if self.verify_stage is not None else 1.0)
        fix.lat, fix.lon = float(lat), float(lon)
        fix.tile_id = int(answer.tile_id)
        fix.orthomosaic = str(answer.row.raster_path)
        fix.candidates = [
            {
                "tile_id": int(c.tile_id),
                "lat": float(c.row.center_lat),
                "lon": float(c.row.center_lon),
                "score": round(float(c.final), 6),
            }
            for c in cands[:5]
        ]
        fix.confidence = float(np.clip(fix.confidence, 0.0, 1.0))
        fix.status = "ok" if fix.confidence >= cfg.min_confidence else "no_match"
        if fix.status == "no_match":
            fix.message = f"confidence {fix.confidence:.2f} below {cfg.min_confidence:.2f}" + (
                "; no candidate verified" if self.verify_stage is not None and ver is None else ""
            )
            if budget_stop:
                fix.message += (
                    f" within the {cfg.verify_budget_ms:g} ms verification budget"
                    f" ({budget_stop} attempts)"
                )
        fix.timings_ms = _finish(timings, t_all)
        return fix

    # -------------------------------------------------------------------------------- helpers
    def _margin_confidence(self, cands: list[_Cand]) -> float:
        """Margin between the best and the next candidate whose footprint does not overlap."""
        if len(cands) < 2:
            return 1.0
        from tiling.crs import geodesic_distance_m

        b = cands[0]
        for c in cands[1:]:
            d = float(
                geodesic_distance_m(
                    b.row.center_lon, b.row.center_lat, c.row.center_lon, c.row.center_lat
                )
            )
            if d >= self.tile_ground_m:
                return float(np.clip((b.final - c.final) / MARGIN_SCALE, 0.0, 1.0))
        return 1.0

    def _region(self, row: Any, size_px: int) -> tuple[np.ndarray, np.ndarray, Any]:
        """Map pixels (H, W, 3), mask and transform around a tile (small LRU cache)."""
        key = (row.tile_id, size_px)
        hit = self._regions.get(key)
        if hit is not None:
            return hit
        px, mask, t = self._raster(row.raster_path).read_region(
            row.center_lon, row.center_lat, size_px, self.map_gsd_m
        )
        out = (np.ascontiguousarray(np.transpose(px, (1, 2, 0))), mask, t)
        self._regions[key] = out
        while len(self._regions) > 64:
            self._regions.pop(next(iter(self._regions)))
        return out

    def _tile_point(self, row: Any, xy: tuple[float, float]) -> tuple[float, float]:
        """(lat, lon) of a point given in the tile's normalised coordinates (x right, y down)."""
        from affine import Affine

        from tiling.crs import to_lonlat

        t = Affine(*row.transform[:6])
        x, y = t @ (xy[0] * row.tile_size, xy[1] * row.tile_size)
        lon, lat = to_lonlat(row.crs, x, y)
        return float(lat), float(lon)

    def _verify(
        self,
        fr: frames.Frame,
        img: np.ndarray,
        mask: np.ndarray,
        cands: list[_Cand],
        headings: list[float],
        *,
        known_heading: bool,
        timings: dict[str, float],
    ) -> tuple[dict[str, Any] | None, _Cand | None, float, int]:
        """First candidate that verifies (best headings, fallback verifier, heading sweep).

        Returns the verification (or None), its candidate and heading, and the number of
        attempts made when the ``verify_budget_ms`` ran out first (0 otherwise).
        """
        assert self.verify_stage is not None
        vs = self.verify_stage
        scale_known = fr.gsd_m is not None
        # the frame at map scale, cropped to at most 2 tiles (the region holds it with margin)
        crop = int(min(max(img.shape[:2]), 2 * self.tile_px))
        region_px = int(min(1024, max(2 * self.tile_px, self.tile_px + crop)))
        # 1. every top-M candidate at its best heading, the best one also with the fallback
        # verifier (e.g. SIFT: rotation invariant, ~1/4 of the learned matcher's cost) right away,
        # as a wrong heading hypothesis is the likeliest reason the best candidate fails;
        # 2. the fallback on the others; 3. the heading sweep in 45 deg steps on the best
        # SWEEP_TOP candidates (learned matchers tolerate only some +-30..60 deg)
        attempts: list[tuple[_Cand, float, Any]] = [(c, headings[c.heading_idx], vs) for c in cands]
        fallback = getattr(vs, "fallback", None)
        if fallback is not None and cands:
            best = (cands[0], headings[cands[0].heading_idx], fallback)
            attempts.insert(1, best)
            attempts += [(c, headings[c.heading_idx], fallback) for c in cands[1:]]
        if self.config.heading_sweep and not known_heading and cands:
            h0 = headings[cands[0].heading_idx]
            tried = {(c.tile_id, headings[c.heading_idx]) for c in cands}
            for dh in (45.0, -45.0, 90.0, -90.0, 135.0, -135.0, 180.0):
                h = (h0 + dh) % 360.0
                attempts += [(c, h, vs) for c in cands[:SWEEP_TOP] if (c.tile_id, h) not in tried]
        frame_cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray, Any]] = {}
        n_tried = 0
        budget_s = self.config.verify_budget_ms / 1e3
        stopped = 0
        t_start = time.perf_counter()
        for cand, h, verifier in attempts:
            if n_tried and budget_s > 0 and time.perf_counter() - t_start >= budget_s:
                log.debug(
                    "verification budget of %.0f ms spent after %d attempts",
                    budget_s * 1e3,
                    n_tried,
                )
                stopped = n_tried
                break
            n_tried += 1
            key = (id(verifier), h)
            if key not in frame_cache:
                with _timer(timings, "verify.frame_features"):
                    r, m = frames.rotate_to_north(img, mask, h)
                    r, m = frames.centre_crop(r, crop), frames.centre_crop(m, crop)
                    feats = None
                    matcher = getattr(verifier, "matcher", None)
                    if matcher is not None:
                        feats = matcher.extract(r, m)
                    frame_cache[key] = (r, m, feats)
            r, m, feats = frame_cache[key]
            row = cand.row
            with _timer(timings, "verify.read_region"):
                region, rmask, rt = self._region(row, region_px)
            kwargs: dict[str, Any] = {
                "scale_known": scale_known,
                "region_key": ("t", row.tile_id, region_px),
            }
            if feats is not None:
                kwargs["frame_features"] = feats
            with _timer(timings, "verify.match"):
                try:
                    res = verifier.verify(r, m, region, rmask, **kwargs)
                except TypeError:  # a third-party verifier without the optional keywords
                    res = verifier.verify(r, m, region, rmask, scale_known=scale_known)
            if not res.accepted or res.centre_xy is None:
                log.debug("tile %d heading %.0f %s: %s", row.tile_id, h, verifier.name, res.reason)
                continue
            from tiling.crs import to_lonlat

            x, y = rt @ (res.centre_xy[0] + 0.5, res.centre_xy[1] + 0.5)
            lon, lat = to_lonlat(row.crs, x, y)
            err_px = float(res.error_px())
            return (
                {
                    "lat": float(lat),
                    "lon": float(lon),
                    "matcher": res.matcher,
                    "inliers": int(res.inliers),
                    "matches": int(res.matches),
                    "rmse_px": float(res.rmse_px or 0.0),
                    "scale": float(res.scale or 0.0),
                    "rotation_deg": float(res.rotation_deg or 0.0),
                    "model": getattr(res, "model", "homography"),
                    "ncc": float(getattr(res, "ncc", 0.0)),
                    "error_m": err_px * self.map_gsd_m,
                    "attempts": n_tried,
                },
                cand,
                h,
                0,
            )
        return None, None, 0.0, stopped


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


def _finish(timings: dict[str, float], t0: float) -> dict[str, float]:
    out = {k: round(v, 2) for k, v in timings.items()}
    out["total"] = round((time.perf_counter() - t0) * 1000.0, 2)
    return out
