"""Confidence calibration from the scale benchmark's per-query records.

Reads ``benchmarks/results/scale_<size>.json`` (every size found, or the files given; the held-out
views of an ingested place, which the benchmark counts apart, are left out), and

- draws the reliability diagram of the confidence the chain reports (confidence bins against the
  share of answers that are right: within 25 m of the truth; a negative is never right) into
  ``docs/img/scale_reliability.png``;
- fits a logistic mapping of the answer's evidence (log(1 + inliers), the retrieval margin, the
  verification RMSE) on one split of the queries (even positions) and checks it on the other
  (odd positions): expected calibration error and Brier score of both confidences;
- picks the lowest acceptance threshold on the calibrated confidence that keeps confident wrong
  answers within 1 % of positives and accepted negatives within 1 % of negatives on the fitting
  split, and reports what it gives on the check split;
- writes ``benchmarks/results/scale_calibration.json``.

Usage: ``python -m benchmarks.scale_calibrate [RESULT.json ...]``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scale import IMG, RESULTS, WRONG_M

FEATURES = ("log1p_inliers", "margin", "rmse_px")


def load(paths: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every per-query record of the given (default: every per-size) result files."""
    if not paths:
        paths = [
            p
            for p in sorted(RESULTS.glob("scale_*.json"))
            if p.stem.removeprefix("scale_").isdigit()
        ]
    recs: list[dict[str, Any]] = []
    for p in paths:
        for label, entry in json.loads(p.read_text())["sizes"].items():
            held = entry.get("summary", {}).get("same_place_held_out", {}).get("twins", [])
            # a held-out view whose place the database holds after all (another date of an
            # ingested image) has no truth and is no negative: the benchmark counts it apart
            same = {str(t).split(" ~ ")[0] for t in held}
            recs.extend({**r, "size": label} for r in entry["records"] if r["name"] not in same)
    return recs


def is_right(r: dict[str, Any]) -> bool:
    """The answer is right: a positive whose answer is within 25 m (a negative never is)."""
    return r["kind"] != "negative" and r["error_m"] is not None and r["error_m"] <= WRONG_M


def features(recs: list[dict[str, Any]]) -> np.ndarray:
    """(N, 3) evidence per record: log(1 + inliers), margin, RMSE (0 when nothing verified)."""
    return np.array(
        [[math.log1p(r["inliers"]), float(r["margin"]), float(r["rmse_px"])] for r in recs],
        dtype=np.float64,
    ).reshape(-1, 3)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> np.ndarray:
    """(bias, weights...) of an L2-regularised logistic regression by Newton steps."""
    a = np.hstack([np.ones((x.shape[0], 1)), x])
    w = np.zeros(a.shape[1])
    reg = l2 * np.eye(a.shape[1])
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        g = a.T @ (p - y) + reg @ w
        h = (a * (p * (1 - p))[:, None]).T @ a + reg + 1e-9 * np.eye(a.shape[1])
        step = np.linalg.solve(h, g)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w


def predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Calibrated confidences of the evidence ``x``."""
    return 1.0 / (1.0 + np.exp(-(w[0] + x @ w[1:])))


def reliability(conf: np.ndarray, right: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Per-bin mean confidence, share right and count; expected calibration error; Brier."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    rows = []
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if not m.any():
            continue
        mc, sr = float(conf[m].mean()), float(right[m].mean())
        ece += m.sum() / conf.size * abs(mc - sr)
        rows.append(
            {
                "bin": [round(edges[b], 2), round(edges[b + 1], 2)],
                "n": int(m.sum()),
                "mean_confidence": round(mc, 3),
                "share_right": round(sr, 3),
            }
        )
    brier = float(np.mean((conf - right) ** 2)) if conf.size else 0.0
    return {"bins": rows, "ece": round(float(ece), 4), "brier": round(brier, 4)}


def rates(conf: np.ndarray, recs: list[dict[str, Any]], thr: float) -> dict[str, float]:
    """Accepted-wrong share of positives, accepted share of negatives, located share (≤ 25 m)."""
    pos = np.array([r["kind"] != "negative" for r in recs])
    right = np.array([is_right(r) for r in recs])
    acc = conf >= thr
    n_pos, n_neg = max(int(pos.sum()), 1), max(int((~pos).sum()), 1)
    return {
        "wrong_accepted_of_positives": round(float((acc & pos & ~right).sum()) / n_pos, 4),
        "negatives_accepted": round(float((acc & ~pos).sum()) / n_neg, 4),
        "right_accepted_of_positives": round(float((acc & right).sum()) / n_pos, 4),
    }


def choose_threshold(conf: np.ndarray, recs: list[dict[str, Any]]) -> float:
    """The lowest threshold keeping wrong-accepted ≤ 1 % of positives and negatives ≤ 1 %."""
    for thr in np.round(np.arange(0.05, 1.0, 0.01), 2):
        r = rates(conf, recs, float(thr))
        if r["wrong_accepted_of_positives"] <= 0.01 and r["negatives_accepted"] <= 0.01:
            return float(thr)
    return 0.99


def run(paths: list[Path] | None = None) -> dict[str, Any]:
    """Calibrate, save the JSON and the diagram, return the dict."""
    recs = load(paths)
    if len(recs) < 10:
        raise SystemExit(f"only {len(recs)} records: run benchmarks.scale first")
    fit_set, check_set = recs[0::2], recs[1::2]
    x_fit, x_chk = features(fit_set), features(check_set)
    y_fit = np.array([is_right(r) for r in fit_set], dtype=np.float64)
    y_chk = np.array([is_right(r) for r in check_set], dtype=np.float64)
    w = fit_logistic(x_fit, y_fit)
    raw_chk = np.array([r["confidence"] for r in check_set])
    cal_fit, cal_chk = predict(w, x_fit), predict(w, x_chk)
    thr = choose_threshold(cal_fit, fit_set)
    raw_all = np.array([r["confidence"] for r in recs])
    y_all = np.array([is_right(r) for r in recs], dtype=np.float64)
    out: dict[str, Any] = {
        "records": len(recs),
        "sizes": sorted({r["size"] for r in recs}),
        "features": list(FEATURES),
        "weights": {
            "bias": round(float(w[0]), 4),
            **{f: round(float(v), 4) for f, v in zip(FEATURES, w[1:], strict=True)},
        },
        "reported_confidence": {
            "all": reliability(raw_all, y_all),
            "check_split": reliability(raw_chk, y_chk),
            "at_0.5_check_split": rates(raw_chk, check_set, 0.5),
        },
        "calibrated_check_split": reliability(cal_chk, y_chk),
        "threshold_from_fit_split": thr,
        "at_threshold_check_split": rates(cal_chk, check_set, thr),
        "raw_threshold_from_fit_split": choose_threshold(
            np.array([r["confidence"] for r in fit_set]), fit_set
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale_calibration.json").write_text(json.dumps(out, indent=1) + "\n")
    _diagram(raw_all, y_all, predict(w, features(recs)))
    return out


def _diagram(raw: np.ndarray, right: np.ndarray, cal: np.ndarray) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="grey")
    for conf, label, style in ((raw, "reported", "o-"), (cal, "logistic fit", "s--")):
        rel = reliability(conf, right)
        xs = [b["mean_confidence"] for b in rel["bins"]]
        ys = [b["share_right"] for b in rel["bins"]]
        ax.plot(xs, ys, style, label=f"{label} (ECE {rel['ece']:.2f})")
    ax.set_xlabel("confidence (bin mean)")
    ax.set_ylabel("share right (within 25 m)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("reliability, scale benchmark")
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    p = IMG / "scale_reliability.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


if __name__ == "__main__":
    print(json.dumps(run([Path(a) for a in sys.argv[1:]] or None), indent=1))
