"""``geoloc serve --source``: a video file, a stream URL or a capture device, tracked continuously.

A reader thread decodes frames as they arrive (a file is played at its own frame rate, as a
camera would deliver it) into a one-frame slot; a tracker thread takes the newest frame from the
slot and runs the service's tracker on it. A frame that arrives while the tracker is still busy
replaces the waiting one and counts as dropped, so the delay from a frame's arrival to its fix is
bounded by one frame's processing and memory by one frame: nothing queues.

The end of a file ends the source (the service keeps serving HTTP); a stream or a device that
stops delivering is reopened with a bounded backoff until the service stops. Files and URLs are
read by PyAV, devices (``0``, ``/dev/video0``) by OpenCV.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.errors import ConfigError, GeolocError

log = logging.getLogger("geoloc.serve.source")

#: The tracking session the source's frames go to (not a name an HTTP client can use).
SESSION = "@source"
#: Seconds PyAV waits to open a stream, and for data while reading one.
OPEN_TIMEOUT_S, READ_TIMEOUT_S = 10.0, 5.0
#: Longest wait between two attempts to reopen a stream or a device (s).
MAX_BACKOFF_S = 5.0

_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_CRED_RE = re.compile(r"(://[^/@:]*):[^/@]*@")


def display_spec(spec: str) -> str:
    """``spec`` with any password of a URL masked (``rtsp://user:***@host``)."""
    return _CRED_RE.sub(r"\1:***@", spec)


def source_kind(spec: str) -> str:
    """``device`` (an index or /dev/video*), ``url`` (scheme://...) or ``file``."""
    if spec.isdigit() or spec.startswith("/dev/video"):
        return "device"
    if _URL_RE.match(spec):
        return "url"
    return "file"


def parse_start(text: str | None) -> Any:
    """``LAT,LON[,RADIUS_M]`` as a ``Prior`` (the tracker's default radius); None for None."""
    if text is None:
        return None
    from geoloc.localize import Prior
    from geoloc.track import Tracker

    parts = text.split(",")
    if len(parts) == 2:
        text = f"{text},{Tracker.default_conf['start_radius_m']}"
    try:
        return Prior.parse(text)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--prior", "--start")) from None


@dataclass
class SourceStats:
    """Counters of a source (``/health`` and ``/metrics`` show them)."""

    state: str = "opening"  # opening | running | reconnecting | ended | stopped
    read: int = 0  # frames decoded
    tracked: int = 0  # frames the tracker answered
    dropped: int = 0  # frames replaced in the slot before the tracker took them
    errors: int = 0  # frames the tracker failed on (bad frame, database down)
    reconnects: int = 0
    last_error: str | None = None


class _Reader:
    """One open input: ``frames()`` yields (media time s, RGB) until the input ends."""

    def __init__(self, spec: str) -> None:
        self.spec, self.kind = spec, source_kind(spec)
        self._container: Any = None
        self._cap: Any = None
        label = display_spec(spec)
        if self.kind == "device":
            import cv2

            self._cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
            if not self._cap.isOpened():
                self._cap.release()
                raise ConfigError(f"--source {label}: cannot open the capture device")
            return
        if self.kind == "file" and not Path(spec).is_file():
            raise ConfigError(f"--source {label}: no such video file")
        import av

        try:
            kw: dict[str, Any] = {}
            if self.kind == "url":
                kw["timeout"] = (OPEN_TIMEOUT_S, READ_TIMEOUT_S)
            self._container = av.open(os.fspath(spec), **kw)
        except (av.error.FFmpegError, OSError) as exc:
            raise ConfigError(f"--source {label}: cannot open ({_first_line(exc)})") from exc
        if not self._container.streams.video:
            self._container.close()
            raise ConfigError(f"--source {label}: no video stream")

    def frames(self) -> Iterator[tuple[float | None, np.ndarray]]:
        """Decoded frames in order; ends at the end of the input (errors propagate)."""
        if self._cap is not None:
            import cv2

            t0 = time.monotonic()
            while True:
                ok, bgr = self._cap.read()
                if not ok:
                    return
                yield time.monotonic() - t0, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in self._container.decode(stream):
            t = float(frame.time) if frame.time is not None else None
            yield t, frame.to_ndarray(format="rgb24")

    def close(self) -> None:
        """Release the input."""
        if self._cap is not None:
            self._cap.release()
        if self._container is not None:
            self._container.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # FFmpeg's messages repeat the URL: its password must not reach a log or an answer
    return display_spec(text.splitlines()[0]) if text else type(exc).__name__


class FrameSource:
    """A video source feeding ``service``'s tracker (session :data:`SESSION`).

    ``priors`` are the tracker's per-frame priors the operator gave (``gsd``, ``altitude_m``,
    ``hfov_deg``, ``heading_deg``); ``start`` (a ``Prior``) is where the first fix is searched.
    MAVLink telemetry fills the priors not given, as for HTTP tracking sessions. ``service``
    may be set after :meth:`open` and before :meth:`start`: ``geoloc serve`` opens the input
    before the model loads, so a bad ``--source`` fails at once.
    """

    def __init__(
        self,
        service: Any,
        spec: str,
        *,
        priors: dict[str, Any] | None = None,
        start: Any = None,
        realtime: bool | None = None,
    ) -> None:
        self.service, self.spec, self.kind = service, spec, source_kind(spec)
        self.priors = {k: v for k, v in (priors or {}).items() if v is not None}
        self.start_prior = start
        # a file is paced by its timestamps; streams and devices arrive at their own rate
        self.realtime = self.kind == "file" if realtime is None else realtime
        self.stats = SourceStats()
        self._reader: _Reader | None = None
        self._cond = threading.Condition()
        self._slot: tuple[float, float | None, np.ndarray] | None = None
        self._reader_done = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def open(self) -> FrameSource:
        """Open the input now (ConfigError, one line, when it cannot be opened)."""
        self._reader = _Reader(self.spec)
        return self

    def start(self) -> FrameSource:
        """Start the reader and the tracker threads (opens the input first if needed)."""
        if self._reader is None:
            self.open()
        self.stats.state = "running"
        for target, name in ((self._read_loop, "source-read"), (self._track_loop, "source-track")):
            th = threading.Thread(target=target, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop reading, let a running tracker call finish, close the input."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for th in self._threads:
            th.join(timeout=timeout)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.stats.state != "ended":
            self.stats.state = "stopped"

    def wait(self, timeout: float) -> bool:
        """Block until the input ended and its last frame was tracked; False on timeout."""
        end = time.monotonic() + timeout
        for th in self._threads:
            th.join(timeout=max(0.0, end - time.monotonic()))
        return all(not th.is_alive() for th in self._threads)

    def as_dict(self) -> dict[str, Any]:
        """The source, its state and counters (the password of a URL masked)."""
        s = self.stats
        return {
            "source": display_spec(self.spec),
            "kind": self.kind,
            "state": s.state,
            "frames_read": s.read,
            "frames_tracked": s.tracked,
            "frames_dropped": s.dropped,
            "frame_errors": s.errors,
            "reconnects": s.reconnects,
            "last_error": s.last_error,
        }

    # ------------------------------------------------------------------ reader side
    def _read_loop(self) -> None:
        backoff = 0.5
        try:
            while not self._stop.is_set():
                reader = self._reader
                if reader is not None:
                    try:
                        self._pump(reader)
                        backoff = 0.5
                    except Exception as exc:  # noqa: BLE001 - a broken input must not kill serve
                        self.stats.last_error = f"read: {_first_line(exc)}"
                        log.warning("source %s: %s", display_spec(self.spec), self.stats.last_error)
                if self.kind == "file" or self._stop.is_set():
                    break
                # a stream or a device stopped delivering: reopen it, bounded backoff
                self.stats.state = "reconnecting"
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2.0, MAX_BACKOFF_S)
                try:
                    self._reader = _Reader(self.spec)
                    self.stats.reconnects += 1
                    self.stats.state = "running"
                except ConfigError as exc:
                    self.stats.last_error = _first_line(exc)
        finally:
            with self._cond:
                self._reader_done = True
                self._cond.notify_all()

    def _pump(self, reader: _Reader) -> None:
        t0_wall: float | None = None
        t0_media = 0.0
        for t_media, rgb in reader.frames():
            if self._stop.is_set():
                return
            if self.realtime and t_media is not None and math.isfinite(t_media):
                if t0_wall is None:
                    t0_wall, t0_media = time.monotonic(), t_media
                delay = t0_wall + (t_media - t0_media) - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            arrived = time.time()
            with self._cond:
                self.stats.read += 1
                if self._slot is not None:
                    self.stats.dropped += 1
                self._slot = (arrived, t_media, rgb)
                self._cond.notify_all()

    # ------------------------------------------------------------------ tracker side
    def _track_loop(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._reader_done and not self._stop.is_set():
                    self._cond.wait(0.5)
                if self._slot is None or self._stop.is_set():
                    break
                arrived, t_media, rgb = self._slot
                self._slot = None
            priors = dict(self.priors)
            if self.start_prior is not None:
                priors["start"] = self.start_prior
            try:
                self.service.track_frame(SESSION, rgb, t=t_media, priors=priors, received=arrived)
                self.stats.tracked += 1
            except GeolocError as exc:
                self._frame_failed(exc)
            except Exception as exc:  # noqa: BLE001 - e.g. the database went away mid-query
                self._frame_failed(exc)
        if not self._stop.is_set():
            self.stats.state = "ended"
            log.info("source %s ended (%s)", display_spec(self.spec), self.as_dict())

    def _frame_failed(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {_first_line(exc)}"
        log.warning("source frame failed: %s", self.stats.last_error)
