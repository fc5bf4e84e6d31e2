"""The tracker: a frame sequence in, one :class:`TrackFix` per frame out.

Every frame runs visual odometry against the current keyframe (:mod:`.vo`) and moves the
filter (:mod:`.filter`); every ``map_fix_every`` frames (and every frame while the track is
uncertain) a map fix registers the frame against the map window around the predicted position
with the predicted heading and GSD (:mod:`.mapmatch`), so no recall or global search runs once
the track is established. The first fix near ``start`` is the same registration over the start
circle with the heading unknown; when it does not register (or the GSD is unknown), and when
the track is lost, the fix is asked of a :class:`~geoloc.localize.Localizer` whose recall is
``near-position`` (or, without a usable prediction, the preset's global recall).

>>> with Tracker.open(start=(60.45, 22.26, 200.0), gsd=0.3) as tr:
...     for i, frame in enumerate(frames):
...         fix = tr.update(frame, t=i / 10)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from geoloc.config import DEFAULT_ENCODER, Settings
from geoloc.errors import ConfigError, FrameError
from geoloc.localize import Fix, Localizer, NearPositionRecall, Prior, load_frame
from geoloc.track.filter import LocalPlane, TrackFilter
from geoloc.track.fix import TrackFix
from geoloc.track.mapmatch import MapMatcher
from geoloc.track.vo import VisualOdometry, ground_offset

log = logging.getLogger(__name__)

__all__ = ["MapFixer", "Tracker"]

# (frame at its resolution, prior, heading, gsd, name) -> the localizer's fix
MapFixer = Callable[[np.ndarray, Prior | None, float | None, float | None, str], Fix]


def _parse_start(start: Any) -> Prior | None:
    if start is None or isinstance(start, Prior):
        return start
    if isinstance(start, str):
        parts = [p.strip() for p in start.split(",")]
        try:
            vals = [float(p) for p in parts]
        except ValueError as exc:
            raise ConfigError(f"--start must be LAT,LON[,RADIUS_M], got {start!r}") from exc
    else:
        vals = [float(v) for v in start]
    if len(vals) not in (2, 3):
        raise ConfigError(f"--start must be LAT,LON[,RADIUS_M], got {start!r}")
    rad = vals[2] if len(vals) == 3 else Tracker.default_conf["start_radius_m"]
    if not (-90 <= vals[0] <= 90 and -180 <= vals[1] <= 180 and rad > 0):
        raise ConfigError(f"--start out of range (lat, lon, radius > 0): {start!r}")
    return Prior(vals[0], vals[1], float(rad))


class Tracker:
    """Visual odometry + map fixes near the prediction + a gated filter; ``update`` per frame."""

    default_conf: ClassVar[dict[str, Any]] = {
        "map_fix_every": 3,  # frames between map fixes while the track is healthy
        "fps": 10.0,  # frame rate assumed when update() gets no t
        "start_radius_m": 300.0,
        "min_radius_m": 15.0,  # map window margin: max(this, 3 sigma + heading/VO slack)
        "max_radius_m": 2000.0,
        "recall_radius_m": 80.0,  # the localizer's near-position circle: > a tile stride
        "uncertain_m": 10.0,  # 1-sigma above which a map fix is tried every frame
        # 1-sigma above which the track is lost: no position is reported, and besides the map
        # window around the prediction the localizer searches 3 sigma around it (every
        # ``relocalize_every`` frames: it costs seconds), globally beyond ``max_radius_m``
        "lost_m": 150.0,
        "relocalize_every": 10,
        "keyframe_shift": 0.25,  # new keyframe when the centre moved this share of the frame
        "keyframe_min_inliers": 60,
        "top_n": 9,  # tiles recalled around the prediction
        # pass the predicted heading to the localizer's chain (one rotation instead of the
        # sweep); off: its single-heading path verified fewer synthetic frames than the sweep
        "fix_with_heading": False,
        "heading_known_deg": 15.0,  # 1-sigma below which the window is pre-rotated
        "map_match": {},  # MapMatcher conf overrides
    }

    def __init__(
        self,
        near: Localizer,
        *,
        start: Prior | None = None,
        gsd: float | None = None,
        altitude_m: float | None = None,
        hfov_deg: float | None = None,
        heading: float | None = None,
        conf: dict[str, Any] | None = None,
        global_localizer: Callable[[], Localizer] | None = None,
    ) -> None:
        self.conf = {**self.default_conf, **(conf or {})}
        self.near = near
        self._global_factory = global_localizer
        self._global: Localizer | None = None
        self.start = start
        self.gsd, self.altitude_m, self.hfov_deg = gsd, altitude_m, hfov_deg
        self.vo = VisualOdometry()
        self.filter = TrackFilter()
        if heading is not None:
            self.filter.heading_fix(float(heading), 10.0)
        self.plane: LocalPlane | None = None
        self.index = -1
        self._t_prev: float | None = None
        self._since_fix = 0
        self._frame_gsd: float | None = None  # metres per pixel of the current frame
        self._kf_heading = 0.0  # heading and GSD of the keyframe (odometry reference)
        self._kf_gsd = 0.0
        self._kf_offset = np.zeros(2)  # ground offset of the last frame from the keyframe
        self._vo_offset = np.zeros(2)  # ... measured by the last odometry, at time _vo_t
        self._vo_t = 0.0
        self.matcher = MapMatcher(near, **dict(self.conf["map_match"]))
        self.map_fixer: MapFixer = self._locate
        self._relocalized = -(10**9)  # frame of the last relocalization by the localizer
        self.counts = {"map_fix": 0, "refused": 0, "vo": 0, "coasting": 0, "lost": 0}

    # ------------------------------------------------------------------ set-up
    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        *,
        preset: str = "accurate",
        encoder: str | Any = DEFAULT_ENCODER,
        checkpoint: str | Path | None = None,
        start: Prior | str | tuple[float, ...] | None = None,
        gsd: float | None = None,
        altitude_m: float | None = None,
        hfov_deg: float | None = None,
        heading: float | None = None,
        conf: dict[str, Any] | None = None,
    ) -> Tracker:
        """Load the encoder and the tile store and build a tracker (a context manager).

        ``start`` (``Prior``, ``"LAT,LON[,RADIUS_M]"`` or a tuple) is where the first fix is
        searched; without it the first fix is a global search. ``gsd`` (or ``altitude_m`` with
        ``hfov_deg``) and ``heading`` are what is known of the frames, as for ``locate``.
        Raises ConfigError (bad option, no tiles near ``start``) and the Localizer's errors.
        """
        if gsd is not None and (altitude_m is not None or hfov_deg is not None):
            raise ConfigError("give either gsd or altitude_m with hfov_deg, not both")
        if (altitude_m is None) != (hfov_deg is None):
            raise ConfigError("altitude_m and hfov_deg go together")
        prior = _parse_start(start)
        settings = settings or Settings.from_env()
        near = Localizer.open(
            settings, encoder=encoder, checkpoint=checkpoint, preset=preset,
            recall=NearPositionRecall(),
        )  # fmt: skip
        try:
            if prior is not None and not len(
                near.store.within(prior.lat, prior.lon, prior.radius_m)
            ):
                raise ConfigError(
                    f"no tiles within {prior.radius_m:g} m of --start {prior.lat},{prior.lon}"
                )

            def _global() -> Localizer:
                return Localizer.open(settings, encoder=near.encoder, preset=preset)

            return cls(
                near, start=prior, gsd=gsd, altitude_m=altitude_m, hfov_deg=hfov_deg,
                heading=heading, conf=conf, global_localizer=_global,
            )  # fmt: skip
        except BaseException:
            near.close()
            raise

    def map_image(
        self, rows: list[dict[str, Any]], margin_m: float = 60.0, max_px: int = 1024
    ) -> tuple[np.ndarray, tuple[float, float, float, float]] | None:
        """The orthomosaic under a track (``TrackFix.as_dict()`` rows) for :func:`plot_track`:
        ``(rgb, (west, east, south, north))``, bounds in degrees, read from the raster of the
        stored tile nearest the track's centre at a GSD that keeps it within ``max_px``;
        None when no row has a position or no raster can be read."""
        from tiling.crs import to_lonlat

        pts = [(r["lat"], r["lon"]) for r in rows if r.get("lat") is not None]
        if not pts:
            return None
        lats, lons = [p[0] for p in pts], [p[1] for p in pts]
        lat_c, lon_c = (min(lats) + max(lats)) / 2.0, (min(lons) + max(lons)) / 2.0
        k = math.cos(math.radians(lat_c))
        half = max(
            (max(lats) - min(lats)) * 111_320.0 / 2.0,
            (max(lons) - min(lons)) * 111_320.0 * k / 2.0,
        ) + float(margin_m)
        path = self.matcher.raster_near(lat_c, lon_c, half + 500.0)
        if path is None:
            return None
        gsd = max(self.near.map_gsd_m, 2.0 * half / max_px)
        size = int(math.ceil(2.0 * half / gsd))
        try:
            px, _mask, t = self.near.regions.raster(path).read_region(lon_c, lat_c, size, gsd)
            crs = self.near.regions.raster(path).crs
        except Exception as exc:  # noqa: BLE001 - a plot without its map is still a plot
            log.warning("%s: no map under the plot (%s)", path, exc)
            return None
        xs, ys = zip(*(t @ c for c in ((0, 0), (size, 0), (0, size), (size, size))), strict=True)
        lo, la = to_lonlat(crs, np.array(xs), np.array(ys))
        rgb = np.ascontiguousarray(np.transpose(px, (1, 2, 0)))
        return rgb, (float(lo.min()), float(lo.max()), float(la.min()), float(la.max()))

    def close(self) -> None:
        """Close the localizers."""
        self.near.close()
        if self._global is not None:
            self._global.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ map fixes
    def _locate(
        self, rgb: np.ndarray, prior: Prior | None, heading: float | None, gsd: float | None,
        name: str,
    ) -> Fix:  # fmt: skip
        """A map fix: the map window registration near ``prior`` when the GSD is known, else
        (and when that fails before the track is established) the localizer's chain."""
        f = self.filter
        if prior is not None and gsd is not None:
            m = self.matcher.search(rgb, prior.lat, prior.lon, gsd, prior.radius_m, heading)
            if m is not None:
                return Fix(
                    frame=name, status="ok", lat=m.lat, lon=m.lon,
                    confidence=min(1.0, m.inliers / 100.0), error_m_est=m.sigma_m,
                    orthomosaic=m.raster_path, heading_deg=m.heading_deg, method="verified",
                    verification={"matcher": "map-window-orb", "inliers": m.inliers,
                                  "rmse_px": round(m.rmse_px, 3), "gsd_m": m.gsd_m},
                )  # fmt: skip
            if f.initialised and f.sigma_m <= float(self.conf["lost_m"]):
                # tracking: the chain's seconds per frame would stall the track; VO carries it
                return Fix(frame=name, status="no_match", message="map window did not register")
        if f.initialised and f.sigma_m > float(self.conf["lost_m"]):
            if self.index - self._relocalized < int(self.conf["relocalize_every"]):
                return Fix(frame=name, status="no_match", message="relocalization pending")
            self._relocalized = self.index
        kw: dict[str, Any] = {"gsd": gsd, "name": name}
        kw["heading"] = heading if bool(self.conf["fix_with_heading"]) else None
        if gsd is None and self.altitude_m is not None:
            kw.update(gsd=None, altitude_m=self.altitude_m, hfov_deg=self.hfov_deg)
        if prior is not None:
            r = max(prior.radius_m, float(self.conf["recall_radius_m"]))
            p = Prior(prior.lat, prior.lon, r)
            return self.near.locate(rgb, prior=p, top_n=int(self.conf["top_n"]), **kw)
        if self._global is None:
            if self._global_factory is None:
                return Fix(frame=name, status="no_match", message="no global localizer")
            self._global = self._global_factory()
        return self._global.locate(rgb, **kw)

    def _search_prior(self) -> Prior | None:
        f, c = self.filter, self.conf
        if not f.initialised or self.plane is None:
            return self.start
        r = max(float(c["min_radius_m"]), 3.0 * f.sigma_m + 3.0)
        if r > float(c["max_radius_m"]):
            return None  # global relocalization
        lat, lon = self.plane.to_latlon(f.position)
        return Prior(lat, lon, r)

    # ------------------------------------------------------------------ per frame
    def _frame_gsd_m(self, rgb: np.ndarray, priors: dict[str, Any]) -> float:
        gsd = priors.get("gsd", self.gsd)
        if gsd is not None:
            return float(gsd)
        alt = priors.get("altitude_m", self.altitude_m)
        hfov = priors.get("hfov_deg", self.hfov_deg)
        if alt is not None and hfov is not None:
            return float(2.0 * alt * np.tan(np.radians(hfov) / 2.0) / rgb.shape[1])
        # as the localizer assumes: the frame's shorter side spans one tile
        return float(self.near.tile_ground_m / min(rgb.shape[:2]))

    def update(
        self,
        frame: np.ndarray | str | Path,
        t: float | None = None,
        priors: dict[str, Any] | None = None,
    ) -> TrackFix:
        """Track one frame (an RGB array or an image path) taken at ``t`` seconds.

        ``priors`` may carry what is known of this frame: ``gsd``, ``altitude_m``, ``hfov_deg``,
        ``heading_deg``, and a position ``lat``, ``lon``, ``radius_m``. FrameError when the frame
        cannot be read (the track itself is unchanged).
        """
        priors = dict(priors or {})
        name = None if isinstance(frame, np.ndarray) else Path(frame).name
        rgb = load_frame(frame).rgb if not isinstance(frame, np.ndarray) else frame
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        self.index += 1
        if t is None:
            t = self.index / float(self.conf["fps"])
        dt = 0.0 if self._t_prev is None else max(float(t) - self._t_prev, 0.0)
        self._t_prev = float(t)
        if priors.get("heading_deg") is not None:
            self.filter.heading_fix(float(priors["heading_deg"]), 5.0)
        gsd = self._frame_gsd_m(rgb, priors)
        feats = self.vo.features(rgb)
        f = self.filter
        moved = False
        if f.initialised:
            motion = self.vo.motion(feats)
            if motion is not None and f.heading_deg is not None:
                off = ground_offset(motion.shift_px, self._kf_heading, self._kf_gsd)
                heading_now = (self._kf_heading + motion.rotation_deg) % 360.0
                f.turn(((heading_now - f.heading_deg + 180.0) % 360.0) - 180.0)
                # the velocity from the odometry alone: the offset change since the last frame
                # with odometry (a coast in between moved the position, not the keyframe)
                vel_dt = float(t) - self._vo_t
                vel = (off - self._vo_offset) / vel_dt if vel_dt > 0 else None
                f.odometry(off - self._kf_offset, vel, vel_dt)
                self._kf_offset = off
                self._vo_offset, self._vo_t = off, float(t)
                moved = True
                h, w = rgb.shape[:2]
                shift = float(np.hypot(*motion.shift_px)) / float(min(h, w))
                if shift > float(self.conf["keyframe_shift"]) or motion.inliers < int(
                    self.conf["keyframe_min_inliers"]
                ):
                    self._new_keyframe(feats, gsd)
            else:
                before = f.position
                f.coast(dt)
                # the keyframe's offset moves with the coasted position, so the next odometry
                # step measures from the keyframe and corrects the coast instead of adding to it
                self._kf_offset = self._kf_offset + (f.position - before)
        status = "vo" if moved else ("coasting" if f.initialised else "lost")
        self._since_fix += 1
        if self._want_fix():
            if self._try_fix(rgb, priors, gsd, name or f"frame{self.index}"):
                status = "map_fix"
                self._new_keyframe(feats, gsd)
        if f.initialised and f.sigma_m > float(self.conf["lost_m"]):
            status = "lost"
        if not f.initialised:
            status = "lost"
        self.counts[status] += 1
        return self._answer(float(t), name, status)

    def _want_fix(self) -> bool:
        f = self.filter
        uncertain = min(float(self.conf["uncertain_m"]), float(self.conf["lost_m"]))
        if not f.initialised or f.sigma_m > uncertain:
            return True
        return self._since_fix >= int(self.conf["map_fix_every"])

    def _try_fix(self, rgb: np.ndarray, priors: dict[str, Any], gsd: float, name: str) -> bool:
        f = self.filter
        prior = self._search_prior()
        if "lat" in priors and "lon" in priors:
            prior = Prior(
                float(priors["lat"]), float(priors["lon"]), float(priors.get("radius_m", 100.0))
            )
        known_gsd = (
            None if self.gsd is None and "gsd" not in priors and self.altitude_m is None else gsd
        )
        confident = f.heading_var < float(self.conf["heading_known_deg"]) ** 2
        heading = f.heading_deg if confident and f.initialised else None
        self._since_fix = 0
        try:
            fix = self.map_fixer(rgb, prior, heading, known_gsd, name)
        except FrameError as exc:  # e.g. a blank frame: no fix this time, the track goes on
            log.debug("frame %d: no map fix (%s)", self.index, exc)
            return False
        if fix.status != "ok" or fix.lat is None or fix.lon is None:
            return False
        if self.plane is None:
            self.plane = LocalPlane(float(fix.lat), float(fix.lon))
        en = self.plane.to_en(float(fix.lat), float(fix.lon))
        sigma = float(fix.error_m_est) if fix.error_m_est is not None else 3.0
        if fix.method != "verified":
            return False  # an unverified tile centre is too coarse to steer the track
        if not f.map_fix(en, sigma):
            self.counts["refused"] += 1
            log.debug("frame %d: map fix refused by the gate", self.index)
            return False
        if fix.heading_deg is not None:
            registered = (fix.verification or {}).get("matcher") == "map-window-orb"
            f.heading_fix(float(fix.heading_deg), 1.0 if registered else None)
        return True

    def _new_keyframe(self, feats: Any, gsd: float) -> None:
        self.vo.set_keyframe(feats)
        self._kf_heading = self.filter.heading_deg or 0.0
        self._kf_gsd = gsd
        self._kf_offset = np.zeros(2)
        self._vo_offset = np.zeros(2)
        self._vo_t = self._t_prev if self._t_prev is not None else 0.0

    def _answer(self, t: float, name: str | None, status: str) -> TrackFix:
        f = self.filter
        out = TrackFix(index=self.index, t=t, frame=name, status=status)
        if status == "lost" or self.plane is None:
            return out
        out.lat, out.lon = self.plane.to_latlon(f.position)
        out.heading_deg = None if f.heading_deg is None else round(float(f.heading_deg), 3)
        out.vel_east_mps, out.vel_north_mps = float(f.x[2]), float(f.x[3])
        out.speed_mps = float(np.hypot(f.x[2], f.x[3]))
        out.error_m_est = f.sigma_m
        out.error_ellipse_m = [round(v, 3) for v in f.ellipse()]
        if self.altitude_m is not None:
            out.camera = {"lat": out.lat, "lon": out.lon, "altitude_m": self.altitude_m}
        return out
