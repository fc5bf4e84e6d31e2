"""The service state: one warm Localizer (calls serialised), the latest fixes, counters, sinks."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.config import DEFAULT_ENCODER, Settings

log = logging.getLogger("geoloc.serve")

#: Fixes kept for the page's track (the newest win).
TRACK_LEN = 500
#: Window over which frames/s is measured (s).
FPS_WINDOW_S = 10.0

#: Live tracking sessions at once (each holds odometry state and a filter).
MAX_SESSIONS = 8
#: Statuses whose lat/lon is a position worth sending (locate ``ok``; tracker map_fix / vo).
POSITION_STATUSES = ("ok", "map_fix", "vo")

FixSink = Callable[[dict[str, Any]], object]
TelemetrySource = Callable[[], dict[str, Any]]


@dataclass
class ServeConfig:
    """What ``geoloc serve`` was started with (the token is never logged or shown)."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_body_bytes: int = 20 * 1024 * 1024
    preset: str = "accurate"

    def __repr__(self) -> str:  # keeps the token out of logs and tracebacks
        tok = "set" if self.token else "unset"
        return (
            f"ServeConfig(host={self.host!r}, port={self.port}, token={tok}, "
            f"max_body_bytes={self.max_body_bytes}, preset={self.preset!r})"
        )


def is_loopback(host: str) -> bool:
    """True for hosts only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Service:
    """One warm :class:`~geoloc.localize.Localizer` shared by every client.

    The localizer is not thread-safe, so :meth:`locate` holds a lock around it; the HTTP layer
    runs it in a worker thread. Every answer is recorded (last fix, track, counters) and ``ok``
    fixes go to the registered sinks (MAVLink, NMEA), which must not block.
    """

    def __init__(self, localizer: Any) -> None:
        self.localizer = localizer
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()
        self.started = time.time()
        self.seq = 0
        self.last: dict[str, Any] | None = None
        self.last_ok_time: float | None = None
        self.track: deque[dict[str, Any]] = deque(maxlen=TRACK_LEN)
        self.counts: dict[str, int] = {"ok": 0, "no_match": 0, "error": 0}
        self.rejected = 0
        self.locate_seconds_sum = 0.0
        self._frame_times: deque[float] = deque(maxlen=10_000)
        self._sinks: list[FixSink] = []
        self._overview: tuple[bytes, dict[str, float]] | None = None
        self.sessions: dict[str, Any] = {}
        #: telemetry priors (MAVLink): heading_deg, pitch_deg, roll_deg, altitude_m, start
        self.telemetry: TelemetrySource | None = None
        #: the camera's horizontal field of view (deg), turning a telemetry altitude into a GSD
        self.hfov_deg: float | None = None
        #: the ``--source`` feeding the tracker (its ``as_dict()`` is in /health and /metrics)
        self.source: Any = None

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        encoder: str | Any = DEFAULT_ENCODER,
        checkpoint: str | Path | None = None,
        preset: str = "accurate",
    ) -> Service:
        """Load the model and open the store once (``Localizer.open``'s errors pass through)."""
        from geoloc.localize import Localizer

        return cls(Localizer.open(settings, encoder=encoder, checkpoint=checkpoint, preset=preset))

    def warm(self) -> float | None:
        """Warm the localizer up (:meth:`Localizer.warm`) before the first client's frame;
        returns the seconds it took (None when it failed: logged, the service still starts, and
        the first frame pays instead). Not counted in the answers or the latency figures."""
        try:
            with self._lock:
                took = float(self.localizer.warm())
        except Exception as exc:  # noqa: BLE001 - an optimisation: a real frame reports errors
            log.warning("warm-up failed (%s): the first frame will be slower", exc)
            return None
        log.info("warmed up in %.1f s", took)
        return took

    def close(self) -> None:
        """End the sessions and close the localizer (waits for a running call)."""
        with self._lock:
            for tr in self.sessions.values():
                tr.near.regions.close()
            self.sessions.clear()
            self.localizer.close()

    # ------------------------------------------------------------------------------ track
    def track_frame(
        self,
        session: str,
        rgb: np.ndarray,
        *,
        t: float | None,
        priors: dict[str, Any],
        received: float | None = None,
    ) -> dict[str, Any]:
        """``Tracker.update`` of ``session`` (created on its first frame), as a dict.

        The session's tracker shares this service's encoder and tile store; its global
        relocalization uses the service's localizer, so every call holds the one lock.
        ``priors`` may carry ``start`` (a Prior for a new session) and the tracker's per-frame
        priors. Telemetry fills what the client did not give (``prior_sources`` of the answer
        says which: ``request``, ``mavlink`` or null). ``received`` (Unix s, default now)
        is when the frame arrived: the answer's ``received_unix``, which the MAVLink output
        stamps as the time of the measurement. ConfigError when too many sessions.
        """
        from geoloc.errors import ConfigError
        from geoloc.localize import Localizer
        from geoloc.localize.recall import NearPositionRecall
        from geoloc.track import Tracker

        received = time.time() if received is None else received
        tele = self.telemetry() if self.telemetry is not None else {}
        start = priors.pop("start", None) or tele.get("start")
        sources: dict[str, str | None] = {}
        for key in ("heading_deg", "altitude_m"):
            if priors.get(key) is not None:
                sources[key] = "request"
            elif tele.get(key) is not None:
                priors[key] = tele[key]
                sources[key] = "mavlink"
            else:
                sources[key] = None
        priors = {k: v for k, v in priors.items() if v is not None}
        t0 = time.perf_counter()
        try:
            with self._lock:
                tr = self.sessions.get(session)
                if tr is None:
                    if len(self.sessions) >= MAX_SESSIONS:
                        raise ConfigError(
                            f"session {session}: {MAX_SESSIONS} sessions already open"
                        )
                    loc = self.localizer
                    near = Localizer(
                        loc.encoder, loc.store, loc.config, recall=NearPositionRecall()
                    )
                    tr = Tracker(near, start=start, global_localizer=lambda: self.localizer)
                    # the service's localizer is shared: the tracker must never close it
                    tr._global = self.localizer
                    self.sessions[session] = tr
                fix = tr.update(rgb, t=t, priors=priors)
        except Exception:  # a bad frame, or the database gone: counted, then answered above
            self._record_error(time.perf_counter() - t0)
            raise
        d = {**fix.as_dict(), "session": session, "received_unix": received}
        d["prior_sources"] = sources
        self.record(d, time.perf_counter() - t0)
        return d

    def end_session(self, session: str) -> dict[str, Any] | None:
        """Forget ``session``; its frame counts by status, or None when it did not exist."""
        with self._lock:
            tr = self.sessions.pop(session, None)
            if tr is None:
                return None
            tr.near.regions.close()
            return {"session": session, "frames": dict(tr.counts)}

    def add_sink(self, sink: FixSink) -> None:
        """Call ``sink(fix_dict)`` with every ``ok`` fix, in the thread that produced it."""
        self._sinks.append(sink)

    def remove_sink(self, sink: FixSink) -> None:
        """Stop calling ``sink`` (no error when it was not registered)."""
        if sink in self._sinks:
            self._sinks.remove(sink)

    # ------------------------------------------------------------------------------ locate
    def locate(self, rgb: np.ndarray, **kwargs: Any) -> dict[str, Any]:
        """``Localizer.locate`` on an RGB array, serialised; the fix as ``locate --format json``.

        With telemetry (``--mavlink``), the heading, pitch and roll the caller did not give come
        from the autopilot's latest attitude, and the altitude too when neither ``gsd`` nor
        ``altitude_m`` is given and the camera's field of view is known (``hfov_deg`` here or
        :attr:`hfov_deg`). The answer's ``prior_sources`` says where each came from
        (``request``, ``mavlink`` or null) and its ``priors`` name ``mavlink`` as their source.
        Failures (GeolocError for a bad frame; the driver's error when the database is gone)
        propagate after being counted.
        """
        kwargs, sources = self._telemetry_priors(kwargs)
        received = time.time()
        t0 = time.perf_counter()
        try:
            with self._lock:
                fix = self.localizer.locate(rgb, **kwargs)
        except Exception:  # a bad frame, or the database gone: counted, then answered above
            self._record_error(time.perf_counter() - t0)
            raise
        d = fix.as_dict()
        used = d.get("priors")
        if isinstance(used, dict):
            for name, src in sources.items():
                if src == "mavlink" and isinstance(used.get(name), dict):
                    used[name] = {**used[name], "source": "mavlink"}
        d["prior_sources"] = sources
        d["received_unix"] = received
        self.record(d, time.perf_counter() - t0)
        return d

    def _telemetry_priors(
        self, kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str | None]]:
        """``kwargs`` with telemetry filling what the caller left unset; the source of each."""
        kw = dict(kwargs)
        tele = self.telemetry() if self.telemetry is not None else {}
        sources: dict[str, str | None] = {}
        for name, key in (("heading", "heading_deg"), ("pitch", "pitch_deg"), ("roll", "roll_deg")):
            if kw.get(name) is not None:
                sources[name] = "request"
            elif tele.get(key) is not None:
                kw[name] = float(tele[key])
                sources[name] = "mavlink"
            else:
                sources[name] = None
        hfov = kw.get("hfov_deg") or self.hfov_deg
        if kw.get("gsd") is not None:
            sources["gsd"], sources["altitude"] = "request", None
        elif kw.get("altitude_m") is not None:
            sources["gsd"], sources["altitude"] = None, "request"
        elif tele.get("altitude_m") is not None and hfov is not None:
            kw["altitude_m"], kw["hfov_deg"] = float(tele["altitude_m"]), float(hfov)
            sources["gsd"], sources["altitude"] = None, "mavlink"
        else:
            sources["gsd"], sources["altitude"] = None, None
        return kw, sources

    def _record_error(self, seconds: float) -> None:
        with self._state_lock:
            self.counts["error"] += 1
            self.locate_seconds_sum += seconds

    def record(self, d: dict[str, Any], seconds: float = 0.0) -> None:
        """Keep ``d`` as the latest answer and pass an ``ok`` one to the sinks."""
        now = time.time()
        with self._state_lock:
            status = str(d.get("status"))
            self.counts[status] = self.counts.get(status, 0) + 1
            self.locate_seconds_sum += seconds
            self._frame_times.append(now)
            self.seq += 1
            self.last = {**d, "t": now, "seq": self.seq}
            if status in POSITION_STATUSES and d.get("lat") is not None:
                self.last_ok_time = now
                self.track.append(
                    {"lat": d["lat"], "lon": d["lon"], "error_m_est": d.get("error_m_est")}
                )
        if status in POSITION_STATUSES and d.get("lat") is not None:
            for sink in self._sinks:
                try:
                    sink(d)
                except Exception as exc:  # noqa: BLE001 - one bad sink must not stop the others
                    log.warning("fix sink %s failed: %s", getattr(sink, "__name__", sink), exc)

    # ------------------------------------------------------------------------------ status
    def fps(self) -> float:
        """Frames answered per second over the last :data:`FPS_WINDOW_S` seconds."""
        now = time.time()
        with self._state_lock:
            n = sum(1 for t in self._frame_times if now - t <= FPS_WINDOW_S)
        return n / FPS_WINDOW_S

    def last_fix_age_s(self) -> float | None:
        """Seconds since the last ``ok`` fix (None before the first)."""
        return None if self.last_ok_time is None else time.time() - self.last_ok_time

    def tile_count(self) -> int:
        """Tiles of complete orthomosaics embedded with the loaded encoder."""
        from sqlalchemy import text

        store = self.localizer.store
        with store.db.engine.connect() as conn:
            n = conn.execute(
                text(
                    "SELECT count(*) FROM tiles t"
                    " JOIN orthomosaics o ON o.id = t.orthomosaic_id"
                    " JOIN tile_embeddings e ON e.tile_id = t.id AND e.encoder_id = :e"
                    " WHERE o.status = 'complete'"
                ),
                {"e": store.encoder_id},
            ).scalar_one()
        return int(n)

    def health(self) -> dict[str, Any]:
        """Model, index, tile count, last fix age and frames/s; ``database`` ok|unreachable."""
        loc = self.localizer
        info: dict[str, Any] = {
            "status": "ok",
            "model": {"name": loc.encoder.name, "weights_sha256": loc.encoder.weights_sha256},
            "index": "faiss" if loc.store.index is not None else "pgvector",
            "preset": loc.config.preset,
            "last_fix_age_s": self.last_fix_age_s(),
            "fps": self.fps(),
            "frames": dict(self.counts),
            "uptime_s": time.time() - self.started,
        }
        if self.source is not None:
            info["source"] = self.source.as_dict()
        try:
            info["tiles"] = self.tile_count()
            info["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - health reports, never raises
            info["tiles"] = None
            info["database"] = "unreachable"
            info["status"] = "degraded"
            log.warning("health: database unreachable: %s", str(exc).splitlines()[0])
        return info

    def metrics_text(self) -> str:
        """Prometheus text exposition of the counters."""
        lines = [
            "# HELP geoloc_frames_total Frames answered, by status.",
            "# TYPE geoloc_frames_total counter",
        ]
        with self._state_lock:
            counts = dict(self.counts)
            secs = self.locate_seconds_sum
            rejected = self.rejected
        for status, n in sorted(counts.items()):
            lines.append(f'geoloc_frames_total{{status="{status}"}} {n}')
        total = sum(counts.values())
        age = self.last_fix_age_s()
        lines += [
            "# HELP geoloc_requests_rejected_total Requests refused with a 4xx before locating.",
            "# TYPE geoloc_requests_rejected_total counter",
            f"geoloc_requests_rejected_total {rejected}",
            "# HELP geoloc_locate_seconds Time spent locating frames.",
            "# TYPE geoloc_locate_seconds summary",
            f"geoloc_locate_seconds_sum {secs:.6f}",
            f"geoloc_locate_seconds_count {total}",
            "# HELP geoloc_fps Frames answered per second (last 10 s).",
            "# TYPE geoloc_fps gauge",
            f"geoloc_fps {self.fps():.3f}",
            "# HELP geoloc_last_fix_age_seconds Seconds since the last ok fix (-1: none yet).",
            "# TYPE geoloc_last_fix_age_seconds gauge",
            f"geoloc_last_fix_age_seconds {-1 if age is None else round(age, 3)}",
        ]
        if self.source is not None:
            src = self.source.as_dict()
            lines += [
                "# HELP geoloc_source_frames_total Frames of --source by outcome (dropped: "
                "arrived while the tracker was busy).",
                "# TYPE geoloc_source_frames_total counter",
            ]
            for what, key in (
                ("read", "frames_read"),
                ("tracked", "frames_tracked"),
                ("dropped", "frames_dropped"),
                ("error", "frame_errors"),
            ):
                lines.append(f'geoloc_source_frames_total{{outcome="{what}"}} {src[key]}')
            lines += [
                "# HELP geoloc_source_reconnects_total Times --source was reopened.",
                "# TYPE geoloc_source_reconnects_total counter",
                f"geoloc_source_reconnects_total {src['reconnects']}",
            ]
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, Any]:
        """What the live page shows: the last answer, the track, frames/s, counters."""
        with self._state_lock:
            last = None if self.last is None else _page_fix(self.last)
            track = list(self.track)
            counts = dict(self.counts)
            seq = self.seq
        return {
            "seq": seq,
            "last": last,
            "track": track,
            "fps": self.fps(),
            "frames": counts,
            "last_fix_age_s": self.last_fix_age_s(),
        }

    # ---------------------------------------------------------------------------- overview
    def overview(self, max_px: int = 1024) -> tuple[bytes, dict[str, float]]:
        """A PNG of the first ingested orthomosaic (downsampled) and its lon/lat bounds."""
        if self._overview is None:
            from PIL import Image

            from geoloc.localize.plot import _overview
            from geoloc.store import repository as repo

            rows = repo.list_orthomosaics(self.localizer.store.db, self.localizer.store.encoder_id)
            rows = [r for r in rows if r.status == "complete"] or rows
            if not rows:
                from geoloc.errors import EmptyDatabaseError

                raise EmptyDatabaseError("database: no orthomosaic ingested")
            row = rows[0]
            img, _, _ = _overview(row.path, max_px=max_px)
            buf = io.BytesIO()
            Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
            bounds = {
                "min_lon": row.min_lon,
                "min_lat": row.min_lat,
                "max_lon": row.max_lon,
                "max_lat": row.max_lat,
            }
            self._overview = (buf.getvalue(), bounds)
        return self._overview


def _page_fix(d: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "status",
        "session",
        "lat",
        "lon",
        "confidence",
        "error_m_est",
        "heading_deg",
        "method",
        "t",
    )
    return {k: d.get(k) for k in keys}
