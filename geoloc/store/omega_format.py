"""The on-disk format of the Ω index: ``meta.json``, generation files, crash-safe writes.

Files under ``Settings.index_dir / <weights sha256>/``: ``meta.json`` (the sidecar: format,
encoder id and SHA-256, dims, count, index type, parameters, creation time, and the names of
the current data files), ``omega.<gen>.faiss``, ``basis.<gen>.npy``, ``moment.<gen>.npy`` and,
once the index keeps refine codes, ``refine.<gen>.<j>.npy`` (uint8 code segments, append-only:
a save writes only the new or changed ones), ``refine_ids.<gen>.npy``,
``refine_norms.<gen>.npy`` and ``refineq.<gen>.npy`` (the quantizer).

Saving writes new generation files (temp + fsync + rename) and then atomically replaces
``meta.json``; a failed save removes what it wrote and leaves the previous index readable.
Loads memory-map the basis, the refine codes and (until the first modification) the FAISS file.

Formats: 1 had no refine codes; 2 added them as one file; 3 keeps them in segments. An older
``meta.json`` is read through :func:`upgrade`, the one place that knows the old layouts; the
data files of every format are the same.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.errors import IndexError_
from geoloc.store.omega_basis import DEFAULT_FREEZE_AFTER, GrowingBasis
from geoloc.store.refine import (
    DEFAULT_REFINE_BITS,
    DEFAULT_REFINE_CHANNELS,
    DEFAULT_REFINE_DIMS,
    DEFAULT_REFINE_K,
    RefineCodes,
    RefineQuantizer,
    layout,
)

FORMAT_VERSION = 4
#: Refine segments kept before neighbouring small ones are merged at a save.
MAX_REFINE_SEGMENTS = 16
REBUILD_HINT = "run `geoloc index rebuild`"
#: The ``params`` of ``meta.json`` that are :class:`~geoloc.store.omega_index.OmegaIndex`
#: constructor arguments (``nlist`` is recorded too, but derived).
PARAM_KEYS = (
    "target_dim",
    "max_dim",
    "ivf_threshold",
    "nprobe",
    "refine_dims",
    "refine_bits",
    "refine_channels",
    "refine_k",
    "freeze_after",
)
#: ``files`` keys of the refine codes besides the segment list.
REFINE_KEYS = ("refine_ids", "refine_norms", "refineq")


def faiss_lib() -> Any:
    """The ``faiss`` module, imported on first use (``geoloc --help`` stays fast)."""
    import faiss

    return faiss


# --------------------------------------------------------------------------------------------
# crash-safe writes
def fsync_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` in the same directory, fsync, rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (the renames of a save) to disk, where the OS allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_npy(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as a ``.npy`` file (no pickles)."""
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def _saver(arr: np.ndarray) -> Callable[[Path], None]:
    return lambda p: save_npy(p, arr)


# --------------------------------------------------------------------------------------------
# meta.json
def meta_stamp(directory: Path) -> tuple[int, int] | None:
    """Identity of the current ``meta.json`` (replaced by rename at every save), or None."""
    try:
        st = (directory / "meta.json").stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def disk_generation(directory: Path) -> int:
    """Generation named by the ``meta.json`` on disk (0 when absent or unreadable)."""
    try:
        return int(json.loads((directory / "meta.json").read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def format_of(meta: dict[str, Any]) -> int:
    """The format a ``meta.json`` was written in (format 1 did not record it)."""
    return int(meta.get("format", 1))


def _v1_to_v2(meta: dict[str, Any]) -> None:
    # no refine codes yet: the default refine parameters are what a rebuild will use
    params = meta["params"]
    params.setdefault("refine_dims", DEFAULT_REFINE_DIMS)
    params.setdefault("refine_bits", DEFAULT_REFINE_BITS)
    params.setdefault("refine_channels", DEFAULT_REFINE_CHANNELS)
    params.setdefault("refine_k", DEFAULT_REFINE_K)
    meta.setdefault("refine", None)


def _v2_to_v3(meta: dict[str, Any]) -> None:
    # the refine codes were one file; now a list of segments
    files = meta["files"]
    if isinstance(files.get("refine"), str):
        files["refine"] = [files["refine"]]


def _v3_to_v4(meta: dict[str, Any]) -> None:
    # the basis grew with every add; now it freezes once a truncation has seen enough vectors,
    # and an older index (which has seen at least as many) takes the default from its next add
    meta["params"].setdefault("freeze_after", DEFAULT_FREEZE_AFTER)


#: ``_UPGRADES[n]`` lifts a format-``n`` meta (in place) to format ``n + 1``.
_UPGRADES: dict[int, Callable[[dict[str, Any]], None]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
}


def upgrade(meta: dict[str, Any], *, path: str | None = None) -> dict[str, Any]:
    """A copy of ``meta`` lifted from its format to :data:`FORMAT_VERSION`, one step at a time.

    Raises :class:`~geoloc.errors.IndexError_` (naming ``path``) for a format newer than this
    geoloc reads; ``KeyError`` / ``TypeError`` / ``ValueError`` for a malformed sidecar.
    """
    fmt = format_of(meta)
    if fmt > FORMAT_VERSION:
        raise IndexError_(
            f"index format {fmt} is newer than this geoloc reads ({FORMAT_VERSION}):"
            " upgrade geoloc",
            path=path,
        )
    out = copy.deepcopy(meta)
    for step in range(max(fmt, 1), FORMAT_VERSION):
        _UPGRADES[step](out)
    out["format"] = FORMAT_VERSION
    return out


@dataclass(frozen=True)
class Sidecar:
    """A ``meta.json`` read and upgraded to the current format, fields typed."""

    source_format: int
    encoder_sha256: str
    encoder_id: int | None
    omega_dim: int
    dim: int
    count: int
    index_type: str
    params: dict[str, int]
    created: str
    generation: int
    files: dict[str, str]
    refine_files: list[str]
    fit_count: int
    residual_sum: float
    residual_n: int


def read_sidecar(directory: Path) -> Sidecar:
    """The ``meta.json`` of ``directory``, upgraded; :class:`IndexError_` when unreadable."""
    meta_path = directory / "meta.json"
    try:
        raw = json.loads(meta_path.read_text())
        source = format_of(raw)
        meta = upgrade(raw, path=str(meta_path))
        files = {str(k): v for k, v in dict(meta["files"]).items()}
        refine_files = files.pop("refine", None)
        encoder_id = meta.get("encoder_id")
        side = Sidecar(
            source_format=source,
            encoder_sha256=str(meta["encoder_sha256"]),
            encoder_id=None if encoder_id is None else int(encoder_id),
            omega_dim=int(meta["omega_dim"]),
            dim=int(meta["dim"]),
            count=int(meta["count"]),
            index_type=str(meta["index_type"]),
            params={k: int(meta["params"][k]) for k in PARAM_KEYS},
            created=str(meta["created"]),
            generation=int(meta["generation"]),
            files={k: str(v) for k, v in files.items()},
            refine_files=[str(f) for f in refine_files or []],
            fit_count=int(meta.get("fit_count", 0)),
            residual_sum=float(meta.get("residual_sum", 0.0)),
            residual_n=int(meta.get("residual_n", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexError_(
            f"unreadable index sidecar ({exc}): {REBUILD_HINT}", path=str(meta_path)
        ) from exc
    return side


def compose_meta(
    body: dict[str, Any], generation: int, files: dict[str, str], refine_files: list[str]
) -> dict[str, Any]:
    """The full ``meta.json`` of an index described by ``body`` (encoder, dims, params, ...)
    whose data files are ``files`` and the refine segments ``refine_files``."""
    return {
        "format": FORMAT_VERSION,
        **body,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generation": generation,
        "files": {**files, "refine": refine_files} if "refineq" in files else dict(files),
    }


# --------------------------------------------------------------------------------------------
# loading
def load_basis(directory: Path, side: Sidecar, *, mmap: bool) -> tuple[np.ndarray, np.ndarray]:
    """The saved basis ``(dim, omega_dim)`` and its code moment ``(dim, dim)``."""
    try:
        basis = np.load(directory / side.files["basis"], mmap_mode="r" if mmap else None)
        moment = np.load(directory / side.files["moment"])
    except (OSError, ValueError, KeyError) as exc:
        raise IndexError_(
            f"missing or truncated basis/moment file ({exc}): {REBUILD_HINT}", path=str(directory)
        ) from exc
    if basis.shape != (side.dim, side.omega_dim) or moment.shape != (side.dim, side.dim):
        raise IndexError_(
            f"basis shape {basis.shape} disagrees with meta.json: {REBUILD_HINT}",
            path=str(directory),
        )
    return basis, moment


def read_faiss(path: Path, *, mmap: bool = False, index_type: str = "flat") -> Any:
    """A FAISS index file; memory-mapped (read-only) when ``mmap``."""
    faiss = faiss_lib()
    flags = 0
    if mmap:
        flags = faiss.IO_FLAG_MMAP_IFC if index_type == "flat" else faiss.IO_FLAG_MMAP
    return faiss.read_index(str(path), flags)


def load_faiss(directory: Path, side: Sidecar, *, mmap: bool) -> Any | None:
    """The saved FAISS index (None when the index never held a vector), checked against
    ``meta.json``."""
    index_file = side.files.get("index")
    if not index_file:
        if side.count:
            raise IndexError_(
                f"meta.json lists {side.count} vectors but no FAISS file: {REBUILD_HINT}",
                path=str(directory / "meta.json"),
            )
        return None
    path = directory / index_file
    if not path.exists():
        raise IndexError_(f"FAISS file missing: {REBUILD_HINT}", path=str(path))
    try:
        index = read_faiss(path, mmap=mmap, index_type=side.index_type)
    except RuntimeError as exc:
        raise IndexError_(
            f"FAISS file truncated or corrupt: {REBUILD_HINT}", path=str(path)
        ) from exc
    if index.ntotal != side.count or index.d != side.dim:
        raise IndexError_(
            f"FAISS file holds {index.ntotal} x {index.d}, meta.json says "
            f"{side.count} x {side.dim}: {REBUILD_HINT}",
            path=str(path),
        )
    return index


def load_refine(
    directory: Path, side: Sidecar, ids: np.ndarray, *, mmap: bool
) -> RefineCodes | None:
    """The refine codes listed in ``meta.json`` (None when it lists none); their ids must be
    exactly ``ids`` (the FAISS file's, sorted)."""
    if "refineq" not in side.files:
        return None  # no refine codes; when listed they exist even with no rows left
    p = side.params
    try:
        segs = [np.load(directory / f, mmap_mode="r" if mmap else None) for f in side.refine_files]
        refine_ids = np.load(directory / side.files["refine_ids"])
        norms = np.load(directory / side.files["refine_norms"])
        cents = np.load(directory / side.files["refineq"])
        positions = layout(side.omega_dim, p["refine_channels"])
        quantizer = RefineQuantizer.from_array(cents, positions, p["refine_bits"])
        if any(seg.dtype != np.uint8 for seg in segs):
            raise ValueError("refine codes are not uint8")
        refine = RefineCodes(quantizer, refine_ids, segs, norms, files=list(side.refine_files))
    except (OSError, ValueError, KeyError) as exc:
        raise IndexError_(
            f"missing or truncated refine files ({exc}): {REBUILD_HINT}", path=str(directory)
        ) from exc
    if quantizer.omega_dim != side.omega_dim or quantizer.dims != p["refine_dims"]:
        raise IndexError_(
            f"refine quantizer codes {quantizer.omega_dim}-d Ω, the index {side.omega_dim}-d:"
            f" {REBUILD_HINT}",
            path=str(directory),
        )
    if refine_ids.size != ids.size or not np.array_equal(np.sort(refine_ids), ids):
        raise IndexError_(
            f"refine codes hold {refine_ids.size} ids, the FAISS file {ids.size}, or other ids:"
            f" {REBUILD_HINT}",
            path=str(directory),
        )
    return refine


# --------------------------------------------------------------------------------------------
# saving
@dataclass(frozen=True)
class Saved:
    """What a save left on disk: the generation, its data files and the ``meta.json`` stamp."""

    generation: int
    files: dict[str, str]
    refine_files: list[str]
    stamp: tuple[int, int] | None


def save(
    directory: Path,
    *,
    generation: int,
    files: dict[str, str],
    basis: GrowingBasis,
    index: Any | None,
    refine: RefineCodes | None,
    quantizer_dirty: bool,
    describe: Callable[[], dict[str, Any]],
) -> Saved:
    """Write a new generation and replace ``meta.json``; remove the files no longer named.

    ``files`` are the data files of the generation saved last (``generation``); files that
    did not change and still exist are named again instead of rewritten. ``describe()`` gives
    the ``meta.json`` body (see :func:`compose_meta`), called once the refine segments are
    merged. On success ``basis`` and ``refine`` are marked saved.
    """
    faiss = faiss_lib()
    directory.mkdir(parents=True, exist_ok=True)
    gen = max(generation, disk_generation(directory)) + 1  # never overwrite live files
    files = dict(files)
    written: list[Path] = []

    def missing(name: str | None) -> bool:  # not written yet, or gone (another's clean-up)
        return name is None or not (directory / name).exists()

    def write(name: str, saver: Callable[[Path], None]) -> str:
        written.append(directory / name)
        fsync_write(written[-1], saver)
        return name

    refine_files: list[str] = []
    try:
        if basis.dirty or missing(files.get("basis")):
            files["basis"] = write(f"basis.{gen}.npy", _saver(basis.basis))
        # vectors projected on an unchanged basis still add to the moment (small: d x d)
        if basis.dirty or basis.moment_dirty or missing(files.get("moment")):
            files["moment"] = write(f"moment.{gen}.npy", _saver(basis.moment))
        if index is not None:
            files["index"] = write(f"omega.{gen}.faiss", lambda p: faiss.write_index(index, str(p)))
        else:
            files.pop("index", None)
        if refine is None:
            for key in REFINE_KEYS:
                files.pop(key, None)
        else:
            refine.compact(MAX_REFINE_SEGMENTS)
            for j, (seg, name) in enumerate(refine.segments):
                if name is None or missing(name):  # only new or changed segments are written
                    name = write(f"refine.{gen}.{j}.npy", _saver(seg))
                refine_files.append(name)
            ids_gone = missing(files.get("refine_ids")) or missing(files.get("refine_norms"))
            if refine.dirty or ids_gone:
                files["refine_ids"] = write(f"refine_ids.{gen}.npy", _saver(refine.ids))
                files["refine_norms"] = write(f"refine_norms.{gen}.npy", _saver(refine.norms))
            if quantizer_dirty or missing(files.get("refineq")):
                files["refineq"] = write(f"refineq.{gen}.npy", _saver(refine.quantizer.to_array()))
        meta = compose_meta(describe(), gen, files, refine_files)
        text = json.dumps(meta, indent=2) + "\n"
        fsync_write(directory / "meta.json", lambda p: _write_text(p, text))
    except BaseException:
        for f in written:  # the failed generation's files; the previous one is untouched
            with contextlib.suppress(OSError):
                f.unlink()
        raise
    fsync_dir(directory)
    stamp = meta_stamp(directory)
    basis.dirty = basis.moment_dirty = False
    if refine is not None:
        refine.mark_saved(refine_files)
    keep = {*files.values(), *refine_files, "meta.json"}
    for f in directory.iterdir():  # sub-folders (the feature store) are not the index's files
        if f.is_file() and f.name not in keep and not f.name.startswith("."):
            with contextlib.suppress(OSError):
                f.unlink()
    return Saved(gen, files, refine_files, stamp)
