"""A tile database that travels: one self-contained folder that locates without the rasters.

Layout of a bundle folder::

    manifest.json             format, encoder, schema revision, SHA-256 + size of every file
    tables/<table>.copy       rows of encoders / orthomosaics / tiles / tile_embeddings
                              (Postgres binary COPY, explicit column lists: an exact round trip
                              of every type, halfvec included)
    index/...                 the encoder's Ω index folder, as saved
    regions/<sha256>/         per orthomosaic: ``regions.json`` (size, GSD, transform per tile) and
                              ``<tile_id>.png``, the RGBA verification region around each tile
                              (alpha = valid mask), lossless so verification sees the same pixels

:func:`import_bundle` checks every checksum before touching anything (a truncated or tampered bundle
is refused whole), loads the rows into an empty database with their ids (Ω ids are tile ids),
installs the index, and points each orthomosaic at its ``regions/<sha256>`` folder, which
:class:`~geoloc.localize.regions.MapRegions` reads in place of the raster. The bundle folder must
stay where it was imported from; ``geoloc db relink`` points the rows at real rasters again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoloc.errors import ConfigError

if TYPE_CHECKING:
    from geoloc.config import Settings
    from geoloc.store.database import Database

FORMAT = "geoloc-bundle"
VERSION = 1
MANIFEST = "manifest.json"
#: Marker file of an orthomosaic's verification regions inside a bundle.
REGIONS_FILE = "regions.json"
#: Tables in foreign-key order (import order).
TABLES = ("encoders", "orthomosaics", "tiles", "tile_embeddings")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BundleSummary:
    """What an export or import did."""

    path: str
    encoder: str
    orthomosaics: int
    tiles: int
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, with the size per tile."""
        return {
            "path": self.path,
            "encoder": self.encoder,
            "orthomosaics": self.orthomosaics,
            "tiles": self.tiles,
            "bytes": self.bytes,
            "bytes_per_tile": round(self.bytes / self.tiles) if self.tiles else None,
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _columns(table: str) -> list[str]:
    from geoloc.store.schema import Base

    # quoted: some column names (window) are SQL keywords
    return [f'"{c.name}"' for c in Base.metadata.tables[table].columns]


def region_size_px(tile_px: int) -> int:
    """Side of the stored region: the largest region verification reads around a tile."""
    # the scheduler's region is at most tile_px + a crop of at most 2 tiles (capped at 1024)
    return int(min(1024, 3 * int(tile_px)))


# ------------------------------------------------------------------------------------ export
def export_bundle(
    settings: Settings,
    out: str | os.PathLike[str],
    encoder: str | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> BundleSummary:
    """Write the bundle of one encoder's complete orthomosaics to the new folder ``out``.

    Needs every source raster readable (the verification regions are cut from them).
    """
    from PIL import Image

    from geoloc.localize.regions import MapRegions
    from geoloc.store import TileStore
    from geoloc.store import repository as repo
    from geoloc.store.database import current_revision
    from geoloc.store.omega_index import OmegaIndex

    dst = Path(out)
    if dst.exists() and any(dst.iterdir()):
        raise ConfigError("bundle folder exists and is not empty", path=str(dst))
    with TileStore.for_registered(settings, encoder) as store:
        db = store.db
        enc = repo.get_encoder(db, store.encoder_id)
        orthos = [o for o in repo.list_orthomosaics(db, store.encoder_id) if o.status == "complete"]
        if not orthos:
            raise ConfigError(f"no complete orthomosaic for encoder {enc.name}", path=str(db.url))
        ids = np.sort(repo.complete_tile_ids(db, store.encoder_id)).astype(np.int64)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=dst.parent))
        try:
            with db.engine.connect() as conn:
                revision = current_revision(conn)
            _copy_out(db, tmp / "tables", store.encoder_id, [o.id for o in orthos])
            index_dir = OmegaIndex.path_for(settings, enc.weights_sha256)
            if not (index_dir / "meta.json").is_file():
                raise ConfigError(f"no Ω index for encoder {enc.name}", path=str(index_dir))
            shutil.copytree(index_dir, tmp / "index")
            size = region_size_px(store.tile_px)
            regions = MapRegions(store.map_gsd_m, cache_size=1)
            by_ortho = {o.id: o for o in orthos}
            meta: dict[int, dict[str, Any]] = {}
            try:
                for start in range(0, len(ids), 256):
                    for cand in store.candidates(ids[start : start + 256]):
                        o = by_ortho[cand.orthomosaic_id]
                        px, mask, t = regions.around(cand, size)
                        if o.path in regions.unavailable:
                            raise ConfigError(
                                f"raster unavailable ({regions.unavailable[o.path]}); "
                                "run `geoloc db check`",
                                path=o.path,
                            )
                        d = tmp / "regions" / o.sha256
                        d.mkdir(parents=True, exist_ok=True)
                        rgba = np.dstack([px, mask.astype(np.uint8) * 255])
                        Image.fromarray(rgba, "RGBA").save(d / f"{cand.tile_id}.png", optimize=True)
                        entry = meta.setdefault(
                            o.id, {"sha256": o.sha256, "size_px": size, "tiles": {}}
                        )
                        entry["tiles"][str(cand.tile_id)] = list(t)[:6]
                    if progress is not None:
                        progress(min(start + 256, len(ids)), len(ids))
            finally:
                regions.close()
            for entry in meta.values():
                entry["gsd_m"] = store.map_gsd_m
                (tmp / "regions" / entry["sha256"] / REGIONS_FILE).write_text(json.dumps(entry))
            files: dict[str, dict[str, Any]] = {
                p.relative_to(tmp).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "schema_revision": revision,
                "encoder": {"name": enc.name, "weights_sha256": enc.weights_sha256},
                "orthomosaics": len(orthos),
                "tiles": int(len(ids)),
                "files": files,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if dst.exists():
                dst.rmdir()
            tmp.rename(dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    total = sum(f["bytes"] for f in files.values())
    return BundleSummary(str(dst), enc.name, len(orthos), int(len(ids)), int(total))


def _copy_out(db: Database, folder: Path, encoder_id: int, ortho_ids: list[int]) -> None:
    # Table and column names come from the ORM schema and ids are ints: nothing user-supplied
    # is formatted into the COPY statements (COPY (query) takes no bind parameters).
    folder.mkdir(parents=True)
    # ids are integers from the database, inlined because COPY (query) takes no parameters
    oids = ",".join(str(int(i)) for i in ortho_ids)
    where = {
        "encoders": f"id = {int(encoder_id)}",
        "orthomosaics": f"id IN ({oids})",
        "tiles": f"orthomosaic_id IN ({oids})",
        "tile_embeddings": (
            f"encoder_id = {int(encoder_id)} AND tile_id IN "  # noqa: S608
            f"(SELECT id FROM tiles WHERE orthomosaic_id IN ({oids}))"
        ),
    }
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        for table in TABLES:
            cols = ", ".join(_columns(table))
            with (folder / f"{table}.copy").open("wb") as f:
                cur.copy_expert(
                    f"COPY (SELECT {cols} FROM {table} WHERE {where[table]} ORDER BY 1) "  # noqa: S608
                    "TO STDOUT WITH (FORMAT binary)",
                    f,
                )
        cur.close()
        raw.rollback()
    finally:
        raw.close()


# ------------------------------------------------------------------------------------ verify
def verify_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the bundle at ``path`` once every file matches its size and SHA-256.

    Raises a one-line :class:`ConfigError` on a missing manifest, a missing, extra, truncated or
    modified file.
    """
    root = Path(path)
    mpath = root / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"not a geoloc bundle (manifest unreadable: {exc})", path=str(root)
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError("not a geoloc bundle (bad manifest format)", path=str(mpath))
    if manifest.get("version") != VERSION:
        raise ConfigError(
            f"bundle version {manifest.get('version')!r} unsupported", path=str(mpath)
        )
    files: dict[str, dict[str, Any]] = manifest.get("files") or {}
    present = {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p != mpath
    }
    extra = sorted(present - set(files))
    if extra:
        raise ConfigError(f"bundle has a file not in its manifest: {extra[0]}", path=str(root))
    for rel, want in files.items():
        p = root / rel
        if not p.is_file():
            raise ConfigError(f"bundle is missing {rel}", path=str(root))
        if p.stat().st_size != int(want["bytes"]):
            raise ConfigError(f"bundle file {rel} has the wrong size (truncated?)", path=str(root))
        if _sha256(p) != want["sha256"]:
            raise ConfigError(f"bundle file {rel} fails its SHA-256 check", path=str(root))
    return manifest


# ------------------------------------------------------------------------------------ import
def import_bundle(settings: Settings, path: str | os.PathLike[str]) -> BundleSummary:
    """Load the verified bundle at ``path`` into the (empty) database and Ω index of ``settings``.

    The orthomosaics are pointed at the bundle's region folders, so the bundle must stay in place.
    """
    from geoloc.errors import DatabaseError
    from geoloc.store.database import current_revision, open_database
    from geoloc.store.omega_index import OmegaIndex

    root = Path(path).resolve()
    manifest = verify_bundle(root)
    sha = str(manifest["encoder"]["weights_sha256"])
    target = OmegaIndex.path_for(settings, sha)
    if (target / "meta.json").exists():
        raise ConfigError("an Ω index for this encoder already exists", path=str(target))
    db = open_database(settings)
    try:
        with db.engine.connect() as conn:
            revision = current_revision(conn)
        if revision != manifest.get("schema_revision"):
            raise DatabaseError(
                f"{root}: bundle schema {manifest.get('schema_revision')} differs from the "
                f"database's {revision}; upgrade the older side (`geoloc db upgrade`)"
            )
        settings.index_dir.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".import-", dir=settings.index_dir))
        try:
            shutil.copytree(root / "index", staged / "index")
            _copy_in(db, root)
            target.parent.mkdir(parents=True, exist_ok=True)
            (staged / "index").rename(target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    finally:
        db.dispose()
    total = sum(int(f["bytes"]) for f in manifest["files"].values())
    return BundleSummary(
        str(root),
        str(manifest["encoder"]["name"]),
        int(manifest["orthomosaics"]),
        int(manifest["tiles"]),
        total,
    )


def _copy_in(db: Database, root: Path) -> None:
    from geoloc.errors import DatabaseError

    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT (SELECT count(*) FROM orthomosaics) + (SELECT count(*) FROM tiles)")
        row = cur.fetchone()
        if row is not None and int(row[0]):
            raise DatabaseError(
                f"{root}: bundle import needs a database without orthomosaics or tiles"
            )
        for table in TABLES:
            cols = _columns(table)
            data = (root / "tables" / f"{table}.copy").read_bytes()
            if table == "encoders":
                # the encoder may already be registered (same id, name and weights): keep it
                cur.execute("CREATE TEMP TABLE _bundle_enc (LIKE encoders) ON COMMIT DROP")
                cur.copy_expert(
                    f"COPY _bundle_enc ({', '.join(cols)}) FROM STDIN WITH (FORMAT binary)",
                    io.BytesIO(data),
                )
                cur.execute(
                    "SELECT count(*) FROM _bundle_enc b JOIN encoders e ON e.id = b.id "
                    "AND (e.name <> b.name OR e.weights_sha256 <> b.weights_sha256)"
                )
                row = cur.fetchone()
                if row is not None and int(row[0]):
                    raise DatabaseError(
                        f"{root}: the database has another encoder under the bundle's encoder id"
                    )
                cur.execute(
                    f"INSERT INTO encoders ({', '.join(cols)}) SELECT {', '.join(cols)} "  # noqa: S608
                    "FROM _bundle_enc ON CONFLICT DO NOTHING"
                )
                continue
            cur.copy_expert(
                f"COPY {table} ({', '.join(cols)}) FROM STDIN WITH (FORMAT binary)",
                io.BytesIO(data),
            )
        cur.execute("SELECT id, sha256 FROM orthomosaics")
        for oid, sha in cur.fetchall():
            cur.execute(
                "UPDATE orthomosaics SET path = %s WHERE id = %s",
                (str(root / "regions" / sha), oid),
            )
        for table in ("encoders", "orthomosaics", "tiles"):
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                f"(SELECT COALESCE(max(id), 0) + 1 FROM {table}), false)"  # noqa: S608
            )
        cur.close()
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()


# ----------------------------------------------------------------------- reading the regions
def is_region_folder(path: str) -> bool:
    """True when ``path`` is an orthomosaic's region folder inside a bundle."""
    return os.path.isfile(os.path.join(path, REGIONS_FILE))


class BundleRegions:
    """The stored verification regions of one orthomosaic of a bundle."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        try:
            meta = json.loads((self.folder / REGIONS_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"bundle regions unreadable: {exc}", path=str(self.folder)) from exc
        self.size_px = int(meta["size_px"])
        self.gsd_m = float(meta["gsd_m"])
        self._transforms: dict[str, list[float]] = meta["tiles"]

    def around(
        self, tile_id: int, size_px: int, gsd_m: float
    ) -> tuple[np.ndarray, np.ndarray, Any]:
        """Pixels (H, W, 3), mask and transform of the ``size_px`` region centred on the tile."""
        import cv2
        from affine import Affine
        from PIL import Image

        if abs(gsd_m - self.gsd_m) > 1e-9 * max(1.0, gsd_m) or size_px > self.size_px:
            raise ConfigError(
                f"bundle holds {self.size_px} px regions at {self.gsd_m} m/px, "
                f"asked {size_px} px at {gsd_m} m/px",
                path=str(self.folder),
            )
        t6 = self._transforms.get(str(int(tile_id)))
        if t6 is None:
            raise ConfigError(f"bundle has no region for tile {tile_id}", path=str(self.folder))
        with Image.open(self.folder / f"{int(tile_id)}.png") as im:
            rgba = np.asarray(im.convert("RGBA"))
        t = Affine(*t6)
        off = (self.size_px - int(size_px)) / 2.0
        k = int(off)
        if off == k:
            px = rgba[k : k + size_px, k : k + size_px]
            rgb, mask = px[..., :3], px[..., 3] > 127
        else:
            # an odd size difference: the smaller region's grid sits half a pixel off this one's
            m = np.array([[1, 0, -off], [0, 1, -off]], np.float32)
            rgb = cv2.warpAffine(
                np.ascontiguousarray(rgba[..., :3]), m, (size_px, size_px), flags=cv2.INTER_LINEAR
            )
            alpha = cv2.warpAffine(
                np.ascontiguousarray(rgba[..., 3]), m, (size_px, size_px), flags=cv2.INTER_NEAREST
            )
            mask = alpha > 127
        return (
            np.ascontiguousarray(rgb),
            np.ascontiguousarray(mask),
            t * Affine.translation(off, off),
        )
