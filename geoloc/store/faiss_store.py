"""The FAISS Ω index: compressed 50,176-d Ω vectors of one encoder, keyed by tile id.

Search is two-stage once the index is no longer exact: the compressed codes below give the top
``max(k, refine_k)`` candidates, and *refine codes* (``geoloc/store/refine.py``: a faithful code
of the full Ω, read only for the candidates) re-score them and the best ``k`` are returned.

Stage 1, compression: a *growing orthonormal basis* ``B`` (``d x D``) of the span of the Ω
vectors seen so far; a tile is stored as its coordinates ``c = B x`` (``d`` values, kept as
float16 by FAISS's fp16 scalar quantizer: score error ~1e-3) and a query ``q`` is scored by
``<B q, c> = <q, B^T B x>``:

* while the vectors seen span at most ``max_dim`` dimensions the basis holds all of them, so
  ``B^T B x = x`` and the search is exact up to fp16 rounding (this covers small databases:
  the first ~500 tiles at the defaults), at ``d`` values per tile; no refine codes are kept;
* every ``add`` projects the new vectors on ``B``; the part outside ``B`` (the residual) is
  orthonormalised and appended to ``B`` (previous codes gain zero coordinates, still exact);
* when ``d`` would exceed ``max_dim`` the basis is truncated to the ``target_dim`` principal
  directions of the uncentred second moment of all codes (a PCA kept up to date incrementally,
  with the moment matrix ``d x d``), and every stored code is rotated into the new basis;
* above ``ivf_threshold`` tiles the flat inner-product index becomes an IVF-SQfp16 index (inner
  product, ``nlist ~ 4 sqrt(n)``, ``nprobe`` from the sidecar) and the basis is frozen; vectors
  whose residual energy is large then lose accuracy, which ``info()["residual_energy"]`` reports
  and ``geoloc index rebuild`` repairs (it refits from re-encoded tiles).

Stage 2, refine codes: at the first truncation (or the switch to IVF) every stored vector is
still exactly ``B^T c``, so the full Ω are reconstructed, a quantizer of the per-position
channel vectors is trained on 512 of them (channel PCA 256 -> ``refine_dims`` shared by the
196 positions, uniform ``refine_bits``-bit values) and all are encoded; from then on every added
vector is encoded from its raw Ω at ``add``. Scores are cosines of the decoded vectors.

Measured on real SGM-Net Ω (8,136 tiles: the bundled sample and the 13 Turku rasters tiled at
0.14-0.5 m/px, stride 80 px, added in raster order; 300 held-out tiles as queries; vs exact
50,176-d inner product; ``benchmarks/store.py``): the compressed stage alone ranks the very top
imprecisely (recall@10 0.68 / 0.77 at ``target_dim`` 256 / 512) but holds the exact top-10 in
its top 200 (10-recall@200 0.998 / 1.000). Re-scoring that top 200 with 96-d x 4-bit refine
codes (9,408 B/tile) gives recall@10 0.950, recall@1 0.940 (64-d x 4-bit, 6,272 B: 0.938;
96-d x 4-bit at ``target_dim`` 512 re-scoring the top 100: 0.948); with the current shipped head
(weights ``111b5bfe``) the same defaults give recall@10 0.958 (64-d x 4-bit: 0.948). A
product quantizer of the position vectors re-ranks worse at equal bytes (6,272 B: 0.87).
Hence the defaults ``target_dim`` 256 (``max_dim`` 512: 0.5-1 KiB of fp16 codes),
``refine_dims`` 96, ``refine_bits`` 4, ``refine_k`` 200.

Files under ``Settings.index_dir / <weights sha256>/``: ``meta.json`` (the sidecar: format,
encoder id and SHA-256, dims, count, index type, parameters, creation time, and the names of
the current data files), ``omega.<gen>.faiss``, ``basis.<gen>.npy``, ``moment.<gen>.npy`` and,
past the first truncation, ``refine.<gen>.<j>.npy`` (uint8 code segments, append-only: a save
writes only the new or changed ones), ``refine_ids.<gen>.npy``,
``refine_norms.<gen>.npy`` and ``refineq.<gen>.npy`` (the quantizer). Saving writes new
generation files (temp + fsync + rename) and then atomically replaces ``meta.json``; a failed
save leaves the previous index readable. Loads memory-map the basis, the refine codes and, until
the first modification, the FAISS file. Format 1 (before refine codes) still loads and searches
with stage 1 only; ``info()["search"]`` then says to run ``geoloc index rebuild``. A GPU is used
for flat search when ``faiss`` sees one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.config import Settings
from geoloc.errors import IndexError_
from geoloc.store.refine import RefineCodes, RefineQuantizer, fits, layout

log = logging.getLogger(__name__)

#: 2: refine codes (``refine.<gen>.npy``, ``refine_ids.<gen>.npy``, ``refine_norms.<gen>.npy``,
#: ``refineq.<gen>.npy``).
#: 3: refine codes in append-only segments (``meta.json`` ``files.refine`` is a list).
#: A format-1 index loads without them (``info()["refine"]`` says to rebuild); format 2 loads as
#: one segment.
FORMAT_VERSION = 3
#: Refine segments kept before neighbouring small ones are merged at a save.
MAX_REFINE_SEGMENTS = 16
DEFAULT_OMEGA_DIM = 50176
DEFAULT_TARGET_DIM = 256
#: Refine codes: channel-PCA dims per position vector (0 disables refining), bits per value
#: (4 or 8), channels of the Ω map (SGM-Net: 256 x 14 x 14), candidates re-scored per query.
DEFAULT_REFINE_DIMS = 96
DEFAULT_REFINE_BITS = 4
DEFAULT_REFINE_CHANNELS = 256
DEFAULT_REFINE_K = 200
#: Tiles reconstructed (at random) to train the refine quantizer at the first truncation.
REFINE_TRAIN_TILES = 512
DEFAULT_IVF_THRESHOLD = 50_000
DEFAULT_NPROBE = 128
#: The IVF index is re-trained (nlist ~ 4 sqrt(n)) when it holds this many times the vectors it
#: was trained at (50k -> 400k -> 3.2M with the defaults).
IVF_RETRAIN_FACTOR = 8
#: Residual-energy tolerance below which a vector is considered inside the basis.
RESIDUAL_TOL = 1e-6
#: Largest chunk of vectors processed at once by :meth:`OmegaIndex.add` (bounds memory / time).
ADD_CHUNK = 256

REBUILD_HINT = "run `geoloc index rebuild`"


def _faiss() -> Any:
    import faiss

    return faiss


def _fsync_write(path: Path, write: Callable[[Path], None]) -> None:
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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _orthonormal_rows(a: np.ndarray, passes: int = 2) -> np.ndarray:
    """Orthonormal rows spanning the rows of ``a`` (r, D), float32; rank-deficient rows dropped.

    Whitening through the eigenvectors of the r x r Gram matrix, done twice (like
    CholeskyQR2): only matrix products, where a Householder QR of the D x r matrix was most of
    the time of an add to the exact index (2.6 s per 256 vectors at D = 50,176 on 2 cores).
    Accurate here because the rows are already nearly orthonormal (whitened residuals).
    """
    out = a.astype(np.float64)
    for _ in range(passes):
        w, v = np.linalg.eigh(out @ out.T)
        keep = w > max(float(w.max(initial=0.0)), 1e-30) * 1e-10
        out = (v[:, keep] / np.sqrt(w[keep])).T @ out if keep.any() else out[:0]
    return out.astype(np.float32)


def _meta_stamp(directory: Path) -> tuple[int, int] | None:
    """Identity of the current ``meta.json`` (replaced by rename at every save), or None."""
    try:
        st = (directory / "meta.json").stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _saver(arr: np.ndarray) -> Callable[[Path], None]:
    return lambda p: _np_save(p, arr)


class OmegaIndex:
    """Ω vectors of one encoder (keyed by weights SHA-256), compressed, searchable by cosine.

    Build with :meth:`open` (loads the saved index, or starts an empty one) or :meth:`create`
    (always empty; ``save`` replaces what is on disk). Vectors must be L2-normalised so inner
    product equals cosine similarity.
    """

    def __init__(
        self,
        directory: Path,
        encoder_sha256: str,
        *,
        omega_dim: int = DEFAULT_OMEGA_DIM,
        target_dim: int = DEFAULT_TARGET_DIM,
        max_dim: int | None = None,
        ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
        nprobe: int = DEFAULT_NPROBE,
        refine_dims: int = DEFAULT_REFINE_DIMS,
        refine_bits: int = DEFAULT_REFINE_BITS,
        refine_channels: int = DEFAULT_REFINE_CHANNELS,
        refine_k: int = DEFAULT_REFINE_K,
        encoder_id: int | None = None,
    ) -> None:
        if target_dim < 1 or omega_dim < 1:
            raise IndexError_(f"{directory}: bad index dimensions {target_dim}/{omega_dim}")
        self.directory = directory
        self.encoder_sha256 = encoder_sha256
        self.encoder_id = encoder_id
        self.omega_dim = int(omega_dim)
        self.target_dim = int(min(target_dim, omega_dim))
        self.max_dim = int(min(max_dim or 2 * self.target_dim, omega_dim))
        self.ivf_threshold = int(ivf_threshold)
        self.nprobe = int(nprobe)
        self.refine_dims = int(refine_dims)
        self.refine_bits = int(refine_bits)
        self.refine_channels = int(refine_channels)
        self.refine_k = int(refine_k)
        self.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._index_type = "flat"
        self._basis: np.ndarray = np.zeros((0, self.omega_dim), dtype=np.float32)
        self._buf: np.ndarray | None = None  # capacity buffer; _basis is a view of its rows
        # added vectors not yet folded into the basis/index: processed ADD_CHUNK at a time (one
        # pass over the basis per chunk instead of per small batch), and before any read
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self._moment: np.ndarray = np.zeros((0, 0), dtype=np.float64)
        self._index: Any = None  # faiss index over codes (None while d == 0 and empty)
        self._ids: np.ndarray = np.zeros(0, dtype=np.int64)  # sorted
        self._gen = 0
        self._files: dict[str, str] = {}
        self._refine_files: list[str] = []  # saved refine segments, in row order
        self._disk_stamp: tuple[int, int] | None = None  # meta.json this object read or wrote
        self._basis_dirty = True
        self._readonly_index = False
        self._gpu_index: Any = None
        self.fit_count = 0
        self.residual_sum = 0.0  # residual energy of vectors added since the last refit
        self.residual_n = 0
        # refine codes of every stored vector, created when the index stops being exact
        self._refine: RefineCodes | None = None
        self._refine_q_dirty = False
        self._format = FORMAT_VERSION

    @property
    def refine_enabled(self) -> bool:
        """True when refine codes will be (or are) kept: ``refine_dims`` > 0, the layout fits."""
        return fits(self.omega_dim, self.refine_channels, self.refine_dims, self.refine_bits)

    # ----------------------------------------------------------------------------------------
    # construction / persistence
    @staticmethod
    def path_for(settings: Settings, encoder_sha256: str) -> Path:
        """Directory of the index of this encoder."""
        if not encoder_sha256 or any(c not in "0123456789abcdef" for c in encoder_sha256.lower()):
            raise IndexError_(f"bad encoder weights SHA-256: {encoder_sha256!r}")
        return settings.index_dir / encoder_sha256.lower()

    @classmethod
    def create(cls, settings: Settings, encoder_sha256: str, **kwargs: Any) -> OmegaIndex:
        """A new empty index for this encoder (nothing is written until :meth:`save`)."""
        return cls(cls.path_for(settings, encoder_sha256), encoder_sha256.lower(), **kwargs)

    @classmethod
    def exists(cls, settings: Settings, encoder_sha256: str) -> bool:
        """True when a saved index exists for this encoder."""
        return (cls.path_for(settings, encoder_sha256) / "meta.json").exists()

    @classmethod
    def open(
        cls,
        settings: Settings,
        encoder_sha256: str,
        *,
        create: bool = True,
        mmap: bool = True,
        **kwargs: Any,
    ) -> OmegaIndex:
        """Load the saved index of this encoder; an empty one if none exists and ``create``.

        Raises :class:`~geoloc.errors.IndexError_` when the index is missing (``create=False``),
        truncated or inconsistent, with the hint to run ``geoloc index rebuild``.
        """
        directory = cls.path_for(settings, encoder_sha256)
        meta_path = directory / "meta.json"
        if not meta_path.exists():
            if not create:
                raise IndexError_(
                    f"no FAISS index for this encoder: {REBUILD_HINT}", path=str(meta_path)
                )
            return cls(directory, encoder_sha256.lower(), **kwargs)
        self = cls._load(directory, mmap=mmap)
        omega_dim = kwargs.get("omega_dim")
        if omega_dim is not None and int(omega_dim) != self.omega_dim:
            raise IndexError_(
                f"index holds {self.omega_dim}-d Ω, the encoder makes {omega_dim}-d: "
                f"{REBUILD_HINT}",
                path=str(meta_path),
            )
        if self.encoder_id is None and kwargs.get("encoder_id") is not None:
            self.encoder_id = int(kwargs["encoder_id"])
        return self

    @classmethod
    def _load(cls, directory: Path, *, mmap: bool) -> OmegaIndex:
        meta_path = directory / "meta.json"
        stamp = _meta_stamp(directory)  # before reading: a save in between means a reload later
        try:
            meta = json.loads(meta_path.read_text())
            p = meta["params"]
            self = cls(
                directory,
                meta["encoder_sha256"],
                omega_dim=int(meta["omega_dim"]),
                target_dim=int(p["target_dim"]),
                max_dim=int(p["max_dim"]),
                ivf_threshold=int(p["ivf_threshold"]),
                nprobe=int(p["nprobe"]),
                # format 1 has no refine parameters: the defaults (used by a rebuild)
                refine_dims=int(p.get("refine_dims", DEFAULT_REFINE_DIMS)),
                refine_bits=int(p.get("refine_bits", DEFAULT_REFINE_BITS)),
                refine_channels=int(p.get("refine_channels", DEFAULT_REFINE_CHANNELS)),
                refine_k=int(p.get("refine_k", DEFAULT_REFINE_K)),
                encoder_id=meta.get("encoder_id"),
            )
            self._format = int(meta.get("format", 1))
            self.created = str(meta["created"])
            self._index_type = str(meta["index_type"])
            self._gen = int(meta["generation"])
            raw_files = dict(meta["files"])
            refine_files = raw_files.pop("refine", None)
            self._files = {k: str(v) for k, v in raw_files.items()}
            if refine_files is None:
                self._refine_files = []
            elif isinstance(refine_files, str):  # format 2: one file
                self._refine_files = [refine_files]
            else:
                self._refine_files = [str(f) for f in refine_files]
            self.fit_count = int(meta.get("fit_count", 0))
            self.residual_sum = float(meta.get("residual_sum", 0.0))
            self.residual_n = int(meta.get("residual_n", 0))
            dim, count = int(meta["dim"]), int(meta["count"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexError_(
                f"unreadable index sidecar ({exc}): {REBUILD_HINT}", path=str(meta_path)
            ) from exc
        if self._format > FORMAT_VERSION:
            raise IndexError_(
                f"index format {self._format} is newer than this geoloc reads ({FORMAT_VERSION}):"
                " upgrade geoloc",
                path=str(meta_path),
            )
        faiss = _faiss()
        try:
            basis = np.load(directory / self._files["basis"], mmap_mode="r" if mmap else None)
            moment = np.load(directory / self._files["moment"])
        except (OSError, ValueError, KeyError) as exc:
            raise IndexError_(
                f"missing or truncated basis/moment file ({exc}): {REBUILD_HINT}",
                path=str(directory),
            ) from exc
        if basis.shape != (dim, self.omega_dim) or moment.shape != (dim, dim):
            raise IndexError_(
                f"basis shape {basis.shape} disagrees with meta.json: {REBUILD_HINT}",
                path=str(directory),
            )
        self._basis, self._moment = basis, moment
        self._basis_dirty = False
        index_file = self._files.get("index")
        if index_file:
            path = directory / index_file
            if not path.exists():
                raise IndexError_(f"FAISS file missing: {REBUILD_HINT}", path=str(path))
            flags = 0
            if mmap:
                flags = faiss.IO_FLAG_MMAP_IFC if self._index_type == "flat" else faiss.IO_FLAG_MMAP
            try:
                self._index = faiss.read_index(str(path), flags)
            except RuntimeError as exc:
                raise IndexError_(
                    f"FAISS file truncated or corrupt: {REBUILD_HINT}", path=str(path)
                ) from exc
            self._readonly_index = bool(flags)
            if self._index.ntotal != count or self._index.d != dim:
                raise IndexError_(
                    f"FAISS file holds {self._index.ntotal} x {self._index.d}, meta.json says "
                    f"{count} x {dim}: {REBUILD_HINT}",
                    path=str(path),
                )
            self._ids = np.sort(self._all_ids())
        elif count:
            raise IndexError_(
                f"meta.json lists {count} vectors but no FAISS file: {REBUILD_HINT}",
                path=str(meta_path),
            )
        if "refineq" in self._files:  # refine codes exist (possibly no rows left)
            self._refine = self._load_refine(directory, mmap=mmap)
        self._disk_stamp = stamp
        return self

    def _load_refine(self, directory: Path, *, mmap: bool) -> RefineCodes:
        """The refine codes listed in meta.json; their ids must be exactly the index's ids."""
        try:
            segs = [
                np.load(directory / f, mmap_mode="r" if mmap else None) for f in self._refine_files
            ]
            ids = np.load(directory / self._files["refine_ids"])
            norms = np.load(directory / self._files["refine_norms"])
            cents = np.load(directory / self._files["refineq"])
            positions = layout(self.omega_dim, self.refine_channels)
            quantizer = RefineQuantizer.from_array(cents, positions, self.refine_bits)
            if any(seg.dtype != np.uint8 for seg in segs):
                raise ValueError("refine codes are not uint8")
            refine = RefineCodes(quantizer, ids, segs, norms, files=list(self._refine_files))
        except (OSError, ValueError, KeyError) as exc:
            raise IndexError_(
                f"missing or truncated refine files ({exc}): {REBUILD_HINT}", path=str(directory)
            ) from exc
        if quantizer.omega_dim != self.omega_dim or quantizer.dims != self.refine_dims:
            raise IndexError_(
                f"refine quantizer codes {quantizer.omega_dim}-d Ω, the index {self.omega_dim}-d:"
                f" {REBUILD_HINT}",
                path=str(directory),
            )
        if ids.size != self._ids.size or not np.array_equal(np.sort(ids), self._ids):
            raise IndexError_(
                f"refine codes hold {ids.size} ids, the FAISS file {self._ids.size}, or other ids:"
                f" {REBUILD_HINT}",
                path=str(directory),
            )
        return refine

    def save(self) -> None:
        """Persist atomically (new generation files, then ``meta.json`` replaced by rename)."""
        self._flush()
        faiss = _faiss()
        self.directory.mkdir(parents=True, exist_ok=True)
        gen = max(self._gen, self._disk_generation()) + 1  # never overwrite live files
        files = dict(self._files)
        written: list[Path] = []

        def missing(name: str | None) -> bool:  # not written yet, or gone (another's clean-up)
            return name is None or not (self.directory / name).exists()

        def write(name: str, saver: Callable[[Path], None]) -> str:
            written.append(self.directory / name)
            _fsync_write(written[-1], saver)
            return name

        try:
            if self._basis_dirty or missing(files.get("basis")) or missing(files.get("moment")):
                files["basis"] = write(f"basis.{gen}.npy", _saver(self._basis))
                files["moment"] = write(f"moment.{gen}.npy", _saver(self._moment))
            if self._index is not None:
                index = self._index
                files["index"] = write(
                    f"omega.{gen}.faiss", lambda p: faiss.write_index(index, str(p))
                )
            else:
                files.pop("index", None)
            refine = self._refine
            refine_files: list[str] = []
            if refine is None:
                for key in ("refine_ids", "refine_norms", "refineq"):
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
                if self._refine_q_dirty or missing(files.get("refineq")):
                    cents = refine.quantizer.to_array()
                    files["refineq"] = write(f"refineq.{gen}.npy", _saver(cents))
            meta = self._meta(gen, files, refine_files)
            _fsync_write(
                self.directory / "meta.json",
                lambda p: _write_text(p, json.dumps(meta, indent=2) + "\n"),
            )
        except BaseException:
            for f in written:  # the failed generation's files; the previous one is untouched
                with contextlib.suppress(OSError):
                    f.unlink()
            raise
        _fsync_dir(self.directory)
        self._disk_stamp = _meta_stamp(self.directory)
        self._gen, self._files, self._basis_dirty = gen, files, False
        self._refine_files = refine_files
        self._format = FORMAT_VERSION
        if self._refine is not None:
            self._refine.mark_saved(refine_files)
        self._refine_q_dirty = False
        keep = set(self.data_files()) | {"meta.json"}
        for f in self.directory.iterdir():
            if f.name not in keep and not f.name.startswith("."):
                with contextlib.suppress(OSError):
                    f.unlink()

    def data_files(self) -> list[str]:
        """Names (in :attr:`directory`) of the data files of the saved generation."""
        return [*self._files.values(), *self._refine_files]

    def changed_on_disk(self) -> bool:
        """True when another process saved this index since this object loaded or saved it.

        One ``stat`` of ``meta.json``; a long-lived reader (a warm ``Localizer``) re-opens the
        index when this says so, to see tiles ingested meanwhile.
        """
        return _meta_stamp(self.directory) != self._disk_stamp

    def _disk_generation(self) -> int:
        """Generation named by the ``meta.json`` on disk (0 when absent or unreadable)."""
        try:
            return int(json.loads((self.directory / "meta.json").read_text())["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _meta(self, gen: int, files: dict[str, str], refine_files: list[str]) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "encoder_id": self.encoder_id,
            "encoder_sha256": self.encoder_sha256,
            "omega_dim": self.omega_dim,
            "dim": self.dim,
            "count": len(self),
            "index_type": self._index_type,
            "metric": "inner_product",
            "params": {
                "target_dim": self.target_dim,
                "max_dim": self.max_dim,
                "ivf_threshold": self.ivf_threshold,
                "nprobe": self.nprobe,
                "nlist": int(getattr(self._ivf(), "nlist", 0) or 0),
                "refine_dims": self.refine_dims,
                "refine_bits": self.refine_bits,
                "refine_channels": self.refine_channels,
                "refine_k": self.refine_k,
            },
            "exact": self.is_exact,
            "refine": None if self._refine is None else self._refine.state(),
            "fit_count": self.fit_count,
            "residual_sum": self.residual_sum,
            "residual_n": self.residual_n,
            "created": self.created,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "generation": gen,
            "files": {**files, "refine": refine_files} if "refineq" in files else dict(files),
        }

    # ----------------------------------------------------------------------------------------
    # properties
    def __len__(self) -> int:
        return int(self._ids.size)

    @property
    def index_type(self) -> str:
        """``flat`` or ``ivf`` (after folding in pending additions)."""
        self._flush()
        return self._index_type

    @property
    def dim(self) -> int:
        """Current code dimension ``d`` (rows of the basis)."""
        self._flush()
        return int(self._basis.shape[0])

    @property
    def is_exact(self) -> bool:
        """True while every stored vector lies in the basis (exact search up to fp16 codes)."""
        self._flush()
        return self._exact_now()

    def _exact_now(self) -> bool:
        return self._index_type == "flat" and self.residual_sum <= RESIDUAL_TOL * max(
            1, self.residual_n
        )

    @property
    def has_refine(self) -> bool:
        """True when searches re-score their candidates with refine codes."""
        self._flush()
        return self._refine is not None

    def ids(self) -> np.ndarray:
        """Sorted int64 ids held by the index."""
        return self._ids.copy()

    def info(self) -> dict[str, Any]:
        """The sidecar fields (as they would be saved now) plus the directory."""
        self._flush()
        meta = self._meta(self._gen, self._files, self._refine_files)
        meta["directory"] = str(self.directory)
        meta["residual_energy"] = self.residual_sum / max(1, self.residual_n)
        meta["format"] = self._format
        meta["search"] = self._search_mode()
        return meta

    def _search_mode(self) -> str:
        """One line for ``info()``: how a search scores (exact, refined, or compressed only)."""
        if self._exact_now():
            return "exact (fp16 codes in the full basis)"
        if self._refine is not None:
            return (
                f"compressed top-{self.refine_k} re-scored by refine codes "
                f"({self._refine.quantizer.code_size} B/tile)"
            )
        if not self.refine_enabled:
            return "compressed only (refine codes disabled or Ω layout does not fit)"
        return f"compressed only, no refine codes (made before format 2): {REBUILD_HINT}"

    def _ivf(self) -> Any:
        if self._index_type != "ivf" or self._index is None:
            return None
        return _faiss().extract_index_ivf(self._index)

    def _all_ids(self) -> np.ndarray:
        faiss = _faiss()
        if self._index is None:
            return np.zeros(0, dtype=np.int64)
        if self._index_type == "flat":
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        ivf = self._ivf()
        invlists = ivf.invlists
        out = []
        for lst in range(ivf.nlist):
            n = invlists.list_size(lst)
            if n:
                ptr = invlists.get_ids(lst)
                out.append(faiss.rev_swig_ptr(ptr, n).copy())
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)

    def _codes_and_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """All stored codes (n, d) and their ids, in storage order."""
        if self._index is None or self._index.ntotal == 0:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=np.int64)
        if self._index_type == "flat":
            ids = self._all_ids()
            codes = self._index.index.reconstruct_n(0, self._index.ntotal)
            return np.asarray(codes, dtype=np.float32), ids
        ids = self._all_ids()
        return self._reconstruct(ids), ids

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self._index_type == "flat":
            return np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32)
        ivf = self._ivf()
        return np.asarray(ivf.reconstruct_batch(ids), dtype=np.float32)

    def _writable(self) -> None:
        """Re-read a memory-mapped index into memory before the first modification."""
        if self._readonly_index and self._index is not None:
            path = self.directory / self._files["index"]
            self._index = _faiss().read_index(str(path))
            self._readonly_index = False
        if not self._basis.flags.writeable:
            self._basis = np.array(self._basis)
        self._gpu_index = None

    # ----------------------------------------------------------------------------------------
    # mutation
    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.omega_dim:
            raise IndexError_(
                f"{what} must be (n, {self.omega_dim}), got {x.shape}", path=str(self.directory)
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise IndexError_(f"{what} contains NaN or infinite values", path=str(self.directory))
        return x

    def add(self, ids: np.ndarray, omega: np.ndarray) -> None:
        """Add Ω vectors ``(n, omega_dim)`` under int64 ``ids`` (tile ids; must be new)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        x = self._check(omega, "omega")
        if ids.size != x.shape[0]:
            raise IndexError_(f"{ids.size} ids for {x.shape[0]} vectors", path=str(self.directory))
        if ids.size == 0:
            return
        if np.unique(ids).size != ids.size or np.isin(ids, self._ids).any():
            dup = ids[np.isin(ids, self._ids)][:5].tolist() or "repeated in the batch"
            raise IndexError_(f"ids already in the index: {dup}", path=str(self.directory))
        self._pending.append((ids, x))
        self._pending_n += ids.size
        self._ids = np.sort(np.concatenate([self._ids, ids]))
        if self._pending_n >= ADD_CHUNK:
            self._flush()

    def _flush(self) -> None:
        """Fold pending additions into the basis and the FAISS index."""
        if not self._pending:
            return
        pending, self._pending, self._pending_n = self._pending, [], 0
        ids = np.concatenate([p[0] for p in pending])
        x = np.concatenate([p[1] for p in pending]) if len(pending) > 1 else pending[0][1]
        self._writable()
        for s in range(0, ids.size, ADD_CHUNK):
            self._add_chunk(ids[s : s + ADD_CHUNK], x[s : s + ADD_CHUNK])
        if self._index is not None:
            n = self._index.ntotal
            if self._index_type == "flat" and n > self.ivf_threshold:
                self._to_ivf()
            elif self._index_type == "ivf" and n > IVF_RETRAIN_FACTOR * max(1, self.fit_count):
                self._to_ivf()  # more lists for more vectors: keeps the scanned share small

    def _add_chunk(self, ids: np.ndarray, x: np.ndarray) -> None:
        if self._refine is not None:
            self._refine.add(ids, x)
        b = self._basis
        coords = x @ b.T if b.shape[0] else np.zeros((x.shape[0], 0), dtype=np.float32)
        resid = x - coords @ b if b.shape[0] else x.copy()
        energy = np.einsum("ij,ij->i", resid, resid) / np.maximum(
            np.einsum("ij,ij->i", x, x), 1e-30
        )
        if self._index_type == "flat" and float(energy.max()) > RESIDUAL_TOL:
            self._extend(ids, coords, resid)
            return
        # inside the basis (or frozen IVF basis): store the projection
        self.residual_sum += float(energy.sum())
        self.residual_n += int(energy.size)
        self._moment += coords.T.astype(np.float64) @ coords.astype(np.float64)
        self._index_add(ids, coords.astype(np.float32))

    def _extend(self, ids: np.ndarray, coords: np.ndarray, resid: np.ndarray) -> None:
        """Append the residual directions to the basis; truncate to target_dim if too wide."""
        gram = resid.astype(np.float64) @ resid.T.astype(np.float64)
        w, u = np.linalg.eigh(gram)
        keep = w > max(float(w.max()), 1e-30) * 1e-10
        w, u = w[keep], u[:, keep]
        new_dirs = (u / np.sqrt(w)).T.astype(np.float32) @ resid  # (r, D), orthonormal rows
        if self.dim:  # re-orthogonalise against the basis (numerical safety)
            new_dirs -= (new_dirs @ self._basis.T) @ self._basis
        new_dirs = _orthonormal_rows(new_dirs)
        r = new_dirs.shape[0]
        d = self.dim
        basis_ext = self._append_rows(new_dirs)
        new_codes = np.concatenate([coords, resid @ new_dirs.T], axis=1).astype(np.float32)
        moment = np.zeros((d + r, d + r), dtype=np.float64)
        moment[:d, :d] = self._moment
        moment += new_codes.T.astype(np.float64) @ new_codes.astype(np.float64)
        old_codes, old_ids = self._codes_and_ids()
        old_codes = np.concatenate(
            [old_codes, np.zeros((old_codes.shape[0], r), np.float32)], axis=1
        )
        # part of the new vectors outside even the extended basis (numerical rank cut)
        lost = resid - (resid @ new_dirs.T) @ new_dirs
        self.residual_sum += float(
            (
                np.einsum("ij,ij->i", lost, lost)
                / np.maximum(
                    np.einsum("ij,ij->i", coords, coords) + np.einsum("ij,ij->i", resid, resid),
                    1e-30,
                )
            ).sum()
        )
        self.residual_n += int(ids.size)
        codes = np.concatenate([old_codes, new_codes], axis=0)
        all_ids = np.concatenate([old_ids, ids])
        if d + r > self.max_dim:
            self._start_refine(basis_ext, codes, all_ids)
            new_basis, codes, moment = self._truncate(basis_ext, codes, moment, self.target_dim)
            assert self._buf is not None
            self._buf[: new_basis.shape[0]] = new_basis
            basis_ext = self._buf[: new_basis.shape[0]]
        self._basis, self._moment = basis_ext, moment
        self._basis_dirty = True
        self._rebuild_flat(all_ids, codes)

    def _append_rows(self, rows: np.ndarray) -> np.ndarray:
        """The basis with ``rows`` appended, grown in place in a capacity buffer (no copy)."""
        d, need = self.dim, self.dim + rows.shape[0]
        if self._buf is None or self._buf.shape[0] < need or self._basis.base is not self._buf:
            cap = max(need, min(self.max_dim + ADD_CHUNK, max(2 * need, 64)))
            buf = np.empty((cap, self.omega_dim), dtype=np.float32)
            buf[:d] = self._basis
            self._buf = buf
        self._buf[d:need] = rows
        return self._buf[:need]

    def _truncate(
        self, basis: np.ndarray, codes: np.ndarray, moment: np.ndarray, dim: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keep the ``dim`` principal directions of the code second moment; rotate codes."""
        w, v = np.linalg.eigh(moment)
        order = np.argsort(w)[::-1][:dim]
        vt = v[:, order]  # (d_ext, dim)
        dropped = float(w.sum() - w[order].sum())
        total = float(max(w.sum(), 1e-30))
        # energy dropped: the sum over stored (unit-norm) vectors of their lost energy
        self.residual_sum += dropped
        self.fit_count = int(codes.shape[0])
        log.info("Ω basis truncated to %d dims (%.3f%% energy dropped)", dim, 100 * dropped / total)
        new_basis = (vt.T.astype(np.float32) @ basis).astype(np.float32)
        new_codes = (codes @ vt.astype(np.float32)).astype(np.float32)
        new_moment = vt.T @ moment @ vt
        return new_basis, new_codes, new_moment

    def _start_refine(self, basis: np.ndarray, codes: np.ndarray, ids: np.ndarray) -> None:
        """Train and fill the refine codes from the exact reconstructions ``codes @ basis``.

        Called just before the index stops being exact (first truncation of the basis, or the
        switch to IVF, which freezes it); a no-op when refine codes exist, are disabled, or the
        index is no longer exact (a format-1 index: only a rebuild can add them).
        """
        if self._refine is not None or not self.refine_enabled or not self._exact_now():
            return
        if ids.size == 0:
            return
        rng = np.random.default_rng(0)
        sel = np.sort(rng.choice(ids.size, min(ids.size, REFINE_TRAIN_TILES), replace=False))
        t0 = time.perf_counter()
        quantizer = RefineQuantizer.train(
            codes[sel] @ basis, self.refine_channels, self.refine_dims, self.refine_bits, seed=0
        )
        refine = RefineCodes(quantizer)
        for s in range(0, ids.size, ADD_CHUNK):
            refine.add(ids[s : s + ADD_CHUNK], codes[s : s + ADD_CHUNK] @ basis)
        self._refine, self._refine_q_dirty = refine, True
        log.info(
            "Ω refine codes: %d B/tile for %d vectors (trained in %.1f s)",
            quantizer.code_size,
            ids.size,
            time.perf_counter() - t0,
        )

    def _rebuild_flat(self, ids: np.ndarray, codes: np.ndarray) -> None:
        faiss = _faiss()
        d = int(codes.shape[1])
        sq = faiss.IndexScalarQuantizer(
            d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        index = faiss.IndexIDMap2(sq)
        if ids.size:
            index.add_with_ids(
                np.ascontiguousarray(codes, dtype=np.float32), np.ascontiguousarray(ids)
            )
        self._index, self._index_type = index, "flat"

    def _index_add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        if self._index is None:
            self._rebuild_flat(np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32))
        self._index.add_with_ids(np.ascontiguousarray(codes), np.ascontiguousarray(ids))

    def _to_ivf(self) -> None:
        """(Re)build the IVF-SQfp16 index (inner product) from the stored codes.

        Called when the flat index outgrows ``ivf_threshold`` (the basis is frozen from then on)
        and when the IVF index outgrows ``IVF_RETRAIN_FACTOR`` times its training count.
        """
        faiss = _faiss()
        codes, ids = self._codes_and_ids()
        if self._index_type == "flat":  # the basis freezes: last moment it is exact
            self._start_refine(self._basis, codes, ids)
        if self._index_type == "flat" and self.dim > self.target_dim:
            self._basis, codes, self._moment = self._truncate(
                self._basis, codes, self._moment, self.target_dim
            )
            self._basis_dirty = True
        n, d = codes.shape
        nlist = int(max(1, min(4 * np.sqrt(n), n // 39)))
        ivf = faiss.index_factory(d, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = codes[rng.choice(n, size=min(n, nlist * 64), replace=False)]
        ivf.train(np.ascontiguousarray(sample))
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.nprobe = self.nprobe
        ivf.add_with_ids(np.ascontiguousarray(codes), np.ascontiguousarray(ids))
        self._index, self._index_type = ivf, "ivf"
        self.fit_count = n
        log.info("Ω index: IVF-SQfp16 with %d lists built at %d vectors", nlist, n)

    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids (absent ones are ignored); return how many were removed."""
        self._flush()
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        present = ids[np.isin(ids, self._ids)]
        if present.size == 0 or self._index is None:
            return 0
        self._writable()
        faiss = _faiss()
        present = np.ascontiguousarray(present)
        if self._index_type == "ivf":  # a hashtable direct map only removes by IDSelectorArray
            sel = faiss.IDSelectorArray(present.size, faiss.swig_ptr(present))
        else:
            sel = faiss.IDSelectorBatch(present)
        n = int(self._index.remove_ids(sel))
        self._ids = np.setdiff1d(self._ids, present, assume_unique=True)
        if self._refine is not None:
            self._refine.remove(present)
        return n

    # ----------------------------------------------------------------------------------------
    # search
    def encode_query(self, q: np.ndarray) -> np.ndarray:
        """Project queries ``(b, omega_dim)`` to code space ``(b, d)``."""
        self._flush()
        x = self._check(q, "query")
        return np.ascontiguousarray(x @ self._basis.T, dtype=np.float32)

    def search(
        self, q: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar stored vectors of each query (inner product = cosine).

        Returns ``(scores, ids)`` of shape ``(b, k)``, best first; missing results are
        ``-inf`` / ``-1``. ``allowed_ids`` restricts the search to those ids (exact within
        the compressed space). Once the index is no longer exact, the top ``max(k, refine_k)``
        candidates of the compressed search are re-scored with the refine codes (scores are
        then their cosine estimates) and the best ``k`` returned.
        """
        self._flush()
        x = self._check(q, "query")
        if k <= 0 or len(self) == 0 or self._refine is None or self.refine_k <= 0:
            return self._search_codes(x, k, allowed_ids)
        kk = min(max(k, self.refine_k), len(self))
        _, cand = self._search_codes(x, kk, allowed_ids)
        refined = self._refine.rescore(x, cand)
        order = np.argsort(-refined, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(refined, order, axis=1)
        out_ids = np.take_along_axis(cand, order, axis=1)
        out_ids[np.isneginf(scores)] = -1
        if order.shape[1] < k:  # fewer stored vectors than k
            pad = k - order.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, out_ids

    def _search_codes(
        self, x: np.ndarray, k: int, allowed_ids: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1: the ``k`` best by the compressed codes (checked queries ``x``)."""
        b = x.shape[0]
        scores = np.full((b, k), -np.inf, dtype=np.float32)
        out_ids = np.full((b, k), -1, dtype=np.int64)
        if k <= 0 or len(self) == 0:
            return scores[:, : max(k, 0)], out_ids[:, : max(k, 0)]
        codes_q = np.ascontiguousarray(x @ self._basis.T, dtype=np.float32)
        if allowed_ids is not None:
            allowed = np.intersect1d(np.asarray(allowed_ids, dtype=np.int64).ravel(), self._ids)
            if allowed.size == 0:
                return scores, out_ids
            codes = self._reconstruct(allowed)
            sims = codes_q @ codes.T
            kk = min(k, allowed.size)
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            order = np.take_along_axis(sims, part, axis=1).argsort(axis=1)[:, ::-1]
            top = np.take_along_axis(part, order, axis=1)
            scores[:, :kk] = np.take_along_axis(sims, top, axis=1)
            out_ids[:, :kk] = allowed[top]
            return scores, out_ids
        faiss = _faiss()
        index = self._search_index()
        kk = min(k, len(self))
        # one query is ~1 ms on one thread; OpenMP threads only add wake-up cost (40+ ms when
        # the cores are busy), so few queries run single-threaded
        threads = faiss.omp_get_max_threads()
        if b < 8:
            faiss.omp_set_num_threads(1)
        try:
            if self._index_type == "ivf":
                params = faiss.SearchParametersIVF(nprobe=self.nprobe)
                s, i = index.search(codes_q, kk, params=params)
            else:
                s, i = index.search(codes_q, kk)
        finally:
            faiss.omp_set_num_threads(threads)
        scores[:, :kk] = s
        out_ids[:, :kk] = i
        scores[out_ids < 0] = -np.inf
        return scores, out_ids

    def _search_index(self) -> Any:
        faiss = _faiss()
        if (
            self._index_type == "flat"
            and hasattr(faiss, "get_num_gpus")
            and faiss.get_num_gpus() > 0
        ):
            if self._gpu_index is None:
                self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
            return self._gpu_index
        return self._index


def _np_save(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)
