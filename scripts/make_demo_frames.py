"""Write the demo drone frames and their truth from the bundled sample orthomosaic.

Usage: python scripts/make_demo_frames.py [--raster PATH] [--out DIR] [--n 8] [--seed 2026]

Writes DIR/frame_XX.jpg (512x512 RGB, JPEG q85) and DIR/truth.csv with columns
name,lat,lon,heading_deg,gsd_m (lat/lon: ground under the frame centre, WGS84; heading: where the
top of the frame points, degrees clockwise from the raster's grid north; gsd_m at the centre).
Frames cover ~100-200 m of ground with random heading, scale, tilt (<= 30 deg), colour, blur, noise.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from geoloc.training.synthetic import ViewSynthesizer

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Generate the frames; returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raster", type=Path, default=REPO / "data/sample/turku_utm34n_0.28m.tif")
    ap.add_argument("--out", type=Path, default=REPO / "data/sample/frames")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args(argv)

    syn = ViewSynthesizer(args.raster, size=args.size, gsd_m=0.28)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    margin = 0.5 * args.size * syn.gsd_m / 0.7 * 0.75
    i = 0
    while len(rows) < args.n and i < 50 * args.n:
        i += 1
        lon, lat = syn.random_point(rng, margin_m=min(margin, 150.0))
        v = syn.random_view(lon, lat, rng, min_valid=1.0)
        if v.valid_fraction < 1.0:
            continue
        if any(abs(v.lon - float(r[2])) < 3e-4 and abs(v.lat - float(r[1])) < 1.5e-4 for r in rows):
            continue  # keep frames apart (~15 m)
        name = f"frame_{len(rows):02d}.jpg"
        Image.fromarray(v.image).save(args.out / name, quality=85)
        rows.append(
            [name, f"{v.lat:.8f}", f"{v.lon:.8f}", f"{v.heading_deg:.2f}", f"{v.gsd_m:.4f}"]
        )
        print(
            f"{name}: lat {v.lat:.6f} lon {v.lon:.6f} heading {v.heading_deg:.0f} "
            f"gsd {v.gsd_m:.3f} m tilt {v.params.tilt_deg:.0f} deg",
            file=sys.stderr,
        )
    with open(args.out / "truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "lat", "lon", "heading_deg", "gsd_m"])
        w.writerows(rows)
    return 0 if len(rows) == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
