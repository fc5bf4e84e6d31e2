"""The FAISS Ω index: compressed Ω vectors of one encoder, keyed by tile id.

It composes three parts: the growing PCA basis (``omega_basis.py``: stage 1 codes), the refine
codes (``refine.py``: stage 2) and the on-disk format (``omega_format.py``). Search is
two-stage once the index is no longer exact: the stage-1 codes give the top
``max(k, refine_k)`` candidates, and the refine codes (a faithful code of the full Ω, read only
for the candidates) re-score them and the best ``k`` are returned.

Stage 1 keeps a tile's coordinates in the basis as float16 (FAISS's fp16 scalar quantizer) in
a flat inner-product index, which becomes an IVF-SQfp16 index (``nprobe`` from the sidecar)
above ``ivf_threshold`` tiles. While the basis holds every vector (small databases) the search
is exact up to fp16 rounding and no refine codes are kept.

Stage 2, refine codes: at the first truncation of the basis (or the switch to IVF) every stored
vector is still exactly ``B^T c``, so the full Ω are reconstructed, the refine quantizer is
trained on a sample of them and all are encoded; from then on every added vector is encoded
from its raw Ω at ``add``. Scores are cosines of the decoded vectors. An index saved before
refine codes existed (format 1) still loads and searches with stage 1 only; ``info()["search"]``
then says to run ``geoloc index rebuild``.

The defaults (``target_dim`` 256, so ``max_dim`` 512; refine codes of 96 dims x 4 bits
re-scoring the top 200) are the ones ``benchmarks/store.py`` found best on real SGM-Net Ω; its
results hold the figures. A GPU is used for flat search when ``faiss`` sees one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.config import Settings
from geoloc.errors import IndexError_
from geoloc.store import omega_format as fmt
from geoloc.store.omega_basis import (
    ADD_CHUNK,
    DEFAULT_FREEZE_AFTER,
    DEFAULT_IVF_THRESHOLD,
    DEFAULT_NPROBE,
    DEFAULT_OMEGA_DIM,
    DEFAULT_TARGET_DIM,
    GrowingBasis,
    ivf_due,
    ivf_nlist,
    ivf_training_rows,
    matmul,
)
from geoloc.store.omega_format import FORMAT_VERSION, REBUILD_HINT, faiss_lib
from geoloc.store.refine import (
    DEFAULT_REFINE_BITS,
    DEFAULT_REFINE_CHANNELS,
    DEFAULT_REFINE_DIMS,
    DEFAULT_REFINE_K,
    RefineCodes,
    RefineQuantizer,
    fits,
    training_rows,
)

log = logging.getLogger(__name__)


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
        freeze_after: int = DEFAULT_FREEZE_AFTER,
        encoder_id: int | None = None,
    ) -> None:
        if target_dim < 1 or omega_dim < 1:
            raise IndexError_(f"{directory}: bad index dimensions {target_dim}/{omega_dim}")
        self.directory = directory
        self.encoder_sha256 = encoder_sha256
        self.encoder_id = encoder_id
        target = int(min(target_dim, omega_dim))
        self._basis = GrowingBasis(
            int(omega_dim),
            target,
            int(min(max_dim or 2 * target, omega_dim)),
            freeze_after=int(freeze_after),
        )
        self.ivf_threshold = int(ivf_threshold)
        self.nprobe = int(nprobe)
        self.refine_dims = int(refine_dims)
        self.refine_bits = int(refine_bits)
        self.refine_channels = int(refine_channels)
        self.refine_k = int(refine_k)
        self.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._index_type = "flat"
        # added vectors not yet folded into the basis/index: processed ADD_CHUNK at a time (one
        # pass over the basis per chunk instead of per small batch), and before any read
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self._index: Any = None  # faiss index over codes (None while d == 0 and empty)
        self._ids: np.ndarray = np.zeros(0, dtype=np.int64)  # sorted
        self._gen = 0
        self._files: dict[str, str] = {}
        self._refine_files: list[str] = []  # saved refine segments, in row order
        self._disk_stamp: tuple[int, int] | None = None  # meta.json this object read or wrote
        self._readonly_index = False
        self._gpu_index: Any = None
        # refine codes of every stored vector, created when the index stops being exact
        self._refine: RefineCodes | None = None
        self._refine_q_dirty = False
        self._format = FORMAT_VERSION

    @property
    def omega_dim(self) -> int:
        """Length of the Ω vectors the index holds."""
        return self._basis.omega_dim

    @property
    def target_dim(self) -> int:
        """Code dimension the basis is truncated to."""
        return self._basis.target_dim

    @property
    def max_dim(self) -> int:
        """Code dimension past which the basis is truncated."""
        return self._basis.max_dim

    @property
    def freeze_after(self) -> int:
        """Vectors a truncation must have seen before the basis freezes (0: never)."""
        return self._basis.freeze_after

    @property
    def fit_count(self) -> int:
        """Vectors held at the last truncation of the basis or training of the IVF index."""
        return self._basis.fit_count

    @property
    def residual_sum(self) -> float:
        """Residual energy the basis lost, summed over the vectors added since the last refit."""
        return self._basis.residual_sum

    @property
    def residual_n(self) -> int:
        """Vectors the residual energy was accumulated over."""
        return self._basis.residual_n

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
        stamp = fmt.meta_stamp(directory)  # before reading: a save in between means a reload
        side = fmt.read_sidecar(directory)
        self = cls(
            directory,
            side.encoder_sha256,
            omega_dim=side.omega_dim,
            encoder_id=side.encoder_id,
            **side.params,
        )
        self._format = side.source_format
        self.created = side.created
        self._index_type = side.index_type
        self._gen = side.generation
        self._files = dict(side.files)
        self._refine_files = list(side.refine_files)
        basis, moment = fmt.load_basis(directory, side, mmap=mmap)
        self._basis = GrowingBasis(
            self.omega_dim,
            self.target_dim,
            self.max_dim,
            basis,
            moment,
            residual_sum=side.residual_sum,
            residual_n=side.residual_n,
            fit_count=side.fit_count,
            freeze_after=self.freeze_after,
        )
        self._index = fmt.load_faiss(directory, side, mmap=mmap)
        if self._index is not None:
            self._readonly_index = mmap
            self._ids = np.sort(self._all_ids())
        self._refine = fmt.load_refine(directory, side, self._ids, mmap=mmap)
        self._disk_stamp = stamp
        return self

    def save(self) -> None:
        """Persist atomically (new generation files, then ``meta.json`` replaced by rename)."""
        self._flush()
        saved = fmt.save(
            self.directory,
            generation=self._gen,
            files=self._files,
            basis=self._basis,
            index=self._index,
            refine=self._refine,
            quantizer_dirty=self._refine_q_dirty,
            describe=self._describe,
        )
        self._gen, self._files, self._refine_files = (
            saved.generation,
            saved.files,
            saved.refine_files,
        )
        self._disk_stamp = saved.stamp
        self._format = FORMAT_VERSION
        self._refine_q_dirty = False

    def data_files(self) -> list[str]:
        """Names (in :attr:`directory`) of the data files of the saved generation."""
        return [*self._files.values(), *self._refine_files]

    def changed_on_disk(self) -> bool:
        """True when another process saved this index since this object loaded or saved it.

        One ``stat`` of ``meta.json``; a long-lived reader (a warm ``Localizer``) re-opens the
        index when this says so, to see tiles ingested meanwhile.
        """
        return fmt.meta_stamp(self.directory) != self._disk_stamp

    def _describe(self) -> dict[str, Any]:
        """The ``meta.json`` body of the index as it is now (see ``omega_format.compose_meta``)."""
        ivf = self._ivf()
        return {
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
                "nlist": 0 if ivf is None else int(ivf.nlist),
                "refine_dims": self.refine_dims,
                "refine_bits": self.refine_bits,
                "refine_channels": self.refine_channels,
                "refine_k": self.refine_k,
                "freeze_after": self.freeze_after,
            },
            "exact": self.is_exact,
            "refine": None if self._refine is None else self._refine.state(),
            "fit_count": self.fit_count,
            "residual_sum": self.residual_sum,
            "residual_n": self.residual_n,
            "created": self.created,
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
        return self._basis.dim

    @property
    def is_exact(self) -> bool:
        """True while every stored vector lies in the basis (exact search up to fp16 codes)."""
        self._flush()
        return self._exact_now()

    def _exact_now(self) -> bool:
        return self._index_type == "flat" and self._basis.within_tolerance

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
        meta = fmt.compose_meta(self._describe(), self._gen, self._files, self._refine_files)
        meta["directory"] = str(self.directory)
        meta["residual_energy"] = self._basis.residual_energy
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

    # ----------------------------------------------------------------------------------------
    # the FAISS index over the codes
    def _ivf(self) -> Any:
        if self._index_type != "ivf" or self._index is None:
            return None
        return faiss_lib().extract_index_ivf(self._index)

    def _all_ids(self) -> np.ndarray:
        faiss = faiss_lib()
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
            d = self._basis.dim if self._index is None else int(self._index.d)
            return np.zeros((0, d), dtype=np.float32), np.zeros(0, dtype=np.int64)
        ids = self._all_ids()
        if self._index_type == "flat":
            codes = self._index.index.reconstruct_n(0, self._index.ntotal)
            return np.asarray(codes, dtype=np.float32), ids
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
            self._index = fmt.read_faiss(self.directory / self._files["index"])
            self._readonly_index = False
        self._basis.make_writable()
        self._gpu_index = None

    def _rebuild_flat(self, ids: np.ndarray, codes: np.ndarray) -> None:
        faiss = faiss_lib()
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
            self._rebuild_flat(np.zeros(0, np.int64), np.zeros((0, self._basis.dim), np.float32))
        self._index.add_with_ids(np.ascontiguousarray(codes), np.ascontiguousarray(ids))

    def _to_ivf(self) -> None:
        """(Re)build the IVF-SQfp16 index (inner product) from the stored codes.

        Called when the flat index outgrows ``ivf_threshold`` (the basis is frozen from then on)
        and when the IVF index is due for re-training with more lists (``ivf_due``).
        """
        faiss = faiss_lib()
        codes, ids = self._codes_and_ids()
        if self._index_type == "flat":  # the basis freezes: last moment it is exact
            self._start_refine(self._basis.basis, codes, ids)
            if self._basis.dim > self.target_dim:
                codes = self._basis.truncate(codes)
        n, d = codes.shape
        nlist = ivf_nlist(n)
        ivf = faiss.index_factory(d, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
        ivf.train(np.ascontiguousarray(codes[ivf_training_rows(n, nlist)]))
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.nprobe = self.nprobe
        ivf.add_with_ids(np.ascontiguousarray(codes), np.ascontiguousarray(ids))
        self._index, self._index_type = ivf, "ivf"
        self._basis.fit_count = n
        log.info("Ω index: IVF-SQfp16 with %d lists built at %d vectors", nlist, n)

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
        if self._index is not None and ivf_due(
            self._index_type, self._index.ntotal, self.ivf_threshold, self.fit_count
        ):
            self._to_ivf()

    def _add_chunk(self, ids: np.ndarray, x: np.ndarray) -> None:
        if self._refine is not None:
            self._refine.add(ids, x)
        step = self._basis.fold(x, frozen=self._index_type != "flat" or self._basis.frozen)
        if not step.grown:
            self._index_add(ids, step.codes)
            return
        # the basis grew: every stored code gains zero coordinates in the new directions
        old_codes, old_ids = self._codes_and_ids()
        width = step.codes.shape[1]
        old_codes = np.pad(old_codes, ((0, 0), (0, width - old_codes.shape[1])))
        codes = np.concatenate([old_codes, step.codes], axis=0)
        all_ids = np.concatenate([old_ids, ids])
        if self._basis.too_wide:
            self._start_refine(self._basis.basis, codes, all_ids)
            codes = self._basis.truncate(codes)
        self._rebuild_flat(all_ids, codes)

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
        sel = training_rows(ids.size)
        t0 = time.perf_counter()
        quantizer = RefineQuantizer.train(
            matmul(codes[sel], basis),
            self.refine_channels,
            self.refine_dims,
            self.refine_bits,
            seed=0,
        )
        refine = RefineCodes(quantizer)
        for s in range(0, ids.size, ADD_CHUNK):
            refine.add(ids[s : s + ADD_CHUNK], matmul(codes[s : s + ADD_CHUNK], basis))
        self._refine, self._refine_q_dirty = refine, True
        log.info(
            "Ω refine codes: %d B/tile for %d vectors (trained in %.1f s)",
            quantizer.code_size,
            ids.size,
            time.perf_counter() - t0,
        )

    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids (absent ones are ignored); return how many were removed."""
        self._flush()
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        present = ids[np.isin(ids, self._ids)]
        if present.size == 0 or self._index is None:
            return 0
        self._writable()
        faiss = faiss_lib()
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
        return self._basis.project(self._check(q, "query"))

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
        codes_q = self._basis.project(x)
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
        faiss = faiss_lib()
        index = self._search_index()
        kk = min(k, len(self))
        # OpenMP threads only add wake-up cost to a few queries (much more than the search
        # itself when the cores are busy), so few queries run single-threaded
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
        faiss = faiss_lib()
        if (
            self._index_type == "flat"
            and hasattr(faiss, "get_num_gpus")
            and faiss.get_num_gpus() > 0
        ):
            if self._gpu_index is None:
                self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
            return self._gpu_index
        return self._index
