"""Encoder speed on CPU: images/s at batch 1 and 16, eager vs optimised, GFLOPs, share of peak.

For every built-in encoder: parameters, GFLOPs per 224 px image (torch FlopCounterMode, 2 × MACs),
images/s (median of timed forward passes on normalised input; image decoding excluded) at batch 1
and 16, eager and after ``optimize_for_inference()`` (BN folded, channels_last), and the achieved
GFLOP/s as a share of the fp32 matmul peak measured by ``benchmarks.roofline`` in the same run.
``run(full=False) -> dict`` saves ``benchmarks/results/encoders.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ENCODERS = ("sgmnet", "netvlad", "sgmnet-resnet50", "sgmnet-vgg16")
TARGET_DEFAULT_IMG_S = 100.0


def images_per_second(enc: Any, batch: int, seconds: float, min_iters: int = 2) -> float:
    """Median images/s of ``enc.forward`` on a fixed normalised batch."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x = enc.preprocess(rng.integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8))
    times: list[float] = []
    with torch.inference_mode():
        enc(x)  # warm-up
        end = time.perf_counter() + seconds
        while len(times) < min_iters or time.perf_counter() < end:
            t = time.perf_counter()
            enc(x)
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def run(full: bool = False) -> dict[str, Any]:
    """Benchmark every built-in encoder; save ``results/encoders.json``."""
    import torch

    from benchmarks import roofline
    from geoloc.models import build_encoder

    peak = roofline.measure(full)
    seconds = 4.0 if full else 1.0
    rows: list[dict[str, Any]] = []
    for name in ENCODERS:
        print(f"   encoder {name}", file=sys.stderr, flush=True)
        enc = build_encoder(name).eval()
        gflops = enc.gflops()
        row: dict[str, Any] = {
            "encoder": name,
            "backbone": getattr(enc, "backbone_name", None),
            "params_m": round(enc.count_parameters() / 1e6, 3),
            "gflops_224": round(gflops, 3),
        }
        for mode in ("eager", "optimized"):
            if mode == "optimized":
                enc.optimize_for_inference()
            for batch in (1, 16):
                heavy = gflops > 5 and not full
                ips = images_per_second(enc, batch, seconds, min_iters=1 if heavy else 3)
                key = f"{mode}_b{batch}"
                row[f"img_s_{key}"] = round(ips, 2)
                achieved = ips * gflops
                row[f"gflop_s_{key}"] = round(achieved, 2)
                row[f"peak_share_{key}"] = round(achieved / peak["fp32_matmul_gflops"], 4)
        rows.append(row)
        del enc
    default = rows[0]
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "peak": peak,
        "encoders": rows,
        "default_target_img_s_b16": TARGET_DEFAULT_IMG_S,
        "default_meets_target": default["img_s_optimized_b16"] >= TARGET_DEFAULT_IMG_S,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "encoders.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _table(result: dict[str, Any]) -> str:
    head = (
        "encoder          GFLOPs  params(M)  b1 eager  b1 opt  b16 eager  b16 opt  peak%(b16 opt)"
    )
    lines = [head]
    for r in result["encoders"]:
        lines.append(
            f"{r['encoder']:<16} {r['gflops_224']:>6.2f}  {r['params_m']:>9.2f}  "
            f"{r['img_s_eager_b1']:>8.1f}  {r['img_s_optimized_b1']:>6.1f}  "
            f"{r['img_s_eager_b16']:>9.1f}  {r['img_s_optimized_b16']:>7.1f}  "
            f"{100 * r['peak_share_optimized_b16']:>13.1f}"
        )
    lines.append(f"fp32 matmul peak: {result['peak']['fp32_matmul_gflops']} GFLOP/s")
    return "\n".join(lines)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    res = run(full="--full" in sys.argv[1:])
    print(_table(res), file=sys.stderr)
    print(json.dumps(res, indent=2))
