"""``geoloc demo netvlad``: the three figures of the NetVLAD study, on real tiles of an orthomosaic.

Local features are the ImageNet-pretrained EfficientNet-Lite0 stride-16 map (112 × 14 × 14 per
224 px tile), L2-normalised per location. The NetVLAD clusters are initialised as in the NetVLAD
paper: k-means centres c_k of local features from tiles of the raster, assignment conv
w_k = 2α c_k, b_k = −α‖c_k‖² (+ one constant shift so that the ReLU of this spec keeps them).
Loupe reuses those centres; its hidden projection and the fusion are at their initialisation.

1. ``netvlad_assignment.png``: a tile, its dominant-cluster map and four cluster heat maps.
2. ``netvlad_descriptor.png``: the K × C VLAD matrix of a scene, of the same scene with noise and
   of a different scene, with their cosine similarities.
3. ``netvlad_variants.png``: NetVLAD, NetVLAD-Loupe and their gated fusion: output dimension,
   parameter count, and the mean similarity to noisy copies vs to other scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geoloc.models.netvlad import GatedFusion, NetVLAD, NetVLADLoupe

SAMPLE_RASTER = Path(__file__).resolve().parents[2] / "data" / "sample" / "turku_utm34n_0.28m.tif"
TILE = 224
NUM_CLUSTERS = 16
ALPHA = 10.0
NOISE_SIGMA = 12.0


def read_tiles(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``n`` non-overlapping 224 px tiles on a regular grid of ``path`` (uint8 (n, 3, 224, 224))."""
    import rasterio
    from rasterio.windows import Window

    from geoloc.models.explain import ImageReadError

    if not path.is_file():
        raise ImageReadError("raster not found", path=str(path))
    with rasterio.open(path) as ds:
        if ds.count < 3 or ds.dtypes[0] != "uint8":
            raise ImageReadError("needs a uint8 RGB raster", path=str(path))
        cells = [
            (c * TILE, r * TILE) for r in range(ds.height // TILE) for c in range(ds.width // TILE)
        ]
        if len(cells) < 4:
            raise ImageReadError(f"too small: {len(cells)} tiles of {TILE} px", path=str(path))
        order = np.random.default_rng(seed).permutation(len(cells))[:n]
        pos = [cells[i] for i in order]
        tiles = [ds.read((1, 2, 3), window=Window(c, r, TILE, TILE)) for c, r in pos]
    return np.stack(tiles), pos


def local_features(images: np.ndarray) -> torch.Tensor:
    """Pretrained Lite0 stride-16 features, L2-normalised per location: (B, 112, 14, 14)."""
    from geoloc.models import build_encoder

    enc = build_encoder("sgmnet")  # SGM-Net's Lite0 backbone by design, whatever the default
    with torch.inference_mode():
        feats = enc.backbone_features(enc.preprocess(images))
    return F.normalize(feats, dim=1).clone()


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Centres (k, C) of rows of ``x`` (N, C) by Lloyd's algorithm, k-means++-like seeding."""
    g = torch.Generator().manual_seed(seed)
    centres = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    for _ in range(1, k):
        d = torch.cdist(x, torch.stack(centres)).min(1).values ** 2
        centres.append(x[torch.multinomial(d / d.sum(), 1, generator=g)].squeeze(0))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c


def build_models(feats: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    """NetVLAD and Loupe initialised from k-means of ``feats``; projection and fusion."""
    c = feats.shape[1]
    cols = feats.flatten(2).transpose(1, 2).reshape(-1, c)
    centres = kmeans(cols, NUM_CLUSTERS, seed=seed)
    torch.manual_seed(seed)
    vlad = NetVLAD(c, NUM_CLUSTERS).eval()
    loupe = NetVLADLoupe(c, 196, NUM_CLUSTERS, output_dim=256).eval()
    project = torch.nn.Linear(c * NUM_CLUSTERS, 256, bias=False)
    fusion = GatedFusion()
    with torch.no_grad():
        vlad.centroids.copy_(centres)
        logits = ALPHA * (2 * cols @ centres.T - (centres**2).sum(1))
        shift = float(max(0.0, -logits.min().item()))
        vlad.conv.weight.copy_((2 * ALPHA * centres)[:, :, None, None])
        assert vlad.conv.bias is not None
        vlad.conv.bias.copy_(-ALPHA * (centres**2).sum(1) + shift)
        loupe.cluster_weights.copy_(2 * ALPHA * centres.T)
        loupe.cluster_weights2.copy_(centres.T[None])
        torch.nn.init.normal_(project.weight, std=(1 / (c * NUM_CLUSTERS)) ** 0.5)
    return {"netvlad": vlad, "loupe": loupe, "project": project, "fusion": fusion}


def describe(models: dict[str, Any], feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """Descriptors of every variant for ``feats`` (B, C, 14, 14), each row L2-normalised."""
    with torch.no_grad():
        cols = feats.flatten(2).unsqueeze(-1)
        v = models["netvlad"](cols)
        lo = F.normalize(models["loupe"](cols.squeeze(-1).transpose(1, 2)), dim=1)
        fused = F.normalize(models["fusion"](F.normalize(models["project"](v), dim=1), lo), dim=1)
    return {"NetVLAD": v, "NetVLAD-Loupe": lo, "fused": fused}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_demo(
    out: str | Path, raster: str | Path | None = None, n_tiles: int = 16
) -> dict[str, Any]:
    """Write the three figures to ``out`` and return a JSON-able summary of the numbers shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoloc.models.explain import NODE_COLOURS

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = Path(raster) if raster is not None else SAMPLE_RASTER
    tiles, pos = read_tiles(src, n_tiles)
    rng = np.random.default_rng(1)
    noisy = np.clip(tiles + rng.normal(0, NOISE_SIGMA, tiles.shape), 0, 255).astype(np.uint8)
    feats = local_features(tiles)
    feats_noisy = local_features(noisy)
    models = build_models(feats)
    vlad: NetVLAD = models["netvlad"]

    # 1. soft-assignment of the local features of one tile to the clusters; the tile shown is the
    # one whose features spread over the most clusters (a textured scene, not a plain field)
    with torch.no_grad():
        all_a = vlad.soft_assign(feats.flatten(2).unsqueeze(-1))  # B, K, N
    spread = (all_a.sum(2) > 10).sum(1)
    s = int(torch.argmax(spread).item())
    a = all_a[s].view(NUM_CLUSTERS, 14, 14)
    mass = a.sum((1, 2))
    top = torch.argsort(mass, descending=True)[:4].tolist()
    cmap = plt.get_cmap("tab20", NUM_CLUSTERS)
    fig, axes = plt.subplots(1, 6, figsize=(20, 3.9))
    axes[0].imshow(tiles[s].transpose(1, 2, 0))
    axes[0].set_title(f"tile at col {pos[s][0]}, row {pos[s][1]}")
    im = axes[1].imshow(a.argmax(0).numpy(), cmap=cmap, vmin=-0.5, vmax=NUM_CLUSTERS - 0.5)
    axes[1].set_title("dominant cluster per feature")
    fig.colorbar(im, ax=axes[1], fraction=0.046, ticks=range(0, NUM_CLUSTERS, 3))
    for ax, k in zip(axes[2:], top, strict=True):
        hm = ax.imshow(a[k].numpy(), cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"cluster {k}: a_k (sum {float(mass[k]):.0f}/196)")
    fig.colorbar(hm, ax=axes[5], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("NetVLAD soft-assignment of 14×14 local features (Lite0, ImageNet) to 16 clusters")
    fig.tight_layout()
    fig.savefig(out_dir / "netvlad_assignment.png", dpi=90)
    plt.close(fig)

    # 2. VLAD structure: scene vs same scene with noise vs a different scene
    desc = describe(models, feats)
    desc_noisy = describe(models, feats_noisy)
    v, vn = desc["NetVLAD"], desc_noisy["NetVLAD"]
    sim_s = v @ v[s]
    sim_s[s] = 2.0
    other = int(torch.argmin(sim_s).item())  # the most different scene of the set
    sims2 = {"noise": float(v[s] @ vn[s]), "different": float(v[s] @ v[other])}
    c = feats.shape[1]
    mats = [v[s].view(NUM_CLUSTERS, c), vn[s].view(NUM_CLUSTERS, c), v[other].view(NUM_CLUSTERS, c)]
    lim = float(max(m.abs().max() for m in mats))
    fig, axes = plt.subplots(2, 3, figsize=(16, 7), gridspec_kw={"height_ratios": [1, 1.1]})
    labels = [
        "scene",
        f"same scene + noise σ={NOISE_SIGMA:.0f}: cos {sims2['noise']:.3f}",
        f"different scene: cos {sims2['different']:.3f}",
    ]
    imgs = [tiles[s], noisy[s], tiles[other]]
    for j in range(3):
        axes[0, j].imshow(imgs[j].transpose(1, 2, 0))
        axes[0, j].set_title(labels[j])
        axes[0, j].set_axis_off()
        hm = axes[1, j].imshow(mats[j].numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[1, j].set_xlabel(f"feature channel (C = {c})")
        axes[1, j].set_ylabel("cluster k")
    fig.colorbar(hm, ax=axes[1, :].tolist(), fraction=0.02)
    fig.suptitle(f"VLAD descriptor ({NUM_CLUSTERS} × {c} = {NUM_CLUSTERS * c}-d, norm 1)")
    fig.savefig(out_dir / "netvlad_descriptor.png", dpi=90)
    plt.close(fig)

    # 3. variants: dims, parameters, similarities over the whole set of tiles
    n = len(tiles)
    off = ~torch.eye(n, dtype=torch.bool)
    variants: list[dict[str, Any]] = []
    n_params = {
        "NetVLAD": _params(vlad),
        "NetVLAD-Loupe": _params(models["loupe"]),
        "fused": _params(vlad) + _params(models["project"]) + _params(models["loupe"]) + 1,
    }
    for name, d in desc.items():
        dn = desc_noisy[name]
        same = (d * dn).sum(1)
        diff = (d @ d.T)[off]
        variants.append(
            {
                "variant": name,
                "dim": int(d.shape[1]),
                "params": n_params[name],
                "cos_noise_mean": round(float(same.mean()), 4),
                "cos_different_mean": round(float(diff.mean()), 4),
                "cos_different_max": round(float(diff.max()), 4),
                "noisy_copy_ranked_first": round(
                    float(((d @ dn.T).argmax(0) == torch.arange(n)).float().mean()), 4
                ),
            }
        )
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1.2, 1]})
    x = np.arange(len(variants))
    ax.bar(
        x - 0.2,
        [r["cos_noise_mean"] for r in variants],
        0.4,
        label="same scene + noise",
        color=NODE_COLOURS[0],
    )
    ax.bar(
        x + 0.2,
        [r["cos_different_mean"] for r in variants],
        0.4,
        label="different scenes",
        color=NODE_COLOURS[1],
    )
    ax.errorbar(
        x + 0.2,
        [r["cos_different_max"] for r in variants],
        fmt="v",
        color="black",
        label="different scenes, max",
    )
    ax.set_xticks(x, [r["variant"] for r in variants])
    ax.set_ylabel("cosine similarity")
    ax.set_ylim(min(0.0, min(r["cos_different_mean"] for r in variants) - 0.05), 1.3)
    ax.legend(loc="upper right", fontsize=9)
    ax.set_title(f"mean over {n} real tiles")
    tx.set_axis_off()
    table = tx.table(
        cellText=[
            [
                r["variant"],
                r["dim"],
                f"{r['params']:,}",
                f"{r['cos_noise_mean']:.3f}",
                f"{r['cos_different_mean']:.3f}",
                f"{100 * r['noisy_copy_ranked_first']:.0f}%",
            ]
            for r in variants
        ],
        colLabels=["variant", "dim", "params", "cos noise", "cos diff", "noisy copy top-1"],
        loc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(6)))
    table.scale(1, 2)
    fig.suptitle("NetVLAD variants on pretrained Lite0 features (k-means initialised, untrained)")
    fig.tight_layout()
    fig.savefig(out_dir / "netvlad_variants.png", dpi=90)
    plt.close(fig)

    return {
        "raster": str(src),
        "tiles": len(tiles),
        "figures": [
            str(out_dir / f)
            for f in ("netvlad_assignment.png", "netvlad_descriptor.png", "netvlad_variants.png")
        ],
        "noise_sigma": NOISE_SIGMA,
        "scene_vs_noise_vs_different": {k: round(val, 4) for k, val in sims2.items()},
        "variants": variants,
    }
