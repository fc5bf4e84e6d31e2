"""``geoloc serve`` under load: C concurrent HTTP clients x K frames on loopback; warm vs cold.

Ingests the bundled sample into a throw-away GEOLOC_HOME (embedded Postgres), starts
``geoloc serve`` on a free loopback port, then ``clients`` threads each POST ``frames`` sample
frames (``data/sample/frames``, cycled, with their GSD) to ``/v1/locate``. Bounded: every request
has a timeout and the run stops after ``clients * frames`` requests. The service serialises the
localizer, so latency under load includes queueing behind the other clients.

Reports client-side latency p50/p95/max, errors (non-200 or transport failures), statuses,
frames/s; before that, the warm single-request latency (sequential POSTs, median) and, right
after it, a cold ``geoloc locate`` process (model + index load included). JSON in
``benchmarks/results/serve_load.json``.

    python benchmarks/serve_load.py [--clients 8] [--frames 50] [--preset accurate]
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.serving import free_port, pct, teardown

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SAMPLE = REPO / "data" / "sample" / "turku_utm34n_0.28m.tif"
FRAMES = REPO / "data" / "sample" / "frames"


def _frames() -> list[tuple[bytes, float, str]]:
    with (FRAMES / "truth.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [((FRAMES / r["name"]).read_bytes(), float(r["gsd_m"]), r["name"]) for r in rows]


def run(
    clients: int = 8, frames: int = 50, preset: str = "accurate", label: str = ""
) -> dict[str, Any]:
    """Run the load test, save and return the results (``label`` says how the machine was)."""
    import httpx

    from geoloc.config import Settings
    from geoloc.ingest import ingest
    from geoloc.store import embedded

    home = Path(tempfile.mkdtemp(prefix="geoloc-bench-serve-", dir="/tmp"))
    settings = Settings(home=home, database_url=None)
    env = dict(os.environ, GEOLOC_HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("GEOLOC_DATABASE_URL", None)
    env.pop("GEOLOC_API_TOKEN", None)
    out: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "clients": clients,
        "frames_per_client": frames,
        "preset": preset,
        "label": label,
    }
    server = None
    try:
        embedded.start(settings, keep_running=True)
        (res,) = ingest([SAMPLE], settings=settings, progress=False)
        if res.status != "ingested":
            raise RuntimeError(f"{SAMPLE}: ingest {res.status}: {res.message}")
        sample = _frames()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "geoloc.cli", "-q", "serve", "--port", str(port)]
            + ["--preset", preset],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"geoloc serve exited: {server.communicate()[1][-500:]}")
            time.sleep(0.5)
        out["serve_startup_s"] = round(time.perf_counter() - t0, 1)

        def post(client: httpx.Client, i: int) -> tuple[float, int, str]:
            data, gsd, _ = sample[i % len(sample)]
            t = time.perf_counter()
            r = client.post(f"{url}/v1/locate", params={"gsd": gsd}, content=data, timeout=300)
            status = r.json().get("status", "?") if r.status_code == 200 else "http"
            return (time.perf_counter() - t) * 1000.0, r.status_code, status

        # warm, one client at a time
        with httpx.Client() as c:
            warm = [post(c, i)[0] for i in range(len(sample))]
        out["warm_post_ms_p50"] = pct(warm, 50)
        out["loadavg_at_warm"] = list(os.getloadavg())
        # cold, right after warm so both see the same machine: one CLI process for one frame,
        # model and index loaded from scratch
        data, gsd, name = sample[0]
        t = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "geoloc.cli", "-q", "locate", str(FRAMES / name)]
            + ["--gsd", str(gsd), "--preset", preset],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        out["cold_cli_ms"] = round((time.perf_counter() - t) * 1000.0, 1)
        out["cold_cli_exit"] = p.returncode
        if out["warm_post_ms_p50"]:
            out["cold_over_warm"] = round(out["cold_cli_ms"] / out["warm_post_ms_p50"], 2)

        lat: list[float] = []
        errors: list[str] = []
        statuses: dict[str, int] = {}
        lock = threading.Lock()

        def client_loop(k: int) -> None:
            with httpx.Client() as c:
                for j in range(frames):
                    try:
                        ms, code, st = post(c, k * frames + j)
                    except (httpx.HTTPError, ValueError) as exc:
                        with lock:
                            errors.append(f"client {k}: {type(exc).__name__}")
                        continue
                    with lock:
                        lat.append(ms)
                        statuses[st] = statuses.get(st, 0) + 1
                        if code != 200:
                            errors.append(f"client {k}: HTTP {code}")

        started = time.perf_counter()
        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - started
        out.update(
            {
                "requests": clients * frames,
                "errors": len(errors),
                "error_samples": errors[:10],
                "statuses": statuses,
                "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "max": pct(lat, 100)},
                "wall_s": round(wall, 1),
                "frames_per_s": round(clients * frames / wall, 3),
            }
        )
        out["loadavg_at_end"] = list(os.getloadavg())
    finally:
        code = teardown(server, settings, home)
        if code is not None:
            out["serve_exit_on_sigterm"] = code
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    """Command-line entry: print the results as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--preset", default="accurate")
    ap.add_argument("--label", default="", help="How the machine was (e.g. idle, under load).")
    a = ap.parse_args()
    print(json.dumps(run(a.clients, a.frames, a.preset, a.label), indent=2))


if __name__ == "__main__":
    main()
