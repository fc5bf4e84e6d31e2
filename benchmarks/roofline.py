"""This machine's measured fp32 peak: dense matmul GFLOP/s and memory copy GB/s (torch, CPU).

``run(full=False) -> dict`` saves ``benchmarks/results/roofline.json``; other benchmarks call
:func:`measure` in their own run so that achieved/peak ratios share one machine state.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_gflops(n: int = 1024, seconds: float = 1.0) -> float:
    """Best fp32 GFLOP/s of ``n×n @ n×n`` (2·n³ FLOPs) over about ``seconds``."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)  # warm-up
    best = 0.0
    end = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        dt = time.perf_counter() - t
        best = max(best, 2 * n**3 / dt / 1e9)
        if time.perf_counter() > end:
            return best


def copy_gbs(mb: int = 256, seconds: float = 1.0) -> float:
    """Best memory bandwidth in GB/s of copying ``mb`` MB (read + write counted)."""
    import torch

    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = 0.0
    end = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        dst.copy_(src)
        dt = time.perf_counter() - t
        best = max(best, 2 * src.numel() * 4 / dt / 1e9)
        if time.perf_counter() > end:
            return best


def measure(full: bool = False) -> dict[str, Any]:
    """Peak numbers of this machine with the current torch thread count."""
    import torch

    secs = 3.0 if full else 1.0
    return {
        "torch_threads": torch.get_num_threads(),
        "matmul_n": 1024,
        "fp32_matmul_gflops": round(matmul_gflops(1024, secs), 2),
        "copy_gbs": round(copy_gbs(256, secs), 2),
    }


def run(full: bool = False) -> dict[str, Any]:
    """Measure and save ``results/roofline.json``."""
    result = measure(full)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "roofline.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    print(json.dumps(run(full="--full" in sys.argv[1:]), indent=2))
