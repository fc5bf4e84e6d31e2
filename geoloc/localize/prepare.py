"""Frame preparation: load the frame, bring it to the GSD of each plausible GSD layer of the
store, rotate it under each heading hypothesis and encode the batch with the database's encoder.

A store may hold several GSD layers (``TileStore.layers``: a 5 cm survey beside 0.5 m satellite
tiles). With the frame's GSD known, the frame is prepared once per layer it is plausible for:
enlarged at most :data:`MAX_UPSCALE` times and, shrunk, still covering :data:`MIN_TILE_COVER`
of a tile; when no layer is plausible, the one needing the least resize. Each such
:class:`~geoloc.localize.state.FrameView` is what recall, rerank, consistency and verification of
that layer's tiles compare against. One layer is prepared exactly as before.

Timed as ``load`` (decode, GSD and heading from the caller or EXIF/XMP, the camera model and
its preparation: undistortion, rectification to nadir when the pitch is known), ``rotate``
(heading hypotheses, scaling, the rotation batch) and ``encode``.

The camera (:mod:`geoloc.camera`) comes from ``--camera``, ``--hfov`` or the EXIF focal length;
the priors (heading, pitch, roll, altitude) from the flags over the file's XMP. The GSD is, in
order: ``--gsd``; the rectified frame's (altitude over the virtual nadir focal length);
``--altitude`` + ``--hfov`` or the XMP altitude with the EXIF 35 mm focal length; the altitude
over the camera's focal length. The :class:`~geoloc.camera.PixelChain` of the preparation is
kept on the state (with the map-scale resize) for the pose stage.

When nothing gives the GSD, the frame is searched at a few scales (``scales``): the first
assumes its shorter side spans one tile, and when the chain verifies nothing at one hypothesis
the localizer asks :meth:`FramePreparation.next_scale` for the next. The verified match then
measures the GSD (and, with a camera model, the altitude): :meth:`FramePreparation.scale_report`.
A hypothesis is in tile widths, not metres, so it gives the same pixels for every GSD layer of
one tile size: those layers share one view (one encoding) and recall searches them together;
the verified candidate's layer turns the match into metres.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from geoloc.camera.metadata import FrameMetadata, read_metadata
from geoloc.camera.prepare import prepare_frame, resolve_camera
from geoloc.camera.priors import merge_priors
from geoloc.errors import ConfigError, FrameError
from geoloc.localize import frame as frames
from geoloc.localize.priors import PriorStage
from geoloc.localize.state import FrameState, FrameView, ScaleSearch

if TYPE_CHECKING:
    from geoloc.store.tile_store import GsdLayer

#: A frame is not searched on a layer it would have to be enlarged more than this for: it would
#: be blurrier than the layer's tiles and lack the detail they are matched by.
MAX_UPSCALE = 2.0
#: ... nor on a layer at whose GSD its shorter side covers less than this share of a tile: the
#: encoder's tile-sized crop would be mostly padding no tile has, and such encodings outscore
#: the right layer's tiles. Shrinking is otherwise fine (a 4000 x 2250 photo at 2 cm/px covers a
#: 0.1 m tile, not a 0.3 m one).
MIN_TILE_COVER = 0.75


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor from the encoder
        return np.asarray(x.detach().cpu().numpy())
    return np.asarray(x)


class FramePreparation:
    """The chain's first stage; conf ``rotations``: heading hypotheses when the heading is unknown,
    ``scales``: the scale hypotheses when the GSD is unknown, in the order tried, relative to the
    assumption that the frame's shorter side spans one tile (one entry: that assumption only).

    ``map_gsd_m`` and ``tile_px`` are the database's main GSD layer; ``layers`` (when given)
    returns every GSD layer of the store, main first (``TileStore.layers``): the frame is
    prepared and encoded at each layer's GSD it is plausible for; ``priors`` may narrow the
    headings.
    """

    default_conf: ClassVar[dict[str, Any]] = {"rotations": 8, "scales": (1.0, 2.0, 0.5)}

    def __init__(
        self,
        conf: dict[str, Any],
        encoder: Any,
        priors: list[PriorStage],
        *,
        map_gsd_m: float,
        tile_px: int,
        layers: Callable[[], Sequence[GsdLayer]] | None = None,
    ) -> None:
        self.conf = {**self.default_conf, **conf}
        self.encoder = encoder
        self.priors = priors
        self.map_gsd_m = float(map_gsd_m)
        self.tile_px = int(tile_px)
        self._layers = layers

    def layers(self) -> list[GsdLayer]:
        """The GSD layers frames are prepared for, main first."""
        if self._layers is not None:
            found = list(self._layers())
            if found:
                return found
        from geoloc.store.tile_store import GsdLayer

        return [GsdLayer(self.map_gsd_m, self.tile_px, (), 0)]

    def run(self, state: FrameState) -> None:
        """Fill ``frame``, ``headings``, ``image``/``mask`` (at map scale) and the encodings.

        With the GSD unknown, ``state.scale_search`` holds the scale hypotheses and the frame is
        prepared at the first one; :meth:`next_scale` moves to the next.
        """
        req = state.request
        with state.timer("load"):
            fr = frames.load_frame(
                req.image,
                gsd=req.gsd_m,
                # the altitude alone is enough once a camera model gives K (below)
                altitude_m=req.altitude_m if req.hfov_deg is not None else None,
                hfov_deg=req.hfov_deg if req.altitude_m is not None else None,
                heading_deg=req.heading_deg,
                name=req.name,
            )
            self._prepare_camera(state, fr)
        with state.timer("rotate"):
            headings = frames.default_headings(int(self.conf["rotations"]))
            for p in self.priors:
                headings = p.headings(fr, headings)
            scales = [float(x) for x in self.conf["scales"]]
            if fr.gsd_m is None and len(scales) > 1:
                if not all(math.isfinite(x) and x > 0 for x in scales):
                    raise ConfigError(f"frame preparation: scales must be > 0, got {scales}")
                state.scale_search = ScaleSearch(
                    self.tile_px / float(min(fr.width, fr.height)),
                    scales,
                    base_chain=state.prep.chain.copy() if state.prep is not None else None,
                )
        state.frame, state.headings = fr, headings
        state.layers = self.layers()
        self._rotate_encode(state)

    def _layer_factors(self, state: FrameState) -> dict[float, tuple[int, ...]]:
        """The resizes the frame is prepared at, each with the GSD layers it serves.

        GSD known: each layer's ``frame GSD / layer GSD``, for the layers it is plausible for (see
        :data:`MAX_UPSCALE`, :data:`MIN_TILE_COVER`); when none is, the layer needing the least
        resize. GSD unknown: the scale hypothesis is in tile widths, so layers of one tile size
        share one resize (and one encoding), and recall searches them together.
        """
        fr, search = state.frame, state.scale_search
        assert fr is not None
        short = float(min(fr.width, fr.height))
        factors: list[float] = []
        keep: list[int] = []
        for i, la in enumerate(state.layers):
            if search is not None:
                f = la.tile_px / short * search.relative[search.index]
            elif fr.gsd_m is None:
                f = la.tile_px / short
            else:
                f = fr.gsd_m / la.gsd_m
            factors.append(f)
            if (
                fr.gsd_m is None
                or len(state.layers) == 1
                or (f <= MAX_UPSCALE and short * f >= MIN_TILE_COVER * la.tile_px - 0.5)
            ):
                keep.append(i)
        if not keep:
            keep = [min(range(len(factors)), key=lambda i: abs(math.log(factors[i])))]
        # in layer order: the main layer's view (when searched) comes first
        out: dict[float, tuple[int, ...]] = {}
        for i in keep:
            out[factors[i]] = (*out.get(factors[i], ()), i)
        return out

    def _rotate_encode(self, state: FrameState) -> None:
        """The frame at each searched layer's GSD (the current scale hypothesis), rotated and
        encoded in one batch."""
        fr, headings, search = state.frame, state.headings, state.scale_search
        assert fr is not None
        views: list[FrameView] = []
        batches = []
        with state.timer("rotate"):
            base = None
            if state.prep is not None:
                base = search.base_chain if search is not None else state.prep.chain
            for factor, layers in self._layer_factors(state).items():
                img = frames.rescale(fr.rgb, factor)
                mask = frames.rescale(fr.mask, factor, nearest=True)
                chain = base.copy().then_scale(factor) if base is not None else None
                views.append(FrameView(float(factor), layers, img, mask, chain))
                crop_px = state.layers[layers[0]].tile_px
                batch, _valid = frames.rotation_batch(
                    img, mask, headings, crop_px=crop_px, size=int(self.encoder.input_size)
                )
                batches.append(batch)
        with state.timer("encode"):
            out = self.encoder.encode(batches[0] if len(batches) == 1 else np.concatenate(batches))
            omega, phi = _np(out.omega), _np(out.phi)
            areas, cents = _np(out.node_areas), _np(out.node_centroids)
        h = len(headings)
        for j, v in enumerate(views):
            rows = slice(j * h, (j + 1) * h)
            v.omega, v.phi, v.node_areas, v.node_centroids = (
                omega[rows],
                phi[rows],
                areas[rows],
                cents[rows],
            )
        state.views = views
        main = views[0]
        state.image, state.mask, state.map_scale = main.image, main.mask, main.factor
        state.omega, state.phi = main.omega, main.phi
        state.node_areas, state.node_centroids = main.node_areas, main.node_centroids
        if state.prep is not None and main.chain is not None:
            state.prep.chain = main.chain

    def next_scale(self, state: FrameState) -> bool:
        """Prepare the frame at the next scale hypothesis; False when there is none left.

        Called by the localizer when the chain ended without a verified match. The outcome of
        the first hypothesis is kept: :meth:`settle` puts it back when no hypothesis verifies,
        so that an unverified answer is the one the default scale gives.
        """
        search = state.scale_search
        if search is None or state.match is not None or search.index + 1 >= len(search.relative):
            return False
        if search.index == 0:
            search.first = (state.recalled, state.candidates, state.message)
        search.index += 1
        state.recalled, state.candidates, state.message, state.pose = [], [], None, None
        self._rotate_encode(state)
        return True

    def settle(self, state: FrameState) -> None:
        """After the last hypothesis: without a verified match, the first one's outcome."""
        search = state.scale_search
        if search is not None and state.match is None and search.first is not None:
            state.recalled, state.candidates, state.message = search.first

    def scale_report(self, state: FrameState) -> dict[str, Any] | None:
        """The answer's ``scale``: the hypotheses tried and what the verified one gives.

        ``gsd_m`` is the prepared frame's ground pixel size measured by the verified match (the
        matched candidate's layer GSD times the hypothesis's resize and the homography's local
        scale), ``altitude_m`` that GSD times
        the (virtual nadir) camera's focal length when the frame has a camera model.
        """
        search = state.scale_search
        if search is None:
            return None
        m = state.match
        out: dict[str, Any] = {
            "hypotheses": list(search.relative),
            "default_gsd_m": self.map_gsd_m / search.default_factor,
            "tried": search.index + 1,
            "verified": None,
            "gsd_m": None,
            "altitude_m": None,
            "source": None,
        }
        if m is None or not m.result.scale or m.result.scale <= 0:
            return out
        # the candidate's layer GSD times the resize its view had: the GSD of the prepared frame
        view = state.view(m.candidate.layer)
        gsd = state.gsd_of(m.candidate) * view.factor * float(m.result.scale)
        out.update(
            verified=search.relative[search.index],
            gsd_m=gsd,
            source=f"verified match at scale hypothesis {search.relative[search.index]:g}x",
        )
        prep = state.prep
        if prep is not None and prep.camera is not None:
            rect = prep.chain.rectified
            cam = rect.camera if rect is not None else prep.camera
            out["altitude_m"] = gsd * cam.focal_px
        return out

    def _prepare_camera(self, state: FrameState, fr: frames.Frame) -> None:
        """Camera model, priors, undistortion / rectification; updates ``fr`` in place."""
        req = state.request
        label = fr.name
        meta: FrameMetadata | None = None
        if not isinstance(req.image, np.ndarray):
            try:
                meta = read_metadata(req.image, name=label)
            except OSError as exc:  # decoded a moment ago: only a race can get here
                raise FrameError(f"cannot read: {exc.strerror or exc}", path=label) from exc
        try:
            priors = merge_priors(
                meta,
                heading=req.heading_deg,
                pitch=req.pitch_deg,
                roll=req.roll_deg,
                altitude=req.altitude_m,
            )
        except ValueError as exc:
            raise FrameError(str(exc), path=label) from exc
        cam, why = resolve_camera(
            fr.width,
            fr.height,
            camera_file=None if req.camera_file is None else str(req.camera_file),
            hfov_deg=req.hfov_deg,
            meta=meta,
        )
        if cam is None and req.altitude_m is not None and fr.gsd_m is None:
            raise FrameError(
                "--altitude needs a camera model (--camera FILE, --hfov DEG or an EXIF focal "
                "length) or --gsd",
                path=label,
            )
        prep = prepare_frame(fr.rgb, fr.mask, cam, priors)
        fr.rgb, fr.mask = prep.rgb, prep.mask
        if req.gsd_m is None and prep.gsd_m is not None and (prep.rectified or fr.gsd_m is None):
            fr.gsd_m, fr.gsd_source = prep.gsd_m, prep.gsd_source
        if fr.heading_deg is None and prep.heading_deg is not None and priors.heading is not None:
            fr.heading_deg, fr.heading_source = prep.heading_deg, priors.heading.source
        state.prep, state.camera_reason = prep, why


def heading_known(state: FrameState) -> bool:
    """The frame's heading is known and the chain tries that one heading only."""
    fr = state.frame
    return len(state.headings) == 1 and fr is not None and fr.heading_deg is not None
