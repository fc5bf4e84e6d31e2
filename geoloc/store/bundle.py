"""A tile database that travels: one self-contained folder that locates without the rasters.

Layout of a bundle folder::

    manifest.json             format, encoder, schema revision, SHA-256 + size of every file
    tables/<table>.copy       rows of encoders / orthomosaics / tiles / tile_embeddings
                              (Postgres binary COPY, explicit column lists: an exact round trip
                              of every type, halfvec included)
    index/...                 the encoder's Ω index folder, as saved, with the per-tile local
                              features in ``index/features/`` (when the store has them)
    regions/<sha256>/         per orthomosaic: ``regions.json`` (size, GSD, transform per tile) and
                              ``<tile_id>.png``, the RGBA verification region around each tile
                              (alpha = valid mask), lossless so verification sees the same pixels;
                              a bundle exported with ``--no-regions`` has only ``regions.json``
                              (``"images": false``) and verifies from the stored features

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
def schema_sql(statement: str) -> str:
    """A statement whose only formatted parts are identifiers of the ORM schema and integer ids.

    COPY takes no bind parameters, so table and column names from ``schema.py`` (never user text)
    are formatted in; routing them through one function marks every such place.
    """
    return statement


#: The next free id of each table with a serial id (literal statements: nothing is formatted).
_NEXT_ID = {
    "encoders": "SELECT COALESCE(max(id), 0) + 1 FROM encoders",
    "orthomosaics": "SELECT COALESCE(max(id), 0) + 1 FROM orthomosaics",
    "tiles": "SELECT COALESCE(max(id), 0) + 1 FROM tiles",
}


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
                    schema_sql(
                        f"COPY (SELECT {cols} FROM {table} WHERE {where[table]} ORDER BY 1) "  # noqa: S608
                        "TO STDOUT WITH (FORMAT binary)"
                    ),
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
                    schema_sql(
                        f"COPY _bundle_enc ({', '.join(cols)}) FROM STDIN WITH (FORMAT binary)"
                    ),
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
                    schema_sql(
                        f"INSERT INTO encoders ({', '.join(cols)}) SELECT {', '.join(cols)} "  # noqa: S608
                        "FROM _bundle_enc ON CONFLICT DO NOTHING"
                    )
                )
                # an encoder registered before (no orthomosaics yet) takes the bundle's Ω setting
                cur.execute(
                    "UPDATE encoders e SET has_omega = b.has_omega FROM _bundle_enc b "
                    "WHERE e.id = b.id"
                )
                continue
            cur.copy_expert(
                schema_sql(f"COPY {table} ({', '.join(cols)}) FROM STDIN WITH (FORMAT binary)"),
                io.BytesIO(data),
            )
        cur.execute("SELECT id, sha256 FROM orthomosaics")
        for oid, sha in cur.fetchall():
            cur.execute(
                "UPDATE orthomosaics SET path = %s WHERE id = %s",
                (str(root / "regions" / sha), oid),
            )
        for table, next_id_sql in _NEXT_ID.items():
            cur.execute(next_id_sql)
            row = cur.fetchone()
            next_id = int(row[0]) if row is not None else 1
            cur.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, false)", (table, next_id)
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
        #: False when the bundle was exported without region images (features only)
        self.images = bool(meta.get("images", True))

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
        if not self.images:
            raise ConfigError(
                "bundle was exported without region images (--no-regions): only verification "
                "from the stored features works on it",
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
