"""Map fixes near the prediction: the frame warped into the map window around the predicted
position, registered by ORB + RANSAC.

Once a track is running, the position (a few metres), heading (a degree or two) and GSD of the
next frame are known, so a map fix is a small registration problem, not a search: the frame is
rotated and scaled into the map's orientation and GSD and placed where the prediction puts it
inside a map window read around that point (``search_m`` of margin); features of the two images
are matched with a ratio test and a displacement gate of the margin; a RANSAC similarity maps
warped-frame pixels to map pixels. The frame centre's image under that similarity is the fix;
its rotation corrects the heading. Without a heading (the first fix near ``--start``) the frame
is only scaled and ORB's rotation invariance finds the heading.

The map pixels come from the localizer's :class:`~geoloc.localize.regions.MapRegions` (the
rasters of the store's tiles, kept open), the raster from the tile nearest the prediction.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapMatch:
    """A registered frame: the ground point under its centre, the heading of its top (degrees
    clockwise from true north), its GSD as measured against the map, the RANSAC inliers, their
    RMS residual (map pixels) and the 1-sigma position error that implies (metres)."""

    lat: float
    lon: float
    heading_deg: float
    gsd_m: float
    inliers: int
    rmse_px: float
    sigma_m: float
    raster_path: str


def _bearing_deg(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    """Initial bearing (degrees clockwise from north) from point 0 to point 1 (short distances)."""
    k = math.cos(math.radians(lat0))
    return math.degrees(math.atan2((lon1 - lon0) * k, lat1 - lat0)) % 360.0


class MapMatcher:
    """Registers frames against the map window around a predicted position (see the module)."""

    default_conf: ClassVar[dict[str, Any]] = {
        "frame_features": 1200,
        "map_features": 3000,  # per million window pixels (a wide first-fix window gets more)
        "ratio": 0.9,
        "ransac_px": 2.5,
        "min_inliers": 25,
        "min_inlier_share": 0.15,
        "max_scale_dev": 0.2,  # |measured/expected GSD - 1| accepted when the GSD is known
        "max_rotation_deg": 20.0,  # heading correction accepted when the heading is known
        "max_window_px": 2048,  # wider searches are left to the localizer's recall
        "gate_slack_px": 12.0,  # displacement gate = search margin + this
        "window_margin_m": 60.0,  # a wider search is split into windows of this margin
        "sure_inliers": 60,  # a split search stops at the first window with this many
        # a split search covers at most this radius (the most likely part of a wider circle):
        # beyond it the windows cost more than the localizer's recall
        "max_search_m": 160.0,
    }

    def __init__(self, localizer: Any, **conf: Any) -> None:
        self.conf = {**self.default_conf, **conf}
        self.store = localizer.store
        self.regions = localizer.regions
        self.map_gsd_m = float(localizer.map_gsd_m)
        self._orb_frame = cv2.ORB_create(  # type: ignore[attr-defined]
            nfeatures=int(self.conf["frame_features"]), fastThreshold=7
        )
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self._raster_cache: tuple[float, float, str] | None = None

    # ------------------------------------------------------------------ map
    def raster_near(self, lat: float, lon: float, radius_m: float) -> str | None:
        """The raster of the stored tile nearest (lat, lon) within ``radius_m``, or None."""
        lat, lon = float(lat), float(lon)  # the store's SQL takes Python floats only
        ids = self.store.within(lat, lon, max(float(radius_m), 1.0))
        if not len(ids):
            return None
        tiles = self.store.candidates(ids[:64])
        if not tiles:
            return None
        k = math.cos(math.radians(lat))
        best = min(tiles, key=lambda c: (c.center_lat - lat) ** 2 + ((c.center_lon - lon) * k) ** 2)
        return str(best.raster_path)

    def _raster(self, lat: float, lon: float, radius_m: float) -> str | None:
        # the same raster serves a whole stretch of the flight: look it up again only when the
        # prediction has moved by a good part of a tile since the last look-up
        c = self._raster_cache
        if c is not None:
            k = math.cos(math.radians(lat))
            d = math.hypot((c[0] - lat) * 111_320.0, (c[1] - lon) * 111_320.0 * k)
            if d < 0.25 * 224 * self.map_gsd_m:
                return c[2]
        path = self.raster_near(lat, lon, max(radius_m, 224 * self.map_gsd_m))
        self._raster_cache = None if path is None else (lat, lon, path)
        return path

    # ------------------------------------------------------------------ registration
    def search(
        self,
        rgb: np.ndarray,
        lat: float,
        lon: float,
        gsd_m: float,
        radius_m: float,
        heading_deg: float | None = None,
    ) -> MapMatch | None:
        """:meth:`match` within ``radius_m`` of (lat, lon); a circle wider than one window's
        margin is covered by overlapping windows, nearest first (one wide window holds too many
        look-alike features for the ratio test). The first window with ``sure_inliers`` wins,
        else the one with the most inliers."""
        step = float(self.conf["window_margin_m"])
        if radius_m <= step:
            return self.match(rgb, lat, lon, gsd_m, radius_m, heading_deg)
        radius_m = min(float(radius_m), float(self.conf["max_search_m"]))
        n = int(math.ceil(radius_m / (1.5 * step)))
        offs = [
            (i * 1.5 * step, j * 1.5 * step)
            for i in range(-n, n + 1)
            for j in range(-n, n + 1)
            if math.hypot(i, j) * 1.5 * step <= radius_m + step
        ]
        offs.sort(key=lambda o: math.hypot(*o))
        k = math.cos(math.radians(lat))
        best: MapMatch | None = None
        for de, dn in offs:
            m = self.match(
                rgb, lat + dn / 111_320.0, lon + de / (111_320.0 * k), gsd_m, step, heading_deg
            )
            if m is not None and (best is None or m.inliers > best.inliers):
                best = m
                if m.inliers >= int(self.conf["sure_inliers"]):
                    break
        return best

    def match(
        self,
        rgb: np.ndarray,
        lat: float,
        lon: float,
        gsd_m: float,
        search_m: float,
        heading_deg: float | None = None,
    ) -> MapMatch | None:
        """Register ``rgb`` (metres per pixel ``gsd_m``, top towards ``heading_deg`` or unknown)
        against the map within ``search_m`` of (lat, lon); None when it does not register."""
        from geoloc.errors import GeolocError
        from tiling.crs import to_lonlat

        mg = self.map_gsd_m
        h, w = rgb.shape[:2]
        k = float(gsd_m) / mg  # map pixels per frame pixel
        known = heading_deg is not None
        margin = float(search_m) / mg
        path = self._raster(lat, lon, search_m)
        if path is None:
            return None
        try:
            raster = self.regions.raster(path)
        except (OSError, GeolocError) as exc:
            log.debug("map window: %s", exc)
            return None
        size = int(math.ceil(k * math.hypot(w, h) + 2.0 * margin)) | 1
        if size > int(self.conf["max_window_px"]):
            return None
        try:
            px, mask, t = raster.read_region(lon, lat, size, mg)
        except Exception as exc:  # noqa: BLE001 - any read failure is "no fix this frame"
            log.debug("map window %s: %s", path, exc)
            return None
        window = cv2.cvtColor(np.ascontiguousarray(np.transpose(px, (1, 2, 0))), cv2.COLOR_RGB2GRAY)
        if mask.mean() < 0.02:
            return None
        x0, y0 = t @ (size / 2.0, size / 2.0)
        x1, y1 = t @ (size / 2.0, size / 2.0 - 100.0)
        (lo0, lo1), (la0, la1) = to_lonlat(raster.crs, np.array([x0, x1]), np.array([y0, y1]))
        # the raster's grid north differs from true north away from the projection's meridian
        grid_up = _bearing_deg(float(lo0), float(la0), float(lo1), float(la1))  # true bearing
        theta = 0.0 if not known else math.radians(float(heading_deg or 0.0) - grid_up)
        ct, st = math.cos(theta), math.sin(theta)
        centre = (size - 1) / 2.0
        fc = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        a = k * np.array([[ct, -st], [st, ct]])
        m = np.hstack([a, (np.array([centre, centre]) - a @ fc)[:, None]])
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        warped = cv2.warpAffine(gray, m, (size, size), flags=cv2.INTER_AREA if k < 1 else 1)
        fmask = cv2.warpAffine(np.full((h, w), 255, np.uint8), m, (size, size), flags=0)
        fmask = cv2.erode(fmask, np.ones((7, 7), np.uint8))
        wmask = cv2.erode(mask.astype(np.uint8) * 255, np.ones((7, 7), np.uint8))
        kf, df = self._orb_frame.detectAndCompute(warped, fmask)
        n_map = int(float(self.conf["map_features"]) * max(1.0, size * size / 1e6))
        orb_map = cv2.ORB_create(nfeatures=n_map, fastThreshold=7)  # type: ignore[attr-defined]
        km, dm = orb_map.detectAndCompute(window, wmask)
        if df is None or dm is None or len(kf) < 8 or len(km) < 8:
            return None
        pairs = self._matcher.knnMatch(df, dm, k=2)
        pf = np.array([p.pt for p in kf], np.float32)
        pm = np.array([p.pt for p in km], np.float32)
        good = [
            p[0]
            for p in pairs
            if len(p) == 2 and p[0].distance < self.conf["ratio"] * p[1].distance
        ]
        if len(good) < int(self.conf["min_inliers"]):
            return None
        src = pf[[g.queryIdx for g in good]]
        dst = pm[[g.trainIdx for g in good]]
        if known:  # pre-aligned: a true match moves by at most the search margin
            d = np.hypot(*(dst - src).T)
            keep = d <= margin + float(self.conf["gate_slack_px"])
            src, dst = src[keep], dst[keep]
            if len(src) < int(self.conf["min_inliers"]):
                return None
        sim, inl = cv2.estimateAffinePartial2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=float(self.conf["ransac_px"]),
            maxIters=3000, confidence=0.999,
        )  # fmt: skip
        if sim is None or inl is None:
            return None
        inl = inl.ravel().astype(bool)
        n = int(inl.sum())
        if n < int(self.conf["min_inliers"]) or n < float(self.conf["min_inlier_share"]) * len(src):
            return None
        scale = math.hypot(float(sim[0, 0]), float(sim[1, 0]))
        rot = math.degrees(math.atan2(float(sim[1, 0]), float(sim[0, 0])))
        if abs(scale - 1.0) > float(self.conf["max_scale_dev"]):
            return None
        if known and abs(rot) > float(self.conf["max_rotation_deg"]):
            return None
        res = src[inl] @ sim[:, :2].T + sim[:, 2] - dst[inl]
        rmse = float(np.sqrt(np.mean(np.sum(res * res, axis=1))))
        cx, cy = sim[:, :2] @ np.array([centre, centre]) + sim[:, 2]
        x, y = t @ (float(cx) + 0.5, float(cy) + 0.5)
        lon_f, lat_f = to_lonlat(raster.crs, float(x), float(y))
        heading = (math.degrees(theta) + grid_up + rot) % 360.0
        # the centre's error from n residuals of this size, floored for what RANSAC hides
        sigma = max(0.3, 2.0 * max(rmse, 0.5) * mg / math.sqrt(n) + 0.1 * mg)
        return MapMatch(
            float(lat_f), float(lon_f), heading, float(gsd_m) / scale, n, rmse, sigma, path
        )
