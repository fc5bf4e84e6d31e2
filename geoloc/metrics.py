"""Metrics of training validation and evaluation: retrieval (recall@k, AP, recall@top-1%),
metres error, rejection, latency.

Rankings are sequences of database ids, best first; ``relevant`` holds, per query, the set of ids
that count as correct. Errors are geodesic distances on the WGS 84 ellipsoid.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from tiling.crs import geodesic_distance_m

__all__ = [
    "average_precision",
    "error_summary",
    "errors_m",
    "latency_summary",
    "mean_average_precision",
    "recall_at_k",
    "recall_at_top_percent",
    "rejection_summary",
]

DEFAULT_THRESHOLDS_M: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0)


def _check(ranked: Sequence[Sequence[Any]], relevant: Sequence[Collection[Any]]) -> None:
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevance sets")


def recall_at_k(
    ranked: Sequence[Sequence[Any]],
    relevant: Sequence[Collection[Any]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[int, float]:
    """Share of queries with at least one relevant id among the first k, for each k.

    Queries with an empty relevant set count as misses (they cannot be retrieved).
    """
    _check(ranked, relevant)
    n = len(ranked)
    out: dict[int, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        hits = sum(1 for r, rel in zip(ranked, relevant, strict=True) if set(r[:k]) & set(rel))
        out[int(k)] = hits / n if n else float("nan")
    return out


def average_precision(ranking: Sequence[Any], relevant: Collection[Any]) -> float:
    """AP of one ranking: mean over the relevant ids of the precision at their rank.

    Relevant ids missing from the ranking contribute a precision of 0. Empty relevant set -> nan.
    """
    rel = set(relevant)
    if not rel:
        return float("nan")
    hits = 0
    total = 0.0
    for i, item in enumerate(ranking, start=1):
        if item in rel:
            hits += 1
            total += hits / i
    return total / len(rel)


def mean_average_precision(
    ranked: Sequence[Sequence[Any]], relevant: Sequence[Collection[Any]]
) -> float:
    """Mean AP over the queries that have at least one relevant id."""
    _check(ranked, relevant)
    aps = [average_precision(r, rel) for r, rel in zip(ranked, relevant, strict=True) if rel]
    return float(np.mean(aps)) if aps else float("nan")


def recall_at_top_percent(
    ranked: Sequence[Sequence[Any]],
    relevant: Sequence[Collection[Any]],
    n_database: int,
    percent: float = 1.0,
) -> float:
    """Recall@k with k = ceil(percent% of the database size) (at least 1)."""
    if n_database < 1:
        raise ValueError(f"n_database must be >= 1, got {n_database}")
    k = max(1, math.ceil(n_database * percent / 100.0))
    return recall_at_k(ranked, relevant, (k,))[k]


def errors_m(
    pred_lon: Sequence[float | None],
    pred_lat: Sequence[float | None],
    true_lon: Sequence[float],
    true_lat: Sequence[float],
) -> np.ndarray:
    """Geodesic error in metres per query; ``inf`` where there is no prediction (None/nan)."""
    pl = np.array([np.nan if v is None else v for v in pred_lon], dtype=float)
    pa = np.array([np.nan if v is None else v for v in pred_lat], dtype=float)
    tl = np.asarray(true_lon, dtype=float)
    ta = np.asarray(true_lat, dtype=float)
    if not (pl.shape == pa.shape == tl.shape == ta.shape):
        raise ValueError("prediction and truth arrays differ in length")
    out = np.full(pl.shape, np.inf)
    ok = np.isfinite(pl) & np.isfinite(pa)
    if ok.any():
        out[ok] = geodesic_distance_m(pl[ok], pa[ok], tl[ok], ta[ok])
    return out


def error_summary(
    errors: Sequence[float] | np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS_M
) -> dict[str, float | int]:
    """Median, mean and 90th percentile of the finite errors, and the share of ALL queries within
    each threshold (an unanswered query, error ``inf``, counts as outside every threshold)."""
    e = np.asarray(errors, dtype=float)
    fin = e[np.isfinite(e)]
    n = int(e.size)
    out: dict[str, float | int] = {
        "n": n,
        "n_answered": int(fin.size),
        "median_m": float(np.median(fin)) if fin.size else float("nan"),
        "mean_m": float(np.mean(fin)) if fin.size else float("nan"),
        "p90_m": float(np.percentile(fin, 90)) if fin.size else float("nan"),
    }
    for t in thresholds:
        key = f"within_{t:g}m"
        out[key] = float(np.sum(e <= t) / n) if n else float("nan")
    return out


def rejection_summary(is_negative: Sequence[bool], rejected: Sequence[bool]) -> dict[str, Any]:
    """Share of negatives rejected and of positives wrongly rejected (nan when there are none)."""
    neg = np.asarray(is_negative, dtype=bool)
    rej = np.asarray(rejected, dtype=bool)
    if neg.shape != rej.shape:
        raise ValueError("is_negative and rejected differ in length")
    n_neg = int(neg.sum())
    n_pos = int((~neg).sum())
    return {
        "n_negatives": n_neg,
        "n_positives": n_pos,
        "negatives_rejected": float(rej[neg].mean()) if n_neg else float("nan"),
        "positives_rejected": float(rej[~neg].mean()) if n_pos else float("nan"),
    }


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    """p50 and p95 of per-query latencies (milliseconds)."""
    a = np.asarray(ms, dtype=float)
    if a.size == 0:
        return {"p50_ms": float("nan"), "p95_ms": float("nan")}
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95))}
