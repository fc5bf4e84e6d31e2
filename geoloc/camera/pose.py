"""The camera's own pose from frame <-> map correspondences: where the drone is, not the ground.

Input: pixels of the frame and the ground points they show, in the map's CRS, with the camera's
intrinsics. Without a DEM the ground is the plane z = 0; with a DEM every ground point gets its
terrain height. Either way the solver is a PnP: a minimal three-point solver (AP3P) inside RANSAC,
then a Levenberg-Marquardt refinement on the inliers, re-selected once with the refined pose.
(OpenCV's planar IPPE inside RANSAC keeps only a few inliers of exact planar data, so the minimal
solver is the general one.) A solution is rejected, with its reason, when it is not physical:
ground points behind the camera, the camera under the ground, or at a height no drone flies.

The world frame is a metric CRS taken as east-north-up: the map's own CRS when it is in metres at
true scale (UTM and the like), else the local UTM zone. Headings are reported from true north
(the grid convergence of the CRS is taken out).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoloc.camera.attitude import angles_from_rotation, camera_to_world, grid_convergence_deg
from geoloc.camera.dem import Dem
from geoloc.camera.intrinsics import Camera

__all__ = [
    "CameraPose",
    "PoseConfig",
    "PoseResult",
    "correspondences_from_homography",
    "metric_crs",
    "physical_reason",
    "solve_pose",
]


def metric_crs(crs: Any, lon: float, lat: float) -> str:
    """``crs`` when its units are metres at true scale near (lon, lat) (within 0.5 %), else UTM.

    Web Mercator (scale 1 / cos(lat)) and geographic CRSs are replaced by the local UTM zone, so
    heights and ground distances share one unit.
    """
    from tiling.crs import (
        crs_string,
        from_lonlat,
        geodesic_distance_m,
        local_utm_crs,
        to_lonlat,
        to_pyproj,
    )

    c = to_pyproj(crs)
    if c.is_projected:
        x, y = from_lonlat(crs, lon, lat)
        lon2, lat2 = to_lonlat(crs, float(x) + 100.0, float(y))
        lon3, lat3 = to_lonlat(crs, float(x), float(y) + 100.0)
        sx = geodesic_distance_m(lon, lat, lon2, lat2) / 100.0
        sy = geodesic_distance_m(lon, lat, lon3, lat3) / 100.0
        if abs(sx - 1.0) < 0.005 and abs(sy - 1.0) < 0.005:
            return crs_string(crs)
    return local_utm_crs(lon, lat)


@dataclass
class CameraPose:
    """A camera's position (x, y, z) in a metric CRS and its rotation (camera -> world grid axes).

    ``z`` is in the ground's vertical datum: above the ground plane (z = 0) without a DEM, in the
    DEM's datum with one.
    """

    x: float
    y: float
    z: float
    r_wc: np.ndarray
    crs: str

    @classmethod
    def from_angles(
        cls,
        x: float,
        y: float,
        z: float,
        heading_deg: float,
        pitch_deg: float,
        roll_deg: float,
        crs: Any,
    ) -> CameraPose:
        """A pose from true-north heading, pitch and roll (:mod:`geoloc.camera.attitude`)."""
        from tiling.crs import crs_string

        conv = grid_convergence_deg(crs, x, y)
        r = camera_to_world(heading_deg - conv, pitch_deg, roll_deg)
        return cls(float(x), float(y), float(z), r, crs_string(crs))

    @property
    def centre(self) -> np.ndarray:
        """(x, y, z) as an array."""
        return np.array([self.x, self.y, self.z])

    def angles(self) -> tuple[float, float, float]:
        """(heading from true north, pitch, roll) in degrees."""
        h, p, r = angles_from_rotation(self.r_wc)
        return (h + grid_convergence_deg(self.crs, self.x, self.y)) % 360.0, p, r

    def lonlat(self) -> tuple[float, float]:
        """The camera's (lon, lat)."""
        from tiling.crs import to_lonlat

        lon, lat = to_lonlat(self.crs, self.x, self.y)
        return float(lon), float(lat)

    def project(self, camera: Camera, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> (pixels (N, 2) with the lens distortion, depths (N,))."""
        p = np.asarray(xyz, dtype=np.float64).reshape(-1, 3) - self.centre
        pc = p @ self.r_wc  # rows: camera-frame coordinates (R_cw p = R_wc^T p)
        depth = pc[:, 2].copy()
        import cv2

        if len(pc) == 0:
            return np.zeros((0, 2)), depth
        px, _ = cv2.projectPoints(pc[:, None, :], np.zeros(3), np.zeros(3), camera.K, camera.dist)
        return np.asarray(px, dtype=np.float64).reshape(-1, 2), depth

    def rays(self, camera: Camera, pixels: np.ndarray) -> np.ndarray:
        """World directions (N, 3) of the rays through (distorted) pixels."""
        und = camera.undistort_points(pixels)
        d = np.column_stack([und, np.ones(len(und))]) @ np.linalg.inv(camera.K).T
        return np.asarray(d @ self.r_wc.T, dtype=np.float64)


@dataclass(frozen=True)
class PoseConfig:
    """Solver settings (the pose stage's ``default_conf``)."""

    ransac_px: float = 3.0
    ransac_iterations: int = 2000
    min_inliers: int = 8
    min_height_m: float = 1.0
    max_height_m: float = 5000.0
    #: keypoints are located to about this (px): the floor of the residual scale of the error
    pixel_sigma_px: float = 0.5
    #: the error estimate is this many standard deviations (2 ~ 95 % in 1-D)
    error_sigmas: float = 2.0


@dataclass
class PoseResult:
    """A solved (``ok``) or rejected camera pose, with the ground point under the frame centre."""

    ok: bool
    reason: str
    pose: CameraPose | None = None
    inliers: int = 0
    n_points: int = 0
    rmse_px: float | None = None
    lon: float | None = None
    lat: float | None = None
    alt_agl_m: float | None = None
    alt_msl_m: float | None = None
    heading_deg: float | None = None
    pitch_deg: float | None = None
    roll_deg: float | None = None
    error_m_est: float | None = None
    altitude_error_m_est: float | None = None
    ground_xy: tuple[float, float] | None = None
    ground_lon: float | None = None
    ground_lat: float | None = None
    ground_error_m_est: float | None = None
    inlier_mask: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def as_answer(self) -> dict[str, Any] | None:
        """The answer's ``camera`` field, or None when rejected."""
        if not self.ok:
            return None
        return {
            "lat": self.lat,
            "lon": self.lon,
            "alt_agl_m": self.alt_agl_m,
            "alt_msl_m": self.alt_msl_m,
            "heading_deg": self.heading_deg,
            "pitch_deg": self.pitch_deg,
            "roll_deg": self.roll_deg,
            "error_m_est": self.error_m_est,
        }


def physical_reason(
    centre: np.ndarray,
    depths: np.ndarray,
    ground_under_camera: float,
    cfg: PoseConfig,
) -> str | None:
    """Why a pose cannot be real (None when it can): behind, under the ground, absurd height."""
    if depths.size and float(np.min(depths)) <= 0.0:
        n = int((depths <= 0).sum())
        return f"{n} matched ground point(s) behind the camera"
    agl = float(centre[2] - ground_under_camera)
    if agl <= 0.0:
        return f"camera {-agl:.1f} m below the ground"
    if agl < cfg.min_height_m:
        return f"camera {agl:.2f} m above the ground (< {cfg.min_height_m:g} m)"
    if agl > cfg.max_height_m:
        return f"camera {agl:.0f} m above the ground (> {cfg.max_height_m:g} m)"
    return None


def correspondences_from_homography(
    h_frame_to_map: np.ndarray, width: int, height: int, n: int = 7, margin: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """An ``n`` x ``n`` grid of frame pixels and their map points through a homography.

    For a stage that only keeps the verified homography (frame pixels -> map CRS x, y): over flat
    ground that homography holds the whole pose, and these points carry it to :func:`solve_pose`.
    """
    u = np.linspace(margin * (width - 1), (1 - margin) * (width - 1), n)
    v = np.linspace(margin * (height - 1), (1 - margin) * (height - 1), n)
    uu, vv = np.meshgrid(u, v)
    px = np.column_stack([uu.ravel(), vv.ravel()])
    hom = np.column_stack([px, np.ones(len(px))]) @ np.asarray(h_frame_to_map, dtype=float).T
    return px, hom[:, :2] / hom[:, 2:3]


def _pose_from_rt(rvec: np.ndarray, tvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    r_cw, _ = cv2.Rodrigues(rvec)
    return -r_cw.T @ tvec.reshape(3), r_cw.T


def _ground_hit(
    c: np.ndarray, d: np.ndarray, height_at: Callable[[float, float], float] | None, z_plane: float
) -> np.ndarray | None:
    """Where the ray c + s d (s > 0) meets the ground: the plane, or the DEM by fixed point."""
    if d[2] >= -1e-9:
        return None
    z = z_plane
    p = c + (z - c[2]) / d[2] * d
    if height_at is None:
        return p
    for _ in range(20):
        zn = height_at(float(p[0]), float(p[1]))
        if not math.isfinite(zn):
            break
        p_new = c + (zn - c[2]) / d[2] * d
        if np.linalg.norm(p_new - p) < 1e-3:
            return p_new
        p = p_new
    return p


def _best_start(
    obj: np.ndarray, img: np.ndarray, k: np.ndarray, rvec: np.ndarray, tvec: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The best of RANSAC's pose and global solvers on its inliers, each refined (LM).

    RANSAC's final fit on many near-planar inliers can land far from the optimum (seen at near
    nadir views); SQPnP and, for points on a plane, IPPE give other starts.
    """
    import cv2

    starts = [(rvec, tvec)]
    methods = [cv2.SOLVEPNP_SQPNP]
    if float(np.ptp(obj[:, 2])) < 1e-6:
        methods.append(cv2.SOLVEPNP_IPPE)
    for m in methods:
        try:
            ok, rv, tv = cv2.solvePnP(obj[:, None, :], img[:, None, :], k, None, flags=m)
        except cv2.error:
            continue
        if ok:
            starts.append((rv, tv))
    best, best_err = (rvec, tvec), math.inf
    for rv, tv in starts:
        rv, tv = cv2.solvePnPRefineLM(obj[:, None, :], img[:, None, :], k, None, rv, tv)
        proj, _ = cv2.projectPoints(obj[:, None, :], rv, tv, k, None)
        err = float(np.median(np.linalg.norm(proj.reshape(-1, 2) - img, axis=1)))
        if err < best_err:
            best, best_err = (rv, tv), err
    return best


def solve_pose(
    pixels: np.ndarray,
    ground_xy: np.ndarray,
    crs: Any,
    camera: Camera,
    *,
    frame_size: tuple[int, int] | None = None,
    dem: Dem | None = None,
    config: PoseConfig | None = None,
) -> PoseResult:
    """Solve the camera pose from frame pixels (N, 2) and the ground points (N, 2) in ``crs``.

    ``pixels`` are in the frame as it was captured (with its lens distortion; ``camera`` describes
    it, fitted to ``frame_size`` (width, height) when given). With ``dem``, ground heights come
    from it and ``alt_msl_m`` is set. Never raises on bad geometry: the result says why it is
    rejected.
    """
    import cv2

    from tiling.crs import crs_string, from_lonlat, to_lonlat

    cfg = config or PoseConfig()
    cam = camera.fitted_to(*frame_size) if frame_size else camera
    px = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    g = np.asarray(ground_xy, dtype=np.float64).reshape(-1, 2)
    res = PoseResult(ok=False, reason="", n_points=len(px))
    if len(px) != len(g):
        raise ValueError(f"{len(px)} pixels but {len(g)} ground points")
    finite = np.isfinite(px).all(axis=1) & np.isfinite(g).all(axis=1)
    px, g = px[finite], g[finite]
    index = np.flatnonzero(finite)  # back to the caller's points
    need = max(cfg.min_inliers, 6)
    if len(px) < need:
        res.reason = f"{len(px)} correspondences < {need}"
        return res

    # one metric world frame, centred for conditioning
    lon_c, lat_c = to_lonlat(crs, float(np.median(g[:, 0])), float(np.median(g[:, 1])))
    wcrs = metric_crs(crs, float(lon_c), float(lat_c))
    if wcrs != crs_string(crs):
        lon, lat = to_lonlat(crs, g[:, 0], g[:, 1])
        gx, gy = from_lonlat(wcrs, np.asarray(lon), np.asarray(lat))
        g = np.column_stack([gx, gy])
    origin = np.median(g, axis=0)
    z = np.zeros(len(g))
    height_at: Callable[[float, float], float] | None = None
    z0 = 0.0
    if dem is not None:
        z = dem.heights(g[:, 0], g[:, 1], wcrs)
        keep = np.isfinite(z)
        if keep.sum() < need:
            res.reason = f"only {int(keep.sum())} matched points on the DEM's data"
            return res
        if not keep.all():
            res.notes.append(f"{int((~keep).sum())} points off the DEM dropped")
        px, g, z, index = px[keep], g[keep], z[keep], index[keep]
        z0 = float(np.median(z))

        def height_at(x: float, y: float) -> float:
            return (
                float(dem.heights(np.array([x + origin[0]]), np.array([y + origin[1]]), wcrs)[0])
                - z0
            )

    obj = np.column_stack([g - origin, z - z0])
    und = cam.undistort_points(px)
    k = cam.K

    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            obj[:, None, :],
            und[:, None, :],
            k,
            None,
            iterationsCount=cfg.ransac_iterations,
            reprojectionError=cfg.ransac_px,
            confidence=0.999,
            flags=cv2.SOLVEPNP_AP3P,
        )
    except cv2.error as exc:
        res.reason = f"PnP failed ({' '.join(str(exc).split())[:80]})"
        return res
    if not ok or inl is None or len(inl) < need:
        res.reason = f"{0 if inl is None else len(inl)} PnP inliers < {need}"
        return res
    mask = np.zeros(len(obj), dtype=bool)
    mask[inl.ravel()] = True
    rvec, tvec = _best_start(obj[mask], und[mask], k, rvec, tvec)
    for _ in range(2):  # refine, re-select the inliers with the refined pose, refine again
        rvec, tvec = cv2.solvePnPRefineLM(
            obj[mask][:, None, :], und[mask][:, None, :], k, None, rvec, tvec
        )
        proj, _ = cv2.projectPoints(obj[:, None, :], rvec, tvec, k, None)
        err = np.linalg.norm(proj.reshape(-1, 2) - und, axis=1)
        new = err < cfg.ransac_px
        if new.sum() < need:
            break
        mask = new
    c_loc, r_wc = _pose_from_rt(rvec, tvec)
    depths = (obj[mask] - c_loc) @ r_wc[:, 2]
    res.inliers = int(mask.sum())
    res.inlier_mask = np.zeros(res.n_points, dtype=bool)
    res.inlier_mask[index[mask]] = True
    proj, jac = cv2.projectPoints(obj[mask][:, None, :], rvec, tvec, k, None)
    resid = (proj.reshape(-1, 2) - und[mask]).ravel()
    res.rmse_px = float(np.sqrt(np.mean(resid.reshape(-1, 2) ** 2) * 2.0))
    if res.inliers < need:
        res.reason = f"{res.inliers} inliers < {need}"
        return res

    # the ground under the camera: the DEM there, else the plane of the inliers
    a = np.column_stack([obj[mask][:, 0], obj[mask][:, 1], np.ones(res.inliers)])
    coef, *_ = np.linalg.lstsq(a, obj[mask][:, 2], rcond=None)
    ground_below = float(coef[0] * c_loc[0] + coef[1] * c_loc[1] + coef[2])
    if height_at is not None:
        h_dem = height_at(float(c_loc[0]), float(c_loc[1]))
        if math.isfinite(h_dem):
            ground_below = h_dem
        else:
            res.notes.append(
                "camera outside the DEM: ground under it from the matched points' plane"
            )
    why = physical_reason(c_loc, depths, ground_below, cfg)
    if why is not None:
        res.reason = why
        return res
    if res.rmse_px > 2.0 * cfg.ransac_px:
        res.reason = f"reprojection RMSE {res.rmse_px:.1f} px > {2 * cfg.ransac_px:g}"
        return res

    centre = np.array([c_loc[0] + origin[0], c_loc[1] + origin[1], c_loc[2] + z0])
    pose = CameraPose(float(centre[0]), float(centre[1]), float(centre[2]), r_wc, wcrs)
    res.pose = pose
    res.heading_deg, res.pitch_deg, res.roll_deg = pose.angles()
    res.lon, res.lat = pose.lonlat()
    res.alt_agl_m = float(c_loc[2] - ground_below)
    res.alt_msl_m = float(centre[2]) if dem is not None else None

    # the ground point under the frame centre
    w, h = cam.width, cam.height
    centre_px = cam.undistort_points(np.array([[(w - 1) / 2.0, (h - 1) / 2.0]]))[0]

    def ground_of(rv: np.ndarray, tv: np.ndarray) -> np.ndarray | None:
        c_l, r = _pose_from_rt(rv, tv)
        d = r @ (np.linalg.inv(k) @ np.array([centre_px[0], centre_px[1], 1.0]))
        z_plane = float(coef[0] * c_l[0] + coef[1] * c_l[1] + coef[2])
        return _ground_hit(c_l, d, height_at, z_plane)

    hit = ground_of(rvec, tvec)
    if hit is None:
        res.notes.append("the frame centre looks above the horizon: no ground point")
    else:
        gx_w, gy_w = float(hit[0] + origin[0]), float(hit[1] + origin[1])
        res.ground_xy = (gx_w, gy_w)
        glon, glat = to_lonlat(wcrs, gx_w, gy_w)
        res.ground_lon, res.ground_lat = float(glon), float(glat)

    # error estimates: the pose covariance from the residuals, carried to position and ground
    dof = max(1, resid.size - 6)
    sigma2 = max(float(resid @ resid) / dof, cfg.pixel_sigma_px**2)
    jp = jac[:, :6]
    try:
        cov = sigma2 * np.linalg.inv(jp.T @ jp)
    except np.linalg.LinAlgError:
        cov = np.full((6, 6), np.inf)
    params = np.concatenate([rvec.ravel(), tvec.ravel()])

    def numeric_jac(
        fn: Callable[[np.ndarray], np.ndarray | None], out_dim: int
    ) -> np.ndarray | None:
        base = fn(params)
        if base is None:
            return None
        jm = np.zeros((out_dim, 6))
        for i in range(6):
            step = 1e-6 if i < 3 else 1e-4
            p2 = params.copy()
            p2[i] += step
            v = fn(p2)
            if v is None:
                return None
            jm[:, i] = (v - base) / step
        return jm

    jc = numeric_jac(lambda p: _pose_from_rt(p[:3], p[3:])[0], 3)
    if jc is not None:
        cc = jc @ cov @ jc.T
        res.error_m_est = float(cfg.error_sigmas * math.sqrt(max(0.0, cc[0, 0] + cc[1, 1])))
        res.altitude_error_m_est = float(cfg.error_sigmas * math.sqrt(max(0.0, cc[2, 2])))
    if hit is not None:

        def ground_fn(p: np.ndarray) -> np.ndarray | None:
            v = ground_of(p[:3], p[3:])
            return None if v is None else v[:2]

        jg = numeric_jac(ground_fn, 2)
        if jg is not None:
            cg = jg @ cov @ jg.T
            res.ground_error_m_est = float(
                cfg.error_sigmas * math.sqrt(max(0.0, cg[0, 0] + cg[1, 1]))
            )
    res.ok, res.reason = True, "ok"
    return res
