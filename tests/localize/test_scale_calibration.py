"""The calibrated confidence of the answer stage and the fit that produces its constants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import scale_calibrate as cal
from geoloc.localize.answer import Answer, calibrated_confidence


def test_calibrated_confidence_is_a_monotone_logistic() -> None:
    w = (-3.0, 1.2, 2.0, -0.3)
    c0 = calibrated_confidence(w, inliers=0, margin=0.0, rmse_px=0.0)
    assert c0 == pytest.approx(1.0 / (1.0 + math.exp(3.0)))
    by_inliers = [
        calibrated_confidence(w, inliers=n, margin=0.2, rmse_px=1.0) for n in (0, 5, 20, 80)
    ]
    assert by_inliers == sorted(by_inliers) and by_inliers[0] < by_inliers[-1]
    by_margin = [calibrated_confidence(w, inliers=10, margin=m, rmse_px=1.0) for m in (0, 0.5, 1)]
    assert by_margin == sorted(by_margin)
    assert calibrated_confidence(w, inliers=10, margin=0.5, rmse_px=4.0) < calibrated_confidence(
        w, inliers=10, margin=0.5, rmse_px=1.0
    )
    # no overflow at extreme evidence
    assert 0.0 <= calibrated_confidence(w, inliers=10**9, margin=1e6, rmse_px=0.0) <= 1.0
    assert (
        Answer.default_conf["calibration"] is None or len(Answer.default_conf["calibration"]) == 4
    )


def _records(n: int, rng: np.random.Generator, w_true: np.ndarray) -> list[dict[str, object]]:
    recs: list[dict[str, object]] = []
    for i in range(n):
        inl = int(rng.integers(0, 200))
        margin = float(rng.uniform(0, 1))
        rmse = float(rng.uniform(0, 3)) if inl else 0.0
        z = w_true[0] + w_true[1] * math.log1p(inl) + w_true[2] * margin + w_true[3] * rmse
        right = rng.uniform() < 1 / (1 + math.exp(-z))
        neg = i % 5 == 0
        recs.append(
            {
                "kind": "negative" if neg else "synthetic",
                "inliers": inl,
                "margin": margin,
                "rmse_px": rmse,
                "error_m": None if neg else (1.0 if right else 300.0),
                "confidence": 0.5,
            }
        )
    return recs


def test_logistic_fit_recovers_known_weights_and_threshold_meets_limits() -> None:
    rng = np.random.default_rng(3)
    w_true = np.array([-4.0, 1.5, 1.0, -0.5])
    recs = [r for r in _records(4000, rng, w_true) if r["kind"] != "negative"]
    x = cal.features(recs)  # type: ignore[arg-type]
    y = np.array([cal.is_right(r) for r in recs], dtype=np.float64)  # type: ignore[arg-type]
    w = cal.fit_logistic(x, y, l2=1e-4)
    assert np.allclose(w, w_true, atol=0.45), w
    rel = cal.reliability(cal.predict(w, x), y)
    assert rel["ece"] < 0.05
    # the chosen threshold keeps wrong-accepted and negatives-accepted within 1 %
    mixed = _records(2000, rng, w_true)
    for r in mixed:  # negatives carry weak evidence here, as they do in the benchmark
        if r["kind"] == "negative":
            r["inliers"], r["margin"] = 0, 0.0
    conf = cal.predict(w, cal.features(mixed))  # type: ignore[arg-type]
    thr = cal.choose_threshold(conf, mixed)  # type: ignore[arg-type]
    r = cal.rates(conf, mixed, thr)  # type: ignore[arg-type]
    assert r["wrong_accepted_of_positives"] <= 0.01 and r["negatives_accepted"] <= 0.01
    assert r["right_accepted_of_positives"] > 0.3
