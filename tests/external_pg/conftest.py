"""CLI runners for the external-Postgres tests: real ``geoloc`` processes, one URL each."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO

#: Seconds one CLI run may take (model load + a small ingest on a loaded 2-core machine).
CLI_TIMEOUT_S = 300.0


@dataclass
class Result:
    """Exit code, stdout and stderr of one ``geoloc`` run."""

    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        """The ``geoloc: error: ...`` lines of stderr."""
        return [x for x in self.err.splitlines() if x.startswith("geoloc: error: ")]


def env_for(home: Path, url: str) -> dict[str, str]:
    """Environment of a ``geoloc`` process using ``url`` (never the embedded server)."""
    env = dict(os.environ)
    env.update(
        GEOLOC_HOME=str(home),
        GEOLOC_DATABASE_URL=url,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def geoloc(home: Path, url: str, *args: str, timeout: float = CLI_TIMEOUT_S) -> Result:
    """Run ``geoloc ARGS`` as a separate process against ``url``."""
    proc = subprocess.run(
        [sys.executable, "-m", "geoloc.cli.main", *args],
        cwd=REPO,
        env=env_for(home, url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Background:
    """A ``geoloc`` process running in the background; stderr is collected line by line."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    out: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self.lines.extend, args=(self.proc.stderr,), daemon=True),
            threading.Thread(target=self.out.extend, args=(self.proc.stdout,), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        """Poll ``predicate`` until true; fail if the process exits or time runs out first."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                self.finish()
                raise AssertionError(f"geoloc exited before {what}: {''.join(self.lines)}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.finish()
                raise AssertionError(f"timed out waiting for {what}: {''.join(self.lines)}")
            time.sleep(0.05)

    def finish(self, timeout: float = CLI_TIMEOUT_S) -> Result:
        """Wait for the exit; return the result."""
        self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=10)
        return Result(int(self.proc.returncode), "".join(self.out), "".join(self.lines))


def start_geoloc(home: Path, url: str, *args: str) -> Background:
    """Start ``geoloc ARGS`` against ``url`` without waiting for it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoloc.cli.main", *args],
        cwd=REPO,
        env=env_for(home, url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Background(proc)
