"""Truth-table parsing and the plots of ``geoloc eval --queries``."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoloc.errors import ConfigError
from geoloc.evaluation.frames import plot_results, read_truth

REPO = Path(__file__).resolve().parents[2]


def test_demo_truth_table_parses() -> None:
    rows = read_truth(REPO / "data/sample/frames/truth.csv")
    assert len(rows) == 8
    assert all(r.lat is not None and 60.40 < r.lat < 60.41 for r in rows)
    assert all(r.gsd_m is not None and 0.15 < r.gsd_m < 0.45 for r in rows)
    assert all((REPO / "data/sample/frames" / r.name).is_file() for r in rows)


def test_negatives_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "truth.csv"
    p.write_text("name,lat,lon\na.jpg,60.4,22.46\nsky.jpg,,\n")
    rows = read_truth(p)
    assert rows[1].lat is None and rows[1].lon is None and rows[0].gsd_m is None
    p.write_text("name,latitude\na.jpg,1\n")
    with pytest.raises(ConfigError, match="missing column"):
        read_truth(p)
    p.write_text("name,lat,lon\na.jpg,north,22\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_truth(p)


def test_plots_are_written(tmp_path: Path, sample_raster: Path) -> None:
    ans = [
        {
            "frame": "a",
            "status": "ok",
            "lat": 60.4022,
            "lon": 22.4650,
            "truth_lat": 60.4023,
            "truth_lon": 22.4651,
            "orthomosaic": str(sample_raster),
        },
        {
            "frame": "b",
            "status": "no_match",
            "lat": None,
            "lon": None,
            "truth_lat": 60.4025,
            "truth_lon": 22.4640,
            "orthomosaic": None,
        },
    ]
    out = plot_results({"answers": {"fast": ans}}, tmp_path, None)
    assert [p.name for p in out] == ["error_cdf.png", "answers_map.png"]
    assert all(p.stat().st_size > 5000 for p in out)
