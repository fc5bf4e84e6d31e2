"""``geoloc eval --synthetic`` end to end on the bundled sample (small tiles to stay cheap)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_eval_synthetic_json(sample_raster: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "geoloc.cli.main", "eval", "--synthetic", "4",
        "--raster", str(sample_raster), "--gsd", "1.5", "--tile-size", "64",
        "--heading-hypotheses", "2", "--checkpoint", "untrained",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    proto = out["protocol"]
    assert proto["queries"] == 4 and proto["tiles"] > 20 and proto["gsd_m"] == pytest.approx(1.5)
    assert proto["correct_within_m"] == pytest.approx(32 * 1.5)
    for score in ("omega", "phi", "omega+phi", "omega>phi"):
        m = out["results"]["untrained"][score]
        assert 0.0 <= m["loc@1"] <= m["loc@5"] <= m["loc@10"] <= 1.0
        assert m["top1_error"]["n"] == 4
    assert out["encoders"]["untrained"]["num_nodes"] == 4  # K, for the K ablation
    assert "loc@1" in p.stderr and "omega>phi" in p.stderr  # the table goes to stderr
    assert list((tmp_path / "cache").glob("features-*.pt"))  # the feature cache was written


def test_eval_needs_a_source() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "geoloc.cli.main", "eval", "--checkpoint", "untrained"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 1
    assert "--synthetic" in p.stderr and "Traceback" not in p.stderr


def test_train_needs_exactly_one_source(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "geoloc.cli.main", "train", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 1
    assert "exactly one of --raster" in p.stderr and "Traceback" not in p.stderr
