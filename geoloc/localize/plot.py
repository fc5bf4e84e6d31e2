"""``geoloc locate --plot``: the frame beside the matched map region, and an overview.

Three panels: the frame (north-up when its heading is known or was found); the map around the
answer (two tiles wide) with the answer and the matched tile outlined; the orthomosaic
(downsampled) with the candidate tile centres and the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _overview(path: str, max_px: int = 900) -> tuple[np.ndarray, Any, Any]:
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as ds:
        f = min(1.0, max_px / max(ds.width, ds.height))
        h, w = max(1, round(ds.height * f)), max(1, round(ds.width * f))
        n = min(3, ds.count)
        arr = ds.read(list(range(1, n + 1)), out_shape=(n, h, w), resampling=Resampling.average)
        t = ds.transform @ ds.transform.scale(ds.width / w, ds.height / h)
        crs = ds.crs
    if n < 3:
        arr = np.repeat(arr[:1], 3, axis=0)
    arr = arr.astype(np.float64)
    lo, hi = np.percentile(arr, [1, 99])
    img = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1).transpose(1, 2, 0)
    return img, t, crs


def plot_fix(
    loc: Any, fix: Any, frame_path: str | Path, out: str | Path, gsd: float | None = None
) -> Path:
    """Write the three-panel figure of ``fix`` (from ``loc.locate``) to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from geoloc.localize.frame import load_frame, rotate_to_north
    from tiling.crs import from_lonlat

    out = Path(out)
    fr = load_frame(frame_path, gsd=gsd)
    img = fr.rgb
    title = "frame"
    if fix.heading_deg is not None:
        img, _ = rotate_to_north(fr.rgb, fr.mask, float(fix.heading_deg))
        title = f"frame, north-up (heading {fix.heading_deg:.0f} deg)"
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    axes[0].imshow(img)
    axes[0].set_title(title)
    r = loc.regions.raster(fix.orthomosaic)
    size = 2 * loc.tile_px
    px, _, t = r.read_region(fix.lon, fix.lat, size, loc.map_gsd_m)
    axes[1].imshow(np.transpose(px, (1, 2, 0)))
    x, y = from_lonlat(r.crs, fix.lon, fix.lat)
    col, row = ~t @ (x, y)
    axes[1].plot([col], [row], "r+", ms=18, mew=2)
    if fix.candidates:
        c0 = next((c for c in fix.candidates if c["tile_id"] == fix.tile_id), fix.candidates[0])
        cx, cy = from_lonlat(r.crs, c0["lon"], c0["lat"])
        ccol, crow = ~t @ (cx, cy)
        half = loc.tile_px / 2
        axes[1].add_patch(
            Rectangle(
                (ccol - half, crow - half), 2 * half, 2 * half, fill=False, ec="yellow", lw=1.5
            )
        )
    axes[1].set_title(f"map around the answer ({fix.method}, tile {fix.tile_id})")
    ov, ot, crs = _overview(fix.orthomosaic)
    axes[2].imshow(ov)
    for i, c in enumerate(fix.candidates):
        cx, cy = from_lonlat(crs, c["lon"], c["lat"])
        ccol, crow = ~ot @ (cx, cy)
        axes[2].plot([ccol], [crow], "o", mfc="none", mec="yellow", ms=10)
        axes[2].annotate(
            str(i + 1),
            (ccol, crow),
            color="yellow",
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    acol, arow = ~ot @ (x, y)
    axes[2].plot([acol], [arow], "r*", ms=16)
    axes[2].set_title(f"{Path(fix.orthomosaic).name}: candidates (yellow), answer (red)")
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(
        f"{Path(str(frame_path)).name}: {fix.status} {fix.lat:.6f}, {fix.lon:.6f}  "
        f"confidence {fix.confidence:.2f}  error~{fix.error_m_est:.1f} m"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
