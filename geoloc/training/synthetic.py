"""Synthetic drone views cut from a georeferenced raster, with exact truth.

A view is rendered by a pinhole camera looking at a ground point: the optical axis passes through
the ground point, so the view's centre pixel sees exactly that point whatever the heading, scale or
tilt. The ground is the raster's plane; a local metric frame (east, north) is built from the
raster's pixel grid around the point (pixel size in metres at the point), so "north" is the raster's
grid up direction (for a UTM raster, grid north, within ~1-2 deg of true north).

Every view records the homography from its pixels to the raster's pixels, the lon/lat of the ground
under its centre, its heading (clockwise from the raster's up, the direction the top of the view
points to) and its ground sample distance at the centre.

Used by training (positives), by ``geoloc eval --synthetic`` and by ``scripts/make_demo_frames.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geoloc.errors import SyntheticError
from tiling.crs import from_lonlat, geodesic_distance_m, to_lonlat, to_pyproj
from tiling.errors import TilingError
from tiling.mosaic import DEFAULT_MAX_PIXELS, read_mosaic

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SyntheticError",
    "ViewParams",
    "SyntheticView",
    "ViewSynthesizer",
    "neutral_params",
]

FloatArray = npt.NDArray[np.float64]
UInt8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ViewParams:
    """Everything that defines one synthetic view (geometry + photometry).

    ``scale`` > 1 zooms in (the view's GSD is the base GSD divided by ``scale``).
    ``offset_m`` moves the view centre from the requested point by (east, north) metres.
    ``tilt_deg`` is the angle of the optical axis off nadir; the camera turns about an axis in
    its image plane at ``tilt_azimuth_deg`` from the image x axis.
    """

    heading_deg: float = 0.0
    scale: float = 1.0
    tilt_deg: float = 0.0
    tilt_azimuth_deg: float = 0.0
    offset_m: tuple[float, float] = (0.0, 0.0)
    brightness: float = 0.0  # additive, in [-1, 1] of full range
    contrast: float = 1.0
    saturation: float = 1.0
    gamma: float = 1.0
    channel_gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # season-like colour cast
    blur_sigma: float = 0.0  # pixels
    noise_sigma: float = 0.0  # grey levels
    noise_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able representation."""
        return asdict(self)


def neutral_params() -> ViewParams:
    """North-up, nadir, base GSD, no photometric change: the geometry of a map tile."""
    return ViewParams()


@dataclass
class SyntheticView:
    """One rendered view and its truth."""

    image: UInt8Array  # (H, W, 3) RGB
    lon: float  # ground under the view's centre
    lat: float
    heading_deg: float
    gsd_m: float  # at the centre
    homography: FloatArray  # 3x3, view pixel (x, y, 1) -> raster pixel (col, row, 1), cv2 centres
    valid_fraction: float  # share of view pixels that fell inside the raster's valid data
    params: ViewParams = field(default_factory=ViewParams)

    @property
    def center_px(self) -> tuple[float, float]:
        """The view's centre in pixel coordinates (x, y), pixel centres at integers."""
        h, w = self.image.shape[:2]
        return ((w - 1) / 2.0, (h - 1) / 2.0)

    def view_to_raster(self, x: float, y: float) -> tuple[float, float]:
        """Map a view pixel (x, y) to the raster's pixel grid (col, row), centres at integers."""
        p = self.homography @ np.array([x, y, 1.0])
        return float(p[0] / p[2]), float(p[1] / p[2])


@dataclass(frozen=True)
class ParamRanges:
    """Ranges the random views are drawn from (the training/eval protocol)."""

    heading_deg: tuple[float, float] = (0.0, 360.0)
    scale: tuple[float, float] = (0.7, 1.4)
    max_tilt_deg: float = 30.0
    max_offset_frac: float = 0.25  # of the view's ground size
    brightness: float = 0.12
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.6, 1.3)
    gamma: tuple[float, float] = (0.8, 1.25)
    channel_gain: float = 0.12
    max_blur_sigma: float = 1.5
    max_noise_sigma: float = 6.0


class ViewSynthesizer:
    """Renders synthetic drone views of one raster.

    The raster (first three bands, or band 1 as grey) is read into memory once by
    :func:`tiling.mosaic.read_mosaic`, as uint8: other dtypes get the tiler's stretch, with the
    limits the tiler computes for that raster, so views show the pixels the raster's tiles are
    searched with. ``gsd_m`` is the base ground sample distance of the views (default: the
    raster's native GSD); ``size`` the side of the square view in pixels.

    Memory is bounded: when no view will be finer than ``finest_gsd_m``, the raster is read
    decimated (area average) to at most that GSD, and in any case to at most ``max_pixels``
    pixels (coarser than needed, with a warning), so a large drone orthomosaic does not have to
    fit in memory at full resolution.
    """

    def __init__(
        self,
        raster_path: str | Path | Sequence[str | Path],
        *,
        size: int = 224,
        gsd_m: float | None = None,
        ranges: ParamRanges | None = None,
        finest_gsd_m: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        paths = (
            [Path(raster_path)]
            if isinstance(raster_path, str | Path)
            else list(map(Path, raster_path))
        )
        if not paths:
            raise SyntheticError("no raster given")
        self.paths = paths
        self.path = paths[0]
        self.size = int(size)
        self.ranges = ranges or ParamRanges()
        if self.size < 8:
            raise SyntheticError(f"view size must be >= 8 px, got {size}", path=str(self.path))
        try:
            mosaic = read_mosaic(paths, finest_gsd_m, max_pixels)
        except TilingError as exc:
            raise SyntheticError(exc.problem, path=exc.path) from exc
        self.transform = mosaic.transform
        self.crs = to_pyproj(mosaic.crs_wkt)
        self._crs_key = mosaic.crs_wkt
        self.pixels: UInt8Array = np.ascontiguousarray(np.transpose(mosaic.data, (1, 2, 0)))
        self.valid = mosaic.mask.astype(np.uint8)
        self.height, self.width = self.pixels.shape[:2]
        self.native_gsd_m = self._pixel_size_m(self.width / 2.0, self.height / 2.0)
        self.gsd_m = float(gsd_m) if gsd_m else float(np.mean(self.native_gsd_m))

    # -- geography -----------------------------------------------------------------------------
    def lonlat_to_px(self, lon: float, lat: float) -> tuple[float, float]:
        """lon/lat -> raster pixel (col, row), cv2 convention (pixel centres at integers)."""
        x, y = from_lonlat(self._crs_key, float(lon), float(lat))
        col, row = ~self.transform @ (x, y)
        return float(col) - 0.5, float(row) - 0.5

    def px_to_lonlat(self, col: float, row: float) -> tuple[float, float]:
        """Raster pixel (col, row), cv2 convention -> lon/lat."""
        x, y = self.transform @ (col + 0.5, row + 0.5)
        lon, lat = to_lonlat(self._crs_key, float(x), float(y))
        return float(lon), float(lat)

    def _pixel_size_m(self, col: float, row: float) -> tuple[float, float]:
        """Ground size in metres of one pixel step in x and y at a pixel position."""
        lon0, lat0 = self.px_to_lonlat(col, row)
        lon1, lat1 = self.px_to_lonlat(col + 1.0, row)
        lon2, lat2 = self.px_to_lonlat(col, row + 1.0)
        dx = geodesic_distance_m(lon0, lat0, lon1, lat1)
        dy = geodesic_distance_m(lon0, lat0, lon2, lat2)
        return float(dx), float(dy)

    @property
    def bounds_px(self) -> tuple[float, float, float, float]:
        """(min col, min row, max col, max row) of pixel centres."""
        return (0.0, 0.0, float(self.width - 1), float(self.height - 1))

    # -- parameters ------------------------------------------------------------------------------
    def sample_params(self, rng: np.random.Generator) -> ViewParams:
        """Draw random view parameters from :attr:`ranges`."""
        r = self.ranges
        tilt = float(r.max_tilt_deg * math.sqrt(rng.uniform(0.0, 1.0)))
        off = r.max_offset_frac * self.size * self.gsd_m
        g = r.channel_gain
        return ViewParams(
            heading_deg=float(rng.uniform(*r.heading_deg)),
            scale=float(math.exp(rng.uniform(math.log(r.scale[0]), math.log(r.scale[1])))),
            tilt_deg=tilt,
            tilt_azimuth_deg=float(rng.uniform(0.0, 360.0)),
            offset_m=(float(rng.uniform(-off, off)), float(rng.uniform(-off, off))),
            brightness=float(rng.uniform(-r.brightness, r.brightness)),
            contrast=float(rng.uniform(*r.contrast)),
            saturation=float(rng.uniform(*r.saturation)),
            gamma=float(rng.uniform(*r.gamma)),
            channel_gains=(
                float(rng.uniform(1 - g, 1 + g)),
                float(rng.uniform(1 - g, 1 + g)),
                float(rng.uniform(1 - g, 1 + g)),
            ),
            blur_sigma=float(rng.uniform(0.0, r.max_blur_sigma)),
            noise_sigma=float(rng.uniform(0.0, r.max_noise_sigma)),
            noise_seed=int(rng.integers(0, 2**31 - 1)),
        )

    # -- geometry --------------------------------------------------------------------------------
    def homography(
        self, center_px: tuple[float, float], params: ViewParams, size: int | None = None
    ) -> tuple[FloatArray, float]:
        """Homography view px -> raster px for a view centred on raster pixel ``center_px``.

        Returns the homography and the GSD at the view's centre (metres).
        """
        s = int(size or self.size)
        gsd = self.gsd_m / params.scale
        gx, gy = self._pixel_size_m(*center_px)
        cc, rc = center_px
        # raster px -> local ground metres (east, north) around the centre
        a = np.array([[gx, 0.0, -gx * cc], [0.0, -gy, gy * rc], [0.0, 0.0, 1.0]])
        psi = math.radians(params.heading_deg)
        # camera axes in world (east, north, up), nadir: x right, y down, z forward
        x_ax = np.array([math.cos(psi), -math.sin(psi), 0.0])
        y_ax = np.array([-math.sin(psi), -math.cos(psi), 0.0])
        z_ax = np.array([0.0, 0.0, -1.0])
        r_nadir = np.stack([x_ax, y_ax, z_ax], axis=1)  # columns: camera axes in world
        t = math.radians(params.tilt_deg)
        az = math.radians(params.tilt_azimuth_deg)
        # tilt: rotate the camera about an axis in its image plane, perpendicular to the azimuth
        axis_cam = np.array([math.cos(az), math.sin(az), 0.0])
        r_tilt = _axis_angle(axis_cam, t)
        r_cam = r_nadir @ r_tilt
        f = 1000.0  # focal length in px; the distance is chosen so that GSD at the centre = gsd
        dist = gsd * f
        cam_pos = -dist * r_cam[:, 2]  # the optical axis passes through the ground origin
        if cam_pos[2] <= 0:
            raise SyntheticError(f"tilt {params.tilt_deg} deg puts the camera below the ground")
        k = np.array([[f, 0.0, (s - 1) / 2.0], [0.0, f, (s - 1) / 2.0], [0.0, 0.0, 1.0]])
        rt = r_cam.T
        h_ground_to_view = k @ np.stack([rt[:, 0], rt[:, 1], -rt @ cam_pos], axis=1)
        w = h_ground_to_view @ a  # raster px -> view px
        return np.linalg.inv(w) / np.linalg.inv(w)[2, 2], gsd

    def render(
        self, lon: float, lat: float, params: ViewParams | None = None, *, size: int | None = None
    ) -> SyntheticView:
        """Render the view whose centre, before ``params.offset_m``, is on (lon, lat)."""
        import cv2

        p = params or neutral_params()
        s = int(size or self.size)
        col, row = self.lonlat_to_px(lon, lat)
        gx, gy = self._pixel_size_m(col, row)
        col += p.offset_m[0] / gx
        row -= p.offset_m[1] / gy
        if not (0 <= col <= self.width - 1 and 0 <= row <= self.height - 1):
            raise SyntheticError(
                f"view centre ({lon:.6f}, {lat:.6f}) + offset is outside the raster",
                path=str(self.path),
            )
        h_v2r, gsd = self.homography((col, row), p, s)
        corners = np.array([[0, 0, 1], [s - 1, 0, 1], [s - 1, s - 1, 1], [0, s - 1, 1]], float)
        cr = (h_v2r @ corners.T).T
        cr = cr[:, :2] / cr[:, 2:3]
        c0 = int(max(math.floor(cr[:, 0].min()) - 2, 0))
        r0 = int(max(math.floor(cr[:, 1].min()) - 2, 0))
        c1 = int(min(math.ceil(cr[:, 0].max()) + 3, self.width))
        r1 = int(min(math.ceil(cr[:, 1].max()) + 3, self.height))
        if c1 <= c0 or r1 <= r0:
            raise SyntheticError("view falls outside the raster", path=str(self.path))
        shift = np.array([[1.0, 0.0, -c0], [0.0, 1.0, -r0], [0.0, 0.0, 1.0]])
        w = shift @ h_v2r  # view px -> window px
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        src: UInt8Array = self.pixels[r0:r1, c0:c1]
        down = gsd / float(np.mean((gx, gy)))
        if down > 1.3:  # downsampling: low-pass the source first, or the view aliases
            src = np.asarray(
                cv2.GaussianBlur(src, (0, 0), sigmaX=0.5 * math.sqrt(down * down - 1.0)), np.uint8
            )
        img = np.asarray(
            cv2.warpPerspective(src, w, (s, s), flags=flags, borderMode=cv2.BORDER_CONSTANT),
            np.uint8,
        )
        valid = cv2.warpPerspective(
            self.valid[r0:r1, c0:c1], w, (s, s), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
        )
        img = _photometric(img, p)
        vlon, vlat = self.px_to_lonlat(col, row)
        return SyntheticView(
            image=img,
            lon=vlon,
            lat=vlat,
            heading_deg=p.heading_deg % 360.0,
            gsd_m=gsd,
            homography=h_v2r,
            valid_fraction=float(valid.mean()),
            params=p,
        )

    def random_view(
        self,
        lon: float,
        lat: float,
        rng: np.random.Generator,
        *,
        size: int | None = None,
        min_valid: float = 0.98,
        max_tries: int = 20,
    ) -> SyntheticView:
        """A random view around (lon, lat) whose pixels are at least ``min_valid`` inside the data.

        Draws new parameters (and, if needed, smaller offsets/tilts) until the view fits.
        """
        last: SyntheticView | None = None
        for i in range(max_tries):
            p = self.sample_params(rng)
            if i >= max_tries // 2:  # shrink the geometry towards a nadir centred view
                k = 1.0 - (i - max_tries // 2) / (max_tries - max_tries // 2)
                p = replace(
                    p,
                    tilt_deg=p.tilt_deg * k,
                    offset_m=(p.offset_m[0] * k, p.offset_m[1] * k),
                    scale=max(p.scale, 1.0),
                )
            try:
                v = self.render(lon, lat, p, size=size)
            except SyntheticError:
                continue
            if v.valid_fraction >= min_valid:
                return v
            last = v
        if last is None:
            raise SyntheticError(
                f"no view around ({lon:.6f}, {lat:.6f}) fits in the raster", path=str(self.path)
            )
        return last

    def valid_centres(self, radius_m: float, step_m: float | None = None) -> FloatArray:
        """Raster pixel centres (col, row), on a grid of ``step_m``, whose disc of ``radius_m``
        lies entirely on valid data: the places a view can be centred without empty borders."""
        import cv2

        gx, gy = self.native_gsd_m
        step = step_m if step_m is not None else max(radius_m / 8.0, min(gx, gy))
        f = max(1, int(step / min(gx, gy)))
        small = self.valid[::f, ::f].astype(np.uint8)
        r = int(math.ceil(radius_m / (f * min(gx, gy))))
        # pad with zeros so the raster's edge also counts as invalid
        padded = cv2.copyMakeBorder(small, r, r, r, r, cv2.BORDER_CONSTANT, value=0)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        eroded = cv2.erode(padded, kernel)[r : -r or None, r : -r or None]
        rows, cols = np.nonzero(eroded)
        return np.stack([cols * f, rows * f], axis=1).astype(np.float64)

    def random_point(
        self, rng: np.random.Generator, margin_m: float | None = None
    ) -> tuple[float, float]:
        """A random lon/lat at least ``margin_m`` (default: ~half a diagonal) from the edges."""
        m = margin_m if margin_m is not None else 0.75 * self.size * self.gsd_m
        mc = m / self.native_gsd_m[0]
        mr = m / self.native_gsd_m[1]
        if 2 * mc >= self.width or 2 * mr >= self.height:
            raise SyntheticError(
                f"raster is too small for {margin_m} m margins", path=str(self.path)
            )
        col = rng.uniform(mc, self.width - 1 - mc)
        row = rng.uniform(mr, self.height - 1 - mr)
        return self.px_to_lonlat(col, row)


def _axis_angle(axis: FloatArray, angle: float) -> FloatArray:
    """Rotation matrix (Rodrigues)."""
    ax = axis / np.linalg.norm(axis)
    kx = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def _photometric(img: UInt8Array, p: ViewParams) -> UInt8Array:
    """Colour, brightness, contrast, saturation, gamma, season cast, blur and noise."""
    import cv2

    x = img.astype(np.float32) / 255.0
    if p.blur_sigma > 0.05:
        x = np.asarray(cv2.GaussianBlur(x, (0, 0), sigmaX=p.blur_sigma), np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * p.saturation
    x = x * np.asarray(p.channel_gains, dtype=np.float32)
    mean = float(x.mean())
    x = (x - mean) * p.contrast + mean + p.brightness
    x = np.clip(x, 0.0, 1.0) ** (1.0 / p.gamma)
    x = x * 255.0
    if p.noise_sigma > 0.05:
        noise = np.random.default_rng(p.noise_seed).normal(0.0, p.noise_sigma, size=x.shape)
        x = x + noise.astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
