"""Seeing the scene graph: an image with its CSMG node assignment maps, centroids and areas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from geoloc.errors import ImageReadError
from geoloc.models.base import Encoder
from tiling.errors import TilingError
from tiling.image import read_image

#: One colour per node (tab10 order), RGB in [0, 1].
NODE_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.74, 0.74, 0.13),
    (0.09, 0.75, 0.81),
    (0.50, 0.50, 0.50),
)


def read_rgb(path: str | Path, max_side: int = 1024) -> np.ndarray:
    """Read ``path`` as uint8 RGB (3, H, W), downsampled so the longer side is <= ``max_side``.

    Any image or raster :func:`tiling.image.read_image` reads (rasters decimated while reading,
    non-uint8 data through the tiler's stretch); invalid pixels are black.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError("image not found", path=str(p))
    try:
        rgb, _ = read_image(p, max_side=max_side)
    except TilingError as exc:
        raise ImageReadError(exc.problem, path=str(p)) from exc
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def explain_figure(
    enc: Encoder, image: np.ndarray, out: str | Path, title: str | None = None
) -> dict[str, Any]:
    """Draw ``image`` (uint8 RGB (3, H, W)) with the encoder's K node maps; save PNG ``out``.

    Each pixel is tinted with the colour of its dominant node, opacity growing with that node's
    assignment strength; centroids are marked; the legend gives each node's area (share of the
    total). Returns the node summary (areas, area shares, centroids in [0, 1]² as (x, y)).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torch.nn.functional as F
    from matplotlib.patches import Patch

    out_path = Path(out)
    res = enc.encode(image[None])
    maps = res.assignments[0]  # K, h, w
    k = maps.shape[0]
    _, h, w = image.shape
    up = F.interpolate(maps[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    strength, winner = up.max(0)
    alpha = (strength / max(float(strength.max()), 1e-6)).clamp(0, 1) * 0.6
    palette = NODE_COLOURS
    if k > len(NODE_COLOURS):
        tab20 = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]
        palette = tuple((float(c[0]), float(c[1]), float(c[2])) for c in tab20)
    rgb = [tuple(float(v) for v in palette[i % len(palette)]) for i in range(k)]
    colours = torch.tensor(rgb)
    overlay = torch.cat([colours[winner], alpha[..., None]], dim=-1).numpy()

    areas = res.node_areas[0].tolist()
    total = max(sum(areas), 1e-9)
    cents = res.node_centroids[0].tolist()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 6), gridspec_kw={"width_ratios": [3, 2]})
    ax.imshow(image.transpose(1, 2, 0))
    ax.imshow(overlay)
    for i, (cx, cy) in enumerate(cents):
        ax.plot(cx * w, cy * h, marker="X", ms=14, mec="white", mew=1.5, color=colours[i].numpy())
        ax.annotate(
            str(i),
            (cx * w, cy * h),
            xytext=(8, 8),
            textcoords="offset points",
            color="white",
            fontsize=12,
            weight="bold",
        )
    handles = [
        Patch(
            color=(rgb[i][0], rgb[i][1], rgb[i][2]),
            label=f"node {i}: area {areas[i]:.1f} ({100 * areas[i] / total:.0f}%)",
        )
        for i in range(k)
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=9, framealpha=0.8)
    ax.set_axis_off()
    ax.set_title(title or f"{enc.name}: CSMG nodes (colour = dominant node, X = centroid)")
    # the raw maps, one small panel each, on the right
    bx.set_axis_off()
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    for i in range(k):
        sub = bx.inset_axes(
            ((i % cols) / cols, 1 - (i // cols + 1) / rows, 0.95 / cols, 0.9 / rows)
        )
        sub.imshow(maps[i].numpy(), cmap="magma")
        sub.set_title(f"node {i} s_ki", fontsize=9, color=colours[i].numpy())
        sub.set_xticks([])
        sub.set_yticks([])
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return {
        "encoder": enc.name,
        "out": str(out_path),
        "nodes": [
            {
                "node": i,
                "area": round(areas[i], 4),
                "share": round(areas[i] / total, 4),
                "centroid_xy": [round(cents[i][0], 4), round(cents[i][1], 4)],
            }
            for i in range(k)
        ],
    }
