"""Refine codes for the Ω index: a compact, faithful code of the full Ω to re-score candidates.

Ω is a ``(channels, positions)`` map flattened channel-major (SGM-Net: 256 x 14 x 14, index
``c * 196 + p``). Its per-position channel vectors share their statistics across positions, so
ONE quantizer is trained on the position vectors of all positions (``n_tiles x 196`` samples:
plenty even from the ~1,000 tiles an index holds when it first truncates its basis): an
uncentred channel PCA (``channels -> dims``) followed by a per-dimension uniform scalar
quantizer of ``bits`` bits (4 or 8). A tile is stored as ``positions x dims x bits / 8`` bytes.
A query is scored against a candidate in the PCA space (one projection of the query's position
vectors, then one dot product with the dequantised codes), divided by the norm of the decoded
candidate (Ω is compared by cosine).

Measured on 8,136 real SGM-Net tiles (see ``geoloc/store/faiss_store.py``), re-scoring the
top 200 of the 256-d compressed stage: at equal bytes a channel PCA + scalar quantizer
re-ranks better than a product quantizer of the position vectors (6,272 B/tile: recall@10
0.94 for 64 dims x 4 bits vs 0.87 for 32 8-bit sub-quantizers of 8 dims; 3,136 B PQ: 0.77),
and clipping the 4-bit range at the 0.1 % quantiles beats min/max (0.94 vs 0.92): many PCA
dims at moderate precision beat few centroids. 96 dims x 4 bits (9,408 B): 0.950; 128 x 4
(12,544 B): 0.955; 64 x 8 (12,544 B): 0.953.

:class:`RefineQuantizer` is the trained quantizer (saved as one float32 ``.npy``: projection,
lower bounds and steps); :class:`RefineCodes` holds the codes of the stored tiles keyed by tile
id (rows in insertion order; saved as a ``uint8`` code matrix and an ``int64`` id vector,
memory-mappable).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Position vectors sampled to train the quantizer.
MAX_TRAIN_SAMPLES = 200_000
#: Share of training values clipped at each end of a dimension's range (4-bit codes only: with
#: 16 levels, a few outliers would otherwise coarsen every step).
CLIP_4BIT = 1e-3


def layout(omega_dim: int, channels: int) -> int:
    """Positions of an ``omega_dim`` map of ``channels`` channels; 0 when it does not divide."""
    if channels < 1 or omega_dim % channels:
        return 0
    return omega_dim // channels


def position_vectors(x: np.ndarray, channels: int) -> np.ndarray:
    """``(n, channels * positions)`` channel-major maps -> ``(n, positions, channels)``."""
    n = x.shape[0]
    return x.reshape(n, channels, -1).transpose(0, 2, 1)


class RefineQuantizer:
    """Channel PCA + uniform scalar quantizer of the per-position vectors, shared by positions.

    ``proj`` is ``(dims, channels)`` with orthonormal rows; ``lo`` and ``step`` (``dims``) map a
    code ``k`` to the value ``lo + (k + 0.5) * step``.
    """

    def __init__(
        self, proj: np.ndarray, lo: np.ndarray, step: np.ndarray, positions: int, bits: int
    ) -> None:
        proj = np.asarray(proj, dtype=np.float32)
        if bits not in (4, 8) or proj.ndim != 2 or positions < 1:
            raise ValueError(f"bad refine quantizer: {proj.shape}, {bits} bits, {positions} pos.")
        if bits == 4 and (proj.shape[0] * positions) % 2:
            raise ValueError("4-bit refine codes need an even dims x positions")
        self.proj = np.ascontiguousarray(proj)
        self.dims, self.channels = (int(s) for s in proj.shape)
        self.lo = np.ascontiguousarray(lo, dtype=np.float32)
        self.step = np.ascontiguousarray(step, dtype=np.float32)
        self.positions = int(positions)
        self.bits = int(bits)
        self.levels = 1 << self.bits
        self.code_size = self.positions * self.dims * self.bits // 8
        # per code value: lo + 0.5 step, tiled over positions (dequantisation offset)
        self._off = np.tile(self.lo + 0.5 * self.step, self.positions)
        self._step = np.tile(self.step, self.positions)

    @property
    def omega_dim(self) -> int:
        """Length of the Ω vectors this quantizer codes."""
        return self.channels * self.positions

    @classmethod
    def train(
        cls, x: np.ndarray, channels: int, dims: int, bits: int = 8, *, seed: int = 0
    ) -> RefineQuantizer:
        """Train on Ω vectors ``(n, channels * positions)`` (at most 200k position vectors)."""
        positions = layout(x.shape[1], channels)
        if not positions or not 1 <= dims <= channels:
            raise ValueError(f"Ω of {x.shape[1]} dims does not split into {channels} x {dims}")
        v = position_vectors(np.asarray(x, dtype=np.float32), channels).reshape(-1, channels)
        if v.shape[0] > MAX_TRAIN_SAMPLES:
            rng = np.random.default_rng(seed)
            v = v[np.sort(rng.choice(v.shape[0], MAX_TRAIN_SAMPLES, replace=False))]
        moment = v.T.astype(np.float64) @ v.astype(np.float64)
        w, vec = np.linalg.eigh(moment)
        proj = vec[:, np.argsort(w)[::-1][:dims]].T.astype(np.float32)
        y = v @ proj.T
        if bits == 4:
            lo, hi = np.quantile(y, [CLIP_4BIT, 1 - CLIP_4BIT], axis=0)
        else:
            lo, hi = y.min(axis=0), y.max(axis=0)
        step = np.maximum(hi - lo, 1e-12) / (1 << bits)
        return cls(proj, lo, step, positions, bits)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes ``(n, code_size)`` uint8 of Ω vectors ``(n, omega_dim)``."""
        n = x.shape[0]
        y = position_vectors(np.asarray(x, dtype=np.float32), self.channels) @ self.proj.T
        k = np.floor((y - self.lo) / self.step)
        np.clip(k, 0, self.levels - 1, out=k)
        codes = k.astype(np.uint8).reshape(n, -1)
        if self.bits == 4:
            codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
        return np.ascontiguousarray(codes)

    def unpack(self, codes: np.ndarray) -> np.ndarray:
        """``(n, positions * dims)`` code values (uint8) of packed codes."""
        if self.bits == 8:
            return np.asarray(codes)
        out = np.empty((codes.shape[0], 2 * codes.shape[1]), dtype=np.uint8)
        out[:, 0::2] = codes & 0x0F
        out[:, 1::2] = codes >> 4
        return out

    def values(self, codes: np.ndarray) -> np.ndarray:
        """Dequantised PCA coordinates ``(n, positions * dims)`` float32."""
        y = self.unpack(codes).astype(np.float32)
        y *= self._step
        y += self._off
        return y

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Ω vectors ``(n, omega_dim)`` (not normalised) of codes ``(n, code_size)``."""
        n = codes.shape[0]
        v = self.values(codes).reshape(n, self.positions, self.dims) @ self.proj
        return v.transpose(0, 2, 1).reshape(n, -1)

    def tables(self, q: np.ndarray) -> np.ndarray:
        """Query projections ``(b, positions * dims)``: the PCA coordinates of its positions."""
        b = q.shape[0]
        y = position_vectors(np.asarray(q, dtype=np.float32), self.channels) @ self.proj.T
        return np.ascontiguousarray(y.reshape(b, -1))

    def norms(self, codes: np.ndarray) -> np.ndarray:
        """Norms ``(n,)`` float32 of the decoded vectors (the PCA rows are orthonormal)."""
        out = np.empty(codes.shape[0], dtype=np.float32)
        for s in range(0, codes.shape[0], 1024):
            y = self.values(codes[s : s + 1024])
            out[s : s + 1024] = np.sqrt(np.einsum("ij,ij->i", y, y))
        return out

    def scores(
        self, table: np.ndarray, codes: np.ndarray, norms: np.ndarray | None = None
    ) -> np.ndarray:
        """Cosine of one query (its ``table``) with the decoded ``codes (c, code_size)``.

        ``norms`` (of the decoded vectors, :meth:`norms`) saves one pass over the codes.
        """
        # <table, off + k * step> = <table, off> + <table * step, k>: no dequantised copy; 4-bit
        # codes are not unpacked either (low nibbles hold the even values, high the odd ones)
        w = table * self._step
        if self.bits == 8:
            dots = np.asarray(codes).astype(np.float32) @ w
        else:
            dots = (codes & 0x0F).astype(np.float32) @ w[0::2]
            dots += (codes >> 4).astype(np.float32) @ w[1::2]
        dots += float(table @ self._off)
        if norms is None:
            norms = self.norms(codes)
        return (dots / np.maximum(norms, 1e-12)).astype(np.float32)

    def to_array(self) -> np.ndarray:
        """The parameters as one float32 array ``(dims, channels + 2)``: proj | lo | step."""
        return np.concatenate([self.proj, self.lo[:, None], self.step[:, None]], axis=1)

    @classmethod
    def from_array(cls, arr: np.ndarray, positions: int, bits: int) -> RefineQuantizer:
        """Inverse of :meth:`to_array`."""
        a = np.asarray(arr, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] < 3:
            raise ValueError(f"bad refine quantizer array {a.shape}")
        return cls(a[:, :-2], a[:, -2], a[:, -1], positions, bits)


class RefineCodes:
    """Refine codes of the stored tiles, keyed by tile id; rows kept in insertion order.

    The code matrix may be a read-only memory map (after a load); it is copied into a growable
    buffer at the first modification.
    """

    def __init__(
        self,
        quantizer: RefineQuantizer,
        ids: np.ndarray | None = None,
        codes: np.ndarray | None = None,
        norms: np.ndarray | None = None,
    ) -> None:
        self.quantizer = quantizer
        cs = quantizer.code_size
        self._ids = (
            np.zeros(0, np.int64) if ids is None else np.asarray(ids, dtype=np.int64).ravel()
        )
        self._codes: np.ndarray = np.zeros((0, cs), np.uint8) if codes is None else codes
        if self._codes.shape != (self._ids.size, cs):
            raise ValueError(
                f"refine codes {self._codes.shape} disagree with {self._ids.size} ids x {cs} bytes"
            )
        if norms is None:
            norms = quantizer.norms(self._codes)
        self._norms = np.asarray(norms, dtype=np.float32).ravel()
        if self._norms.size != self._ids.size:
            raise ValueError(f"{self._norms.size} refine norms for {self._ids.size} ids")
        self._buf: np.ndarray | None = None
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self.dirty = codes is None

    def __len__(self) -> int:
        return int(self._ids.size)

    @property
    def ids(self) -> np.ndarray:
        """Ids in row order (a view; do not modify)."""
        return self._ids

    @property
    def codes(self) -> np.ndarray:
        """The ``(n, code_size)`` uint8 code matrix in row order (a view)."""
        return self._codes

    @property
    def norms(self) -> np.ndarray:
        """Norms of the decoded rows, float32, in row order (a view)."""
        return self._norms

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Encode Ω vectors ``x`` and append them under ``ids`` (new ids)."""
        self.add_codes(ids, self.quantizer.encode(x))

    def add_codes(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Append already-encoded rows."""
        n, k = self._ids.size, int(codes.shape[0])
        if k == 0:
            return
        if self._buf is None or self._buf.shape[0] < n + k or self._codes.base is not self._buf:
            cap = max(n + k, 2 * n, 1024)
            buf = np.empty((cap, self.quantizer.code_size), dtype=np.uint8)
            buf[:n] = self._codes
            self._buf = buf
        self._buf[n : n + k] = codes
        self._codes = self._buf[: n + k]
        self._ids = np.concatenate([self._ids, np.asarray(ids, dtype=np.int64).ravel()])
        self._norms = np.concatenate([self._norms, self.quantizer.norms(codes)])
        self._sorted = None
        self.dirty = True

    def remove(self, ids: np.ndarray) -> int:
        """Drop the rows of these ids (absent ones are ignored); return how many were dropped."""
        drop = np.isin(self._ids, ids)
        k = int(drop.sum())
        if k:
            keep = ~drop
            self._codes = np.ascontiguousarray(self._codes[keep])
            self._buf = None
            self._ids = self._ids[keep]
            self._norms = self._norms[keep]
            self._sorted = None
            self.dirty = True
        return k

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (``-1`` when absent)."""
        if self._sorted is None:
            order = np.argsort(self._ids, kind="stable")
            self._sorted = (self._ids[order], order)
        srt, order = self._sorted
        ids = np.asarray(ids, dtype=np.int64)
        if srt.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(srt, ids), srt.size - 1)
        return np.where(srt[pos] == ids, order[pos], -1)

    def rescore(self, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Cosine estimates ``(b, c)`` of queries ``(b, D)`` with candidate ids ``(b, c)``.

        Candidates that are ``-1`` or without a code get ``-inf``.
        """
        out = np.full(cand.shape, -np.inf, dtype=np.float32)
        rows = self.rows(cand)
        tables = self.quantizer.tables(q)
        for i in range(cand.shape[0]):
            ok = rows[i] >= 0
            if ok.any():
                r = rows[i, ok]
                out[i, ok] = self.quantizer.scores(tables[i], self._codes[r], self._norms[r])
        return out

    def state(self) -> dict[str, Any]:
        """Summary for ``info()``."""
        q = self.quantizer
        return {
            "kind": "channel-pca+sq",
            "channels": q.channels,
            "positions": q.positions,
            "dims": q.dims,
            "bits": q.bits,
            "bytes_per_tile": q.code_size,
            "count": len(self),
        }
