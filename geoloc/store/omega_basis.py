"""The basis maths of the Ω index: a growing orthonormal basis, its truncation, the IVF switch.

No file I/O and no FAISS here (``omega_format.py`` persists, ``omega_index.py`` composes).

A *growing orthonormal basis* ``B`` (``d x D``) spans the Ω vectors seen so far; a vector ``x``
is stored as its coordinates ``c = B x`` (its *code*) and a query ``q`` is scored by
``<B q, c> = <q, B^T B x>``:

* while the vectors seen span at most ``max_dim`` dimensions the basis holds all of them, so
  ``B^T B x = x`` and the search is exact up to the precision the codes are kept at;
* each chunk of new vectors is projected on ``B``; the part outside ``B`` (the residual) is
  orthonormalised and appended to ``B`` (previous codes gain zero coordinates, still exact);
* when ``d`` would exceed ``max_dim`` the basis is truncated to the ``target_dim`` principal
  directions of the uncentred second moment of all codes (a PCA kept up to date incrementally,
  with the moment matrix ``d x d``), and every stored code is rotated into the new basis;
* once a truncation has seen ``freeze_after`` vectors the basis is frozen (FAISS's "train on a
  sample, then add"): growing it costs several products with ``omega_dim``-wide rows per chunk
  and a rewrite of every stored code, where a frozen basis costs one projection, and the
  principal directions of a few times ``max_dim`` vectors change little with more of them (the
  refine codes, trained at the first truncation, re-score what the codes miss);
* once the index holds more than ``ivf_threshold`` vectors it becomes an IVF index and the basis
  is frozen: vectors whose residual is large then lose accuracy, which the residual energy
  (:attr:`GrowingBasis.residual_energy`) reports and a rebuild repairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_OMEGA_DIM = 50176
DEFAULT_TARGET_DIM = 256
DEFAULT_IVF_THRESHOLD = 50_000
DEFAULT_NPROBE = 128
#: The IVF index is re-trained (nlist ~ 4 sqrt(n)) when it holds this many times the vectors it
#: was trained at (50k -> 400k -> 3.2M with the defaults).
IVF_RETRAIN_FACTOR = 8
#: Vectors a truncation must have seen before the basis is frozen (0: it never freezes). With
#: the default ``max_dim`` the first truncation (at ``max_dim + ADD_CHUNK`` vectors) freezes it.
DEFAULT_FREEZE_AFTER = 512
#: Residual-energy tolerance below which a vector is considered inside the basis.
RESIDUAL_TOL = 1e-6
#: Largest chunk of vectors folded into the basis at once (bounds memory and the Gram matrix).
ADD_CHUNK = 256
#: A residual holding less than this share of its vector's energy is projected out twice.
REORTH_BELOW = 1e-2
#: Eigenvalues of a residual Gram matrix below this share of the largest are rank-deficient
#: directions (float32 products resolve about 1e-7 of the largest; margin for the summation).
GRAM_RANK_TOL = 1e-6
#: Largest |G - I| entry of new basis rows accepted without a second whitening.
ORTHO_TOL = 1e-5
#: Residual Gram condition number up to which one whitening is orthonormal to ~ORTHO_TOL
#: in float32 (the error grows about linearly with it), so the check is skipped.
ONE_PASS_COND = 50.0


def orthonormal_rows(a: np.ndarray, passes: int = 2) -> np.ndarray:
    """Orthonormal rows spanning the rows of ``a`` (r, D), float32; rank-deficient rows dropped.

    Whitening through the eigenvectors of the r x r Gram matrix, done twice (like
    CholeskyQR2): only matrix products, where a Householder QR of the D x r matrix would
    dominate the time of an add to the exact index. Accurate here because the rows are already
    nearly orthonormal (whitened residuals).
    """
    out = a.astype(np.float64)
    for _ in range(passes):
        w, v = np.linalg.eigh(out @ out.T)
        keep = w > max(float(w.max(initial=0.0)), 1e-30) * 1e-10
        out = (v[:, keep] / np.sqrt(w[keep])).T @ out if keep.any() else out[:0]
    return out.astype(np.float32)


def matmul(a: np.ndarray, b: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """``a @ b`` in ``dtype`` (float32 or float64; views and transposes welcome), a new array.

    Runs on torch's BLAS: numpy's OpenBLAS is several times slower on the products this module
    makes (a few hundred rows against ``omega_dim``-deep operands), and those products run beside
    the encoder at ingest.
    """
    a, b = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    if not (a.flags.writeable and b.flags.writeable):
        # a memory-mapped (read-only) operand: torch would warn; only queries take this path
        return np.asarray(a @ b, dtype=dtype)
    import torch

    with torch.inference_mode():
        return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _row_energy(a: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, a)


@dataclass(frozen=True)
class Fold:
    """What :meth:`GrowingBasis.fold` did with a chunk of vectors.

    ``codes`` are the chunk's codes in the basis after the fold; when ``grown`` the basis gained
    directions, so every stored code needs zero coordinates appended up to the new width.
    """

    codes: np.ndarray
    grown: bool


class GrowingBasis:
    """The orthonormal basis of the Ω index, the second moment of its codes and their residuals.

    ``residual_sum`` / ``residual_n`` accumulate the energy of added vectors that the basis does
    not hold (0 while the index is exact); ``fit_count`` is the number of codes at the last
    truncation or IVF training; once it reaches ``freeze_after`` (> 0) the basis is
    :attr:`frozen`.
    """

    def __init__(
        self,
        omega_dim: int,
        target_dim: int,
        max_dim: int,
        basis: np.ndarray | None = None,
        moment: np.ndarray | None = None,
        *,
        residual_sum: float = 0.0,
        residual_n: int = 0,
        fit_count: int = 0,
        freeze_after: int = DEFAULT_FREEZE_AFTER,
    ) -> None:
        self.omega_dim = int(omega_dim)
        self.freeze_after = int(freeze_after)
        self.target_dim = int(target_dim)
        self.max_dim = int(max_dim)
        self.basis: np.ndarray = (
            np.zeros((0, self.omega_dim), dtype=np.float32) if basis is None else basis
        )
        self.moment: np.ndarray = np.zeros((0, 0), dtype=np.float64) if moment is None else moment
        self._buf: np.ndarray | None = None  # capacity buffer; basis is a view of its rows
        self.residual_sum = float(residual_sum)
        self.residual_n = int(residual_n)
        self.fit_count = int(fit_count)
        #: True when the basis rows / the moment changed since they were last saved (or never
        #: were): a save rewrites only what changed (the basis is the large file).
        self.dirty = basis is None
        self.moment_dirty = moment is None

    @property
    def dim(self) -> int:
        """Current code dimension ``d`` (rows of the basis)."""
        return int(self.basis.shape[0])

    @property
    def within_tolerance(self) -> bool:
        """True while every vector added lies in the basis (no residual energy was lost)."""
        return self.residual_sum <= RESIDUAL_TOL * max(1, self.residual_n)

    @property
    def residual_energy(self) -> float:
        """Mean share of a vector's energy the basis does not hold, over the vectors added."""
        return self.residual_sum / max(1, self.residual_n)

    @property
    def frozen(self) -> bool:
        """True once a truncation has seen ``freeze_after`` vectors: new vectors are projected."""
        return 0 < self.freeze_after <= self.fit_count

    @property
    def too_wide(self) -> bool:
        """True when the basis holds more than ``max_dim`` directions: time to truncate."""
        return self.dim > self.max_dim

    def project(self, x: np.ndarray) -> np.ndarray:
        """Codes ``(n, d)`` float32 of vectors ``(n, omega_dim)``."""
        return np.ascontiguousarray(matmul(x, self.basis.T))

    def make_writable(self) -> None:
        """Copy a read-only (memory-mapped) basis into memory before it is modified."""
        if not self.basis.flags.writeable:
            self.basis = np.array(self.basis)

    def fold(self, x: np.ndarray, *, frozen: bool) -> Fold:
        """Take a chunk of vectors ``(n, omega_dim)`` (at most :data:`ADD_CHUNK`) into account.

        Unless ``frozen``, directions the basis misses are appended (the caller then pads the
        stored codes and truncates when :attr:`too_wide`); otherwise the vectors are projected
        and their residual energy is recorded.
        """
        b = self.basis
        x_energy = np.maximum(_row_energy(x).astype(np.float64), 1e-30)
        if frozen and b.shape[0]:
            return self._project_frozen(x, x_energy)
        if b.shape[0]:
            coords = matmul(x, b.T)
            resid = x - matmul(coords, b)
        else:
            coords, resid = np.zeros((x.shape[0], 0), dtype=np.float32), x.copy()
        energy = _row_energy(resid) / x_energy
        if not frozen and float(energy.max()) > RESIDUAL_TOL:
            if b.shape[0]:
                self._reorthogonalise(coords, resid, energy)
            return Fold(self._extend(coords, resid, x_energy), grown=True)
        self.residual_sum += float(energy.sum())
        self.residual_n += int(energy.size)
        self.moment += coords.T.astype(np.float64) @ coords.astype(np.float64)
        self.moment_dirty = True
        return Fold(coords.astype(np.float32), grown=False)

    def _project_frozen(self, x: np.ndarray, x_energy: np.ndarray) -> Fold:
        """The codes of ``x`` in the frozen basis; their residual energy from the code norms.

        The basis rows are orthonormal, so ``|x - B^T B x|^2 = |x|^2 - |B x|^2``: one product
        with the ``omega_dim``-wide rows instead of two.
        """
        coords = matmul(x, self.basis.T)
        c64 = coords.astype(np.float64)
        energy = np.maximum(x_energy - _row_energy(c64), 0.0) / x_energy
        self.residual_sum += float(energy.sum())
        self.residual_n += int(energy.size)
        self.moment += c64.T @ c64
        self.moment_dirty = True
        return Fold(np.ascontiguousarray(coords, dtype=np.float32), grown=False)

    def _reorthogonalise(self, coords: np.ndarray, resid: np.ndarray, energy: np.ndarray) -> None:
        """A second projection (in place) for the rows that one pass leaves inaccurate.

        One pass leaves a residual off-orthogonal to the basis by about eps * |x| / |r|; the
        rows whose residual is short against the vector get a second pass ("twice is enough",
        Kahan-Parlett), the others are already orthogonal to well below fp16 code precision.
        """
        rows = np.flatnonzero(energy < REORTH_BELOW)
        if rows.size == 0:
            return
        b = self.basis
        c2 = matmul(resid[rows], b.T)
        resid[rows] -= matmul(c2, b)
        coords[rows] += c2

    def _extend(self, coords: np.ndarray, resid: np.ndarray, x_energy: np.ndarray) -> np.ndarray:
        """Append the residual directions to the basis; return the chunk's codes in it.

        The residuals (already orthogonal to the basis) are whitened through the eigenvectors
        of their n x n Gram matrix; a second whitening, from the Gram matrix of the result,
        runs only when that Gram matrix was ill-conditioned and the first left the rows
        measurably non-orthonormal. Every product with
        the ``omega_dim``-wide rows is float32: the small matrices carry the float64 work.
        """
        gram = matmul(resid, resid.T).astype(np.float64)
        w, u = np.linalg.eigh(gram)
        keep = w > max(float(w.max()), 1e-30) * GRAM_RANK_TOL
        w, u = w[keep], u[:, keep]
        t = (u / np.sqrt(w)).T  # (r, n): new_dirs = t @ resid
        new_dirs = matmul(t.astype(np.float32), resid)  # (r, D), orthonormal rows up to ~cond * eps
        if w.size and float(w.max() / w.min()) > ONE_PASS_COND:
            g2 = matmul(new_dirs, new_dirs.T).astype(np.float64)
            if float(np.abs(g2 - np.eye(g2.shape[0])).max(initial=0.0)) > ORTHO_TOL:
                w2, v2 = np.linalg.eigh(g2)
                keep2 = w2 > max(float(w2.max()), 1e-30) * GRAM_RANK_TOL
                t2 = (v2[:, keep2] / np.sqrt(w2[keep2])).T
                new_dirs = matmul(t2.astype(np.float32), new_dirs)
                t = t2 @ t
        r = new_dirs.shape[0]
        d = self.dim
        basis_ext = self._append_rows(new_dirs)
        # the chunk's coordinates in the new directions, resid @ new_dirs.T = gram @ t.T, from
        # the small matrices: no second pass over the omega_dim-wide rows
        resid_codes = gram @ t.T
        new_codes = np.concatenate([coords, resid_codes.astype(np.float32)], axis=1)
        moment = np.zeros((d + r, d + r), dtype=np.float64)
        moment[:d, :d] = self.moment
        moment += new_codes.T.astype(np.float64) @ new_codes.astype(np.float64)
        # part of the new vectors outside even the extended basis (numerical rank cut): the
        # basis rows are orthonormal, so it is the residual's energy less its codes' energy
        lost = np.diag(gram) - _row_energy(resid_codes)
        self.residual_sum += float((np.maximum(lost, 0.0) / x_energy).sum())
        self.residual_n += int(coords.shape[0])
        self.basis, self.moment = basis_ext, moment
        self.dirty = self.moment_dirty = True
        return new_codes

    def _append_rows(self, rows: np.ndarray) -> np.ndarray:
        """The basis with ``rows`` appended, grown in place in a capacity buffer (no copy)."""
        d, need = self.dim, self.dim + rows.shape[0]
        if self._buf is None or self._buf.shape[0] < need or self.basis.base is not self._buf:
            cap = max(need, min(self.max_dim + ADD_CHUNK, max(2 * need, 64)))
            buf = np.empty((cap, self.omega_dim), dtype=np.float32)
            buf[:d] = self.basis
            self._buf = buf
        self._buf[d:need] = rows
        return self._buf[:need]

    def truncate(self, codes: np.ndarray) -> np.ndarray:
        """Keep the ``target_dim`` principal directions of the code moment; return ``codes``
        (every stored code, ``(n, d)``) rotated into the truncated basis."""
        w, v = np.linalg.eigh(self.moment)
        order = np.argsort(w)[::-1][: self.target_dim]
        vt = v[:, order]  # (d, target_dim)
        dropped = float(w.sum() - w[order].sum())
        total = float(max(w.sum(), 1e-30))
        # energy dropped: the sum over stored (unit-norm) vectors of their lost energy
        self.residual_sum += dropped
        self.fit_count = int(codes.shape[0])
        log.info(
            "Ω basis truncated to %d dims (%.3f%% energy dropped)",
            self.target_dim,
            100 * dropped / total,
        )
        new_basis = matmul(vt.T.astype(np.float32), self.basis)
        new_codes = (codes @ vt.astype(np.float32)).astype(np.float32)
        self.moment = vt.T @ self.moment @ vt
        if self._buf is not None and self.basis.base is self._buf:
            self._buf[: new_basis.shape[0]] = new_basis  # keeps the capacity for later growth
            self.basis = self._buf[: new_basis.shape[0]]
        else:
            self.basis = new_basis
        self.dirty = self.moment_dirty = True
        return new_codes


def ivf_due(index_type: str, count: int, ivf_threshold: int, fit_count: int) -> bool:
    """True when the index of ``count`` vectors should be (re)built as IVF now.

    A flat index switches past ``ivf_threshold``; an IVF index is re-trained with more lists
    once it holds :data:`IVF_RETRAIN_FACTOR` times its training count, which keeps the share
    of vectors a probe scans small.
    """
    if index_type == "flat":
        return count > ivf_threshold
    return count > IVF_RETRAIN_FACTOR * max(1, fit_count)


def ivf_nlist(count: int) -> int:
    """Inverted lists for an IVF index of ``count`` vectors (~4 sqrt(n), >= 39 per list)."""
    return int(max(1, min(4 * np.sqrt(count), count // 39)))


def ivf_training_rows(count: int, nlist: int) -> np.ndarray:
    """Rows (seeded, so a rebuild is reproducible) to train ``nlist`` IVF centroids on."""
    rng = np.random.default_rng(0)
    return rng.choice(count, size=min(count, nlist * 64), replace=False)
