"""Refine codes for the Ω index: a compact, faithful code of the full Ω to re-score candidates.

Ω is a ``(channels, positions)`` map flattened channel-major (SGM-Net: 256 x 14 x 14, index
``c * 196 + p``). Its per-position channel vectors share their statistics across positions, so
ONE quantizer is trained on the position vectors of all positions (``n_tiles x 196`` samples:
plenty even from the few hundred tiles an index holds when it first truncates its basis): an
uncentred channel PCA (``channels -> dims``) followed by a per-dimension uniform scalar
quantizer of ``bits`` bits (4 or 8). A tile is stored as ``positions x dims x bits / 8`` bytes.
A query is scored against a candidate in the PCA space (one projection of the query's position
vectors, then one dot product with the dequantised codes), divided by the norm of the decoded
candidate (Ω is compared by cosine).

At equal bytes a channel PCA + scalar quantizer re-ranks better than a product quantizer of the
position vectors, and clipping the 4-bit range at the 0.1 % quantiles beats min/max: many PCA
dims at moderate precision beat few centroids (``benchmarks/store.py`` measures the choices; the
figures are in its results, not here).

:class:`RefineQuantizer` is the trained quantizer (saved as one float32 ``.npy``: projection,
lower bounds and steps); :class:`RefineCodes` holds the codes of the stored tiles keyed by tile
id (rows in insertion order; saved as append-only ``uint8`` code segments and an ``int64`` id
vector, memory-mappable).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geoloc.store.omega_basis import matmul

#: Refine codes: channel-PCA dims per position vector (0 disables refining), bits per value
#: (4 or 8), channels of the Ω map (SGM-Net: 256 x 14 x 14), candidates re-scored per query.
DEFAULT_REFINE_DIMS = 96
DEFAULT_REFINE_BITS = 4
DEFAULT_REFINE_CHANNELS = 256
DEFAULT_REFINE_K = 200
#: Tiles reconstructed (at random) to train the quantizer when the index stops being exact.
REFINE_TRAIN_TILES = 512
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


def fits(omega_dim: int, channels: int, dims: int, bits: int) -> bool:
    """True when refine codes of ``dims`` x ``bits`` bits can code ``omega_dim`` maps of
    ``channels`` channels (the map splits into positions; 4-bit values pack into bytes)."""
    positions = layout(omega_dim, channels)
    return (
        positions > 0
        and 1 <= dims <= channels
        and bits in (4, 8)
        and (bits == 8 or positions * dims % 2 == 0)
    )


def training_rows(count: int) -> np.ndarray:
    """Sorted rows (seeded: a rebuild trains the same quantizer) of ``count`` stored vectors
    to train the quantizer on."""
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(count, min(count, REFINE_TRAIN_TILES), replace=False))


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
        if not fits(x.shape[1], channels, dims, bits):
            raise ValueError(
                f"Ω of {x.shape[1]} dims does not split into {channels} x {dims} x {bits} bits"
            )
        positions = layout(x.shape[1], channels)
        v = position_vectors(np.asarray(x, dtype=np.float32), channels).reshape(-1, channels)
        if v.shape[0] > MAX_TRAIN_SAMPLES:
            rng = np.random.default_rng(seed)
            v = v[np.sort(rng.choice(v.shape[0], MAX_TRAIN_SAMPLES, replace=False))]
        moment = matmul(v.T, v, np.float64)
        w, vec = np.linalg.eigh(moment)
        proj = vec[:, np.argsort(w)[::-1][:dims]].T.astype(np.float32)
        y = matmul(v, proj.T)
        if bits == 4:
            lo, hi = np.quantile(y, [CLIP_4BIT, 1 - CLIP_4BIT], axis=0)
        else:
            lo, hi = y.min(axis=0), y.max(axis=0)
        step = np.maximum(hi - lo, 1e-12) / (1 << bits)
        return cls(proj, lo, step, positions, bits)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes ``(n, code_size)`` uint8 of Ω vectors ``(n, omega_dim)``."""
        n = x.shape[0]
        # one product per tile of contiguous operands, (dims, C) @ (C, P): the transposed view
        # of position_vectors would make the product fall off the BLAS path
        maps = np.ascontiguousarray(x, dtype=np.float32).reshape(n, self.channels, -1)
        y = matmul(self.proj, maps).transpose(0, 2, 1)  # (n, positions, dims)
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

    The rows live in *segments*: each saved segment is one ``uint8`` file (possibly a read-only
    memory map after a load); rows added since the last save form an unsaved tail segment. A
    save writes only the unsaved segments, so adding a raster to a large index writes that
    raster's codes, not every tile's. Removing rows rewrites only the segments they were in.
    Neighbouring small segments are merged by :meth:`compact` (the index does it at a save
    past ``MAX_REFINE_SEGMENTS``).
    """

    def __init__(
        self,
        quantizer: RefineQuantizer,
        ids: np.ndarray | None = None,
        codes: np.ndarray | list[np.ndarray] | None = None,
        norms: np.ndarray | None = None,
        *,
        files: list[str] | None = None,
    ) -> None:
        self.quantizer = quantizer
        cs = quantizer.code_size
        self._ids = (
            np.zeros(0, np.int64) if ids is None else np.asarray(ids, dtype=np.int64).ravel()
        )
        if codes is None:
            segs: list[np.ndarray] = []
        elif isinstance(codes, np.ndarray):
            segs = [codes]
        else:
            segs = list(codes)
        for seg in segs:
            if seg.ndim != 2 or seg.shape[1] != cs:
                raise ValueError(f"refine codes {seg.shape} are not rows of {cs} bytes")
        rows = sum(int(seg.shape[0]) for seg in segs)
        if rows != self._ids.size:
            raise ValueError(f"refine codes hold {rows} rows for {self._ids.size} ids x {cs} B")
        if files is not None and len(files) != len(segs):
            raise ValueError(f"{len(files)} refine files for {len(segs)} segments")
        self._segs = [seg for seg in segs if seg.shape[0]]
        names = files if files is not None else [None] * len(segs)
        self._files: list[str | None] = [
            n for n, seg in zip(names, segs, strict=True) if seg.shape[0]
        ]
        if norms is None:
            norms = (
                np.concatenate([quantizer.norms(seg) for seg in self._segs])
                if self._segs
                else np.zeros(0, np.float32)
            )
        self._norms = np.asarray(norms, dtype=np.float32).ravel()
        if self._norms.size != self._ids.size:
            raise ValueError(f"{self._norms.size} refine norms for {self._ids.size} ids")
        self._buf: np.ndarray | None = None  # growable storage of an unsaved last segment
        self._starts = self._segment_starts()
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self.dirty = files is None

    def _segment_starts(self) -> np.ndarray:
        return np.cumsum([0] + [int(seg.shape[0]) for seg in self._segs], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ids.size)

    @property
    def ids(self) -> np.ndarray:
        """Ids in row order (a view; do not modify)."""
        return self._ids

    @property
    def codes(self) -> np.ndarray:
        """The ``(n, code_size)`` uint8 code matrix in row order (a view when one segment)."""
        if len(self._segs) == 1:
            return self._segs[0]
        if not self._segs:
            return np.zeros((0, self.quantizer.code_size), np.uint8)
        return np.concatenate(self._segs)

    @property
    def norms(self) -> np.ndarray:
        """Norms of the decoded rows, float32, in row order (a view)."""
        return self._norms

    @property
    def segments(self) -> list[tuple[np.ndarray, str | None]]:
        """``(codes, file name or None when unsaved)`` of each segment, in row order."""
        return list(zip(self._segs, self._files, strict=True))

    def add(self, ids: np.ndarray, x: np.ndarray) -> None:
        """Encode Ω vectors ``x`` and append them under ``ids`` (new ids)."""
        self.add_codes(ids, self.quantizer.encode(x))

    def add_codes(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Append already-encoded rows (to the unsaved tail segment)."""
        k = int(codes.shape[0])
        if k == 0:
            return
        tail_open = bool(self._segs) and self._files[-1] is None
        n = int(self._segs[-1].shape[0]) if tail_open else 0
        buf = self._buf
        if not tail_open or buf is None or self._segs[-1].base is not buf or buf.shape[0] < n + k:
            buf = np.empty((max(n + k, 2 * n, 1024), self.quantizer.code_size), dtype=np.uint8)
            if tail_open:
                buf[:n] = self._segs[-1]
            self._buf = buf
        buf[n : n + k] = codes
        if tail_open:
            self._segs[-1] = buf[: n + k]
        else:
            self._segs.append(buf[:k])
            self._files.append(None)
        self._ids = np.concatenate([self._ids, np.asarray(ids, dtype=np.int64).ravel()])
        self._norms = np.concatenate([self._norms, self.quantizer.norms(codes)])
        self._starts = self._segment_starts()
        self._sorted = None
        self.dirty = True

    def remove(self, ids: np.ndarray) -> int:
        """Drop the rows of these ids (absent ones are ignored); return how many were dropped.

        Only the segments that held them are copied (and written again at the next save).
        """
        drop = np.isin(self._ids, ids)
        k = int(drop.sum())
        if not k:
            return 0
        segs: list[np.ndarray] = []
        files: list[str | None] = []
        for i, (seg, name) in enumerate(zip(self._segs, self._files, strict=True)):
            d = drop[self._starts[i] : self._starts[i + 1]]
            if not d.any():
                segs.append(seg)
                files.append(name)
            elif not d.all():
                segs.append(np.ascontiguousarray(seg[~d]))
                files.append(None)
        self._segs, self._files, self._buf = segs, files, None
        keep = ~drop
        self._ids = self._ids[keep]
        self._norms = self._norms[keep]
        self._starts = self._segment_starts()
        self._sorted = None
        self.dirty = True
        return k

    def compact(self, max_segments: int) -> None:
        """Merge neighbouring segments, smallest pair first, until at most ``max_segments``.

        Merged segments become unsaved (written at the next save); large segments stay put.
        """
        while len(self._segs) > max(1, max_segments):
            sizes = [int(seg.shape[0]) for seg in self._segs]
            i = min(range(len(sizes) - 1), key=lambda j: sizes[j] + sizes[j + 1])
            merged = np.concatenate([self._segs[i], self._segs[i + 1]])
            self._segs[i : i + 2] = [merged]
            self._files[i : i + 2] = [None]
            self._buf = None
            self.dirty = True
        self._starts = self._segment_starts()

    def mark_saved(self, files: list[str]) -> None:
        """Record the file name of every segment after a save (unsaved ones were written)."""
        if len(files) != len(self._segs):
            raise ValueError(f"{len(files)} refine files for {len(self._segs)} segments")
        self._files = list(files)
        self._buf = None  # a saved segment is never appended to again
        self.dirty = False

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

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Codes of these rows (``(len(rows), code_size)``), read from their segments."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if len(self._segs) == 1:
            return np.asarray(self._segs[0][rows])
        out = np.empty((rows.size, self.quantizer.code_size), dtype=np.uint8)
        seg = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(seg):
            m = seg == s
            out[m] = self._segs[int(s)][rows[m] - self._starts[s]]
        return out

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
                out[i, ok] = self.quantizer.scores(tables[i], self.gather(r), self._norms[r])
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
            "segments": len(self._segs),
        }
