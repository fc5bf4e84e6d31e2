"""Draw the README's benchmark figure from ``benchmarks/results/*.json``.

Usage: ``python -m benchmarks.plot`` (after ``make bench``) -> ``docs/img/benchmarks.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "benchmarks.png"


def _load(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def main() -> int:
    """Write the two-panel figure: encoder throughput and locate per-stage latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    enc = _load("encoders")
    loc = _load("locate")
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = enc.get("encoders", [])
    names = [r["encoder"] for r in rows]
    x = range(len(names))
    a.bar([i - 0.2 for i in x], [r["img_s_eager_b16"] for r in rows], 0.4, label="eager")
    a.bar([i + 0.2 for i in x], [r["img_s_optimized_b16"] for r in rows], 0.4, label="optimised")
    a.axhline(100, color="k", ls="--", lw=1, label="target (default encoder)")
    a.set_xticks(list(x), names, rotation=15)
    a.set_ylabel("images / s (batch 16, 2 threads)")
    peak = enc.get("peak", {}).get("fp32_matmul_gflops")
    a.set_title(f"Encoders (fp32 matmul peak {peak} GFLOP/s)")
    a.legend()
    timings = next(iter(loc.get("warm", {}).values()), {}).get("timings_ms", {})
    stages = [
        s
        for s in ("rotate", "encode", "recall", "fetch", "rerank", "consistency", "verify")
        if s in timings
    ]
    b.barh(stages, [timings[s]["p50"] for s in stages], label="p50")
    b.barh(
        stages,
        [timings[s]["p95"] - timings[s]["p50"] for s in stages],
        left=[timings[s]["p50"] for s in stages],
        alpha=0.5,
        label="p95",
    )
    b.set_xscale("log")
    b.set_xlabel("ms per frame (warm, heading unknown)")
    b.set_title("locate: per-stage latency")
    b.legend()
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
