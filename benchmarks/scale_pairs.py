"""Paired comparison of two pipelines on one scale database, in one process.

This machine's speed drifts by tens of percent within minutes, so two benchmark runs minutes
apart cannot decide a change of a few percent. This script opens two localizers (pipeline A and
pipeline B: the ``accurate`` preset with knob overrides) on the same database built by
:mod:`benchmarks.scale`, and locates every query with both, swapping which goes first on every
other query. It reports, per outcome (located / rejected as A answered), the per-query ratio
B/A of the total time (median and quartiles), the p50 of each, the summed stage times, and every
query whose answers differ (status, or position by more than 0.5 m).

Usage::

    python -m benchmarks.scale_pairs --size 100000 \
        --b '{"verify": {"name": "xfeat-lighterglue", "coarse_product": "fp32"}}'
    python -m benchmarks.scale_pairs --size 10000 --a '{...}' --b '{...}' --queries 40 --seed 1

The database must exist (``python -m benchmarks.scale --sizes N --build-only``). Knobs are JSON
objects of pipeline keys (as a pipeline file would set them). Writes nothing unless ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import scale


def _open(settings: Any, enc: Any, knobs: dict[str, Any]) -> Any:
    from geoloc.localize import Localizer
    from geoloc.localize.pipeline import from_dict

    pipeline = from_dict({"preset": "accurate", **knobs}, where="benchmarks.scale_pairs")
    loc = Localizer.open(settings, encoder=enc, pipeline=pipeline)
    loc.warm()
    return loc


def _one(loc: Any, q: scale.Query) -> dict[str, Any]:
    t0 = time.perf_counter()
    fix = loc.locate(q.image, gsd=q.gsd, name=q.name)
    wall = (time.perf_counter() - t0) * 1e3
    st = loc.last_state
    return {
        "status": fix.status,
        "lat": fix.lat,
        "lon": fix.lon,
        "wall_ms": wall,
        "timings_ms": dict(fix.timings_ms),
        "attempts": st.match.attempts if st is not None and st.match is not None else None,
    }


def _moved_m(a: dict[str, Any], b: dict[str, Any]) -> float:
    from tiling.crs import geodesic_distance_m

    if a["status"] != "ok" or b["status"] != "ok" or a["lat"] is None or b["lat"] is None:
        return 0.0  # a no_match's position is no answer
    return float(geodesic_distance_m(a["lon"], a["lat"], b["lon"], b["lat"]))


def compare(size: int, a: dict[str, Any], b: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    """Both pipelines on every query of :func:`benchmarks.scale.queries` (``n``, ``seed``)."""
    settings, _ = scale.build(size, None, ingest_missing=False)
    enc = scale.encoder()
    qs = scale.queries(n, seed)
    locs = {"A": _open(settings, enc, a), "B": _open(settings, enc, b)}
    try:
        for loc in locs.values():  # first-call allocations
            loc.locate(qs[0].image, gsd=qs[0].gsd)
        rows = []
        for i, q in enumerate(qs):
            order = ("A", "B") if i % 2 == 0 else ("B", "A")
            got = {k: _one(locs[k], q) for k in order}
            rows.append({"name": q.name, "kind": q.kind, **got})
            ra, rb = got["A"], got["B"]
            scale.log(
                f"{q.name}: A {ra['status']} {ra['timings_ms'].get('total', 0):.0f} ms, "
                f"B {rb['status']} {rb['timings_ms'].get('total', 0):.0f} ms"
            )
    finally:
        for loc in locs.values():
            loc.close()
        scale._stop(settings)
    return {"size": size, "a": a, "b": b, "queries": n, "seed": seed, "rows": rows}


def report(res: dict[str, Any]) -> str:
    """The comparison's summary as text."""
    rows = res["rows"]
    lines = [f"size {res['size']}, {len(rows)} queries; A={res['a']} B={res['b']}"]
    for outcome in ("ok", "no_match"):
        sel = [r for r in rows if r["A"]["status"] == outcome]
        if not sel:
            continue
        ta = np.array([r["A"]["timings_ms"].get("total", 0.0) for r in sel])
        tb = np.array([r["B"]["timings_ms"].get("total", 0.0) for r in sel])
        ratio = tb / np.maximum(ta, 1e-9)
        q1, med, q3 = np.percentile(ratio, [25, 50, 75])
        lines.append(
            f"{outcome}: {len(sel)} queries; p50 A {np.median(ta):.0f} ms, B {np.median(tb):.0f} "
            f"ms; per-query B/A median {med:.3f} (quartiles {q1:.3f}-{q3:.3f})"
        )
        stages = sorted({k for r in sel for k in r["A"]["timings_ms"]} - {"total"})
        for s in stages:
            sa = sum(r["A"]["timings_ms"].get(s, 0.0) for r in sel)
            sb = sum(r["B"]["timings_ms"].get(s, 0.0) for r in sel)
            if max(sa, sb) >= 20.0:
                lines.append(f"    {s:26s} A {sa:8.0f}  B {sb:8.0f} ms summed")
    counts = {k: sum(r[k]["status"] == "ok" for r in rows if r["kind"] != "negative") for k in "AB"}
    neg = {k: sum(r[k]["status"] == "ok" for r in rows if r["kind"] == "negative") for k in "AB"}
    lines.append(f"positives answered ok: A {counts['A']}, B {counts['B']}; negatives ok: {neg}")
    for r in rows:
        if r["A"]["status"] != r["B"]["status"] or _moved_m(r["A"], r["B"]) > 0.5:
            lines.append(
                f"  differs: {r['name']}: A {r['A']['status']} B {r['B']['status']} "
                f"moved {_moved_m(r['A'], r['B']):.2f} m"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description="paired A/B of two pipelines on a scale database")
    ap.add_argument("--size", type=int, default=100000, help="database size (as built)")
    ap.add_argument("--a", default="{}", help="JSON pipeline knobs of A (default: the preset)")
    ap.add_argument("--b", default="{}", help="JSON pipeline knobs of B")
    ap.add_argument("--queries", type=int, default=40, help="synthetic positives")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    res = compare(args.size, json.loads(args.a), json.loads(args.b), args.queries, args.seed)
    text = report(res)
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
