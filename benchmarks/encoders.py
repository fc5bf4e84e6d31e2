"""Encoder speed on CPU: images/s at batch 1 and 16, eager vs optimised, GFLOPs, share of peak.

For every built-in encoder: parameters, GFLOPs per 224 px image (torch FlopCounterMode, 2 × MACs),
images/s (median of timed forward passes on normalised input; image decoding excluded) at batch 1
and 16, eager and after ``optimize_for_inference()`` (BN folded, channels_last), and the achieved
GFLOP/s as a share of the fp32 matmul peak measured by ``benchmarks.roofline`` in the same run.
``run(full=False) -> dict`` saves ``benchmarks/results/encoders.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ENCODERS = ("sgmnet", "netvlad", "sgmnet-resnet50", "sgmnet-vgg16")
TARGET_DEFAULT_IMG_S = 100.0


def images_per_second(
    enc: Any, batch: int, seconds: float, min_iters: int = 2
) -> tuple[float, float]:
    """(wall-clock, CPU-time) median images/s of ``enc.forward`` on a fixed normalised batch.

    The CPU-time figure is batch / (process CPU seconds / torch threads): what the run would give
    on an otherwise idle machine if the work scaled perfectly; the wall-clock one is what it gave.
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x = enc.preprocess(rng.integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8))
    times: list[float] = []
    cpu: list[float] = []
    threads = torch.get_num_threads()
    with torch.inference_mode():
        for _ in range(3):  # warm-up (a frozen trace specialises during its first two calls)
            enc(x)
        end = time.perf_counter() + seconds
        while len(times) < min_iters or time.perf_counter() < end:
            t, c = time.perf_counter(), time.process_time()
            enc(x)
            times.append(time.perf_counter() - t)
            cpu.append((time.process_time() - c) / threads)
    return batch / statistics.median(times), batch / statistics.median(cpu)


def run(full: bool = False) -> dict[str, Any]:
    """Benchmark every built-in encoder; save ``results/encoders.json``."""
    import torch

    from benchmarks import roofline
    from geoloc.models import build_encoder

    load_before = os.getloadavg()[0]
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
                ips, ips_cpu = images_per_second(enc, batch, seconds, 1 if heavy else 3)
                key = f"{mode}_b{batch}"
                row[f"img_s_{key}"] = round(ips, 2)
                row[f"img_s_cpu_{key}"] = round(ips_cpu, 2)
                achieved = ips * gflops
                row[f"gflop_s_{key}"] = round(achieved, 2)
                row[f"peak_share_{key}"] = round(achieved / peak["fp32_matmul_gflops"], 4)
        rows.append(row)
        del enc
    # the peak again at the end: the larger of the two is this run's reference
    peak_end = roofline.measure(full)
    if peak_end["fp32_matmul_gflops"] > peak["fp32_matmul_gflops"]:
        peak = peak_end
    for row in rows:
        for key in [k for k in row if k.startswith("gflop_s_")]:
            share = row[key] / peak["fp32_matmul_gflops"]
            row[key.replace("gflop_s_", "peak_share_")] = round(share, 4)
    # Contention-robust figure for the default: one thread, process CPU time (no OpenMP spinning)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single: dict[str, float] = {}
        for mode in ("eager", "optimized"):
            enc = build_encoder(ENCODERS[0]).eval()
            if mode == "optimized":
                enc.optimize_for_inference()
            single[f"{mode}_b16"] = round(images_per_second(enc, 16, seconds, 3)[1], 2)
    finally:
        torch.set_num_threads(threads)
    rows[0]["img_s_cpu_1thread"] = single
    default = rows[0]
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "peak": peak,
        "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        "cores": os.cpu_count(),
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
        "  b16 opt (CPU time)"
    )
    lines = [head]
    for r in result["encoders"]:
        lines.append(
            f"{r['encoder']:<16} {r['gflops_224']:>6.2f}  {r['params_m']:>9.2f}  "
            f"{r['img_s_eager_b1']:>8.1f}  {r['img_s_optimized_b1']:>6.1f}  "
            f"{r['img_s_eager_b16']:>9.1f}  {r['img_s_optimized_b16']:>7.1f}  "
            f"{100 * r['peak_share_optimized_b16']:>13.1f}"
            f"  {r['img_s_cpu_optimized_b16']:>18.1f}"
        )
    lines.append(
        f"fp32 matmul peak: {result['peak']['fp32_matmul_gflops']} GFLOP/s; "
        f"load average {result['load_average_1min']} on {result['cores']} cores"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    res = run(full="--full" in sys.argv[1:])
    print(_table(res), file=sys.stderr)
    print(json.dumps(res, indent=2))
