"""What the `geoloc serve` benchmarks share: percentiles, loopback ports, the server's teardown."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any


def pct(xs: list[float], q: float) -> float | None:
    """The ``q``-th percentile of ``xs`` (nearest rank, 0.1 precision); None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))], 1)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def teardown(server: subprocess.Popen[Any] | None, settings: Any, home: Path) -> int | None:
    """Stop the server (SIGTERM, then SIGKILL after 60 s), its embedded Postgres and its home.

    Returns the server's exit code after SIGTERM, None when it was not running or had to be
    killed.
    """
    from geoloc.store import embedded

    code: int | None = None
    if server is not None and server.poll() is None:
        server.terminate()
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    embedded.stop(settings)
    shutil.rmtree(home, ignore_errors=True)
    return code
