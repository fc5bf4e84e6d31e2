"""Fake rasters for the tiler tests, written reproducibly into a directory (the torchgeo pattern).

    python tests/data/rasters/data.py OUT_DIR      # or: generate(Path(OUT_DIR)) from a test

Every raster is small, seeded, and georeferenced near Turku (60.40 N, 22.46 E) unless its point
is to be broken. :data:`SPECS` documents each file; :func:`generate` writes them all and returns
``{name: path}``. Pixel values are a smooth seeded pattern (so resampling and stretching are
testable), and the same ``(name, seed)`` always gives the same bytes of pixel data.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning

# Turku, UTM 34N (EPSG:32634): a round origin near the real mosaic.
UTM_ORIGIN = (580_000.0, 6_697_400.0)
UTM_GSD = 0.5
# Same place in EPSG:4326 / EPSG:3857.
LONLAT_ORIGIN = (22.46, 60.405)
DEG_GSD = (9.0e-6, 4.5e-6)  # ~0.50 m x ~0.50 m at 60.4 N
MERC_GSD = 1.0  # Web Mercator metres: ~0.49 m on the ground at 60.4 N (scale 1/cos(lat))
MERC_ORIGIN = (2_500_300.0, 8_505_200.0)  # ~22.46 E, 60.40 N


def pattern(
    height: int, width: int, bands: int = 3, seed: int = 0, dtype: str = "uint8"
) -> np.ndarray:
    """A smooth, seeded, band-distinct test pattern scaled to ``dtype``'s typical range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = []
    for b in range(bands):
        fx, fy = rng.uniform(0.01, 0.08, size=2)
        ph = rng.uniform(0, 2 * np.pi)
        v = 0.5 + 0.25 * np.sin(fx * xx + ph) + 0.25 * np.cos(fy * yy + b)
        v += rng.normal(0.0, 0.03, size=v.shape)
        out.append(np.clip(v, 0.0, 1.0))
    a = np.stack(out)
    if dtype == "uint8":
        return np.round(a * 254 + 1).astype(np.uint8)  # 1..255: 0 stays free for nodata
    if dtype == "uint16":
        return np.round(a * 3000 + 500).astype(np.uint16)  # 12-bit-like camera range
    return (a * 2.0 - 0.5).astype(dtype)  # float reflectance-like, negative values allowed


def utm_transform(gsd: float = UTM_GSD, origin: tuple[float, float] = UTM_ORIGIN) -> Affine:
    """North-up transform in EPSG:32634 with square pixels of ``gsd`` metres."""
    return Affine(gsd, 0.0, origin[0], 0.0, -gsd, origin[1])


def write(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32634",
    transform: Affine | None = None,
    nodata: float | None = None,
    mask: np.ndarray | None = None,
    colorinterp: list[ColorInterp] | None = None,
    overviews: list[int] | None = None,
    **profile: object,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a tiled GeoTIFF; ``mask`` becomes an internal mask."""
    count, height, width = data.shape
    prof: dict[str, object] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": str(data.dtype),
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
        "compress": "deflate",
    }
    if crs is not None:
        prof["crs"] = CRS.from_user_input(crs)
    if transform is not None:
        prof["transform"] = transform
    if nodata is not None:
        prof["nodata"] = nodata
    prof.update(profile)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **prof) as ds:
            ds.write(data)
            if colorinterp is not None:
                ds.colorinterp = colorinterp
            if mask is not None:
                ds.write_mask(np.where(mask, 255, 0).astype(np.uint8))
            if overviews:
                from rasterio.enums import Resampling

                ds.build_overviews(overviews, Resampling.average)
    return path


def _vrt(
    path: Path,
    width: int,
    height: int,
    crs: str,
    transform: Affine,
    sources: list[tuple[str, tuple[int, int, int, int], tuple[int, int, int, int]]],
    bands: int = 3,
    dtype: str = "Byte",
) -> Path:
    """Hand-written VRT: ``sources`` = [(file, src_rect(x, y, w, h), dst_rect(x, y, w, h))]."""
    wkt = escape(CRS.from_user_input(crs).to_wkt())
    gt = ", ".join(repr(v) for v in transform.to_gdal())
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">', f"  <SRS>{wkt}</SRS>"]
    lines.append(f"  <GeoTransform>{gt}</GeoTransform>")
    names = ["Red", "Green", "Blue"]
    for b in range(1, bands + 1):
        lines.append(f'  <VRTRasterBand dataType="{dtype}" band="{b}">')
        if b <= 3:
            lines.append(f"    <ColorInterp>{names[b - 1]}</ColorInterp>")
        for fname, (sx, sy, sw, sh), (dx, dy, dw, dh) in sources:
            lines += [
                "    <SimpleSource>",
                f'      <SourceFilename relativeToVRT="1">{escape(fname)}</SourceFilename>',
                f"      <SourceBand>{b}</SourceBand>",
                f'      <SrcRect xOff="{sx}" yOff="{sy}" xSize="{sw}" ySize="{sh}"/>',
                f'      <DstRect xOff="{dx}" yOff="{dy}" xSize="{dw}" ySize="{dh}"/>',
                "    </SimpleSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- one function per fake raster
def utm(d: Path) -> Path:
    """3-band uint8, EPSG:32634, 0.5 m, odd size 501 x 377, no mask."""
    return write(d / "utm.tif", pattern(377, 501, seed=1), transform=utm_transform())


def utm_overviews(d: Path) -> Path:
    """Like ``utm`` but 0.25 m, 1000 x 800 px, with internal overviews 2, 4."""
    return write(
        d / "utm_overviews.tif",
        pattern(800, 1000, seed=2),
        transform=utm_transform(0.25),
        overviews=[2, 4],
    )


def wgs84(d: Path) -> Path:
    """3-band uint8, EPSG:4326, ~0.5 m, 450 x 300 px."""
    lon0, lat0 = LONLAT_ORIGIN
    t = Affine(DEG_GSD[0], 0.0, lon0, 0.0, -DEG_GSD[1], lat0)
    return write(d / "wgs84.tif", pattern(300, 450, seed=3), crs="EPSG:4326", transform=t)


def webmerc(d: Path) -> Path:
    """3-band uint8, EPSG:3857, 1 Mercator metre (~0.49 m ground) px, 460 x 470 px."""
    t = Affine(MERC_GSD, 0.0, MERC_ORIGIN[0], 0.0, -MERC_GSD, MERC_ORIGIN[1])
    return write(d / "webmerc.tif", pattern(470, 460, seed=4), crs="EPSG:3857", transform=t)


def nodata(d: Path) -> Path:
    """uint8, nodata=0 on the left 250 columns (of 672), 448 rows."""
    a = pattern(448, 672, seed=5)
    a[:, :, :250] = 0
    return write(d / "nodata.tif", a, transform=utm_transform(), nodata=0)


def alpha(d: Path) -> Path:
    """RGBA uint8: alpha 0 on the top 200 rows (of 448), 448 columns."""
    rgb = pattern(448, 448, seed=6)
    a = np.full((1, 448, 448), 255, np.uint8)
    a[:, :200, :] = 0
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return write(
        d / "alpha.tif",
        np.concatenate([rgb, a]),
        transform=utm_transform(),
        colorinterp=ci,
        photometric="RGB",
        alpha="YES",
    )


def internal_mask(d: Path) -> Path:
    """uint8 with an internal mask: invalid where col >= 300 (of 448); pixel values kept."""
    m = np.ones((448, 448), bool)
    m[:, 300:] = False
    return write(d / "mask.tif", pattern(448, 448, seed=7), transform=utm_transform(), mask=m)


def uint16(d: Path) -> Path:
    """3-band uint16 (values ~500..3500), 400 x 300 px."""
    return write(
        d / "uint16.tif", pattern(300, 400, seed=8, dtype="uint16"), transform=utm_transform()
    )


def float_nan(d: Path) -> Path:
    """3-band float32 with NaN (no nodata value set) in the bottom 150 rows (of 448)."""
    a = pattern(448, 448, seed=9, dtype="float32")
    a[:, 298:, :] = np.nan
    return write(d / "float_nan.tif", a, transform=utm_transform())


def palette(d: Path) -> Path:
    """1-band uint8 colour-mapped (3 colours + index 0 = nodata on the left 100 columns)."""
    a = (pattern(200, 300, bands=1, seed=16) // 64 % 3 + 1).astype(np.uint8)
    a[:, :, :100] = 0
    p = write(d / "palette.tif", a, transform=utm_transform(), nodata=0, photometric="PALETTE")
    with rasterio.open(p, "r+") as ds:
        ds.write_colormap(
            1, {0: (0, 0, 0, 0), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255)}
        )
    return p


def gray(d: Path) -> Path:
    """1-band uint8, 300 x 250 px."""
    return write(d / "gray.tif", pattern(250, 300, bands=1, seed=10), transform=utm_transform())


def four_band(d: Path) -> Path:
    """4-band uint8 (R, G, B, NIR; no alpha), 300 x 300 px."""
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    return write(
        d / "four_band.tif",
        pattern(300, 300, bands=4, seed=11),
        transform=utm_transform(),
        colorinterp=ci,
        photometric="RGB",
        alpha="UNSPECIFIED",
    )


def five_band(d: Path) -> Path:
    """5-band uint16 (multispectral-like), 240 x 240 px."""
    return write(
        d / "five_band.tif",
        pattern(240, 240, bands=5, seed=12, dtype="uint16"),
        transform=utm_transform(),
    )


def mosaic_vrt(d: Path) -> Path:
    """VRT mosaic of two 300 x 250 GeoTIFFs side by side (600 x 250)."""
    a = pattern(250, 600, seed=13)
    t = utm_transform()
    write(d / "mosaic_left.tif", a[:, :, :300], transform=t)
    write(
        d / "mosaic_right.tif",
        a[:, :, 300:],
        transform=utm_transform(origin=(UTM_ORIGIN[0] + 300 * UTM_GSD, UTM_ORIGIN[1])),
    )
    np.save(d / "mosaic_expected.npy", a)
    src = [
        ("mosaic_left.tif", (0, 0, 300, 250), (0, 0, 300, 250)),
        ("mosaic_right.tif", (0, 0, 300, 250), (300, 0, 300, 250)),
    ]
    return _vrt(d / "mosaic.vrt", 600, 250, "EPSG:32634", t, src)


def huge_vrt(d: Path) -> Path:
    """A 50,000 x 50,000 px VRT (0.1 m) made of one 512 px GeoTIFF stretched over the extent."""
    small = write(d / "huge_src.tif", pattern(512, 512, seed=14), transform=utm_transform())
    src = [(small.name, (0, 0, 512, 512), (0, 0, 50_000, 50_000))]
    return _vrt(d / "huge.vrt", 50_000, 50_000, "EPSG:32634", utm_transform(0.1), src)


def one_px(d: Path) -> Path:
    """A valid 1 x 1 px raster."""
    return write(d / "one_px.tif", pattern(1, 1, seed=15), transform=utm_transform(), tiled=False)


# ---------------------------------------------------------------- bad inputs
def no_crs(d: Path) -> Path:
    """A GeoTIFF with a geotransform but no CRS."""
    return write(d / "no_crs.tif", pattern(64, 64, seed=20), crs=None, transform=utm_transform())


def identity(d: Path) -> Path:
    """A GeoTIFF with a CRS but no geotransform (identity)."""
    return write(d / "identity.tif", pattern(64, 64, seed=21), transform=None)


def rotated(d: Path) -> Path:
    """A GeoTIFF with a rotated/sheared geotransform."""
    t = Affine(0.5, 0.1, UTM_ORIGIN[0], 0.1, -0.5, UTM_ORIGIN[1])
    return write(d / "rotated.tif", pattern(64, 64, seed=22), transform=t)


def all_nodata(d: Path) -> Path:
    """uint8, nodata=0 everywhere."""
    return write(
        d / "all_nodata.tif", np.zeros((3, 300, 300), np.uint8), transform=utm_transform(), nodata=0
    )


def all_nan(d: Path) -> Path:
    """float32 full of NaN (no nodata value)."""
    a = np.full((3, 200, 200), np.nan, np.float32)
    return write(d / "all_nan.tif", a, transform=utm_transform())


def zero_bytes(d: Path) -> Path:
    """An empty file named .tif."""
    p = d / "zero.tif"
    p.write_bytes(b"")
    return p


def truncated(d: Path) -> Path:
    """An uncompressed GeoTIFF cut at half its size."""
    full = write(
        d / "truncated_full.tif",
        pattern(512, 512, seed=23),
        transform=utm_transform(),
        compress=None,
    )
    data = full.read_bytes()
    p = d / "truncated.tif"
    p.write_bytes(data[: len(data) // 2])
    full.unlink()
    return p


def jpeg_as_tif(d: Path) -> Path:
    """A plain JPEG photo renamed .tif."""
    from PIL import Image

    p = d / "photo_jpeg.tif"
    Image.fromarray(np.moveaxis(pattern(64, 80, seed=24), 0, -1)).save(p, format="JPEG")
    return p


def text_file(d: Path) -> Path:
    """A text file named .tif."""
    p = d / "notes.tif"
    p.write_text("this is not a raster\njust text\n", encoding="utf-8")
    return p


def missing_source_vrt(d: Path) -> Path:
    """A VRT whose source file does not exist."""
    src = [("does_not_exist.tif", (0, 0, 100, 100), (0, 0, 100, 100))]
    return _vrt(d / "missing_source.vrt", 100, 100, "EPSG:32634", utm_transform(), src)


def odd_name(d: Path) -> Path:
    """A copy of ``utm.tif`` whose name has spaces, quotes, unicode and SQL."""
    p = d / "tile 'q' \"dq\" Turku ÅÄÖ 🛰 '; DROP TABLE tiles; --.tif"
    shutil.copyfile(utm(d), p)
    return p


SPECS: dict[str, Callable[[Path], Path]] = {
    f.__name__: f
    for f in (
        utm,
        utm_overviews,
        wgs84,
        webmerc,
        nodata,
        alpha,
        internal_mask,
        uint16,
        float_nan,
        gray,
        palette,
        four_band,
        five_band,
        mosaic_vrt,
        huge_vrt,
        one_px,
        no_crs,
        identity,
        rotated,
        all_nodata,
        all_nan,
        zero_bytes,
        truncated,
        jpeg_as_tif,
        text_file,
        missing_source_vrt,
        odd_name,
    )
}


def generate(out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the fake rasters (all, or ``names``) into ``out_dir``; return ``{name: path}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {n: SPECS[n](out_dir) for n in (names or list(SPECS))}


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "out"
    for name, path in generate(target).items():
        print(f"{name:20s} {path}")
