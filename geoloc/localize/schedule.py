"""The verification scheduler: which (candidate, heading, verifier) to try, in which order, and
when to stop.

The plan, first success wins:

1. every top-M candidate at its best heading; right after the best one, the same candidate with
   the verifier's fallback (e.g. SIFT: rotation invariant and cheaper than the learned
   matcher), since a wrong heading hypothesis is the likeliest reason the best candidate fails;
2. the fallback on the other candidates;
3. unless the heading is known, a heading sweep in 45 deg steps around the best heading on the
   best ``sweep_top`` candidates (learned matchers tolerate only part of a turn).

The frame is rotated and its features extracted once per (verifier, heading); the rotation and
the crop extend the frame's :class:`~geoloc.camera.PixelChain` (kept in the match with the
region's transform, for the pose stage); map regions come from
:class:`~geoloc.localize.regions.MapRegions`. ``verify_budget_ms`` > 0 stops the plan once
that much time has gone (the first attempt always runs).

With tile features (``verify_features``: ``auto`` uses the store's precomputed ones when it has
them for the verifier's extractor; ``extract`` computes them here from the rasters; ``raster``
always reads pixels) the plan is a cascade over the top ``verify_top`` candidates instead:

1. each candidate's region is assembled from the features of the tiles around it
   (:class:`~geoloc.localize.tile_regions.FeatureRegions`) and given the cheap check of the
   verifier (mutual nearest neighbours + RANSAC similarity) at the candidate's best heading; a
   candidate whose frame-sized neighbourhood lies inside a region already checked at that
   heading (a neighbour of a better candidate, half a tile away on the grid) can be skipped
   (``skip_covered``, off by default: the frame may sit off that centre, and at 100k tiles a
   view found only at such a neighbour was lost for a tenth of the coarse checks' time);
2. the survivors, best coarse score first, are matched with the region's keypoints inside the
   frame's coarse footprint; the first one accepted (and, when the map's pixels can
   be read, passing the photometric check) answers: every survivor left scored lower in the
   coarse check of its chunk. Candidates are grouped by their best heading (groups in the order
   of each heading's best candidate) and split into rank-order chunks of
   :data:`CASCADE_CHUNK`; round r takes the r-th chunk of every group. A frame found at its
   best heading never pays for the frame's features at other headings, a right candidate near
   the top never waits for the regions of all the others, and when the first heading is wrong
   the best candidates of the other headings come before the weaker ones of the first. Matches
   are first sought near where the coarse similarity puts them (``+guided``: a descriptor
   comparison, no network); the learned matcher runs only when those do not verify;
3. with the heading unknown and ``first_round_stop`` on, when no candidate of the first round
   passed the coarse check (no heading hypothesis gave any of its best candidates a plausible
   model), the later rounds are skipped: fewer checks for a frame of another place, but a hard
   view whose only plausible candidate comes later is lost, so it is off by default;
4. only when none is accepted, the heading sweep, again coarse first.

A frame of another place therefore costs coarse checks only. The SIFT fallback needs pixels:
the cascade does not run it (the sweep over headings covers what it rescued: a wrong heading).
The cascade knows in advance which (layer view, heading) pairs it will need and in which order:
while this thread assembles regions and runs coarse checks, a second thread extracts the frame's
features for the next pair (each pair once; the answers do not depend on it), and while this
thread would wait for those features it assembles the regions of the candidates it checks next
(:attr:`VerificationScheduler.ahead_regions` at most), which need no frame.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, NamedTuple

import numpy as np

from geoloc.errors import ConfigError
from geoloc.localize import frame as frames
from geoloc.localize.prepare import heading_known
from geoloc.localize.regions import MapRegions
from geoloc.localize.state import Candidate, FrameState, Match
from geoloc.localize.tile_regions import (
    ExtractedTileFeatures,
    FeatureRegions,
    RegionFeatures,
    StoredTileFeatures,
    TileFeatureSource,
)
from geoloc.localize.verify import CoarseCheck, HomographyVerifier, Verifier

#: Margin around the frame's coarse footprint within which region keypoints go to the matcher.
FOOTPRINT_MARGIN_PX = 32.0
#: Candidates of one heading group coarse-checked before the learned matcher tries their survivors.
CASCADE_CHUNK = 10

#: Where the cascade's tile features come from (see the module docstring).
FEATURE_MODES = ("auto", "stored", "extract", "raster")

log = logging.getLogger(__name__)

#: Heading offsets of the sweep, nearest first.
SWEEP_DEG = (45.0, -45.0, 90.0, -90.0, 135.0, -135.0, 180.0)

Attempt = tuple[Candidate, float, Verifier]


class VerificationScheduler:
    """The verification stage of the chain.

    Conf: ``heading_sweep`` (try other headings when the best ones fail), ``verify_budget_ms``
    (0: no limit), ``sweep_top`` (candidates tried at the sweep's headings),
    ``verify_features`` (one of :data:`FEATURE_MODES`), ``verify_top`` (candidates the cascade
    checks), ``region_keypoints`` (cap of a region's keypoints), ``tile_keypoints`` (keypoints
    per tile when extracted here), ``first_round_stop`` (heading unknown: end the cascade before
    its second round when no candidate of the first passed the coarse check), ``skip_covered``
    (a candidate whose frame-sized neighbourhood lies inside a region already checked at the same
    heading is not checked again; off by default, see the module docstring).

    ``store`` (the tile store) is what the cascade reads tile records and features from; without
    it verification reads pixels.
    """

    #: regions the cascade assembles ahead of their check while it waits for the frame's
    #: features (0: none)
    ahead_regions = 2 * CASCADE_CHUNK

    default_conf: ClassVar[dict[str, Any]] = {
        "heading_sweep": True,
        "verify_budget_ms": 0.0,
        "sweep_top": 2,
        "verify_features": "auto",
        "verify_top": 50,
        "region_keypoints": 2048,
        "tile_keypoints": 256,
        "first_round_stop": False,
        "skip_covered": False,
    }

    def __init__(
        self,
        conf: dict[str, Any],
        verifier: Verifier,
        regions: MapRegions,
        *,
        tile_px: int,
        store: Any = None,
    ) -> None:
        self.conf = {**self.default_conf, **conf}
        if self.conf["verify_features"] not in FEATURE_MODES:
            raise ConfigError(
                f"verify_features must be one of {', '.join(FEATURE_MODES)}, "
                f"got {self.conf['verify_features']!r}"
            )
        self.verifier = verifier
        self.regions = regions
        self.tile_px = int(tile_px)
        self.store = store
        self._features: FeatureRegions | None = None
        self._resolved = False
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the thread that extracts the frame's features ahead (waits for its job)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def feature_regions(self) -> FeatureRegions | None:
        """The regions the cascade verifies against, or None: verification reads pixels."""
        if not self._resolved:
            self._features = self._resolve_features()
            self._resolved = True
        return self._features

    def _resolve_features(self) -> FeatureRegions | None:
        mode = str(self.conf["verify_features"])
        v = self.verifier
        if mode == "raster" or self.store is None:
            return None
        if not isinstance(v, HomographyVerifier) or v.feature_kind is None:
            if mode != "auto":
                raise ConfigError(
                    f"verify_features = {mode!r} needs a verifier with tile features "
                    f"(xfeat-lighterglue), not {v.name!r}"
                )
            return None
        source: TileFeatureSource | None = None
        if mode in ("auto", "stored") and stored_features_match(self.store, v.feature_kind):
            source = StoredTileFeatures(self.store, v.feature_kind)
        elif mode == "stored":
            raise ConfigError(
                f"verify_features = 'stored': the database has no {v.feature_kind} tile "
                "features (`geoloc index rebuild --features`, or use 'extract' / 'raster')"
            )
        elif mode == "extract":
            source = ExtractedTileFeatures(
                v.matcher,
                self.regions,
                kind=v.feature_kind,
                max_per_tile=int(self.conf["tile_keypoints"]),
            )
        if source is None:
            return None
        return FeatureRegions(
            self.store,
            source,
            map_gsd_m=self.regions.gsd_m,
            max_keypoints=int(self.conf["region_keypoints"]),
        )

    def plan(self, cands: list[Candidate], headings: list[float], sweep: bool) -> list[Attempt]:
        """The ordered attempts for these candidates (see the module docstring)."""
        vs, fb = self.verifier, self.verifier.fallback
        attempts: list[Attempt] = [(c, headings[c.heading_idx], vs) for c in cands]
        if fb is not None and cands:
            attempts.insert(1, (cands[0], headings[cands[0].heading_idx], fb))
            attempts += [(c, headings[c.heading_idx], fb) for c in cands[1:]]
        if sweep and cands:
            h0 = headings[cands[0].heading_idx]
            tried = {(c.tile_id, headings[c.heading_idx]) for c in cands}
            top = cands[: int(self.conf["sweep_top"])]
            for dh in SWEEP_DEG:
                h = (h0 + dh) % 360.0
                attempts += [(c, h, vs) for c in top if (c.tile_id, h) not in tried]
        return attempts

    def run(self, state: FrameState) -> None:
        """Try the plan on the top-M candidates; set ``state.match`` to the first that verifies.

        Each candidate is verified at its GSD layer: its region is read at the layer's GSD and
        matched against the frame as prepared for that layer.
        """
        if state.stopped:
            return
        assert state.image is not None and state.mask is not None and state.frame is not None
        state.verifying = True
        sweep = bool(self.conf["heading_sweep"]) and not heading_known(state)
        if state.scale_search is not None and state.scale_search.index > 0:
            sweep = False  # the heading sweep runs at the first scale hypothesis only (its cost)
        state.budget_ms = float(self.conf["verify_budget_ms"])
        fr = self.feature_regions
        if fr is not None:
            assert isinstance(self.verifier, HomographyVerifier)
            with state.timer("verify"):
                self._cascade(state, fr, self.verifier, sweep)
            return
        attempts = self.plan(state.candidates[: state.request.top_m], state.headings, sweep)
        scale_known = state.frame.gsd_m is not None
        frame_cache: dict[tuple[int, int, float], Any] = {}
        budget_s = state.budget_ms / 1e3
        t_start = time.perf_counter()
        with state.timer("verify"):
            for n, (cand, h, verifier) in enumerate(attempts):
                if n and budget_s > 0 and time.perf_counter() - t_start >= budget_s:
                    log.debug("verification budget of %.0f ms spent after %d", budget_s * 1e3, n)
                    state.budget_stopped_after = n
                    return
                at = self._at(state, cand)
                r, m, feats, chain = self._frame_at(state, at, verifier, h, frame_cache)
                with state.timer("verify.read_region"):
                    region, rmask, rt = self.regions.around(cand.tile, at.region_px, at.gsd_m)
                with state.timer("verify.match"):
                    res = verifier.verify(
                        r,
                        m,
                        region,
                        rmask,
                        scale_known=scale_known,
                        region_key=("t", cand.tile_id, at.region_px),
                        frame_features=feats,
                    )
                if not res.accepted or res.centre_xy is None:
                    log.debug(
                        "tile %d heading %.0f %s: %s", cand.tile_id, h, verifier.name, res.reason
                    )
                    continue
                state.match = self._match(cand, h, res, rt, n + 1, chain, at.gsd_m)
                return

    def _at(self, state: FrameState, cand: Candidate) -> _LayerFrame:
        """The frame prepared for the candidate's GSD layer, and the crop and region sizes."""
        if state.views:
            v = state.view(cand.layer)
            img, mask, chain = v.image, v.mask, v.chain
            tile_px = state.layers[cand.layer].tile_px if state.layers else self.tile_px
            gsd = state.gsd_of(cand)
        else:  # a state prepared without GSD layers: the map's
            assert state.image is not None and state.mask is not None
            img, mask = state.image, state.mask
            chain = state.prep.chain if state.prep is not None else None
            tile_px, gsd = self.tile_px, self.regions.gsd_m
        # the frame cropped to at most 2 tiles (the region holds it with margin)
        crop = int(min(max(img.shape[:2]), 2 * tile_px))
        region_px = int(min(1024, max(2 * tile_px, tile_px + crop)))
        return _LayerFrame(img, mask, chain, gsd, crop, region_px)

    def _frame_at(
        self,
        state: FrameState,
        at: _LayerFrame,
        verifier: Verifier | HomographyVerifier,
        h: float,
        cache: dict[tuple[int, int, float], Any],
    ) -> tuple[np.ndarray, np.ndarray, Any, Any]:
        """The frame (as prepared for a layer) rotated north-up under heading ``h``, cropped,
        with its features (cached per layer view, verifier and heading; a job :meth:`_ahead`
        started is waited for) and its pixel chain."""
        key = _frame_key(at, verifier, h)
        hit = cache.get(key)
        if hit is None or isinstance(hit, Future):
            with state.timer("verify.frame_features"):
                cache[key] = self._frame_job(at, verifier, h) if hit is None else hit.result()
        out: tuple[np.ndarray, np.ndarray, Any, Any] = cache[key]
        return out

    @staticmethod
    def _frame_job(
        at: _LayerFrame, verifier: Verifier | HomographyVerifier, h: float
    ) -> tuple[np.ndarray, np.ndarray, Any, Any]:
        """:meth:`_frame_at`'s work: reads its arguments only (it may run in another thread)."""
        img, mask, crop = at.image, at.mask, at.crop
        r, m = frames.rotate_to_north(img, mask, h)
        chain = None
        if at.chain is not None:
            rot = frames.rotation_matrix(img.shape[1], img.shape[0], -h)
            x0, y0 = frames.centre_crop_origin(r.shape[1], r.shape[0], crop)
            chain = at.chain.copy().then(rot).then_crop(x0, y0)
        r, m = frames.centre_crop(r, crop), frames.centre_crop(m, crop)
        return r, m, verifier.extract_frame_features(r, m), chain

    def _ahead(
        self,
        needs: list[tuple[_LayerFrame, float]],
        verifier: Verifier | HomographyVerifier,
        cache: dict[tuple[int, int, float], Any],
    ) -> None:
        """Start extracting the first of ``needs`` (layer view, heading; in the order the
        cascade reaches them) not yet extracted, in a second thread, unless a job is running:
        the frame's features for the next heading are made while this thread assembles
        regions and runs coarse checks (numpy on one core), instead of after them."""
        if any(isinstance(v, Future) and not v.done() for v in cache.values()):
            return
        for at, h in needs:
            key = _frame_key(at, verifier, h)
            if key not in cache:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="geoloc-frame")
                cache[key] = self._pool.submit(self._frame_job, at, verifier, h)
                return

    def _match(
        self,
        cand: Candidate,
        h: float,
        res: Any,
        rt: Any,
        attempts: int,
        chain: Any,
        gsd_m: float,
    ) -> Match:
        """The answer of an accepted verification: its centre in lon/lat (the region at
        ``gsd_m``)."""
        from tiling.crs import to_lonlat

        assert res.centre_xy is not None
        x, y = rt @ (res.centre_xy[0] + 0.5, res.centre_xy[1] + 0.5)
        lon, lat = to_lonlat(cand.tile.crs, x, y)
        err_m = float(res.error_px()) * float(gsd_m)
        return Match(
            cand, h, res, float(lat), float(lon), err_m, attempts, region_transform=rt, chain=chain
        )

    def _cascade(
        self,
        state: FrameState,
        fr: FeatureRegions,
        v: HomographyVerifier,
        sweep: bool,
    ) -> None:
        """The cascade over tile features (see the module docstring)."""
        assert state.frame is not None
        scale_known = state.frame.gsd_m is not None
        oriented = heading_known(state)  # the frame is north-up by its heading, not a guess
        cands = state.candidates[: max(int(self.conf["verify_top"]), state.request.top_m)]
        frame_cache: dict[tuple[int, int, float], Any] = {}
        budget_s = state.budget_ms / 1e3
        t_start = time.perf_counter()
        checked: set[tuple[int, float]] = set()
        # with skip_covered: the regions checked so far per (layer view, heading), with their
        # orthomosaic
        skip_covered = bool(self.conf["skip_covered"])
        regions_seen: dict[tuple[int, float], list[tuple[Any, RegionFeatures]]] = {}
        n = fine_runs = 0

        # regions assembled ahead (see fill) and the candidates whose regions the plan reaches
        # next, in its order
        ahead: dict[tuple[int, int, float], RegionFeatures] = {}
        upcoming: deque[Candidate] = deque()

        def over_budget() -> bool:
            return bool(n and budget_s > 0 and time.perf_counter() - t_start >= budget_s)

        def fill(key: tuple[int, int, float]) -> None:
            """While the second thread still extracts the frame's features ``key`` is about to
            wait for, assemble the regions of the candidates the plan checks next (a region does
            not depend on the frame): the wait does work that was to come anyway."""
            while upcoming and len(ahead) < self.ahead_regions:
                job = frame_cache.get(key)
                if not isinstance(job, Future) or job.done():
                    return
                cand = upcoming.popleft()
                at = self._at(state, cand)
                rkey = (cand.tile_id, at.region_px, at.gsd_m)
                if rkey in ahead or (cand.tile_id, state.headings[cand.heading_idx]) in checked:
                    continue  # assembled already, or checked while this thread did not wait
                with state.timer("verify.region_features"):  # around() finds its neighbours
                    ahead[rkey] = fr.around(cand.tile, at.region_px, at.gsd_m)
                self._ahead(needs, v, frame_cache)

        def region(cand: Candidate, at: _LayerFrame) -> RegionFeatures:
            got = ahead.pop((cand.tile_id, at.region_px, at.gsd_m), None)
            if got is not None:
                return got
            with state.timer("verify.region_features"):
                return fr.around(cand.tile, at.region_px, at.gsd_m)

        def coarse(pairs: list[tuple[Candidate, float]]) -> tuple[list[_Scored], bool]:
            """The pairs that pass the coarse check, best first; True when the budget ran out."""
            nonlocal n
            out: list[_Scored] = []
            stopped = False
            # the neighbourhoods of the whole chunk in one record fetch per region size
            sizes: dict[tuple[int, float], list[Any]] = {}
            for cand, _h in pairs:
                at = self._at(state, cand)
                sizes.setdefault((at.region_px, at.gsd_m), []).append(cand.tile)
            with state.timer("verify.region_features"):
                for (size_px, gsd), tiles in sizes.items():
                    fr.prefetch(tiles, size_px, gsd)
            for cand, h in pairs:
                if (cand.tile_id, h) in checked:
                    continue
                if over_budget():
                    state.budget_stopped_after = n
                    stopped = True
                    break
                checked.add((cand.tile_id, h))
                at = self._at(state, cand)
                ortho = getattr(cand.tile, "orthomosaic_id", None) if skip_covered else None
                if ortho is not None:
                    seen = regions_seen.setdefault((id(at.image), h), [])
                    inside = next(
                        (r for o, r in seen if o == ortho and _frame_inside(r, cand.tile, at.crop)),
                        None,
                    )
                    if inside is not None:
                        # the frame centred here would be compared with the same keypoints again
                        log.debug(
                            "tile %d heading %.0f: inside the region of tiles %s, checked",
                            cand.tile_id,
                            h,
                            inside.tile_ids[:1],
                        )
                        continue
                n += 1
                fill(_frame_key(at, v, h))
                f0 = self._frame_at(state, at, v, h, frame_cache)[2]
                self._ahead(needs, v, frame_cache)
                rf = region(cand, at)
                if ortho is not None:
                    regions_seen[(id(at.image), h)].append((ortho, rf))
                with state.timer("verify.coarse"):
                    c = v.coarse(f0, rf.features, scale_known=scale_known, rotation_known=oriented)
                if c.passed:
                    out.append(_Scored(c, cand, h, rf, at))
                else:
                    log.debug("tile %d heading %.0f coarse: %s", cand.tile_id, h, c.reason)
            # best coarse evidence first; rank order breaks ties
            return sorted(out, key=lambda s: -s.coarse.inliers), stopped

        def fine(survivors: list[_Scored]) -> bool:
            """Try the survivors with the learned matcher; True when the plan is over."""
            nonlocal fine_runs
            for sc in survivors:
                # the first full attempt always runs, whatever the budget
                if fine_runs and over_budget():
                    state.budget_stopped_after = n
                    return True
                fine_runs += 1
                at = sc.at
                r, m, f0, chain = self._frame_at(state, at, v, sc.heading, frame_cache)
                with state.timer("verify.match"):
                    f1 = sc.coarse.footprint(
                        sc.region.features, (r.shape[1], r.shape[0]), FOOTPRINT_MARGIN_PX
                    )
                    res = v.verify_features(
                        f0, f1, r, m, scale_known=scale_known, guide=sc.coarse.model
                    )
                if res.accepted:
                    with state.timer("verify.read_region"):
                        px, pmask, _rt = self.regions.around(
                            sc.candidate.tile, at.region_px, at.gsd_m
                        )
                    if pmask.any():  # the map's pixels are readable: the photometric check
                        res = v.photometric_check(res, r, m, px, pmask)
                if not res.accepted or res.centre_xy is None:
                    log.debug(
                        "tile %d heading %.0f: %s", sc.candidate.tile_id, sc.heading, res.reason
                    )
                    continue
                state.match = self._match(
                    sc.candidate, sc.heading, res, sc.region.transform, n, chain, at.gsd_m
                )
                return True
            return False

        # candidates grouped by their best heading, groups in the order of their best rank: the
        # frame's features are extracted for a heading only when its group is reached, and the
        # first accepted match ends the plan
        groups: dict[float, list[Candidate]] = {}
        for c in cands:
            groups.setdefault(state.headings[c.heading_idx], []).append(c)
        # in rounds of rank-order chunks: round r checks the r-th chunk of every group, so the
        # best candidates of every heading hypothesis come before the weaker ones of the first
        # (a wrong first heading no longer makes the right tile wait for all its group), and a
        # known heading (one group) still has its right tile near the top checked first
        rounds = max((len(g) + CASCADE_CHUNK - 1) // CASCADE_CHUNK for g in groups.values())
        # the candidates with their heading in the order the rounds below reach them
        order = [
            (c, h)
            for r in range(rounds)
            for h, group in groups.items()
            for c in group[r * CASCADE_CHUNK : (r + 1) * CASCADE_CHUNK]
        ]
        # the (layer view, heading) pairs whose frame features the plan needs, in the order it
        # reaches them (the rounds, then the sweep): each is extracted ahead of its turn
        needs = [(self._at(state, c), h) for c, h in order]
        if sweep and cands:
            h0 = state.headings[cands[0].heading_idx]
            needs += [
                (self._at(state, c), (h0 + dh) % 360.0)
                for dh in SWEEP_DEG
                for c in cands[: int(self.conf["sweep_top"])]
            ]
        upcoming.extend(c for c, _h in order)
        # the first heading's features start in the second thread: this one assembles regions
        self._ahead(needs, v, frame_cache)
        passed = False
        for r in range(rounds):
            for h, group in groups.items():
                chunk = group[r * CASCADE_CHUNK : (r + 1) * CASCADE_CHUNK]
                if not chunk:
                    continue
                survivors, stopped = coarse([(c, h) for c in chunk])
                passed = passed or bool(survivors)
                if fine(survivors) or stopped:
                    return
            if r == 0 and not passed and len(groups) > 1 and self.conf["first_round_stop"]:
                # no heading hypothesis gave any of its best candidates a plausible model: the
                # weaker candidates are not checked (the sweep below still tries other headings)
                log.debug("no coarse model in the first round of %d candidates", len(checked))
                break
        if not sweep or not cands:
            return
        h0 = state.headings[cands[0].heading_idx]
        top = cands[: int(self.conf["sweep_top"])]
        pairs = [(c, (h0 + dh) % 360.0) for dh in SWEEP_DEG for c in top]
        fine(coarse(pairs)[0])


def _frame_inside(region: RegionFeatures, tile: Any, crop_px: int) -> bool:
    """Whether the frame's crop (``crop_px`` square, north-up at the region's GSD) centred on
    ``tile``'s centre lies inside ``region``: its check would meet the region's keypoints again."""
    half = float(tile.tile_size) / 2.0
    x, y = tile.transform @ (half, half)
    u, v = ~region.transform @ (x, y)
    # a pixel of slack: a region one grid step larger than the crop holds it exactly
    lo, hi = crop_px / 2.0 - 1.0, region.size_px - crop_px / 2.0 + 1.0
    return bool(lo <= u <= hi and lo <= v <= hi)


def _frame_key(at: _LayerFrame, verifier: Any, h: float) -> tuple[int, int, float]:
    """The frame-feature cache's key: the layer view (its image), the verifier, the heading."""
    return (id(at.image), id(verifier), h)


class _LayerFrame(NamedTuple):
    """The frame as prepared for a candidate's GSD layer and the verification sizes there."""

    image: np.ndarray
    mask: np.ndarray
    chain: Any
    gsd_m: float
    crop: int
    region_px: int


class _Scored:
    """A candidate that passed the coarse check, with its region (for the learned matcher)."""

    __slots__ = ("coarse", "candidate", "heading", "region", "at")

    def __init__(
        self,
        coarse: CoarseCheck,
        candidate: Candidate,
        heading: float,
        region: RegionFeatures,
        at: _LayerFrame,
    ) -> None:
        self.coarse, self.candidate, self.heading, self.region = coarse, candidate, heading, region
        self.at = at


def stored_features_match(store: Any, kind: str) -> bool:
    """True when the store has precomputed tile features the ``kind`` extractor made."""
    from geoloc.store.tile_features import XFEAT_SPEC

    spec = store.feature_spec
    return bool(kind == XFEAT_SPEC.extractor and XFEAT_SPEC.compatible(spec))
