"""The HTTP layer of ``geoloc serve``: locate, health, metrics, live fixes, the page.

Every route except ``/`` (static HTML, no data) requires ``Authorization: Bearer <token>`` when
a token is configured; the WebSocket takes it as the subprotocol ``bearer.<token>`` because
browsers cannot set headers on a WebSocket. No route takes a path from the client, CORS is off
(no middleware), bodies are capped at ``max_body_bytes``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from geoloc.serve.decode import decode_image
from geoloc.serve.service import ServeConfig, Service

log = logging.getLogger("geoloc.serve")

_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: How often a WebSocket client is sent news (s); fixes in between are merged.
WS_POLL_S = 0.2


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unavailable(exc: BaseException) -> JSONResponse:
    """503 with a one-line reason for a failure that is the service's, not the client's: the
    database gone (a restart, a network cut), an expected database error, or a bug (its type
    only: internals stay in the log)."""
    from sqlalchemy.exc import SQLAlchemyError

    from geoloc.errors import GeolocError

    orig = getattr(exc, "orig", None) or exc
    if isinstance(exc, GeolocError):
        reason = _one_line(exc)
    elif isinstance(exc, SQLAlchemyError) or type(orig).__module__.startswith("psycopg"):
        reason = f"database unavailable ({type(orig).__name__}: {_one_line(orig)})"
    else:
        reason = f"service unavailable ({type(exc).__name__})"
    log.warning("request failed: %s: %s", type(exc).__name__, _one_line(exc))
    return JSONResponse({"error": reason[:300]}, status_code=503)


def _float(params: Any, name: str, lo: float, hi: float) -> float | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise HTTPException(400, f"{name}: not a number ({raw[:40]!r})") from None
    if not (lo <= v <= hi):
        raise HTTPException(400, f"{name}: {v} outside {lo} .. {hi}")
    return v


def locate_kwargs(params: Any) -> dict[str, Any]:
    """``Localizer.locate`` keyword arguments from query parameters (HTTPException 400)."""
    from geoloc.errors import ConfigError
    from geoloc.localize import Prior

    gsd = _float(params, "gsd", 1e-3, 100.0)
    altitude = _float(params, "altitude", 0.5, 10_000.0)
    hfov = _float(params, "hfov", 1.0, 179.0)
    heading = _float(params, "heading", -360.0, 360.0)
    pitch = _float(params, "pitch", -180.0, 180.0)
    roll = _float(params, "roll", -180.0, 180.0)
    if gsd is not None and (altitude is not None or hfov is not None):
        raise HTTPException(400, "give either gsd or altitude with hfov, not both")
    if (altitude is None) != (hfov is None):
        raise HTTPException(400, "altitude and hfov go together")
    prior = None
    if params.get("prior"):
        try:
            prior = Prior.parse(str(params["prior"])[:100])
        except ConfigError as exc:
            raise HTTPException(400, _one_line(exc).replace("--prior", "prior")) from None
    return {
        "gsd": gsd,
        "altitude_m": altitude,
        "hfov_deg": hfov,
        "heading": heading % 360.0 if heading is not None else None,
        "pitch": pitch,
        "roll": roll,
        "prior": prior,
    }


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPException(413, f"body larger than {limit} bytes")
        except ValueError:
            raise HTTPException(400, "bad Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_bytes(request: Request, limit: int) -> bytes:
    body = await _read_body(request, limit)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return body
    request._body = body  # the form parser reads the already size-checked body
    try:
        form = await request.form()
    except Exception as exc:  # noqa: BLE001 - any parser failure is the client's
        raise HTTPException(400, f"bad multipart body ({_one_line(exc)})") from None
    part = form.get("file")
    if part is None or isinstance(part, str):
        raise HTTPException(400, "multipart body without a 'file' part")
    data = await part.read()
    await form.close()
    return data


def create_app(service: Service, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``service`` (see the module docstring)."""
    from geoloc.errors import (
        ConfigError,
        DatabaseError,
        EmptyDatabaseError,
        FrameError,
        GeolocError,
    )

    cfg = config or ServeConfig()
    app = FastAPI(title="geoloc serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    token = cfg.token.encode() if cfg.token else None

    def _authorised(header: str | None) -> bool:
        if token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), token)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        if request.url.path != "/" and not _authorised(request.headers.get("authorization")):
            service.rejected += 1
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        resp: Response = await call_next(request)
        return resp

    # Starlette's class: routing's own 404/405 get the same {"error": reason} body as ours
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if 400 <= exc.status_code < 500:
            service.rejected += 1
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.post("/v1/locate")
    async def locate(request: Request) -> JSONResponse:
        """One JPEG/PNG in (raw body or multipart ``file``) -> the ``locate`` JSON answer."""
        kwargs = locate_kwargs(request.query_params)
        data = await _image_bytes(request, cfg.max_body_bytes)
        try:
            rgb = await run_in_threadpool(decode_image, data)
        except FrameError as exc:
            raise HTTPException(415 if data else 400, _one_line(exc)) from None
        try:
            d = await run_in_threadpool(service.locate, rgb, name="upload", **kwargs)
        except FrameError as exc:
            raise HTTPException(422, _one_line(exc)) from None
        except (DatabaseError, EmptyDatabaseError) as exc:
            return unavailable(exc)
        except GeolocError as exc:
            return JSONResponse({"error": _one_line(exc)}, status_code=500)
        except Exception as exc:  # noqa: BLE001 - e.g. the database went away under a query
            return unavailable(exc)
        return JSONResponse(d)

    @app.post("/v1/track/{session}/frames")
    async def track_frame(session: str, request: Request) -> JSONResponse:
        """One frame of a flight (in order) -> its ``TrackFix`` (the session starts on its first
        frame; ``prior`` there is the start; ``t`` the frame time in seconds)."""
        if not _SESSION_RE.fullmatch(session):
            raise HTTPException(400, "session: 1-64 characters of A-Z a-z 0-9 _ -")
        kwargs = locate_kwargs(request.query_params)
        t = _float(request.query_params, "t", 0.0, 1e9)
        data = await _image_bytes(request, cfg.max_body_bytes)
        try:
            rgb = await run_in_threadpool(decode_image, data)
        except FrameError as exc:
            raise HTTPException(415 if data else 400, _one_line(exc)) from None
        priors = {
            "gsd": kwargs["gsd"],
            "altitude_m": kwargs["altitude_m"],
            "hfov_deg": kwargs["hfov_deg"],
            "heading_deg": kwargs["heading"],
            "start": kwargs["prior"],
        }
        try:
            d = await run_in_threadpool(service.track_frame, session, rgb, t=t, priors=priors)
        except ConfigError as exc:
            raise HTTPException(429, _one_line(exc)) from None
        except FrameError as exc:
            raise HTTPException(422, _one_line(exc)) from None
        except (DatabaseError, EmptyDatabaseError) as exc:
            return unavailable(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the database went away under a query
            return unavailable(exc)
        return JSONResponse(d)

    @app.delete("/v1/track/{session}")
    async def track_end(session: str) -> JSONResponse:
        """End a tracking session (404 when there is none)."""
        out = await run_in_threadpool(service.end_session, session)
        if out is None:
            raise HTTPException(404, f"session {session[:64]!r}: no such session")
        return JSONResponse(out)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Model, index, tiles, last fix age, frames/s (503 when the database is unreachable)."""
        info = await run_in_threadpool(service.health)
        return JSONResponse(info, status_code=200 if info["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        return PlainTextResponse(
            service.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.get("/v1/state")
    async def state() -> JSONResponse:
        """The page's data: last answer, track, frames/s (the WebSocket pushes the same)."""
        return JSONResponse(service.snapshot())

    @app.get("/v1/overview.png")
    async def overview_png() -> Response:
        """The orthomosaic overview (PNG); its bounds are at ``/v1/overview``."""
        png, _ = await run_in_threadpool(service.overview)
        return Response(png, media_type="image/png")

    @app.get("/v1/overview")
    async def overview_bounds() -> JSONResponse:
        """lon/lat bounds of the overview image."""
        _, bounds = await run_in_threadpool(service.overview)
        return JSONResponse(bounds)

    @app.get("/")
    async def page() -> HTMLResponse:
        """The live page (static; its data comes from the API)."""
        html = resources.files("geoloc.serve").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": _CSP})

    @app.websocket("/v1/ws")
    async def ws(websocket: WebSocket) -> None:
        """Pushes the page snapshot whenever a new answer arrives (and every 2 s)."""
        protos = [
            p.strip()
            for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
            if p.strip()
        ]
        bearer = next((p for p in protos if p.startswith("bearer.")), None)
        if token is not None and not (
            bearer is not None and hmac.compare_digest(bearer[7:].encode(), token)
        ):
            await websocket.close(code=1008)
            return
        await websocket.accept(subprotocol=bearer)
        seen, idle = -1, 0
        try:
            while True:
                if service.seq != seen or idle >= int(2.0 / WS_POLL_S):
                    snap = service.snapshot()
                    seen, idle = snap["seq"], 0
                    await websocket.send_text(json.dumps(snap))
                await asyncio.sleep(WS_POLL_S)
                idle += 1
        except (WebSocketDisconnect, RuntimeError, OSError):
            return

    return app


# the page's own script and styles only; images may be blob: URLs made by the script
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob:; connect-src 'self'"
)
