"""Pipeline configuration: the chain's stage confs, named presets (hloc style), TOML files.

A pipeline names one plugin (and its parameters) per stage plus the confs of the chain's own
stages. Every default comes from the stage that uses it (its ``default_conf``): ``rotations``
from :class:`~geoloc.localize.prepare.FramePreparation`, ``top_n`` from
:class:`~geoloc.localize.recall.Recall`, ``top_m`` from
:class:`~geoloc.localize.consistency.Consistency`, ``heading_sweep``, ``verify_budget_ms``,
``verify_features``, ``verify_top``, ``first_round_stop`` and ``skip_covered`` from
:class:`~geoloc.localize.schedule.VerificationScheduler`, ``answer`` and ``min_confidence`` from
:class:`~geoloc.localize.answer.Answer`. A preset is data: the overrides of those defaults.
A pipeline file::

    preset = "accurate"          # optional: start from this preset, then override

    rotations = 8                # heading hypotheses when the heading is unknown
    top_n = 50                   # recall depth
    top_m = 5                    # candidates that get consistency and verification
    answer = "verified"          # verified | refined | tile-centre
    min_confidence = 0.5         # below: status no_match
    heading_sweep = true         # try other headings when the best ones do not verify
    verify_budget_ms = 0         # stop verifying after this long (0: try every candidate)
    verify_features = "auto"     # auto | stored | extract | raster: what regions are made of
    verify_top = 50              # candidates the feature cascade checks (coarse first)
    first_round_stop = false     # heading unknown: stop when no candidate of round 1 passes
    skip_covered = false         # skip candidates inside a region already checked at a heading

    [recall]
    name = "pgvector"            # Φ k-NN (HNSW); "faiss": Ω in the FAISS index

    [verify]
    name = "sift"
    min_inliers = 20

    [consistency]
    name = "none"                # disables the stage

    [[priors]]
    name = "gnss-radius"

Unknown keys, plugins or parameters raise :class:`geoloc.errors.ConfigError` listing the valid
ones (plugin parameters are checked when the pipeline is built).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from geoloc.errors import ConfigError
from geoloc.localize.answer import ANSWERS, Answer
from geoloc.localize.consistency import Consistency
from geoloc.localize.prepare import FramePreparation
from geoloc.localize.recall import Recall
from geoloc.localize.schedule import FEATURE_MODES, VerificationScheduler

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The chain's own stages, in order, whose ``default_conf`` keys are pipeline keys.
CHAIN_STAGES: tuple[Any, ...] = (
    FramePreparation,
    Recall,
    Consistency,
    VerificationScheduler,
    Answer,
)

#: The plugin stages of a pipeline (``priors`` is a list of them).
PLUGIN_STAGES = ("recall", "rerank", "consistency", "verify", "priors")


def _default(key: str) -> Any:
    for stage in CHAIN_STAGES:
        if key in stage.default_conf:
            return stage.default_conf[key]
    raise KeyError(key)  # pragma: no cover - a field without a stage


@dataclass
class StageConfig:
    """One plugin stage: the plugin's name and its keyword parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **params}``."""
        return {"name": self.name, **self.params}


@dataclass
class PipelineConfig:
    """A complete pipeline (see the module docstring for the meaning of each field).

    ``answer = "verified"`` without a verify stage is resolved when the config is made: the best
    answer the chain can give (``refined`` with a consistency stage, else ``tile-centre``).
    """

    preset: str = "accurate"
    rotations: int = _default("rotations")
    top_n: int = _default("top_n")
    top_m: int = _default("top_m")
    answer: str = _default("answer")
    min_confidence: float = _default("min_confidence")
    heading_sweep: bool = _default("heading_sweep")
    verify_budget_ms: float = _default("verify_budget_ms")
    verify_features: str = _default("verify_features")
    verify_top: int = _default("verify_top")
    first_round_stop: bool = _default("first_round_stop")
    skip_covered: bool = _default("skip_covered")
    recall: StageConfig = field(default_factory=lambda: StageConfig("pgvector"))
    rerank: StageConfig | None = field(default_factory=lambda: StageConfig("phi-cosine"))
    consistency: StageConfig | None = field(default_factory=lambda: StageConfig("node-centroid"))
    verify: StageConfig | None = field(default_factory=lambda: StageConfig("xfeat-lighterglue"))
    priors: list[StageConfig] = field(
        default_factory=lambda: [StageConfig("gnss-radius"), StageConfig("heading")]
    )

    def __post_init__(self) -> None:
        if self.answer == "verified" and self.verify is None:
            self.answer = "refined" if self.consistency is not None else "tile-centre"

    def stage_conf(self, stage: Any) -> dict[str, Any]:
        """The conf of one of :data:`CHAIN_STAGES` (its ``default_conf`` keys, from here)."""
        return {k: getattr(self, k) for k in stage.default_conf if k in GLOBAL_KEYS}

    def stage_chain(self) -> list[str]:
        """The documented chain, e.g. ``['rotations:8', 'recall:faiss', ...]``."""
        chain = [f"rotations:{self.rotations}", f"recall:{self.recall.name}"]
        for stage in ("rerank", "consistency", "verify"):
            sc = getattr(self, stage)
            if sc is not None:
                chain.append(f"{stage}:{sc.name}")
        chain.append(f"answer:{self.answer}")
        return chain

    def as_dict(self) -> dict[str, Any]:
        """JSON/TOML-able form (``None`` stages as ``{"name": "none"}``)."""
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "priors":
                d[f.name] = [p.as_dict() for p in v]
            elif f.name in PLUGIN_STAGES:
                d[f.name] = v.as_dict() if v is not None else {"name": "none"}
            else:
                d[f.name] = v
        return d

    def to_toml(self) -> str:
        """A pipeline file that :func:`load_pipeline` reads back to an equal config."""
        d = self.as_dict()
        lines = [f"{k} = {_toml_value(d[k])}" for k in GLOBAL_KEYS]
        for stage in PLUGIN_STAGES:
            tables = d[stage] if stage == "priors" else [d[stage]]
            if stage == "priors" and not tables:
                lines += ["", "priors = []"]
            for table in tables:
                lines += ["", f"[[{stage}]]" if stage == "priors" else f"[{stage}]"]
                lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"

    def validate(self) -> None:
        """ConfigError on out-of-range or inconsistent values (never changes a field)."""
        if not 1 <= self.rotations <= 72:
            raise ConfigError(f"pipeline: rotations must be in 1..72, got {self.rotations}")
        if self.top_n < 1 or self.top_m < 1:
            raise ConfigError(
                f"pipeline: top_n and top_m must be >= 1 ({self.top_n}, {self.top_m})"
            )
        if self.answer not in ANSWERS:
            raise ConfigError(
                f"pipeline: answer must be one of {', '.join(ANSWERS)}, got {self.answer!r}"
            )
        if self.answer == "verified" and self.verify is None:
            raise ConfigError("pipeline: answer 'verified' needs a verify stage")
        if not (0.0 <= self.min_confidence <= 1.0) or math.isnan(self.min_confidence):
            raise ConfigError(
                f"pipeline: min_confidence must be in [0, 1], got {self.min_confidence}"
            )
        if self.verify_features not in FEATURE_MODES:
            raise ConfigError(
                f"pipeline: verify_features must be one of {', '.join(FEATURE_MODES)}, "
                f"got {self.verify_features!r}"
            )
        if self.verify_top < 1:
            raise ConfigError(f"pipeline: verify_top must be >= 1, got {self.verify_top}")
        if not (self.verify_budget_ms >= 0.0) or math.isinf(self.verify_budget_ms):
            raise ConfigError(
                "pipeline: verify_budget_ms must be >= 0 (0: no limit), "
                f"got {self.verify_budget_ms}"
            )


_HINTS = get_type_hints(PipelineConfig)

#: The pipeline's global keys (not plugin stages), in the order a pipeline file lists them.
GLOBAL_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(PipelineConfig) if f.name not in PLUGIN_STAGES
)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"pipeline: cannot write value {v!r} to TOML")


#: Named presets: overrides of the stages' defaults (``accurate`` is the defaults).
PRESETS: dict[str, dict[str, Any]] = {
    # Φ recall over the rotation search; the top tile's centre, no verification.
    "fast": {
        "answer": "tile-centre",
        "min_confidence": 0.2,
        "heading_sweep": False,
        "consistency": {"name": "none"},
        "verify": {"name": "none"},
    },
    # Rotation search, recall, rerank, node consistency, then local-feature verification of
    # the top-M with the fallback verifier and a heading sweep when the best heading fails.
    "accurate": {},
    # ``accurate`` with a per-frame verification budget: bounded latency, fewer frames verified.
    "realtime": {"verify_budget_ms": 300.0},
    # Exactly the seed's retrieval: Ω top-N -> Φ rerank -> node consistency on the top-M,
    # the top tile's centre as the answer; no rotation search, no verification.
    "seed": {
        "rotations": 1,
        "recall": {"name": "faiss"},
        "answer": "tile-centre",
        "min_confidence": 0.0,
        "heading_sweep": False,
        "consistency": {"name": "node-centroid", "refine": False},
        "verify": {"name": "none"},
        "priors": [{"name": "gnss-radius"}],
    },
}

DEFAULT_PRESET = "accurate"


def _stage(section: Any, where: str, optional: bool) -> StageConfig | None:
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError(f"{where}: a stage needs a table with a 'name' key")
    name = str(section["name"])
    if name == "none":
        if not optional:
            raise ConfigError(f"{where}: this stage cannot be 'none'")
        return None
    return StageConfig(name, {k: v for k, v in section.items() if k != "name"})


def _as_bool(v: Any) -> bool:
    """A TOML boolean as it is (``bool("false")`` would be True)."""
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {v!r}")
    return v


_CAST: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "bool": _as_bool, "str": str}


def from_dict(d: dict[str, Any], where: str = "pipeline") -> PipelineConfig:
    """Build a config from a preset-style dict, on top of ``d['preset']`` (default accurate)."""
    unknown = sorted(set(d) - set(GLOBAL_KEYS) - set(PLUGIN_STAGES))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(set(GLOBAL_KEYS) | set(PLUGIN_STAGES)))}"
        )
    base = str(d.get("preset", DEFAULT_PRESET))
    if base not in PRESETS:
        raise ConfigError(f"{where}: unknown preset {base!r}; valid: {', '.join(PRESETS)}")
    merged = {**PipelineConfig().as_dict(), **copy.deepcopy(PRESETS[base]), **copy.deepcopy(d)}
    merged["preset"] = base
    values: dict[str, Any] = {}
    for f in fields(PipelineConfig):
        v, hint = merged[f.name], _HINTS[f.name]
        if f.name == "priors":
            if not isinstance(v, list):
                raise ConfigError(f"{where}: 'priors' must be an array of tables ([[priors]])")
            values[f.name] = [s for s in (_stage(p, f"{where} [[priors]]", True) for p in v) if s]
        elif f.name in PLUGIN_STAGES:
            values[f.name] = _stage(v, f"{where} [{f.name}]", optional=hint is not StageConfig)
        else:
            try:
                values[f.name] = _CAST[hint.__name__](v)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: bad value of {f.name}: {exc}") from exc
    cfg = PipelineConfig(**values)
    cfg.validate()
    return cfg


def preset(name: str) -> PipelineConfig:
    """The named preset; ConfigError listing the valid names otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return from_dict({"preset": name}, where=f"preset {name}")


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read a TOML pipeline file (``--pipeline FILE``)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("pipeline file not found", path=str(p)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline file: {exc}", path=str(p)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(p)) from exc
    return from_dict(data, where=str(p))
