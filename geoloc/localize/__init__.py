"""The localizer: a chain of stages over one per-frame state, from a drone frame to a fix.

>>> from geoloc.localize import Localizer
>>> with Localizer.open(preset="accurate") as loc:
...     fix = loc.locate("frame.jpg", gsd=0.3)
...     fix.lat, fix.lon, fix.confidence
"""

from __future__ import annotations

from geoloc.localize.frame import Frame, load_frame
from geoloc.localize.localizer import Localizer
from geoloc.localize.pipeline import PRESETS, PipelineConfig, StageConfig, load_pipeline, preset
from geoloc.localize.priors import Prior
from geoloc.localize.recall import NearPositionRecall
from geoloc.localize.state import Fix, FrameState

__all__ = [
    "PRESETS",
    "Fix",
    "Frame",
    "FrameState",
    "Localizer",
    "NearPositionRecall",
    "PipelineConfig",
    "Prior",
    "StageConfig",
    "load_frame",
    "load_pipeline",
    "preset",
]
