"""End to end on the bundled sample: ingest once, then locate frames cut from it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.localize.conftest import truth_lonlat, write_jpeg
from tests.localize.views import sample_rgb, view

pytestmark = pytest.mark.slow


def _dist(fix: Any, lon: float, lat: float) -> float:
    from tiling.crs import geodesic_distance_m

    return float(geodesic_distance_m(fix.lon, fix.lat, lon, lat))


@pytest.fixture(scope="module")
def loc(ingested: Any, encoder: Any) -> Any:
    from geoloc.localize import Localizer

    with Localizer.open(ingested, encoder=encoder, preset="accurate") as lz:
        yield lz


def test_exact_view_within_2m(loc: Any, tmp_path: Path) -> None:
    cx, cy = 1000.0, 600.0
    rgb = view(sample_rgb(), cx, cy, 400)  # 112 m at 0.28 m/px, north-up
    f = write_jpeg(tmp_path / "exact.jpg", rgb)
    fix = loc.locate(f, gsd=0.28)
    lon, lat = truth_lonlat(cx, cy)
    print(fix.as_dict())
    assert fix.status == "ok", fix.message
    assert fix.method == "verified"
    assert _dist(fix, lon, lat) < 2.0
    assert fix.heading_deg is not None and min(fix.heading_deg, 360 - fix.heading_deg) < 5
    assert 0.5 <= fix.confidence <= 1.0
    assert set(fix.timings_ms) >= {"load", "encode", "recall", "rerank", "verify", "total"}
    assert len(fix.candidates) == 5
    assert fix.pipeline["preset"] == "accurate"
    # a smaller frame of the same place: another region size, so no stale cached map features
    small = write_jpeg(tmp_path / "small.jpg", view(sample_rgb(), cx, cy, 300, heading_deg=10.0))
    fix2 = loc.locate(small, gsd=0.28)
    assert fix2.method == "verified" and _dist(fix2, lon, lat) < 2.0


def test_rotated_scaled_shifted_jittered(loc: Any, tmp_path: Path) -> None:
    # 37 deg heading, 1.2x finer than the frame-spans-a-tile assumption (GSD not given),
    # centre shifted by 30 % of a tile from a tile centre, colour jitter
    cx, cy = 900.0 + 0.3 * 400, 500.0
    rgb = view(sample_rgb(), cx, cy, 400, heading_deg=37.0, scale=1.2).astype(np.float32)
    rgb = np.clip(rgb * np.array([1.1, 0.95, 0.9]) + 12.0, 0, 255).astype(np.uint8)
    f = write_jpeg(tmp_path / "rot.jpg", rgb)
    fix = loc.locate(f)
    lon, lat = truth_lonlat(cx, cy)
    print(fix.as_dict())
    assert fix.status == "ok", fix.message
    assert _dist(fix, lon, lat) < 56.0  # one tile step (112 px stride at 0.5 m/px)


@pytest.fixture(scope="module")
def loc_faiss(ingested: Any, encoder: Any) -> Any:
    """The accurate chain with Ω recall: the one that holds the FAISS index in memory."""
    from geoloc.localize import Localizer
    from geoloc.localize.pipeline import from_dict

    cfg = from_dict({"preset": "accurate", "recall": {"name": "faiss"}}, where="test")
    with Localizer.open(ingested, encoder=encoder, pipeline=cfg) as lz:
        yield lz


@pytest.fixture(scope="module")
def unrelated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photo that is not aerial imagery at all (ships with matplotlib)."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        img = Image.open(fh).convert("RGB")
        d = tmp_path_factory.mktemp("unrelated")
        img.save(d / "hopper.jpg")
    return d / "hopper.jpg"


def test_warm_localizer_reopens_an_index_saved_by_another_process(
    loc_faiss: Any, ingested: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An ingest while a Localizer is warm saves a new index generation: the next locate
    uses it (tiles ingested meanwhile can answer) instead of the copy it opened."""
    from geoloc.store import OmegaIndex

    loc = loc_faiss

    before = loc.store.index
    other = OmegaIndex.open(ingested, before.encoder_sha256, mmap=False)
    other.save()  # what an ingest in another process ends with
    cx, cy = 1000.0, 600.0
    fix = loc.locate(write_jpeg(tmp_path / "w.jpg", view(sample_rgb(), cx, cy, 400)), gsd=0.28)
    assert loc.store.index is not before and not loc.store.index.changed_on_disk()
    assert fix.status == "ok" and _dist(fix, *truth_lonlat(cx, cy)) < 2.0
    again = loc.store.index
    loc.locate(write_jpeg(tmp_path / "w2.jpg", view(sample_rgb(), cx, cy, 400)), gsd=0.28)
    assert loc.store.index is again  # unchanged on disk: no re-open
    # a sidecar that cannot be read (say, a newer geoloc's format): keep answering, warn once
    meta = Path(again.directory) / "meta.json"
    good = meta.read_text()
    from geoloc.store.omega_format import FORMAT_VERSION

    assert f'"format": {FORMAT_VERSION}' in good
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(good.replace(f'"format": {FORMAT_VERSION}', '"format": 99'))
    tmp.replace(meta)
    try:
        with caplog.at_level(logging.WARNING, logger="geoloc.store.tile_store"):
            for i in range(2):
                f = write_jpeg(tmp_path / f"w3{i}.jpg", view(sample_rgb(), cx, cy, 400))
                fix = loc.locate(f, gsd=0.28)
                assert fix.status == "ok" and loc.store.index is again
        warned = [r for r in caplog.records if "cannot be re-opened" in r.getMessage()]
        assert len(warned) == 1 and "newer" in warned[0].getMessage()
    finally:
        tmp.write_text(good)
        tmp.replace(meta)
    loc.locate(write_jpeg(tmp_path / "w4.jpg", view(sample_rgb(), cx, cy, 400)), gsd=0.28)
    assert loc.store.index is not again  # readable again: re-opened


def test_unrelated_image_is_no_match(loc: Any, unrelated: Path) -> None:
    fix = loc.locate(unrelated)
    assert fix.status == "no_match", fix.as_dict()
    assert fix.confidence < 0.5
    assert fix.method != "verified"
    assert fix.message is not None and "no candidate verified" in fix.message
    assert "budget" not in fix.message  # accurate tries every candidate by default


def test_verify_budget_stops_early_and_says_so(
    ingested: Any, encoder: Any, unrelated: Path, tmp_path: Path
) -> None:
    from geoloc.localize import Localizer
    from geoloc.localize.pipeline import preset

    cfg = preset("accurate")
    cfg.verify_budget_ms = 1.0
    with Localizer.open(ingested, encoder=encoder, pipeline=cfg) as lz:
        fix = lz.locate(unrelated)
        assert fix.status == "no_match"
        assert fix.message is not None
        assert "within the 1 ms verification budget (1 attempts)" in fix.message
        assert fix.pipeline["verify_budget_ms"] == 1.0
        # the first attempt always runs: an easy frame still verifies
        f = write_jpeg(tmp_path / "b.jpg", view(sample_rgb(), 1000.0, 600.0, 400))
        ok = lz.locate(f, gsd=0.28)
        assert ok.method == "verified" and ok.verification is not None
        assert ok.verification["attempts"] == 1


def test_prior_that_excludes_the_truth_changes_the_answer(loc: Any, tmp_path: Path) -> None:
    from geoloc.localize import Prior

    cx, cy = 1000.0, 600.0
    f = write_jpeg(tmp_path / "p.jpg", view(sample_rgb(), cx, cy, 400))
    free = loc.locate(f, gsd=0.28)
    # a 100 m circle around the far east end of the sample (the truth is ~280 m west)
    elon, elat = truth_lonlat(1950.0, 600.0)
    fenced = loc.locate(f, gsd=0.28, prior=Prior(elat, elon, 100.0))
    lon, lat = truth_lonlat(cx, cy)
    assert _dist(free, lon, lat) < 2.0
    assert fenced.tile_id != free.tile_id
    assert _dist(fenced, elon, elat) <= 100.0 + 0.75 * 112  # inside the circle (tile centres)
    assert all(_dist(type("P", (), c)(), elon, elat) <= 100.0 + 1e-6 for c in fenced.candidates)
    # and a prior that holds no tile at all
    empty = loc.locate(f, gsd=0.28, prior=Prior(elat + 0.1, elon, 50.0))
    assert empty.status == "no_match" and empty.message == "no tile lies within the prior"


def test_seed_preset_answers_the_top_tile_centre(
    ingested: Any, encoder: Any, tmp_path: Path
) -> None:
    from geoloc.localize import Localizer

    cx, cy = 1000.0, 600.0
    f = write_jpeg(tmp_path / "s.jpg", view(sample_rgb(), cx, cy, 400))
    with Localizer.open(ingested, encoder=encoder, preset="seed") as lz:
        fix = lz.locate(f, gsd=0.28)
    assert fix.pipeline["chain"] == [
        "rotations:1",
        "recall:faiss",
        "rerank:phi-cosine",
        "consistency:node-centroid",
        "answer:tile-centre",
    ]
    top = fix.candidates[0]
    assert fix.method == "tile-centre" and fix.tile_id == top["tile_id"]
    assert (fix.lat, fix.lon) == (top["lat"], top["lon"])
    assert "verify" not in fix.timings_ms
    lon, lat = truth_lonlat(cx, cy)
    assert _dist(fix, lon, lat) < 112.0  # north-up exact view: the seed retrieval finds it


def test_example_plugin_runs_end_to_end(ingested: Any, encoder: Any, tmp_path: Path) -> None:
    import sys

    from geoloc import plugins
    from geoloc.localize import Localizer
    from geoloc.localize.pipeline import from_dict

    root = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "geoloc-plugin-example"
    sys.path.insert(0, str(root))
    plugins.register("geoloc.verify", "orb", "geoloc_plugin_example:OrbVerifier")
    try:
        cfg = from_dict({"preset": "accurate", "verify": {"name": "orb", "min_inliers": 20}})
        cx, cy = 700.0, 700.0
        f = write_jpeg(tmp_path / "o.jpg", view(sample_rgb(), cx, cy, 400, heading_deg=20.0))
        with Localizer.open(ingested, encoder=encoder, pipeline=cfg) as lz:
            fix = lz.locate(f, gsd=0.28)
        assert fix.pipeline["stages"]["verify"]["name"] == "orb"
        assert fix.verification is not None and fix.verification["matcher"] == "orb"
        assert fix.status == "ok" and fix.method == "verified"
        lon, lat = truth_lonlat(cx, cy)
        assert _dist(fix, lon, lat) < 3.0
    finally:
        plugins._registered["geoloc.verify"].pop("orb")
        plugins._entry_points.cache_clear()
        sys.path.remove(str(root))


def test_empty_database_and_encoder_mismatch(pg_settings: Any, ingested: Any) -> None:
    from geoloc.errors import EmptyDatabaseError, EncoderMismatchError
    from geoloc.localize import Localizer
    from geoloc.models import load_encoder

    with pytest.raises(EmptyDatabaseError, match="geoloc ingest"):
        Localizer.open(pg_settings)
    other = load_encoder("sgmnet", seed=1)
    with pytest.raises(EncoderMismatchError, match="the database was built with encoder sgmnet"):
        Localizer.open(ingested, encoder=other)


@pytest.mark.parametrize("runtime", ["auto", "torch"])
def test_open_by_name_encodes_on_the_ingest_runtime(
    ingested: Any, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Localizer opened by encoder name runs the backbone where ingest does: ONNX Runtime when
    installed, torch when GEOLOC_ENCODER_RUNTIME says so; the frame is located either way."""
    from geoloc.localize import Localizer
    from geoloc.models.runtime import onnx_available, openvino_available, runtime_of

    monkeypatch.setenv("GEOLOC_ENCODER_RUNTIME", runtime)
    cx, cy = 1000.0, 600.0
    with Localizer.open(ingested, encoder="sgmnet") as lz:
        used = runtime_of(lz.encoder)
        fix = lz.locate(view(sample_rgb(), cx, cy, 400, heading_deg=20.0), gsd=0.28)
    if runtime == "torch":
        assert used == "torch"
    else:
        assert used == (
            "openvino" if openvino_available() else "onnx" if onnx_available() else "torch"
        )
    assert fix.status == "ok"
    assert _dist(fix, *truth_lonlat(cx, cy)) < 5.0


def _cli(argv: list[str], settings: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    from geoloc.cli.main import main

    monkeypatch.setenv("GEOLOC_HOME", str(settings.home))
    monkeypatch.setenv("GEOLOC_DATABASE_URL", settings.database_url)
    with pytest.raises(SystemExit) as ei:
        main(argv)
    return int(ei.value.code or 0)


def test_cli_many_frames_exit_codes_and_formats(
    ingested: Any,
    unrelated: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import csv
    import io
    import json

    good = write_jpeg(tmp_path / "good.jpg", view(sample_rgb(), 1400.0, 500.0, 400, 120.0))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    plot = tmp_path / "plot.png"
    code = _cli(
        ["locate", str(good), str(bad), str(unrelated), "--gsd", "0.28", "--plot", str(plot)],
        ingested,
        monkeypatch,
    )
    out, err = capsys.readouterr()
    assert code == 1  # one unreadable frame
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert [d["status"] for d in lines] == ["ok", "error", "no_match"], [
        (d.get("verification"), d.get("lat"), d.get("lon")) for d in lines
    ]
    assert "broken.jpg" in lines[1]["message"] and "broken.jpg" in err
    lon, lat = truth_lonlat(1400.0, 500.0)
    from tiling.crs import geodesic_distance_m

    assert geodesic_distance_m(lines[0]["lon"], lines[0]["lat"], lon, lat) < 3.0
    assert abs((lines[0]["heading_deg"] - 120.0 + 180) % 360 - 180) < 5
    assert (tmp_path / "plot_good.png").stat().st_size > 10_000

    code = _cli(
        ["locate", str(unrelated), "--format", "geojson", "--top-m", "3", "--no-consistency"],
        ingested,
        monkeypatch,
    )
    out, err = capsys.readouterr()
    assert code == 3, err
    fc = json.loads(out)
    assert (
        fc["type"] == "FeatureCollection"
        and fc["features"][0]["properties"]["status"] == "no_match"
    )

    code = _cli(
        ["locate", str(good), "--format", "csv", "--heading", "120", "--gsd", "0.28"],
        ingested,
        monkeypatch,
    )
    out, _ = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0, [(r["message"], r["candidates"], r["heading_deg"]) for r in rows]
    assert rows[0]["status"] == "ok" and float(rows[0]["confidence"]) > 0.5
    assert json.loads(rows[0]["pipeline"])["preset"] == "accurate"
    assert json.loads(rows[0]["timings_ms"])["rotate"] >= 0

    bad_pipe = tmp_path / "bad.toml"
    bad_pipe.write_text('[verify]\nname = "nope"\n')
    code = _cli(["locate", str(good), "--pipeline", str(bad_pipe)], ingested, monkeypatch)
    _, err = capsys.readouterr()
    assert code == 1 and "unknown verify plugin 'nope'; valid:" in err and "sift" in err


def test_near_position_recall_chains_with_the_other_stages(
    ingested: Any, encoder: Any, tmp_path: Path
) -> None:
    """A tracker's recall ("tiles near the predicted position") swapped in; the rest unchanged."""
    from geoloc.localize import Localizer, NearPositionRecall, Prior
    from geoloc.localize.pipeline import from_dict

    cx, cy = 1000.0, 600.0
    lon, lat = truth_lonlat(cx, cy)
    f = write_jpeg(tmp_path / "n.jpg", view(sample_rgb(), cx, cy, 400, heading_deg=30.0))
    # the predicted position 40 m off the truth, 150 m uncertainty
    plon, plat = truth_lonlat(cx + 40 / 0.28, cy)
    predicted = Prior(plat, plon, 150.0)
    with Localizer.open(ingested, encoder=encoder, recall=NearPositionRecall()) as lz:
        assert lz.store.index is None  # no global Ω search, so no index opened
        fix = lz.locate(f, gsd=0.28, prior=predicted)
        assert fix.pipeline["chain"][1] == "recall:near-position"
        assert fix.pipeline["stages"]["verify"]["name"] == "xfeat-lighterglue"
        assert fix.status == "ok" and fix.method == "verified", fix.message
        assert _dist(fix, lon, lat) < 2.0
        lost = lz.locate(f, gsd=0.28)  # no prediction: nothing recalled
        assert lost.status == "no_match" and lost.message == "no candidate tile"
    # the same through a pipeline file's [recall] table (the built-in entry point)
    cfg = from_dict({"recall": {"name": "near-position"}})
    with Localizer.open(ingested, encoder=encoder, pipeline=cfg) as lz:
        again = lz.locate(f, gsd=0.28, prior=predicted)
    assert (again.lat, again.lon, again.tile_id) == (fix.lat, fix.lon, fix.tile_id)
