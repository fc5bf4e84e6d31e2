"""University-1652 drone -> satellite retrieval evaluation (recall@k, AP, recall@top-1%)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoloc.metrics import mean_average_precision, recall_at_k, recall_at_top_percent
from geoloc.models.base import Encoder
from geoloc.training.datasets import University1652, read_image

__all__ = ["evaluate_university1652"]


def _encode(enc: Any, paths: list[Path], size: int, batch: int = 16) -> tuple[torch.Tensor, ...]:
    om, ph = [], []
    for i in range(0, len(paths), batch):
        imgs = np.stack([read_image(p, size) for p in paths[i : i + batch]])
        out = enc.encode(imgs)
        om.append(out.omega)
        ph.append(torch.nn.functional.normalize(out.phi, dim=1))
    return torch.cat(om), torch.cat(ph)


def evaluate_university1652(
    encoders: Mapping[str, Encoder], root: str | Path, *, max_queries: int | None = None
) -> dict[str, Any]:
    """Rank the gallery satellite images for every query drone image, per encoder and score."""
    data = University1652(root)
    q_paths, q_ids, g_paths, g_ids = data.evaluation_set(max_queries)
    gid = np.array(g_ids)
    relevant = [set(np.nonzero(gid == i)[0].tolist()) for i in q_ids]
    results: dict[str, Any] = {}
    for name, enc in encoders.items():
        size = int(enc.input_size)
        qo, qp = _encode(enc, q_paths, size)
        go, gp = _encode(enc, g_paths, size)
        res: dict[str, Any] = {}
        for sname, s in {
            "omega": qo @ go.T,
            "phi": qp @ gp.T,
            "omega+phi": qo @ go.T + qp @ gp.T,
        }.items():
            ranked = torch.argsort(s, dim=1, descending=True).tolist()
            rec = recall_at_k(ranked, relevant, (1, 5, 10))
            res[sname] = {
                **{f"R@{k}": v for k, v in rec.items()},
                "AP": mean_average_precision(ranked, relevant),
                "R@top1%": recall_at_top_percent(ranked, relevant, len(g_paths)),
            }
        results[name] = res
    return {
        "protocol": {"queries": len(q_paths), "gallery": len(g_paths), "root": str(root)},
        "results": results,
    }
