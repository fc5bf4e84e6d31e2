"""Camera pose from oblique frames: rendered views of real imagery, real feature matches, PnP.

Each view is rendered with a pinhole camera from the Turku mosaic (``../shared/data/turku``; the
bundled sample when it is absent) at a random pose: heading 0-360, tilt 0-45 deg from the nadir,
60-150 m above the ground, known K. The frame then goes the way the camera-aware localizer takes
it (:func:`match_view`): the "XMP" pitch/roll (truth + 1 deg noise) rectify it to nadir, the
"RelativeAltitude" (truth + 5 %) brings it to the map's GSD, the "XMP" heading (truth + 3 deg)
turns it north-up, a matcher (OpenCV SIFT, or XFeat + LighterGlue, both from
``geoloc.localize.verify``, used read-only) matches it against the map region around a point up to
``offset_m`` from the truth (what recall would hand over), a MAGSAC homography keeps the inliers
(15 at least, as the verifier asks), and :func:`geoloc.camera.pose_from_matches` solves the pose
from those matches carried back to the captured frame's pixels. ``today`` is what geoloc answers
without a camera model, for comparison (:func:`today_ground`: the project's verifier on the frame
at the nadir scale, turned north-up).

Reported: camera position error (horizontal and 3-D), altitude error (% of the true height),
heading / pitch error, ground point under the frame centre, share of views solved. Writes
``benchmarks/results/camera.json``.

Usage: ``python -m benchmarks.camera [--n 40] [--matcher sift|xfeat-lighterglue] [--map-gsd 0.25]``

``--e2e`` instead runs the full chain (:func:`run_e2e`): the bundled sample is ingested into an
embedded database, each rendered view is written as a JPEG with its camera file and located by
:meth:`geoloc.localize.Localizer.locate` with the camera, pitch and altitude known, once with the
heading known and once with the 8-heading sweep (same process, same views: the latency of both).
Each located view's pose is also solved again from the same match without the refinement at
frame resolution (``*_unrefined``: the before/after of the refinement within one run).
Each view also has a nadir twin (straight down from the same height over the same centre ground
point, same heading) located as today's chain takes a nadir frame: no camera model, its GSD known,
the heading swept; the located shares of both are compared within the run.
Writes ``benchmarks/results/camera_e2e.json`` (``camera_e2e_n{N}.json`` for another ``--n``).

``--real-e2e`` runs the 8 real brighton photos through the whole chain (:func:`run_real_e2e`):
the camera from their EXIF, their ``gsd_m`` known, heading swept and known. Writes
``benchmarks/results/camera_real_e2e.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TURKU = ROOT.parent / "shared" / "data" / "turku" / "turku_mosaic_utm34n.tif"
BRIGHTON = ROOT.parent / "shared" / "data" / "brighton_beach"
SAMPLE = ROOT / "data" / "sample" / "turku_utm34n_0.28m.tif"


def _matcher(name: str) -> Any:
    from geoloc.localize.verify import SiftMatcher, XFeatLighterGlueMatcher

    if name == "sift":
        return SiftMatcher(max_keypoints=4000)
    if name == "xfeat-lighterglue":
        return XFeatLighterGlueMatcher(max_keypoints=2048)
    raise SystemExit(f"unknown matcher {name!r}")


def _match(
    matcher: Any,
    frame: np.ndarray,
    frame_mask: np.ndarray,
    region: np.ndarray,
    region_mask: np.ndarray,
    ransac_px: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Inlier matches (frame xy, region xy) of the matcher + a MAGSAC homography, and H."""
    import cv2

    f0 = matcher.extract(frame, frame_mask)
    f1 = matcher.extract(region, region_mask)
    i0, i1 = matcher.match(f0, f1)
    if i0.size < 8:
        return np.zeros((0, 2)), np.zeros((0, 2)), None
    p0 = f0.keypoints[i0].astype(np.float64)
    p1 = f1.keypoints[i1].astype(np.float64)
    h, inl = cv2.findHomography(p0, p1, cv2.USAC_MAGSAC, ransac_px, confidence=0.999, maxIters=5000)
    if h is None or inl is None:
        return np.zeros((0, 2)), np.zeros((0, 2)), None
    keep = inl.ravel().astype(bool)
    return p0[keep], p1[keep], h


def _north_up(
    img: np.ndarray, mask: np.ndarray, heading_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn an image whose top points to ``heading_deg`` north-up on an expanded canvas (as
    ``geoloc.localize.frame.rotate`` does); returns the image, its mask and the 2x3 matrix."""
    import cv2

    h, w = img.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), -heading_deg, 1.0)
    cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
    nw, nh = int(math.ceil(h * sin + w * cos)), int(math.ceil(h * cos + w * sin))
    rot[0, 2] += nw / 2.0 - w / 2.0
    rot[1, 2] += nh / 2.0 - h / 2.0
    out = cv2.warpAffine(img, rot, (nw, nh), flags=cv2.INTER_LINEAR)
    m = cv2.warpAffine(mask.astype(np.uint8), rot, (nw, nh), flags=cv2.INTER_NEAREST) > 0
    return out, m, rot


def match_view(
    view: Any,
    raster: Path,
    matcher: Any,
    rng: np.random.Generator,
    *,
    map_gsd: float = 0.25,
    attitude_noise_deg: float = 1.0,
    heading_noise_deg: float = 3.0,
    altitude_noise: float = 0.05,
    offset_m: float = 20.0,
    min_inliers: int = 15,
) -> dict[str, Any]:
    """Match a rendered view against the map as the camera-aware chain would, and solve the pose.

    Priors are the truth with noise (what a DJI file says); :func:`geoloc.camera.prepare_frame`
    rectifies the frame, the frame goes to the map GSD and north-up with its
    :class:`~geoloc.camera.PixelChain`, the matcher + a MAGSAC homography give the inliers
    (at least ``min_inliers``, as the verifier asks), and :func:`geoloc.camera.pose_from_matches`
    solves the pose. Returns the ``pose`` result (None without enough matches), the number of
    inlier ``matches`` and the homography's ground point of the frame centre (``centre_xy``).
    """
    import cv2

    from geoloc.camera import Prior, Priors, pose_from_matches, prepare_frame
    from tiling import open_raster
    from tiling.crs import from_lonlat, to_lonlat

    heading, pitch, roll = view.pose.angles()
    priors = Priors(
        heading=Prior((heading + float(rng.normal(0.0, heading_noise_deg))) % 360.0, "xmp"),
        pitch=Prior(pitch + float(rng.normal(0.0, attitude_noise_deg)), "xmp"),
        roll=Prior(roll + float(rng.normal(0.0, attitude_noise_deg)), "xmp"),
        altitude=Prior(view.pose.z * (1.0 + float(rng.normal(0.0, altitude_noise))), "xmp"),
    )
    cam = view.camera
    prep = prepare_frame(view.rgb, view.mask, cam, priors)
    assert prep.gsd_m is not None and prep.heading_deg is not None
    f = prep.gsd_m / map_gsd
    size = (max(1, round(prep.rgb.shape[1] * f)), max(1, round(prep.rgb.shape[0] * f)))
    img = cv2.resize(prep.rgb, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    msk = cv2.resize(prep.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    prep.chain.then_scale(f)
    img, msk, rot = _north_up(img, msk, prep.heading_deg)
    prep.chain.then(rot)
    nh, nw = img.shape[:2]

    gx, gy = view.centre_ground()
    ang = float(rng.uniform(0, 2 * math.pi))
    off = float(rng.uniform(0, offset_m))
    lon, lat = to_lonlat(view.pose.crs, gx + off * math.cos(ang), gy + off * math.sin(ang))
    side = int(max(nw, nh) + 2 * offset_m / map_gsd + 64)
    with open_raster(raster) as r:
        pix, rmask, rt = r.read_region(float(lon), float(lat), side, map_gsd)
        rcrs = r.crs_str
    region = np.ascontiguousarray(pix.transpose(1, 2, 0))
    p0, p1, hmg = _match(matcher, img, msk, region, rmask)
    out: dict[str, Any] = {"matches": len(p0), "pose": None, "centre_xy": None}
    if hmg is None or len(p0) < min_inliers:
        out["reason"] = f"{len(p0)} inlier matches < {min_inliers}"
        return out
    c = prep.chain.from_source(np.array([[(cam.width - 1) / 2.0, (cam.height - 1) / 2.0]]))[0]
    q = hmg @ np.array([c[0], c[1], 1.0])
    cx, cy = rt @ (q[0] / q[2] + 0.5, q[1] / q[2] + 0.5)
    if rcrs != view.pose.crs:
        lo, la = to_lonlat(rcrs, cx, cy)
        cx, cy = from_lonlat(view.pose.crs, lo, la)
    out["centre_xy"] = (float(cx), float(cy))
    out["pose"] = pose_from_matches(
        prep.chain, cam, p0, p1, rt, rcrs, frame_size=(cam.width, cam.height)
    )
    return out


def real_photos(matcher: Any, ransac_map_px: float = 3.0) -> dict[str, Any] | None:
    """The 8 real nadir DJI photos of ``brighton_beach``: pose from EXIF intrinsics + matches.

    Each photo is brought to the map's 0.10 m/px with its known ``gsd_m``, turned north-up with
    the registered ``heading_deg`` (the shared copies have no XMP yaw; a DJI file's gimbal yaw
    would serve) and matched against the whole map (no position prior); the pose is solved at
    full resolution with the RANSAC threshold of the matching scale. Compared with ``gt.csv``:
    the ground point under the centre against the registration (``reg_lat/reg_lon``), the camera
    against the photo's GNSS position (``lat/lon``, ~2 m of GNSS lag), the height against the
    RelativeAltitude (above the take-off point, ~2.5 m below this ground).
    """
    import csv

    import cv2
    from PIL import Image

    from geoloc.camera import PixelChain, camera_from_exif, pose_from_matches, read_metadata
    from tiling import open_raster
    from tiling.crs import geodesic_distance_m

    if not (BRIGHTON / "gt.csv").exists():
        return None
    with (BRIGHTON / "gt.csv").open(newline="") as fh:
        truth = [r for r in csv.DictReader(fh) if r["inside_map"] == "true"]
    with open_raster(BRIGHTON / "map_pointcloud_10cm.tif") as r:
        pix, mask = r.read_window(0, 0, 1.0, 1.0, r.width, r.height)
        t, crs, map_gsd = r.transform, r.crs_str, float(r.gsd_m)
    region = np.ascontiguousarray(pix.transpose(1, 2, 0))
    rows = []
    for row in truth:
        path = BRIGHTON / row["name"]
        meta = read_metadata(path)
        img = np.asarray(Image.open(path).convert("RGB"))
        h, w = img.shape[:2]
        cam = camera_from_exif(meta, w, h)
        if cam is None:
            rows.append({"name": row["name"], "ok": False, "reason": "no camera from EXIF"})
            continue
        s = float(row["gsd_m"]) / map_gsd
        small = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        up, up_mask, rot = _north_up(
            small, np.ones(small.shape[:2], bool), float(row["heading_deg"])
        )
        chain = PixelChain().then_scale(s).then(rot)
        p0, p1, _ = _match(matcher, up, up_mask, region, mask)
        res = pose_from_matches(
            chain, cam, p0, p1, t, crs, frame_size=(w, h), match_ransac_px=ransac_map_px
        )
        out: dict[str, Any] = {"name": row["name"], "matches": len(p0), "ok": res.ok}
        if res.ok and res.ground_lon is not None:
            # the height the registered scale implies: README, gsd_m vs the registration's scale
            out.update(
                inliers=res.inliers,
                ground_vs_registration_m=geodesic_distance_m(
                    res.ground_lon, res.ground_lat, float(row["reg_lon"]), float(row["reg_lat"])
                ),
                camera_vs_gnss_m=geodesic_distance_m(
                    res.lon, res.lat, float(row["lon"]), float(row["lat"])
                ),
                alt_agl_m=res.alt_agl_m,
                relative_altitude_m=float(row["altitude_m"]),
                pitch_deg=res.pitch_deg,
                heading_err_deg=_angle_err(res.heading_deg or 0.0, float(row["heading_deg"])),
                error_m_est=res.error_m_est,
                camera=cam.detail,
            )
        else:
            out["reason"] = res.reason
        rows.append(out)
    ok = [r for r in rows if r["ok"]]
    return {
        "photos": len(rows),
        "solved": len(ok),
        "ground_vs_registration_m": _stats([r["ground_vs_registration_m"] for r in ok]),
        "camera_vs_gnss_m": _stats([r["camera_vs_gnss_m"] for r in ok]),
        "alt_agl_m": _stats([r["alt_agl_m"] for r in ok]),
        "heading_err_deg": _stats([r["heading_err_deg"] for r in ok]),
        "rows": rows,
    }


def today_ground(
    view: Any,
    raster: Path,
    verifier: Any,
    rng: np.random.Generator,
    *,
    map_gsd: float = 0.25,
    offset_m: float = 20.0,
) -> tuple[float, float] | None:
    """The ground point geoloc answers without a camera model (None when it does not verify).

    As the verification stage does it today: the frame brought to the map's GSD as if it were
    nadir (altitude / focal length), turned north-up with the true heading, centre-cropped, and
    verified by the project's verifier against the map region; the frame centre through its
    homography (or similarity) is the answer.
    """
    import cv2

    from geoloc.localize.frame import centre_crop, rotate_to_north
    from tiling import open_raster
    from tiling.crs import from_lonlat, to_lonlat

    heading = view.pose.angles()[0]
    s = view.pose.z / view.camera.focal_px / map_gsd
    size = (max(1, round(view.rgb.shape[1] * s)), max(1, round(view.rgb.shape[0] * s)))
    img = cv2.resize(view.rgb, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    msk = cv2.resize(view.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    img, msk = rotate_to_north(img, msk, heading)
    crop = int(min(max(img.shape[:2]), 2 * 224))
    img, msk = centre_crop(img, crop), centre_crop(msk, crop)
    gx, gy = view.centre_ground()
    ang, off = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, offset_m))
    lon, lat = to_lonlat(view.pose.crs, gx + off * math.cos(ang), gy + off * math.sin(ang))
    side = int(crop + 2 * offset_m / map_gsd + 64)
    with open_raster(raster) as r:
        pix, rmask, rt = r.read_region(float(lon), float(lat), side, map_gsd)
        rcrs = r.crs_str
    region = np.ascontiguousarray(pix.transpose(1, 2, 0))
    res = verifier.verify(img, msk, region, rmask, scale_known=True)
    if not res.accepted or res.centre_xy is None:
        return None
    x, y = rt @ (res.centre_xy[0] + 0.5, res.centre_xy[1] + 0.5)
    if rcrs != view.pose.crs:
        lo, la = to_lonlat(rcrs, x, y)
        x, y = from_lonlat(view.pose.crs, lo, la)
    return float(x), float(y)


def _angle_err(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _stats(v: list[float]) -> dict[str, float | None]:
    if not v:
        return {"median": None, "p90": None, "max": None}
    a = np.asarray(v)
    return {
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "max": float(a.max()),
    }


def run(
    full: bool = False,
    n: int | None = None,
    matcher_name: str = "sift",
    map_gsd: float = 0.25,
    seed: int = 0,
) -> dict[str, Any]:
    """Render, match and solve ``n`` views; return (and save) the summary."""
    from geoloc.camera import camera_from_hfov
    from geoloc.camera.render import random_pose, render_view

    raster = TURKU if TURKU.exists() else SAMPLE
    n = n or (100 if full else 40)
    rng = np.random.default_rng(seed)
    cam = camera_from_hfov(60.0, 800, 600)
    matcher = _matcher(matcher_name)
    from geoloc.localize import verify as verify_mod

    verifier = getattr(verify_mod, matcher_name.replace("-", "_"))()
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for i in range(n):
        pose = random_pose(
            raster, rng, tilt_deg=(0.0, 45.0), altitude_m=(60.0, 150.0), margin_m=90.0
        )
        view = render_view(raster, cam, pose)
        # photometric change between the map and the frame
        gain = rng.uniform(0.85, 1.15, 3)
        noisy = view.rgb.astype(np.float32) * gain + rng.normal(0.0, 3.0, view.rgb.shape)
        view.rgb = np.where(view.mask[..., None], np.clip(noisy, 0, 255), 0).astype(np.uint8)
        heading, pitch, _ = pose.angles()
        row: dict[str, Any] = {
            "view": i,
            "heading_deg": heading,
            "tilt_deg": pitch + 90.0,
            "altitude_m": pose.z,
        }
        t0 = time.perf_counter()
        m = match_view(view, raster, matcher, rng, map_gsd=map_gsd)
        t1 = time.perf_counter()
        res = m["pose"]
        row.update(matches=m["matches"], match_pose_s=t1 - t0)
        gx, gy = view.centre_ground()
        if m["centre_xy"] is not None:
            row["ground_err_homography_m"] = math.dist(m["centre_xy"], (gx, gy))
        today = today_ground(view, raster, verifier, rng, map_gsd=map_gsd)
        if today is not None:
            row["ground_err_today_m"] = math.dist(today, (gx, gy))
        if res is not None and res.ok and res.pose is not None:
            d = res.pose.centre - pose.centre
            row.update(
                ok=True,
                inliers=res.inliers,
                pos_err_m=float(math.hypot(d[0], d[1])),
                pos_err_3d_m=float(np.linalg.norm(d)),
                alt_err_pct=float(abs(res.alt_agl_m - pose.z) / pose.z * 100.0),
                heading_err_deg=_angle_err(res.heading_deg or 0.0, heading),
                pitch_err_deg=abs((res.pitch_deg or 0.0) - pitch),
                error_m_est=res.error_m_est,
                ground_err_m=math.dist(res.ground_xy, (gx, gy)) if res.ground_xy else None,
            )
        else:
            row.update(ok=False, reason=res.reason if res is not None else m["reason"])
        rows.append(row)
        print(
            f"view {i:3d} tilt {row['tilt_deg']:4.1f} alt {pose.z:5.1f} "
            + (
                f"pos {row['pos_err_m']:5.2f} m alt {row['alt_err_pct']:4.1f} % "
                f"hdg {row['heading_err_deg']:4.2f} ground {row['ground_err_m']:4.2f} m "
                f"(today {row.get('ground_err_today_m', float('nan')):5.1f} m) inl {row['inliers']}"
                if row["ok"]
                else f"not solved: {row['reason']}"
            ),
            flush=True,
        )
    ok = [r for r in rows if r["ok"]]
    real = real_photos(matcher)
    summary: dict[str, Any] = {
        "benchmark": "camera",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average": os.getloadavg()[0],
        "raster": raster.name,
        "views": n,
        "matcher": matcher_name,
        "map_gsd_m": map_gsd,
        "camera": {"width": cam.width, "height": cam.height, "hfov_deg": 60.0},
        "noise": {"attitude_deg": 1.0, "heading_deg": 3.0, "altitude_frac": 0.05, "offset_m": 20.0},
        "solved": len(ok),
        "solved_share": len(ok) / n,
        "camera_position_m": _stats([r["pos_err_m"] for r in ok]),
        "camera_position_3d_m": _stats([r["pos_err_3d_m"] for r in ok]),
        "altitude_pct": _stats([r["alt_err_pct"] for r in ok]),
        "heading_deg": _stats([r["heading_err_deg"] for r in ok]),
        "pitch_deg": _stats([r["pitch_err_deg"] for r in ok]),
        "ground_point_m": _stats([r["ground_err_m"] for r in ok if r["ground_err_m"] is not None]),
        "ground_point_homography_m": _stats(
            [r["ground_err_homography_m"] for r in rows if "ground_err_homography_m" in r]
        ),
        "ground_point_today_m": _stats(
            [r["ground_err_today_m"] for r in rows if "ground_err_today_m" in r]
        ),
        "today_answered": sum("ground_err_today_m" in r for r in rows),
        "match_pose_ms_median": float(np.median([r["match_pose_s"] for r in rows]) * 1000.0),
        "seconds": time.perf_counter() - t_all,
        "rows": rows,
        "real_photos": real,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "camera"
    name += "" if matcher_name == "sift" else f"_{matcher_name}"
    name += "" if map_gsd == 0.25 else f"_gsd{map_gsd:g}"
    name += "" if n == 40 or (full and n == 100) else f"_n{n}"
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _e2e_views(n: int, seed: int) -> list[tuple[Any, Any, Any]]:
    """``n`` rendered views (camera, view, nadir twin) that lie wholly on the bundled sample.

    The nadir twin looks straight down from the same height above the view's centre ground
    point, with the same heading: the view as today's chain (no camera model) is asked to take
    it, so the located share of oblique views is compared with nadir views of the same places.
    """
    from geoloc.camera import CameraPose, camera_from_hfov
    from geoloc.camera.render import random_pose, render_view

    rng = np.random.default_rng(seed)
    cam = camera_from_hfov(60.0, 640, 480)
    out: list[tuple[Any, Any, Any]] = []
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        pose = random_pose(SAMPLE, rng, tilt_deg=(0.0, 45.0), altitude_m=(60.0, 150.0), margin_m=40)
        view = render_view(SAMPLE, cam, pose)
        if view.mask.mean() <= 0.99:  # the sample is small: keep views that see only the map
            continue
        heading = pose.angles()[0]
        gx, gy = view.centre_ground()
        twin = render_view(
            SAMPLE, cam, CameraPose.from_angles(gx, gy, pose.z, heading, -90.0, 0.0, pose.crs)
        )
        if twin.mask.mean() > 0.99:
            out.append((cam, view, twin))
    return out


def _unrefined(
    loc: Any,
    p: Any,
    camera_lonlat: tuple[float, float],
    ground_lonlat: tuple[float, float],
    heading: float,
) -> dict[str, float]:
    """The same match's pose solved without the refinement at frame resolution (``*_unrefined``
    errors), for the before/after of the refinement within one run; and its time."""
    from tiling.crs import geodesic_distance_m

    state = loc.last_state
    if state is None or state.match is None or state.pose is None:
        return {}
    refined = state.pose
    out: dict[str, float] = {}
    if "pose.refine" in state.timings_ms():
        out["refine_ms"] = state.timings_ms()["pose.refine"]
    loc.pose.conf["refine"] = False
    try:
        loc.pose.run(state)
        r = state.pose
    finally:
        loc.pose.conf["refine"] = True
        state.pose = refined
    if r is None or not r.ok or r.lon is None or r.lat is None or r.alt_agl_m is None:
        return out
    out["camera_m_unrefined"] = float(geodesic_distance_m(r.lon, r.lat, *camera_lonlat))
    out["altitude_pct_unrefined"] = 100.0 * abs(r.alt_agl_m - p.z) / p.z
    out["heading_deg_unrefined"] = _angle_err(r.heading_deg or 0.0, heading)
    if r.ground_lon is not None and r.ground_lat is not None:
        out["ground_m_unrefined"] = float(
            geodesic_distance_m(r.ground_lon, r.ground_lat, *ground_lonlat)
        )
    return out


def _nadir_twin(loc: Any, home: Path, i: int, cam: Any, twin: Any) -> dict[str, Any]:
    """Today's chain on the nadir twin: no camera model, the nadir GSD known, heading swept."""
    from PIL import Image

    from tiling.crs import geodesic_distance_m, to_lonlat

    frame = home / f"nadir_{i}.jpg"
    Image.fromarray(twin.rgb).save(frame, quality=92)
    gsd = twin.pose.z / float(cam.K[0, 0])  # nadir pinhole: metres per pixel at the ground
    fix = loc.locate(frame, gsd=gsd)
    row: dict[str, Any] = {"status": fix.status, "total_ms": fix.timings_ms["total"]}
    if fix.lat is not None and fix.lon is not None:
        glon, glat = to_lonlat(twin.pose.crs, *twin.centre_ground())
        row["ground_m"] = float(geodesic_distance_m(fix.lon, fix.lat, glon, glat))
    return row


@contextlib.contextmanager
def _localizer_on(raster: Path, prefix: str) -> Iterator[tuple[Any, Path]]:
    """A warm Localizer over ``raster`` ingested into a throw-away embedded database, and the
    temporary home it lives in (removed afterwards)."""
    import shutil
    import tempfile

    import torch

    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.localize import Localizer
    from geoloc.models import load_encoder
    from geoloc.store import embedded

    torch.set_num_threads(2)
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    settings = Settings(home=home, database_url=None)
    try:
        enc = load_encoder("sgmnet")
        enc.optimize_for_inference()
        ingest([raster], encoder=enc, settings=settings, progress=False)
        with Localizer.open(settings, encoder=enc) as loc:
            yield loc, home
    finally:
        embedded.stop(settings)
        shutil.rmtree(home, ignore_errors=True)


def run_e2e(n: int = 10, seed: int = 0) -> dict[str, Any]:
    """Rendered oblique views through the whole locate chain; see the module docstring."""
    from PIL import Image

    from tiling.crs import geodesic_distance_m, to_lonlat

    t0 = time.perf_counter()
    rows: dict[str, list[dict[str, Any]]] = {"heading_known": [], "heading_sweep": []}
    nadir_rows: list[dict[str, Any]] = []
    with _localizer_on(SAMPLE, "geoloc-bench-camera-") as (loc, home):
        views = _e2e_views(n, seed)
        for i, (cam, view, twin) in enumerate(views):
            frame = home / f"view_{i}.jpg"
            Image.fromarray(view.rgb).save(frame, quality=92)
            cam_file = home / "camera.json"
            cam_file.write_text(
                json.dumps({"K": cam.K.tolist(), "width": cam.width, "height": cam.height})
            )
            p = view.pose
            heading, pitch, roll = p.angles()
            lon, lat = to_lonlat(p.crs, p.x, p.y)
            glon, glat = to_lonlat(p.crs, *view.centre_ground())
            # the second locate of a view reuses the map regions the first one read:
            # alternate which mode goes first so neither gets the warm caches every time
            modes = list(rows) if i % 2 == 0 else list(rows)[::-1]
            for mode in modes:
                fix = loc.locate(
                    frame,
                    camera=cam_file,
                    pitch=pitch,
                    roll=roll,
                    altitude_m=p.z,
                    heading=heading if mode == "heading_known" else None,
                )
                c = fix.camera
                row: dict[str, Any] = {
                    "status": fix.status,
                    "tilt_deg": 90.0 + pitch,
                    "total_ms": fix.timings_ms["total"],
                    "solved": c is not None,
                }
                if fix.lat is not None and fix.lon is not None:
                    row["ground_m"] = float(geodesic_distance_m(fix.lon, fix.lat, glon, glat))
                if c is not None:
                    row["camera_m"] = float(geodesic_distance_m(c["lon"], c["lat"], lon, lat))
                    row["altitude_pct"] = 100.0 * abs(c["alt_agl_m"] - p.z) / p.z
                    row["heading_deg"] = _angle_err(c["heading_deg"], heading)
                else:
                    row["reason"] = fix.camera_reason
                row.update(_unrefined(loc, p, (lon, lat), (glon, glat), heading))
                rows[mode].append(row)
                print(mode, i, row, flush=True)
            nadir_rows.append(_nadir_twin(loc, home, i, cam, twin))
            print("nadir_twin", i, nadir_rows[-1], flush=True)
    out: dict[str, Any] = {"views": n, "raster": SAMPLE.name, "seed": seed}
    for mode, rs in rows.items():
        ok = [r for r in rs if r["status"] == "ok"]
        out[mode] = {
            "located": len(ok),
            "solved": sum(1 for r in rs if r["solved"]),
            "camera_position_m": _stats([r["camera_m"] for r in rs if "camera_m" in r]),
            "altitude_pct": _stats([r["altitude_pct"] for r in rs if "altitude_pct" in r]),
            "heading_deg": _stats([r["heading_deg"] for r in rs if "heading_deg" in r]),
            "ground_point_m": _stats([r["ground_m"] for r in ok if "ground_m" in r]),
            "unrefined": {
                key: _stats([r[f"{key}_unrefined"] for r in rs if f"{key}_unrefined" in r])
                for key in ("camera_m", "altitude_pct", "heading_deg", "ground_m")
            },
            "refine_ms": _stats([r["refine_ms"] for r in rs if "refine_ms" in r]),
            "total_ms": _stats([r["total_ms"] for r in rs]),
            "rows": rs,
        }
    out["nadir_twin"] = {
        "located": sum(1 for r in nadir_rows if r["status"] == "ok"),
        "ground_point_m": _stats(
            [r["ground_m"] for r in nadir_rows if r["status"] == "ok" and "ground_m" in r]
        ),
        "total_ms": _stats([r["total_ms"] for r in nadir_rows]),
        "rows": nadir_rows,
    }
    out["seconds"] = time.perf_counter() - t0
    out["load_average"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "camera_e2e" if n == 10 else f"camera_e2e_n{n}"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def _strip_xmp(path: Path) -> None:
    """Blank any XMP packet in a JPEG in place (same length, so the file stays valid)."""
    data = bytearray(path.read_bytes())
    start = data.find(b"<x:xmpmeta")
    end = data.find(b"</x:xmpmeta>", start)
    if start >= 0 and end > start:
        end += len(b"</x:xmpmeta>")
        data[start:end] = b" " * (end - start)
        path.write_bytes(bytes(data))


def run_real_e2e() -> dict[str, Any] | None:
    """The 8 real DJI photos of ``brighton_beach`` through the whole locate chain.

    The map (``map_pointcloud_10cm.tif``) is ingested into an embedded database of its own;
    each photo is located by :meth:`geoloc.localize.Localizer.locate` as a user would run
    ``geoloc locate DJI_0019.JPG --gsd G``: the camera from the photo's EXIF, its known ``gsd_m``,
    once with the 8-heading sweep and once with the registered heading; and once as today's chain
    without a camera model (``no_camera``: the same JPEG with its EXIF and XMP removed). The
    ground point under the centre is compared with the registration (``reg_lat/reg_lon``), the
    camera with the photo's GNSS position (``lat/lon``), as :func:`real_photos` does. Writes
    ``benchmarks/results/camera_real_e2e.json``.
    """
    import csv

    import piexif

    from tiling.crs import geodesic_distance_m

    if not (BRIGHTON / "gt.csv").exists():
        return None
    with (BRIGHTON / "gt.csv").open(newline="") as fh:
        truth = [r for r in csv.DictReader(fh) if r["inside_map"] == "true"]
    t0 = time.perf_counter()
    rows: dict[str, list[dict[str, Any]]] = {
        "heading_sweep": [],
        "heading_known": [],
        "no_camera": [],
    }
    with _localizer_on(BRIGHTON / "map_pointcloud_10cm.tif", "geoloc-bench-camera-real-") as (
        loc,
        home,
    ):
        for i, row in enumerate(truth):
            # today's chain: the same JPEG bytes without EXIF/XMP, so no camera model is found
            bare = home / row["name"]
            piexif.remove(str(BRIGHTON / row["name"]), str(bare))
            _strip_xmp(bare)
            modes = list(rows) if i % 2 == 0 else list(rows)[::-1]
            for mode in modes:
                known = float(row["heading_deg"]) if mode == "heading_known" else None
                path = bare if mode == "no_camera" else BRIGHTON / row["name"]
                fix = loc.locate(path, gsd=float(row["gsd_m"]), heading=known, name=row["name"])
                out: dict[str, Any] = {
                    "name": row["name"],
                    "status": fix.status,
                    "total_ms": fix.timings_ms["total"],
                    "solved": fix.camera is not None,
                }
                if fix.lat is not None and fix.lon is not None:
                    out["ground_vs_registration_m"] = float(
                        geodesic_distance_m(
                            fix.lon, fix.lat, float(row["reg_lon"]), float(row["reg_lat"])
                        )
                    )
                c = fix.camera
                if c is not None:
                    out["camera_vs_gnss_m"] = float(
                        geodesic_distance_m(
                            c["lon"], c["lat"], float(row["lon"]), float(row["lat"])
                        )
                    )
                    out["alt_agl_m"] = c["alt_agl_m"]
                    out["relative_altitude_m"] = float(row["altitude_m"])
                    out["heading_err_deg"] = _angle_err(c["heading_deg"], float(row["heading_deg"]))
                    out["error_m_est"] = c.get("error_m_est")
                else:
                    out["reason"] = fix.camera_reason
                rows[mode].append(out)
                print(mode, out, flush=True)
    res: dict[str, Any] = {"photos": len(truth)}
    for mode, rs in rows.items():
        ok = [r for r in rs if r["status"] == "ok"]
        res[mode] = {
            "located": len(ok),
            "solved": sum(1 for r in rs if r["solved"]),
            **{
                key: _stats([r[key] for r in ok if key in r])
                for key in (
                    "ground_vs_registration_m",
                    "camera_vs_gnss_m",
                    "alt_agl_m",
                    "heading_err_deg",
                    "total_ms",
                )
            },
            "rows": rs,
        }
    res["seconds"] = time.perf_counter() - t0
    res["load_average"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "camera_real_e2e.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def main(argv: list[str] | None = None) -> int:
    """Command line: run and print the summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="views (40; 100 with --full)")
    p.add_argument("--full", action="store_true")
    p.add_argument("--matcher", default="sift", choices=["sift", "xfeat-lighterglue"])
    p.add_argument("--map-gsd", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--e2e", action="store_true", help="the full locate chain (see run_e2e)")
    p.add_argument(
        "--real-e2e",
        action="store_true",
        help="the brighton photos through the chain (run_real_e2e)",
    )
    a = p.parse_args(argv)
    if a.real_e2e:
        real = run_real_e2e()
        if real is None:
            raise SystemExit(f"{BRIGHTON}: not found")
        for mode in ("heading_sweep", "heading_known", "no_camera"):
            r = real[mode]
            print(f"brighton {mode}: located {r['located']}/{real['photos']}, solved {r['solved']}")
            for key in ("ground_vs_registration_m", "camera_vs_gnss_m", "alt_agl_m", "total_ms"):
                st = r[key]
                print(f"  {key:26s} median {st['median']}  p90 {st['p90']}  max {st['max']}")
        return 0
    if a.e2e:
        e = run_e2e(a.n or 10, a.seed)
        for mode in ("heading_known", "heading_sweep"):
            r = e[mode]
            print(f"{mode}: located {r['located']}/{e['views']}, solved {r['solved']}")
            for key in ("camera_position_m", "altitude_pct", "heading_deg", "ground_point_m"):
                st = r[key]
                print(f"  {key:20s} median {st['median']}  p90 {st['p90']}  max {st['max']}")
            for key, st in r["unrefined"].items():
                print(f"  {key + ' unrefined':20s} median {st['median']}  p90 {st['p90']}")
            print(f"  total_ms median {r['total_ms']['median']}")
        t = e["nadir_twin"]
        print(
            f"nadir twins (no camera model): located {t['located']}/{e['views']}, ground median "
            f"{t['ground_point_m']['median']}, total_ms median {t['total_ms']['median']}"
        )
        return 0
    s = run(a.full, a.n, a.matcher, a.map_gsd, a.seed)
    for key in (
        "camera_position_m",
        "camera_position_3d_m",
        "altitude_pct",
        "heading_deg",
        "pitch_deg",
        "ground_point_m",
        "ground_point_homography_m",
        "ground_point_today_m",
    ):
        st = s[key]
        if st["median"] is None:
            print(f"{key:28s} -")
        else:
            print(
                f"{key:28s} median {st['median']:7.2f}  p90 {st['p90']:7.2f}  max {st['max']:7.2f}"
            )
    real = s["real_photos"]
    if real is not None:
        for key in ("ground_vs_registration_m", "camera_vs_gnss_m", "alt_agl_m", "heading_err_deg"):
            st = real[key]
            if st["median"] is not None:
                print(f"brighton {key:26s} median {st['median']:6.2f}  max {st['max']:6.2f}")
        print(f"brighton: solved {real['solved']}/{real['photos']} real photos")
    print(
        f"solved {s['solved']}/{s['views']}; today answered {s['today_answered']}/{s['views']}; "
        f"{s['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
