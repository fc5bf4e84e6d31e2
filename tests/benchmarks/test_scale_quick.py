"""``benchmarks/scale.py --quick`` runs end to end on the shared imagery and its JSON holds the
figures the issue asks for (skips without ``../shared/data``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow


def test_scale_quick_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh quick build, its queries located, the summary complete and plausible."""
    for sub in ("turku", "brighton_beach", "distractors"):
        if not (SHARED_DATA / sub).is_dir():
            pytest.skip(f"shared imagery not found at {SHARED_DATA / sub}")
    from benchmarks import scale

    monkeypatch.setenv("GEOLOC_SCALE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "scale_quick.json"
    assert scale.main(["--quick", "--queries", "6", "--out", str(out)]) == 0
    entry = json.loads(out.read_text())["sizes"]["quick"]
    st = entry["storage"]
    assert 150 <= st["tiles"] <= 400
    assert st["bytes_per_tile"] > 0 and st["postgres_bytes"] > 0 and st["index_bytes"] > 0
    s = entry["summary"]
    syn = s["synthetic"]
    assert syn["queries"] == 6
    assert set(syn["recall"]) == {"recall", "rerank", "consistency", "verification"}
    assert set(syn["recall"]["recall"]) == {"R@1", "R@5", "R@10", "R@50"}
    # a few hundred tiles: the true area is recalled for most views and some are located
    # (the fixed views include low-texture fields that the chain does not locate)
    assert syn["recall"]["recall"]["R@50"] >= 0.5
    assert syn["located_within_5m"] >= 2 / 6
    assert syn["wrong_over_25m"] <= 1 / 6
    assert s["negatives"]["queries"] >= 4
    assert s["latency_ms"]["per_stage"]["total"]["p95"] > 0
    # each outcome's stages: a rejected frame was verified and got no pose
    by = s["latency_ms"]["per_outcome_stage"]
    assert by["rejected"]["verify"]["p50"] > 0
    assert by["rejected"].get("pose", {"p95": 0.0})["p95"] == 0.0
    assert by["located"]["total"]["p50"] == s["latency_ms"]["per_outcome"]["located"]["p50"]
    assert 0 <= syn["median_error_m"] <= 5.0
    recs = entry["records"]
    assert {r["kind"] for r in recs} == {"synthetic", "brighton", "negative"}
    assert all(r["ranks"] == {} for r in recs if r["kind"] == "negative")


def test_plots_leave_out_sizes_of_an_older_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plots merge the per-size results of the newest run's commit only."""
    from benchmarks import scale

    monkeypatch.setattr(scale, "RESULTS", tmp_path)
    runs = {
        "1000": ("aaa", "2026-12-01"),
        "10000": ("bbb", "2026-12-03"),
        "26430": ("old", "2026-11-30"),
    }
    runs["100000"] = ("bbb", "2026-12-03")
    for size, (commit, date) in runs.items():
        body = {"commit": commit, "date": date, "sizes": {size: {"storage": {"tiles": int(size)}}}}
        (tmp_path / f"scale_{size}.json").write_text(json.dumps(body))
    (tmp_path / "scale_calibration.json").write_text("{}")  # not a size: never read as one
    assert sorted(scale.merged()["sizes"]) == ["10000", "100000"]
