"""The live page in a real headless Chromium: it loads, shows a fix, and leaves a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.conftest import Running, frame_bytes

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium; CI does it)"
)


def _chromium(tmp: Path, url: str, *mode: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp / 'profile'}",
            "--window-size=1100,800",
            "--virtual-time-budget=8000",
            *mode,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_page_shows_the_fix(served: Running, tmp_path: Path, truth: Any) -> None:
    r = httpx.post(f"{served.url}/v1/locate?gsd=0.3128", content=frame_bytes(0), timeout=120)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    fix = r.json()
    p = _chromium(tmp_path, served.url + "/", "--dump-dom")
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r'id="fix">([-0-9.]+), ([-0-9.]+)<', p.stdout)
    assert m is not None, p.stdout[-3000:]
    assert float(m.group(1)) == pytest.approx(fix["lat"], abs=1e-5)
    assert float(m.group(2)) == pytest.approx(fix["lon"], abs=1e-5)
    assert re.search(r'id="status" class="ok">ok<', p.stdout)

    shot = tmp_path / "serve_page.png"
    p = _chromium(tmp_path, served.url + "/", f"--screenshot={shot}")
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size[0] >= 1000
        px = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert px is not None and len(px) > 1000  # the overview image was drawn
