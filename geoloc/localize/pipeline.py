"""Pipeline configuration: named presets (hloc style) and TOML pipeline files.

A pipeline names one plugin (and its parameters) per stage plus a few global knobs::

    preset = "accurate"          # optional: start from this preset, then override

    rotations = 8                # heading hypotheses when the heading is unknown
    top_n = 50                   # recall depth
    top_m = 5                    # candidates that get consistency and verification
    answer = "verified"          # verified | refined | tile-centre
    min_confidence = 0.5         # below: status no_match
    verify_budget_ms = 0         # stop verifying after this long (0: try every candidate)

    [recall]
    name = "faiss"

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoloc.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ANSWERS = ("verified", "refined", "tile-centre")


#: The pipeline's global knobs (not stages), in the order a pipeline file lists them.
GLOBAL_KEYS = (
    "preset",
    "rotations",
    "top_n",
    "top_m",
    "answer",
    "min_confidence",
    "heading_sweep",
    "verify_budget_ms",
)
_STAGE_KEYS = {"recall", "rerank", "consistency", "verify", "priors"}


@dataclass
class StageConfig:
    """One stage: the plugin's name and its keyword parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **params}``."""
        return {"name": self.name, **self.params}


@dataclass
class PipelineConfig:
    """A complete pipeline (see the module docstring for the meaning of each field)."""

    preset: str
    rotations: int = 8
    top_n: int = 50
    top_m: int = 5
    answer: str = "verified"
    min_confidence: float = 0.5
    heading_sweep: bool = True
    verify_budget_ms: float = 0.0
    recall: StageConfig = field(default_factory=lambda: StageConfig("faiss"))
    rerank: StageConfig | None = field(default_factory=lambda: StageConfig("phi-cosine"))
    consistency: StageConfig | None = field(default_factory=lambda: StageConfig("node-centroid"))
    verify: StageConfig | None = field(default_factory=lambda: StageConfig("xfeat-lighterglue"))
    priors: list[StageConfig] = field(
        default_factory=lambda: [StageConfig("gnss-radius"), StageConfig("heading")]
    )

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
        d: dict[str, Any] = {
            "preset": self.preset,
            "rotations": self.rotations,
            "top_n": self.top_n,
            "top_m": self.top_m,
            "answer": self.answer,
            "min_confidence": self.min_confidence,
            "heading_sweep": self.heading_sweep,
            "verify_budget_ms": self.verify_budget_ms,
        }
        for stage in ("recall", "rerank", "consistency", "verify"):
            sc = getattr(self, stage)
            d[stage] = sc.as_dict() if sc is not None else {"name": "none"}
        d["priors"] = [p.as_dict() for p in self.priors]
        return d

    def to_toml(self) -> str:
        """A pipeline file that :func:`load_pipeline` reads back to an equal config."""
        d = self.as_dict()
        lines = []
        for k in GLOBAL_KEYS:
            lines.append(f"{k} = {_toml_value(d[k])}")
        for stage in ("recall", "rerank", "consistency", "verify"):
            lines.append("")
            lines.append(f"[{stage}]")
            for k, v in d[stage].items():
                lines.append(f"{k} = {_toml_value(v)}")
        if not d["priors"]:
            lines.append("")
            lines.append("priors = []")
        for p in d["priors"]:
            lines.append("")
            lines.append("[[priors]]")
            for k, v in p.items():
                lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    def validate(self) -> None:
        """ConfigError on out-of-range global knobs."""
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
        if not (0.0 <= self.min_confidence <= 1.0) or math.isnan(self.min_confidence):
            raise ConfigError(
                f"pipeline: min_confidence must be in [0, 1], got {self.min_confidence}"
            )
        if not (self.verify_budget_ms >= 0.0) or math.isinf(self.verify_budget_ms):
            raise ConfigError(
                "pipeline: verify_budget_ms must be >= 0 (0: no limit), "
                f"got {self.verify_budget_ms}"
            )
        if self.answer == "verified" and self.verify is None:
            self.answer = "refined" if self.consistency is not None else "tile-centre"


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


_ACCURATE: dict[str, Any] = {
    "rotations": 8,
    "top_n": 50,
    "top_m": 5,
    "answer": "verified",
    "min_confidence": 0.5,
    "heading_sweep": True,
    "recall": {"name": "faiss"},
    "rerank": {"name": "phi-cosine"},
    "consistency": {"name": "node-centroid"},
    "verify": {"name": "xfeat-lighterglue"},
    "priors": [{"name": "gnss-radius"}, {"name": "heading"}],
}

#: Named presets. ``accurate`` is the default.
PRESETS: dict[str, dict[str, Any]] = {
    # Ω recall + Φ rerank over 8 heading hypotheses; the top tile's centre. No verification.
    "fast": {
        "rotations": 8,
        "top_n": 50,
        "top_m": 5,
        "answer": "tile-centre",
        "min_confidence": 0.2,
        "heading_sweep": False,
        "recall": {"name": "faiss"},
        "rerank": {"name": "phi-cosine"},
        "consistency": {"name": "none"},
        "verify": {"name": "none"},
        "priors": [{"name": "gnss-radius"}, {"name": "heading"}],
    },
    # Rotation search, recall, rerank, node consistency, then local-feature verification of
    # the top-M with a 4-heading sweep when the best heading does not verify.
    "accurate": _ACCURATE,
    # ``accurate`` with a per-frame verification budget of 300 ms: on 2 CPU cores p95 483 / 517
    # ms (accurate: 1,267 / 1,755 ms) on two sets of 100 benchmark views, verifying 89 / 79 of
    # them (accurate: 96 / 96); the others become no_match, none was wrong.
    "realtime": {**_ACCURATE, "verify_budget_ms": 300.0},
    # Exactly the seed's retrieval: Ω top-N -> Φ rerank -> node consistency on the top-M,
    # the top tile's centre as the answer; no rotation search, no verification.
    "seed": {
        "rotations": 1,
        "top_n": 50,
        "top_m": 5,
        "answer": "tile-centre",
        "min_confidence": 0.0,
        "heading_sweep": False,
        "recall": {"name": "faiss"},
        "rerank": {"name": "phi-cosine"},
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


def from_dict(d: dict[str, Any], where: str = "pipeline") -> PipelineConfig:
    """Build a config from a preset-style dict, on top of ``d['preset']`` (default accurate)."""
    unknown = sorted(set(d) - set(GLOBAL_KEYS) - _STAGE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(set(GLOBAL_KEYS) | _STAGE_KEYS))}"
        )
    base_name = str(d.get("preset", DEFAULT_PRESET))
    if base_name not in PRESETS:
        raise ConfigError(f"{where}: unknown preset {base_name!r}; valid: {', '.join(PRESETS)}")
    merged = copy.deepcopy(PRESETS[base_name])
    merged.update({k: copy.deepcopy(v) for k, v in d.items() if k != "preset"})
    try:
        cfg = PipelineConfig(
            preset=base_name,
            rotations=int(merged["rotations"]),
            top_n=int(merged["top_n"]),
            top_m=int(merged["top_m"]),
            answer=str(merged["answer"]),
            min_confidence=float(merged["min_confidence"]),
            heading_sweep=bool(merged["heading_sweep"]),
            verify_budget_ms=float(merged.get("verify_budget_ms", 0.0)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad value: {exc}") from exc
    recall = _stage(merged["recall"], f"{where} [recall]", optional=False)
    assert recall is not None
    cfg.recall = recall
    cfg.rerank = _stage(merged["rerank"], f"{where} [rerank]", optional=True)
    cfg.consistency = _stage(merged["consistency"], f"{where} [consistency]", optional=True)
    cfg.verify = _stage(merged["verify"], f"{where} [verify]", optional=True)
    priors = merged.get("priors", [])
    if not isinstance(priors, list):
        raise ConfigError(f"{where}: 'priors' must be an array of tables ([[priors]])")
    cfg.priors = [s for s in (_stage(p, f"{where} [[priors]]", True) for p in priors) if s]
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
