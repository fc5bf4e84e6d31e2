"""The embedded server: shared by processes, recovers from a SIGKILLed holder, stops cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geoloc.config import Settings
from geoloc.store import embedded

pytestmark = pytest.mark.slow

HOLDER = """
import sys, time
from geoloc.cli.main import install_sigterm_handler
from geoloc.config import Settings
install_sigterm_handler()  # as the CLI does
from geoloc.store import open_database
db = open_database(Settings(home=__import__('pathlib').Path(sys.argv[1])))
with db.engine.connect() as c:
    c.exec_driver_sql('SELECT 1')
print('ready', flush=True)
sys.stdin.readline()  # exit normally (atexit runs) when the test says so

"""


@pytest.fixture
def home() -> Iterator[Path]:
    h = Path(tempfile.mkdtemp(prefix="geoloc-test-emb-", dir="/tmp"))
    try:
        yield h
    finally:
        embedded.stop(Settings(home=h))
        shutil.rmtree(h, ignore_errors=True)


def _holder(home: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(home)],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        env={**os.environ, "GEOLOC_DATABASE_URL": ""},
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip() == "ready", line
    return p


def _wait(pred, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_server_recovers_from_kill_9_and_stops_with_the_last_user(home: Path) -> None:
    settings = Settings(home=home)
    # 1. a holder is SIGKILLed: its pid stays in the holder list, the server keeps running
    p = _holder(home)
    st = embedded.status(settings)
    assert st.running and p.pid in st.holders
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert embedded.status(settings).running
    # 2. a new process prunes the dead pid and attaches to the same server
    q = _holder(home)
    st2 = embedded.status(settings)
    assert st2.running and st2.holders == [q.pid] and st2.pid == st.pid
    # 3. its clean exit (the last holder) stops the server
    assert q.stdin is not None
    q.stdin.write("\n")
    q.stdin.flush()
    q.wait(10)
    assert _wait(lambda: not embedded.status(settings).running)
    # 4. the postmaster itself is SIGKILLed: the next user starts it again (crash recovery)
    url = embedded.start(settings, keep_running=True)
    pid = embedded.status(settings).pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: not embedded.status(settings).running)
    r = _holder(home)
    st3 = embedded.status(settings)
    assert st3.running and st3.pid != pid and st3.keep_running
    r.kill()
    r.wait(10)
    assert url.startswith("postgresql+psycopg2://")
    assert embedded.stop(settings) is True
    assert not embedded.status(settings).running and not embedded.status(settings).keep_running


def test_sigterm_of_the_last_holder_stops_the_server(home: Path) -> None:
    """``timeout``, systemd and Docker stop a CLI with SIGTERM: it must unwind like Ctrl-C so
    the server does not keep a dead holder (and keep running) until ``geoloc db stop``."""
    settings = Settings(home=home)
    p = _holder(home)
    assert embedded.status(settings).holders == [p.pid]
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    assert p.returncode != -signal.SIGTERM  # unwound in Python, not killed by the default action
    assert _wait(lambda: not embedded.status(settings).running)
