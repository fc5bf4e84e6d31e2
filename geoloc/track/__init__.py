"""Tracking a flight: a video or a frame sequence in, one position per frame out.

>>> from geoloc.track import Tracker
>>> with Tracker.open(start="60.45,22.26,200", gsd=0.3) as tr:
...     fix = tr.update("frame_0001.jpg", t=0.0)
...     fix.status, fix.lat, fix.lon
"""

from __future__ import annotations

from geoloc.track.filter import LocalPlane, TrackFilter
from geoloc.track.fix import STATUSES, TrackFix
from geoloc.track.mapmatch import MapMatch, MapMatcher
from geoloc.track.tracker import MapFixer, Tracker
from geoloc.track.vo import Motion, VisualOdometry, ground_offset

__all__ = [
    "STATUSES",
    "LocalPlane",
    "MapFixer",
    "MapMatch",
    "MapMatcher",
    "Motion",
    "TrackFilter",
    "TrackFix",
    "Tracker",
    "VisualOdometry",
    "ground_offset",
]
