"""Run every benchmark in one process so ratios share one machine state; save and print a table.

Usage: ``python -m benchmarks.run_all [--full] [--only NAME ...]``. Each benchmark module exposes
``run(full: bool = False) -> dict`` and saves its own ``benchmarks/results/<name>.json``; this
script adds ``benchmarks/results/summary.json`` with the date, machine and commit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ("roofline", "encoders", "tiler", "store", "ingest", "locate", "camera")


def git_commit() -> str:
    """The checked-out commit (short), or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def machine() -> dict[str, Any]:
    """Describe this machine for the results header."""
    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and write the summary."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--full", action="store_true", help="include the 1M-tile scale case")
    p.add_argument("--only", nargs="*", default=None, choices=ORDER)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"machine": machine(), "results": {}, "errors": {}}
    for name in args.only or ORDER:
        t0 = time.perf_counter()
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
            summary["results"][name] = mod.run(full=args.full)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            summary["errors"][name] = f"{type(exc).__name__}: {exc}"
        print(f"   {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary["machine"], indent=2))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
