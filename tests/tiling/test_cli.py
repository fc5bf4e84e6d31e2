"""``geoloc tiles`` and ``geoloc info`` in-process and as a subprocess, good and bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from geoloc.cli.main import main

BAD = [
    "no_crs",
    "identity",
    "rotated",
    "all_nodata",
    "all_nan",
    "zero_bytes",
    "truncated",
    "jpeg_as_tif",
    "text_file",
    "missing_source_vrt",
]
GOOD = ["one_px", "odd_name", "five_band", "uint16", "gray", "float_nan", "alpha", "huge_vrt"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_tiles_prints_geojson(sample_raster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["tiles", str(sample_raster)], capsys)
    assert code == 0
    fc = json.loads(out)
    # the ingest grid: 0.5 m/px, stride 112 px over 2106 x 1186 px at 0.28 m: 10 x 5, all kept
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 50
    for f in fc["features"]:
        p = f["properties"]
        assert {"row", "col", "center_lat", "center_lon", "gsd_m", "valid_fraction"} <= set(p)
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and len(ring) == 5 and ring[0] == ring[-1]
        lons, lats = [c[0] for c in ring], [c[1] for c in ring]
        assert all(22.4 < x < 22.5 for x in lons) and all(
            60.3 < y < 60.5 for y in lats
        )  # [lon, lat]
        assert min(lons) < p["center_lon"] < max(lons) and min(lats) < p["center_lat"] < max(lats)
        # RFC 7946: exterior ring counter-clockwise (positive shoelace area)
        area2 = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:], strict=False))
        assert area2 > 0
        assert p["crs"] == "EPSG:32634" and p["gsd_m"] == 0.5


def test_tiles_options(fake: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["tiles", str(fake["utm"]), "--tile-size", "100", "--stride", "50", "--gsd", "1.0"]
    code, out, _ = run(args + ["--min-valid", "1.0", "--bands", "3,2,1"], capsys)
    assert code == 0
    feats = json.loads(out)["features"]
    # 501 x 377 px at 0.5 m -> ~250.6 x 188.6 px at 1 m; full 100 px tiles every 50 px: 4 x 2
    assert len(feats) == 8 and all(f["properties"]["gsd_m"] == 1.0 for f in feats)
    assert all(f["properties"]["valid_fraction"] == 1.0 for f in feats)
    code, out, err = run(["tiles", str(fake["utm"]), "--bands", "a,b"], capsys)
    # a usage error (exit 2 once the root CLI maps typer's vendored click exceptions; 1 until then)
    assert code in (1, 2) and "expected comma-separated band numbers" in err and out == ""


def test_info_prints_json(sample_raster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info", str(sample_raster)], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["crs"] == "EPSG:32634" and (info["width"], info["height"]) == (2106, 1186)
    assert info["dtype"] == "uint8" and info["bands"] == [1, 2, 3] and info["mask"] == "none"
    w, s, e, n = info["bounds_lonlat"]
    assert w == pytest.approx(22.46045, abs=1e-4) and n == pytest.approx(60.40396, abs=1e-4)
    assert info["gsd_m"] == pytest.approx(0.2801, abs=1e-3)
    reason = info["tiles"].pop("reason")
    assert reason.startswith("default GSD 0.5 m/px")
    assert info["tiles"] == {
        "tile_size": 224,
        "stride": 112,
        "gsd_m": 0.5,
        "min_valid": 0.5,
        "rows": 5,
        "cols": 10,
        "candidates": 50,
        "kept": 50,
        "skipped": 0,
    }
    # the old `geoloc tiles` grid is still one option away
    code, out, _ = run(["info", str(sample_raster), "--gsd", "0.2801", "--stride", "224"], capsys)
    tiles = json.loads(out)["tiles"]
    assert code == 0 and (tiles["rows"], tiles["cols"], tiles["kept"]) == (6, 10, 45)


@pytest.mark.parametrize("command", ["tiles", "info"])
@pytest.mark.parametrize("name", BAD + ["missing", "directory"])
def test_bad_input_is_one_line_exit_1(
    fake: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    command: str,
) -> None:
    path = {"missing": tmp_path / "no such.tif", "directory": tmp_path}.get(name) or fake[name]
    code, out, err = run([command, str(path)], capsys)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"geoloc: error: {path}: ")
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("name", GOOD)
def test_odd_but_valid_inputs_are_processed(
    fake: dict[str, Path], capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, out, err = run(["info", str(fake[name])], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["path"] == str(fake[name])
    if name == "huge_vrt":
        return  # tiling all 50,000 x 50,000 px is the benchmark's job, not a test's
    code, out, err = run(["tiles", str(fake[name])], capsys)
    assert code == 0, err
    assert len(json.loads(out)["features"]) == info["tiles"]["kept"]


@pytest.mark.parametrize("name", ["truncated", "text_file", "missing_source_vrt"])
def test_subprocess_stderr_is_exactly_one_line(fake: dict[str, Path], name: str) -> None:
    # A real process: GDAL's own warnings/log lines would show up here.
    proc = subprocess.run(
        [sys.executable, "-m", "geoloc.cli", "tiles", str(fake[name])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"geoloc: error: {fake[name]}: ")


def test_subprocess_summary_on_stderr(fake: dict[str, Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "geoloc.cli", "tiles", str(fake["odd_name"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # 501 x 377 px at its native 0.5 m, half-tile stride: 4 x 3 tiles, all kept
    assert len(json.loads(proc.stdout)["features"]) == 12
    assert "12 tiles kept, 0 skipped" in proc.stderr and "EPSG:32634" in proc.stderr
    assert "tiling at native GSD 0.5 m/px" in proc.stderr
