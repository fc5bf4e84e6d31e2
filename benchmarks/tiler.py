"""Tiler throughput: MB/s and tiles/s of ``tiling`` vs plain rasterio reads of the same raster.

``run(full=False)`` measures, on the 0.14 m Turku mosaic (``../shared/data/turku``; the bundled
0.28 m sample when absent) and on the bundled sample:

- ``rasterio full read``: one ``ds.read()`` of the whole raster (the upper bound, no tiling);
- ``rasterio windows``: plain ``ds.read(window=...)`` per 224 px window (no masks, no geography);
- ``tiler native``: ``list(open_raster(p).tiles())`` at native GSD (224 px, stride 224);
- ``rasterio gsd 0.5 / stride 112``: plain ``ds.read(window, out_shape, average)`` of about the
  same windows (tiles at least half inside the raster);
- ``tiler gsd 0.5 / stride 112``: resampled while reading, half-tile overlap (the ingest default);
- ``tiler gsd 0.5 / 0.3, stride 56``: quarter-tile overlap, downsampled (a raster without
  overviews is read by bands of tiles, each source row once: :mod:`tiling.resample`);
- ``tiler huge VRT``: the first N tiles of a ~50,000 x 50,000 px VRT made of the mosaic repeated
  (N = 300, ``full=True``: 3000), with the peak Python heap (tracemalloc) and the process's max RSS.

MB/s counts the uncompressed source bytes covered (width x height x 3 for whole-raster cases,
source windows for the VRT case). Each case runs once (``full=True``: 3 times, median).
JSON in ``benchmarks/results/tiler.json``; a table on stdout.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE = REPO / "data" / "sample" / "turku_utm34n_0.28m.tif"
MOSAIC = REPO.parent / "shared" / "data" / "turku" / "turku_mosaic_utm34n.tif"


def _timed(fn: Callable[[], int], reps: int) -> tuple[float, int]:
    """Median seconds of ``fn`` over ``reps`` runs and its return value (a tile count)."""
    times, n = [], 0
    for _ in range(reps):
        t0 = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), n


def _full_read(path: Path) -> int:
    import rasterio

    with rasterio.open(path) as ds:
        ds.read()
    return 0


def _plain_windows(path: Path, ts: int = 224) -> int:
    import rasterio
    from rasterio.windows import Window

    n = 0
    with rasterio.open(path) as ds:
        for row in range(0, ds.height, ts):
            for col in range(0, ds.width, ts):
                ds.read(window=Window(col, row, min(ts, ds.width - col), min(ts, ds.height - row)))
                n += 1
    return n


def _plain_resampled(path: Path, gsd: float, stride: int, ts: int = 224) -> int:
    """Plain rasterio reads of the same windows as the tiler at ``gsd`` (average resampling)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    n = 0
    with rasterio.open(path) as ds:
        s = gsd / abs(ds.transform.a)  # source px per output px (UTM: CRS metres ~ ground)
        out_w, out_h = ds.width / s, ds.height / s
        for r in range(0, max(1, int(out_h - ts / 2) + stride), stride):
            for c in range(0, max(1, int(out_w - ts / 2) + stride), stride):
                if r > out_h - ts / 2 or c > out_w - ts / 2:
                    continue
                w = min(ts * s, ds.width - c * s)
                h = min(ts * s, ds.height - r * s)
                out = (ds.count, max(1, round(h / s)), max(1, round(w / s)))
                ds.read(
                    window=Window(c * s, r * s, w, h), out_shape=out, resampling=Resampling.average
                )
                n += 1
    return n


def _tiler(path: Path, **cfg: Any) -> int:
    from tiling import TileConfig, open_raster

    with open_raster(path) as r:
        return sum(1 for _ in r.tiles(TileConfig(**cfg)))


def _huge_vrt(src: Path, out_dir: Path, target: int = 50_000) -> tuple[Path, int, int]:
    """A VRT repeating ``src`` to about ``target`` x ``target`` px (same CRS, contiguous)."""
    from xml.sax.saxutils import escape

    import rasterio

    with rasterio.open(src) as ds:
        w, h, t, wkt, count = ds.width, ds.height, ds.transform, ds.crs.to_wkt(), ds.count
    nx, ny = max(1, round(target / w)), max(1, round(target / h))
    big_w, big_h = nx * w, ny * h
    gt = ", ".join(repr(v) for v in t.to_gdal())
    lines = [f'<VRTDataset rasterXSize="{big_w}" rasterYSize="{big_h}">']
    lines += [f"  <SRS>{escape(wkt)}</SRS>", f"  <GeoTransform>{gt}</GeoTransform>"]
    for b in range(1, min(count, 3) + 1):
        lines.append(f'  <VRTRasterBand dataType="Byte" band="{b}">')
        lines.append(f"    <ColorInterp>{['Red', 'Green', 'Blue'][b - 1]}</ColorInterp>")
        for j in range(ny):
            for i in range(nx):
                lines += [
                    "    <SimpleSource>",
                    f"      <SourceFilename>{escape(str(src))}</SourceFilename>",
                    f"      <SourceBand>{b}</SourceBand>",
                    f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                    f'      <DstRect xOff="{i * w}" yOff="{j * h}" xSize="{w}" ySize="{h}"/>',
                    "    </SimpleSource>",
                ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    path = out_dir / "huge.vrt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, big_w, big_h


def _bench_huge(src: Path, n_tiles: int) -> dict[str, Any]:
    from tiling import open_raster

    with tempfile.TemporaryDirectory() as d:
        vrt, w, h = _huge_vrt(src, Path(d))
        with open_raster(vrt) as r:
            grid = r.grid()
            tracemalloc.start()
            t0 = time.perf_counter()
            it = r.tiles()
            n = 0
            for _ in it:
                n += 1
                if n >= n_tiles:
                    break
            it.close()
            dt = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mb = n * 224 * 224 * 3 / 1e6
    return {
        "case": "tiler huge VRT (first tiles)",
        "raster": f"{w} x {h} px VRT of {src.name}",
        "grid_tiles": len(grid),
        "tiles": n,
        "seconds": dt,
        "tiles_per_s": n / dt,
        "mb_per_s": mb / dt,
        "peak_python_heap_mb": peak / 2**20,
        "max_rss_mb": rss_mb,
    }


def run(full: bool = False) -> dict[str, Any]:
    """Run the tiler benchmark; save ``benchmarks/results/tiler.json`` and return the results."""
    import rasterio

    reps = 3 if full else 1
    rasters = [p for p in (MOSAIC, SAMPLE) if p.exists()]
    rows: list[dict[str, Any]] = []
    _tiler(rasters[-1], tile_size=64, gsd=1.0)  # warm-up: imports, PROJ database, transformers
    for path in rasters:
        with rasterio.open(path) as ds:
            mb = ds.width * ds.height * ds.count * 1 / 1e6
            size = f"{ds.width} x {ds.height}"
        _full_read(path)  # warm the OS page cache so every case starts equal
        cases: list[tuple[str, Callable[[], int]]] = [
            ("rasterio full read", partial(_full_read, path)),
            ("rasterio 224 px windows", partial(_plain_windows, path)),
            ("tiler native 224/224", partial(_tiler, path)),
            ("rasterio gsd 0.5, stride 112", partial(_plain_resampled, path, 0.5, 112)),
            ("tiler gsd 0.5, stride 112", partial(_tiler, path, gsd=0.5, stride=112)),
            ("tiler gsd 0.5, stride 56", partial(_tiler, path, gsd=0.5, stride=56)),
            ("tiler gsd 0.3, stride 56", partial(_tiler, path, gsd=0.3, stride=56)),
        ]
        for name, fn in cases:
            dt, n = _timed(fn, reps)
            rows.append(
                {
                    "case": name,
                    "raster": f"{path.name} ({size} px)",
                    "tiles": n,
                    "seconds": dt,
                    "tiles_per_s": n / dt if n else None,
                    "mb_per_s": mb / dt,
                }
            )
    rows.append(_bench_huge(rasters[0], 3000 if full else 300))
    result = {"benchmark": "tiler", "full": full, "repetitions": reps, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tiler.json").write_text(json.dumps(result, indent=2))
    _print_table(rows)
    return result


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'case':32s} {'raster':44s} {'tiles':>6s} {'s':>7s} {'tiles/s':>8s} {'MB/s':>7s}")
    for r in rows:
        tps = f"{r['tiles_per_s']:.0f}" if r.get("tiles_per_s") else "-"
        print(
            f"{r['case']:32s} {r['raster'][:44]:44s} {r['tiles']:6d} {r['seconds']:7.2f} "
            f"{tps:>8s} {r['mb_per_s']:7.1f}"
        )
        if "peak_python_heap_mb" in r:
            print(
                f"{'':32s} peak Python heap {r['peak_python_heap_mb']:.1f} MB, "
                f"max RSS {r['max_rss_mb']:.0f} MB, grid {r['grid_tiles']} tiles"
            )


if __name__ == "__main__":
    run(full="--full" in sys.argv[1:])
