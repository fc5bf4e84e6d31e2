"""Side by side on one protocol: the baselines of ``shared/notes/baseline-retrieval.md`` and the
SGM-Net heads (untrained, shipped, and any ``--checkpoint NAME=PATH``).

Usage::

    D=../shared/data/turku
    python scripts/baseline_comparison.py --eval-raster $D/turku_mosaic_utm34n.tif \\
        --train-raster $D/sat_map_06.tif ... [--views 150] [--max-tilt 10] \\
        [--headings 4 --headings 8] [--gsd 0.28] [--checkpoint NAME=PATH] [--out results.json]

The protocol is ``geoloc eval --synthetic`` (tiles as ingest cuts them, stride half a tile, N
synthetic views with a fixed seed, heading unknown: H north-up hypotheses, exact cosine search,
loc@k = a top-k tile centre within one stride of the truth). The baselines are re-implemented on
the same frozen EfficientNet-Lite0 features (stride 16, 112 channels) and evaluated on the same
tiles and views:

- ``avgpool``: the feature map averaged over space;
- ``1x1+InfoNCE``: a 1x1 conv (112 -> 256) then the spatial average, trained with a symmetric
  InfoNCE loss (in-batch negatives, temperature 0.07, Adam 1e-3) on synthetic pairs of the
  ``--train-raster`` rasters (never the evaluation raster), ``--baseline-steps`` steps of 64.

Prints a markdown table on stdout (loc@1/5/10 per method and score) and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geoloc.evaluation.retrieval import evaluate_retrieval, make_queries, make_tiles
from geoloc.models import build_encoder, load_encoder
from geoloc.models.base import EncoderOutput


class PooledBaseline(torch.nn.Module):
    """A frozen SGM-Net backbone, then (optionally) a 1x1 conv, then the spatial mean: Ω = Φ."""

    def __init__(self, backbone_of: Any, conv: torch.nn.Conv2d | None = None) -> None:
        super().__init__()
        self.inner = backbone_of
        self.conv = conv
        self.freeze_backbone = True
        self.weights_sha256: str | None = None  # not a shipped or checkpointed encoder

    def config(self) -> dict[str, Any]:
        """The backbone part of the inner encoder's config (shares its feature cache)."""
        return self.inner.config()

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """As the inner encoder."""
        return self.inner.preprocess(images)

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """As the inner encoder."""
        return self.inner.backbone_features(x)

    def forward_head(self, feats: torch.Tensor) -> EncoderOutput:
        """Pooled (and projected) features as both descriptors."""
        x = self.conv(feats) if self.conv is not None else feats
        v = F.normalize(x.mean((2, 3)), dim=1)
        k = torch.zeros(len(v), 1)
        return EncoderOutput(omega=v, phi=v, node_areas=k, node_centroids=k, assignments=k)


def train_1x1(enc: Any, rasters: list[Path], steps: int, seed: int) -> torch.nn.Conv2d:
    """The note's baseline head: 1x1 conv 112 -> 256 + mean, InfoNCE on synthetic pairs."""
    from geoloc.training.datasets import RasterPairs

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    src = RasterPairs(rasters, gsd_range=(0.14, 0.5), val_fraction=0.0)
    pairs = [src.sample(256, rng) for _ in range(4)]
    fa, fp, ok = [], [], []
    with torch.no_grad():
        for p in pairs:
            fa.append(enc.backbone_features(enc.preprocess(p.anchors)))
            fp.append(enc.backbone_features(enc.preprocess(p.positives)))
            ok.append(torch.as_tensor(p.negative_ok))
    conv = torch.nn.Conv2d(fa[0].shape[1], 256, 1)
    opt = torch.optim.Adam(conv.parameters(), lr=1e-3)
    for _ in range(steps):
        c = int(rng.integers(len(pairs)))
        idx = torch.as_tensor(rng.choice(256, size=64, replace=False))
        a = F.normalize(conv(fa[c][idx]).mean((2, 3)), dim=1)
        b = F.normalize(conv(fp[c][idx]).mean((2, 3)), dim=1)
        mask = ok[c][idx][:, idx] | torch.eye(64, dtype=torch.bool)
        s = (a @ b.T / 0.07).masked_fill(~mask, -1e9)
        t = torch.arange(64)
        loss = 0.5 * (F.cross_entropy(s, t) + F.cross_entropy(s.T, t))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return conv


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-raster", type=Path, required=True)
    ap.add_argument("--train-raster", type=Path, action="append", required=True)
    ap.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument("--views", type=int, default=150)
    ap.add_argument("--max-tilt", type=float, default=10.0)
    ap.add_argument("--headings", type=int, action="append")
    ap.add_argument("--gsd", type=float, default=None, help="tile GSD (default: native)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None, help="frozen-backbone feature cache")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    untrained = build_encoder("sgmnet")
    encoders: dict[str, Any] = {
        "avgpool": PooledBaseline(untrained),
        "1x1+InfoNCE": PooledBaseline(
            untrained, train_1x1(untrained, args.train_raster, args.baseline_steps, args.seed)
        ),
        "sgmnet untrained": untrained,
        "sgmnet shipped": load_encoder("sgmnet"),
    }
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        encoders[name] = load_encoder("sgmnet", checkpoint=path)
    db = make_tiles(args.eval_raster, 224, None, args.gsd)
    q = make_queries(args.eval_raster, args.views, db, seed=args.seed, max_tilt_deg=args.max_tilt)
    results: dict[str, Any] = {}
    for h in args.headings or [4]:
        results[f"H{h}"] = evaluate_retrieval(
            encoders,
            db,
            q,
            headings=h,
            log=lambda m: print(m, file=sys.stderr),
            cache_dir=args.cache_dir,
        )
    heads = " | ".join(f"loc@1 H={h[1:]}" for h in results)
    print(f"| method | score | {heads} | loc@5 / loc@10 (H={next(iter(results))[1:]}) |")
    print("|---|---|" + "---|" * len(results) + "---|")
    first = next(iter(results.values()))["results"]
    for name, per in first.items():
        for score, m in per.items():
            if name in ("avgpool", "1x1+InfoNCE") and score != "omega":
                continue  # Ω = Φ for the pooled baselines
            cells = [f"{r['results'][name][score]['loc@1']:.3f}" for r in results.values()]
            print(
                f"| {name} | {'pooled' if name in ('avgpool', '1x1+InfoNCE') else score} | "
                f"{' | '.join(cells)} | {m['loc@5']:.3f} / {m['loc@10']:.3f} |"
            )
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if args.out:
        args.out.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
