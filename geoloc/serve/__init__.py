"""``geoloc serve``: a long-lived localization service (HTTP/WebSocket, MAVLink, NMEA, a live page).

:class:`~geoloc.serve.service.Service` keeps one warm :class:`~geoloc.localize.Localizer` and the
latest fixes; :func:`~geoloc.serve.app.create_app` puts the HTTP API and the page on top of it;
:class:`~geoloc.serve.mavlink.MavlinkBridge` talks to the autopilot;
:class:`~geoloc.serve.source.FrameSource` feeds a video file, stream or device to the tracker.
"""

from __future__ import annotations

from geoloc.serve.app import create_app
from geoloc.serve.service import ServeConfig, Service

__all__ = ["ServeConfig", "Service", "create_app"]
