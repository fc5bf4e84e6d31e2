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
from geoloc.config import Settings
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


def test_server_survives_killed_holder_and_stops_with_the_last_user(home: Path) -> None:
    settings = Settings(home=home)
    p = _holder(home)
    st = embedded.status(settings)
    assert st.running and p.pid in st.holders
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    # the dead holder leaves the server running (pitfall 1): a new process prunes it and attaches
    assert embedded.status(settings).running
    q = _holder(home)
    st2 = embedded.status(settings)
    assert st2.running and st2.holders == [q.pid] and st2.pid == st.pid
    assert q.stdin is not None
    q.stdin.write("\n")  # a clean exit: the last holder stops the server
    q.stdin.flush()
    q.wait(10)
    assert _wait(lambda: not embedded.status(settings).running)


def test_server_restarts_after_postmaster_is_killed(home: Path) -> None:
    settings = Settings(home=home)
    url = embedded.start(settings, keep_running=True)
    st = embedded.status(settings)
    assert st.running and st.pid
    os.kill(st.pid, signal.SIGKILL)
    assert _wait(lambda: not embedded.status(settings).running)
    p = _holder(home)  # a new user starts it again on the same data dir (crash recovery)
    st2 = embedded.status(settings)
    assert st2.running and st2.pid != st.pid
    p.kill()
    p.wait(10)
    assert url.startswith("postgresql+psycopg2://")
    assert embedded.stop(settings) is True
    assert not embedded.status(settings).running
