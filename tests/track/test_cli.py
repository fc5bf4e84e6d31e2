"""``geoloc track`` end to end: a folder of frames and a video written in the test, the output
files parsed back, and the one-line errors."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.video import write_video
from tests.localize.conftest import write_jpeg
from tests.track.flight import Flight, errors_m

# a CLI run loads the model and tracks; a loaded 2-core machine needs more than the default
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
N = 12  # frames of the flight the CLI tests use


def _cli(argv: list[str], settings: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    from geoloc.cli.main import main

    monkeypatch.setenv("GEOLOC_HOME", str(settings.home))
    monkeypatch.setenv("GEOLOC_DATABASE_URL", settings.database_url)
    with pytest.raises(SystemExit) as ei:
        main(argv)
    return int(ei.value.code or 0)


def _start(flight: Flight) -> str:
    lon, lat = flight.truth[0]
    return f"{lat},{lon},150"


def _write_frame(path: Path, rgb: np.ndarray, exif: bytes | None = None) -> Path:
    """A JPEG at quality 85, as a camera writes it (with ``exif`` bytes when given)."""
    from PIL import Image

    kw: dict[str, Any] = {"quality": 85}
    if exif is not None:
        kw["exif"] = exif
    Image.fromarray(rgb).save(path, **kw)
    return path


def _head(flight: Flight, n: int) -> Flight:
    return Flight(flight.frames[:n], flight.times[:n], flight.truth[:n], flight.headings[:n])


class _Row:
    def __init__(self, d: dict[str, Any]) -> None:
        self.lat, self.lon = d.get("lat"), d.get("lon")


def test_folder_tracks_skips_a_corrupt_frame_and_writes_outputs(
    ingested: Any,
    short_flight: Flight,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import gpxpy

    from geoloc.track.outputs import write_track

    d = tmp_path / "frames"
    d.mkdir()
    flight = _head(short_flight, N)
    for i, rgb in enumerate(flight.frames):
        _write_frame(d / f"f{i:03d}.jpg", rgb)
    (d / "f005b.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # between frames 5 and 6
    gj = tmp_path / "track.geojson"
    code = _cli(
        ["track", str(d), "--start", _start(flight), "--gsd", "0.28", "--out", str(gj),
         "--plot", str(tmp_path / "track.png"), "--map-fix-every", "10"],
        ingested,
        monkeypatch,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == N
    assert "1 undecodable frame(s) skipped" in captured.err
    assert [r["index"] for r in rows] == [i for i in range(N + 1) if i != 6]  # every file counts
    assert rows[0]["frame"] == "f000.jpg" and rows[0]["status"] == "map_fix"
    err = errors_m([_Row(r) for r in rows], flight)
    assert float(np.nanmax(err)) < 5.0 and np.isfinite(err).all()
    assert (tmp_path / "track.png").stat().st_size > 0
    # GeoJSON: a LineString then one Point per frame, same coordinates
    fc = json.loads(gj.read_text())
    line, *points = fc["features"]
    pts = [[r["lon"], r["lat"]] for r in rows]
    assert line["geometry"]["type"] == "LineString" and line["geometry"]["coordinates"] == pts
    assert [p["geometry"]["coordinates"] for p in points] == pts
    assert points[3]["properties"]["status"] == rows[3]["status"]
    # GPX and KML of the same rows parse back with the same points
    gpx = gpxpy.parse(write_track(tmp_path / "t.gpx", rows).read_text())
    back = [(p.longitude, p.latitude) for p in gpx.tracks[0].segments[0].points]
    assert np.allclose(back, pts, atol=1e-9)
    kml = ET.parse(write_track(tmp_path / "t.kml", rows)).getroot()
    ns = {"k": "http://www.opengis.net/kml/2.2"}
    ls = kml.find(".//k:LineString/k:coordinates", ns)
    assert ls is not None and ls.text is not None
    coords = [tuple(float(v) for v in c.split(",")[:2]) for c in ls.text.split()]
    assert np.allclose(coords, pts, atol=1e-9)
    assert len(kml.findall(".//k:Point", ns)) == len(rows)


@pytest.mark.parametrize(("codec", "ext"), [("libx264", "mp4"), ("mpeg4", "avi")])
def test_video_decodes_and_tracks(
    codec: str,
    ext: str,
    ingested: Any,
    short_flight: Flight,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    short_flight = _head(short_flight, N)
    video = write_video(tmp_path / f"flight.{ext}", short_flight.frames, 10, codec=codec)
    out = tmp_path / "track.csv"
    code = _cli(
        ["track", str(video), "--fps", "5", "--start", _start(short_flight), "--gsd", "0.28",
         "--format", "csv", "--out", str(out), "--map-fix-every", "3"],
        ingested,
        monkeypatch,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(captured.out)))
    idx = [int(r["index"]) for r in rows]
    assert idx == list(range(0, len(short_flight.frames), 2))  # 5 of the video's 10 fps
    assert rows[0]["frame"] == video.name and rows[0]["status"] == "map_fix"
    sub = Flight(
        [short_flight.frames[i] for i in idx], [short_flight.times[i] for i in idx],
        [short_flight.truth[i] for i in idx], [short_flight.headings[i] for i in idx],
    )  # fmt: skip
    fake = [_Row({"lat": float(r["lat"]), "lon": float(r["lon"])}) for r in rows]
    assert float(errors_m(fake, sub).max()) < 5.0
    assert abs(float(rows[-1]["t"]) - sub.times[-1]) < 0.05
    assert list(csv.DictReader(out.open()))[-1]["index"] == rows[-1]["index"]


def test_order_time_follows_exif_datetimeoriginal(
    ingested: Any,
    short_flight: Flight,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import piexif

    flight = _head(short_flight, N)
    d = tmp_path / "frames"
    d.mkdir()
    names = []
    for i, rgb in enumerate(flight.frames):
        # names run against the flight (a name order would fly it backwards); one second apart
        name = f"img_{N - i:03d}.jpg"
        stamp = f"2026:05:04 10:00:{i:02d}".encode()
        exif = piexif.dump({"Exif": {piexif.ExifIFD.DateTimeOriginal: stamp}})
        _write_frame(d / name, rgb, exif=exif)
        names.append(name)
    code = _cli(
        ["track", str(d), "--order", "time", "--start", _start(flight), "--gsd", "0.28"],
        ingested,
        monkeypatch,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["frame"] for r in rows] == names  # the time order, not the name order
    assert rows[0]["status"] == "map_fix"
    err = errors_m([_Row(r) for r in rows], flight)
    assert np.isfinite(err).all() and float(np.nanmax(err)) < 5.0


@pytest.mark.parametrize("case", ["empty-folder", "bad-video", "far-start"])
def test_bad_inputs_are_one_line_errors(
    case: str,
    ingested: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    write_jpeg(frames / "a.jpg", np.full((64, 64, 3), 128, np.uint8))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    argv = {
        "empty-folder": ["track", str(tmp_path / "empty")],
        "bad-video": ["track", str(bad), "--start", "60.4025,22.4646,100"],
        "far-start": ["track", str(frames), "--start", "10.0,10.0,100"],
    }[case]
    (tmp_path / "empty").mkdir()
    code = _cli(argv, ingested, monkeypatch)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    msg = [line for line in err if line.startswith("geoloc: error:")]
    assert len(msg) == 1, err
    expected = {"empty-folder": "no frames", "bad-video": "cannot open", "far-start": "no tiles"}
    assert expected[case] in msg[0]


def test_ctrl_c_writes_what_was_tracked_and_exits_130(
    ingested: Any,
    short_flight: Flight,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from geoloc.track import Tracker

    d = tmp_path / "frames"
    d.mkdir()
    for i, rgb in enumerate(short_flight.frames[:8]):
        _write_frame(d / f"f{i:03d}.jpg", rgb)
    real = Tracker.update

    def update(self: Any, frame: Any, t: Any = None, priors: Any = None) -> Any:
        if self.index == 4:  # Ctrl-C arrives while the sixth frame is tracked
            raise KeyboardInterrupt
        return real(self, frame, t, priors)

    monkeypatch.setattr(Tracker, "update", update)
    gpx_path = tmp_path / "partial.gpx"
    code = _cli(
        ["track", str(d), "--start", _start(short_flight), "--gsd", "0.28", "--out",
         str(gpx_path)],
        ingested,
        monkeypatch,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 130
    assert "interrupted" in captured.err
    import gpxpy

    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 5
    gpx = gpxpy.parse(gpx_path.read_text())
    back = [(p.longitude, p.latitude) for p in gpx.tracks[0].segments[0].points]
    assert np.allclose(back, [(r["lon"], r["lat"]) for r in rows], atol=1e-9)
