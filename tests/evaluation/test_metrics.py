"""Metric functions on constructed rankings and known distances."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoloc.metrics import (
    average_precision,
    error_summary,
    errors_m,
    latency_summary,
    mean_average_precision,
    recall_at_k,
    recall_at_top_percent,
    rejection_summary,
)

RANKED = [[3, 1, 2, 4], [1, 2, 3, 4], [4, 3, 2, 1], [2, 4, 1, 3]]
RELEVANT = [{3}, {4}, {1}, {9}]  # hit at rank 1, rank 4, rank 4, never


def test_recall_at_k() -> None:
    r = recall_at_k(RANKED, RELEVANT, ks=(1, 2, 4))
    assert r == {1: 0.25, 2: 0.25, 4: 0.75}


def test_recall_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError):
        recall_at_k(RANKED, RELEVANT[:2])
    with pytest.raises(ValueError):
        recall_at_k(RANKED, RELEVANT, ks=(0,))


def test_average_precision_known_values() -> None:
    assert average_precision([1, 2, 3], {1}) == 1.0
    assert average_precision([2, 1, 3], {1}) == 0.5
    # relevant at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision([5, 6, 7, 8], {5, 7}) == pytest.approx((1 + 2 / 3) / 2)
    # one relevant id never retrieved: it contributes 0
    assert average_precision([5, 6], {5, 99}) == pytest.approx(0.5)
    assert math.isnan(average_precision([1], set()))
    assert mean_average_precision(RANKED, RELEVANT) == pytest.approx((1 + 0.25 + 0.25 + 0) / 4)


def test_recall_at_top_percent() -> None:
    # 150 database items -> top 1% = 2
    assert recall_at_top_percent(RANKED, RELEVANT, n_database=150) == 0.25
    # 400 items -> top 1% = 4
    assert recall_at_top_percent(RANKED, RELEVANT, n_database=400) == 0.75


def test_errors_in_metres_are_geodesic() -> None:
    lat = 60.4
    # 0.001 deg of latitude ~ 111.3 m at 60 N; 0.001 deg of longitude ~ 55.2 m
    e = errors_m([22.46, 22.461, None], [lat + 0.001, lat, lat], [22.46] * 3, [lat] * 3)
    assert e[0] == pytest.approx(111.4, abs=0.5)
    assert e[1] == pytest.approx(55.3, abs=0.5)
    assert np.isinf(e[2])


def test_error_summary_counts_unanswered_as_misses() -> None:
    s = error_summary([1.0, 4.0, 20.0, 100.0, float("inf")])
    assert s["n"] == 5 and s["n_answered"] == 4
    assert s["median_m"] == pytest.approx(12.0)
    assert s["mean_m"] == pytest.approx(31.25)
    assert s["within_5m"] == pytest.approx(0.4)
    assert s["within_25m"] == pytest.approx(0.6)
    assert s["within_50m"] == pytest.approx(0.6)


def test_rejection_and_latency() -> None:
    r = rejection_summary([True, True, False, False, False], [True, False, False, True, False])
    assert r["negatives_rejected"] == 0.5
    assert r["positives_rejected"] == pytest.approx(1 / 3)
    lat = latency_summary(list(range(1, 101)))
    assert lat["p50_ms"] == pytest.approx(50.5)
    assert lat["p95_ms"] == pytest.approx(95.05)


def test_rerank_orders_only_the_first_stage_candidates() -> None:
    import torch

    from geoloc.evaluation.retrieval import _rerank

    first = torch.tensor([[0.9, 0.8, 0.1, 0.7]])
    second = torch.tensor([[0.1, 0.5, 0.99, 0.2]])
    s = _rerank(first, second, depth=3)  # candidates 0, 1, 3; tile 2 is out of depth
    assert s.argsort(dim=1, descending=True)[0, :3].tolist() == [1, 3, 0]
    assert s[0, 2] < s[0, 0]
