"""Demo helpers and the ``geoloc ingest`` CLI's input errors (no encoder, no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoloc.demo import DemoRow, format_table, read_truth
from geoloc.errors import GeolocError


def test_read_truth_and_table(tmp_path: Path) -> None:
    p = tmp_path / "truth.csv"
    p.write_text("name,lat,lon,heading_deg,gsd_m\na.jpg,60.4,22.46,10.5,0.3\nb.jpg,60.41,22.47,,\n")
    a, b = read_truth(p)
    assert (a.name, a.lat, a.lon, a.heading_deg, a.gsd_m) == ("a.jpg", 60.4, 22.46, 10.5, 0.3)
    assert b.heading_deg is None and b.gsd_m is None
    rows = [
        DemoRow("a.jpg", 60.4, 22.46, 60.40001, 22.46, 1.1, 0.9, "ok", 0.5),
        DemoRow("b.jpg", 60.41, 22.47, 60.4, 22.47, 1113.0, 0.1, "no_match", 0.5),
        DemoRow("c.jpg", 60.41, 22.47, None, None, None, None, "no_match", 0.5),
        DemoRow("d.jpg", 60.41, 22.47, 60.41, 22.47, 3.0, 0.8, "ok", 0.5),
    ]
    table = format_table(rows)
    assert table.splitlines()[-1] == "median error 3.0 m over 3 answered frames; 2/4 confident"
    assert "c.jpg" in table and "1113.0" in table


def test_read_truth_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "truth.csv"
    p.write_text("name,lat,lon\na.jpg,north,22.4\n")
    with pytest.raises(GeolocError, match=r"truth.csv: line 2"):
        read_truth(p)
    with pytest.raises(GeolocError, match="missing.csv"):
        read_truth(tmp_path / "missing.csv")


def test_ingest_cli_with_no_raster_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing to ingest: each input reported on stdout JSON and stderr, exit 1, no database."""
    import json

    from geoloc.cli.main import main

    empty = tmp_path / "empty dir"
    empty.mkdir()
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEOLOC_DATABASE_URL", "postgresql+psycopg2://u:secret@127.0.0.1:1/none")
    with pytest.raises(SystemExit) as exc:
        main(["ingest", str(empty), str(tmp_path / "nope*.tif"), "--no-progress"])
    out, err = capsys.readouterr()
    assert exc.value.code == 1
    res = json.loads(out)
    assert [r["status"] for r in res] == ["failed", "failed"]
    assert "contains no raster" in res[0]["message"] and "empty dir" in res[0]["message"]
    assert "Traceback" not in err and "secret" not in err + out


def test_ingest_cli_rejects_bad_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from geoloc.cli.main import main

    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as exc:
        main(["ingest", str(tmp_path), "--gsd", "-2"])
    assert exc.value.code == 1
    assert "--gsd must be a positive number" in capsys.readouterr().err


def test_ingest_cli_unreachable_database_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A closed port: one line naming the (masked) URL, exit 1, before the encoder loads."""
    import time

    from geoloc.cli.main import main
    from tests.conftest import crop_sample

    raster = crop_sample(tmp_path / "small.tif", 0, 0, 300, 300)
    monkeypatch.setenv("GEOLOC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEOLOC_DATABASE_URL", "postgresql+psycopg2://geo:s3cret@127.0.0.1:9/geoloc")
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        main(["ingest", str(raster), "--no-progress"])
    elapsed = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert exc.value.code == 1
    assert elapsed < 10
    lines = [ln for ln in err.splitlines() if ln.startswith("geoloc: error:")]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0]
    assert "s3cret" not in err + out and "Traceback" not in err
    assert out == ""
