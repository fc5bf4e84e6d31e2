"""``geoloc serve``: one long-lived process keeping the model and index warm (HTTP, MAVLink, NMEA).

``--source VIDEO|URL|DEVICE`` is tracked continuously (:mod:`geoloc.serve.source`); a source that
cannot be opened is a one-line error (exit 1) before the model loads.

Binds to 127.0.0.1 by default; any other host needs ``GEOLOC_API_TOKEN`` (clients send
``Authorization: Bearer <token>``) and the command refuses to start without it. SIGTERM stops
accepting, finishes the requests in flight and exits 143.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from geoloc.config import DEFAULT_ENCODER

log = logging.getLogger("geoloc.serve")


def check_bind(host: str, token: str | None) -> None:
    """ConfigError when ``host`` is reachable from other machines and no token is set."""
    from geoloc.errors import ConfigError
    from geoloc.serve.service import is_loopback

    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host}: binding beyond loopback needs GEOLOC_API_TOKEN set (refusing to start)"
        )


def register(app: typer.Typer) -> None:
    """Add ``geoloc serve`` to ``app``."""

    @app.command("serve")
    def serve_cmd(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
        port: int = typer.Option(8765, "--port", min=1, max=65535, help="TCP port."),
        source: str | None = typer.Option(
            None,
            "--source",
            metavar="VIDEO|URL|DEVICE",
            help="Track this video file, stream URL (rtsp://, udp://, http://) or capture device "
            "(0, /dev/video0) continuously; frames arriving while the tracker is busy are dropped.",
        ),
        start: str | None = typer.Option(
            None, "--start", metavar="LAT,LON[,RADIUS_M]", help="Where --source's first fix is."
        ),
        gsd: float | None = typer.Option(
            None, "--gsd", min=1e-3, help="Metres per pixel of --source's frames."
        ),
        hfov: float | None = typer.Option(
            None,
            "--hfov",
            min=1.0,
            max=179.0,
            help="Camera horizontal field of view (deg): with a MAVLink altitude, the frames' GSD.",
        ),
        mavlink: str | None = typer.Option(
            None,
            "--mavlink",
            metavar="CONN",
            help="pymavlink connection, e.g. udpout:127.0.0.1:14550.",
        ),
        mavlink_out: str = typer.Option(
            "gps_input",
            "--mavlink-out",
            help="gps_input | vision_position_estimate | odometry.",
        ),
        mavlink_rate: float = typer.Option(
            5.0, "--mavlink-rate", min=0.1, help="Most position messages sent per second."
        ),
        camera_mount: str = typer.Option(
            "body",
            "--camera-mount",
            help="body (fixed, looking down: attitude priors from ATTITUDE) | gimbal (nadir).",
        ),
        nmea: str | None = typer.Option(
            None, "--nmea", metavar="udp:HOST:PORT", help="Also send NMEA GGA + RMC here."
        ),
        preset_name: str = typer.Option("accurate", "--preset", help="Pipeline preset."),
        encoder: str = typer.Option(DEFAULT_ENCODER, "--encoder", "-e", help="Encoder plugin."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Encoder checkpoint."),
        max_body_mb: float = typer.Option(
            20.0, "--max-body-mb", min=0.01, help="Largest request body accepted (MB)."
        ),
    ) -> int:
        """Serve POST /v1/locate, /health, /metrics, live fixes on /v1/ws and a page on /."""
        import uvicorn

        from geoloc.serve import ServeConfig, Service, create_app

        token = os.environ.get("GEOLOC_API_TOKEN") or None
        check_bind(host, token)
        bridge = nmea_out = frames = None
        if source is not None:
            from geoloc.serve.source import FrameSource, parse_start

            # opened before the model loads: a bad --source fails at once, in one line
            frames = FrameSource(
                None, source, priors={"gsd": gsd, "hfov_deg": hfov}, start=parse_start(start)
            ).open()
        if mavlink:
            from geoloc.serve.mavlink import MavlinkBridge

            bridge = MavlinkBridge(
                mavlink, out=mavlink_out, rate_hz=mavlink_rate, mount=camera_mount
            )
        if nmea:
            from geoloc.serve.nmea import NmeaUdp

            nmea_out = NmeaUdp(nmea)
        cfg = ServeConfig(
            host=host,
            port=port,
            token=token,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            preset=preset_name,
        )
        try:
            service = Service.open(encoder=encoder, checkpoint=checkpoint, preset=preset_name)
        except BaseException:
            if frames is not None:
                frames.stop()
            raise
        try:
            # the first frame would otherwise pay for compiling the nets and reading the
            # store's in-memory parts
            service.warm()
        except BaseException:
            service.close()
            if frames is not None:
                frames.stop()
            raise
        service.hfov_deg = hfov
        try:
            if bridge is not None:
                service.add_sink(bridge.send_fix)
                service.telemetry = bridge.priors
                bridge.start()
            if nmea_out is not None:
                service.add_sink(nmea_out.send_fix)
            if frames is not None:
                frames.service = service
                service.source = frames
                frames.start()
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(service, cfg),
                    host=host,
                    port=port,
                    log_level="warning",
                    access_log=False,  # query strings and headers stay out of the logs
                    timeout_graceful_shutdown=30,
                )
            )
            log.info("serving on http://%s:%d (token %s)", host, port, "set" if token else "off")
            # uvicorn drains on SIGTERM, then re-raises it: main's handler turns it into 143
            server.run()
        finally:
            if frames is not None:
                frames.stop()
            if bridge is not None:
                bridge.stop()
            if nmea_out is not None:
                nmea_out.close()
            service.close()
        return 0
