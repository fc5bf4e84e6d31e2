"""The localizer: frame loading, rotation search, recall, rerank, consistency, verification.

>>> from geoloc.localize import Localizer
>>> with Localizer.open(preset="accurate") as loc:
...     fix = loc.locate("frame.jpg", gsd=0.3)
...     fix.lat, fix.lon, fix.confidence
"""

from __future__ import annotations

from geoloc.localize.frame import Frame, load_frame
from geoloc.localize.localizer import Fix, Localizer
from geoloc.localize.pipeline import PRESETS, PipelineConfig, StageConfig, load_pipeline, preset
from geoloc.localize.stages import Prior

__all__ = [
    "PRESETS",
    "Fix",
    "Frame",
    "Localizer",
    "PipelineConfig",
    "Prior",
    "StageConfig",
    "load_frame",
    "load_pipeline",
    "preset",
]
