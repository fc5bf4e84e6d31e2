"""Training data: self-supervised pairs cut from rasters, and the University-1652 folder layout.

Both sources produce :class:`PairSet` objects: ``anchors`` (map tiles / satellite images) and
``positives`` (drone views of the same place, row for row), plus ``negative_ok[i, j]``: whether
positive ``j`` may serve as a negative for anchor ``i`` (another place). Hard negatives are mined
from these by the trainer with the current model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from geoloc.errors import DatasetError
from geoloc.training.synthetic import ParamRanges, ViewSynthesizer, neutral_params
from tiling.errors import TilingError
from tiling.image import read_image as tiling_read_image
from tiling.mosaic import touching_groups
from tiling.policy import DEFAULT_GSD_M, DEFAULT_TILE_SIZE

__all__ = [
    "DatasetError",
    "PairSet",
    "RasterPairs",
    "University1652",
    "read_image",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")


@dataclass
class PairSet:
    """Anchors and positives (uint8, (N, 3, S, S)) and which positives are negatives for whom.

    ``lonlat`` (N, 2) is the ground under each anchor's centre when known (rasters), ``groups``
    a place label per row (University-1652 building id; raster: row index).
    """

    anchors: npt.NDArray[np.uint8]
    positives: npt.NDArray[np.uint8]
    negative_ok: npt.NDArray[np.bool_]
    groups: list[str]
    lonlat: npt.NDArray[np.float64] | None = None
    positive_lonlat: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return int(self.anchors.shape[0])

    def relevant(self) -> list[set[int]]:
        """For each positive (query), the anchor indices that count as correct answers."""
        return [set(np.nonzero(~self.negative_ok[:, j])[0].tolist()) for j in range(len(self))]


class RasterPairs:
    """Self-supervised pairs from orthomosaics: a map tile and a synthetic drone view of its ground.

    Rasters of one CRS whose footprints touch are merged into one area (:func:`merge_groups`).
    Validation is always held out SPATIALLY, never as random tiles: when the rasters form several
    separate areas, whole areas are held out (the smallest first, up to about ``val_fraction`` of
    the usable places); otherwise the last ``val_fraction`` of the largest area along x or y,
    with a guard band of one tile between the parts, so no validation tile overlaps a training
    view. Positive views follow :class:`ParamRanges`, except the heading:
    the localizer searches ``heading_hypotheses`` rotations, so a frame reaches the encoder
    within half a step of north-up; views are rendered with that residual heading.
    A positive of another anchor is a negative when the two centres are more than
    ``negative_min_tiles`` tile footprints apart.
    """

    def __init__(
        self,
        rasters: Sequence[str | Path],
        *,
        tile_size: int = DEFAULT_TILE_SIZE,
        gsd_range: tuple[float, float] = (0.25, DEFAULT_GSD_M),
        val_fraction: float = 0.2,
        heading_hypotheses: int = 8,
        negative_min_tiles: float = 0.75,
        min_valid: float = 0.9,
        merge: bool = True,
    ) -> None:
        if not rasters:
            raise DatasetError("no training raster given")
        if not 0.0 <= val_fraction < 0.9:
            raise DatasetError(f"val_fraction must be in [0, 0.9), got {val_fraction}")
        self.tile_size = int(tile_size)
        self.gsd_range = (float(gsd_range[0]), float(gsd_range[1]))
        self.negative_min_tiles = float(negative_min_tiles)
        self.min_valid = float(min_valid)
        half = 180.0 / max(1, heading_hypotheses)
        ranges = ParamRanges(heading_deg=(-half, half))
        groups = merge_groups(rasters) if merge else [[Path(r)] for r in rasters]
        finest = self.gsd_range[0] / ranges.scale[1]  # the finest view any pair needs
        self.synths = [
            ViewSynthesizer(g, size=tile_size, ranges=ranges, finest_gsd_m=finest) for g in groups
        ]
        radius = 0.5 * math.sqrt(2.0) * self.tile_size * self.gsd_range[1]
        centres = []
        for s in self.synths:
            c = s.valid_centres(radius, step_m=2.0)
            if len(c) == 0:
                raise DatasetError(
                    f"no place fits a {self.tile_size} px tile at {self.gsd_range[1]} m/px",
                    path=str(s.path),
                )
            centres.append(c)
        self._train, self._val = self._split(centres, val_fraction)
        if sum(len(t) for t in self._train) == 0:
            raise DatasetError("the training part of the rasters is empty", path=str(rasters[0]))

    def _split(
        self, centres: list[npt.NDArray[np.float64]], val_fraction: float
    ) -> tuple[list[npt.NDArray[np.float64]], list[npt.NDArray[np.float64]]]:
        """Training and validation places per area (see the class docstring)."""
        train, val = list(centres), [c[:0] for c in centres]
        if val_fraction <= 0:
            return train, val
        total = sum(len(c) for c in centres)
        # separate areas: hold out whole areas, smallest first, up to ~val_fraction of the places
        held: list[int] = []
        n_held = 0
        for i in sorted(range(len(centres)), key=lambda i: len(centres[i])):
            if len(held) + 1 < len(centres) and n_held + len(centres[i]) <= (
                1.5 * val_fraction * total
            ):
                held.append(i)
                n_held += len(centres[i])
        if held:
            for i in held:
                train[i], val[i] = centres[i][:0], centres[i]
            return train, val
        # otherwise a block at the far end of the largest area, along x or y: the axis that
        # leaves the most training places after the guard band (one tile) between the parts
        k = max(range(len(centres)), key=lambda i: len(centres[i]))
        c, s = centres[k], self.synths[k]
        best: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
        for axis in (0, 1):
            cut = float(np.quantile(c[:, axis], 1.0 - val_fraction))
            guard = self.tile_size * self.gsd_range[1] / s.native_gsd_m[axis]
            tr, va = c[c[:, axis] < cut - guard], c[c[:, axis] >= cut]
            if best is None or len(tr) > len(best[0]):
                best = (tr, va)
        assert best is not None
        train[k], val[k] = best
        return train, val

    @property
    def has_validation(self) -> bool:
        """Whether a validation block exists."""
        return sum(len(v) for v in self._val) > 0

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> PairSet:
        """``n`` (tile, view) pairs from the ``split`` ("train" | "val") part of the rasters."""
        pools = self._train if split == "train" else self._val
        weights = np.array([len(p) for p in pools], dtype=float)
        if weights.sum() == 0:
            raise DatasetError(f"no {split} area in the rasters")
        s_ = self.tile_size
        anchors = np.empty((n, 3, s_, s_), np.uint8)
        positives = np.empty((n, 3, s_, s_), np.uint8)
        lonlat = np.empty((n, 2))
        plonlat = np.empty((n, 2))
        gsds = np.empty(n)
        for i in range(n):
            k = int(rng.choice(len(pools), p=weights / weights.sum()))
            syn = self.synths[k]
            col, row = pools[k][int(rng.integers(len(pools[k])))]
            col += rng.uniform(-2, 2)
            row += rng.uniform(-2, 2)
            lon, lat = syn.px_to_lonlat(float(col), float(row))
            g = math.exp(rng.uniform(math.log(self.gsd_range[0]), math.log(self.gsd_range[1])))
            syn.gsd_m = g  # the synthesizers belong to this object: set the tile scale
            tile = syn.render(lon, lat, neutral_params())
            view = syn.random_view(lon, lat, rng, min_valid=self.min_valid)
            anchors[i] = tile.image.transpose(2, 0, 1)
            positives[i] = view.image.transpose(2, 0, 1)
            lonlat[i] = (lon, lat)
            plonlat[i] = (view.lon, view.lat)
            gsds[i] = g
        from tiling.crs import geodesic_distance_m

        d = geodesic_distance_m(
            lonlat[:, None, 0].repeat(n, 1),
            lonlat[:, None, 1].repeat(n, 1),
            lonlat[None, :, 0].repeat(n, 0),
            lonlat[None, :, 1].repeat(n, 0),
        )
        footprint = self.tile_size * np.maximum(gsds[:, None], gsds[None, :])
        neg_ok = np.asarray(d, dtype=float) > self.negative_min_tiles * footprint
        return PairSet(
            anchors=anchors,
            positives=positives,
            negative_ok=neg_ok,
            groups=[str(i) for i in range(n)],
            lonlat=lonlat,
            positive_lonlat=plonlat,
        )


def merge_groups(rasters: Sequence[str | Path]) -> list[list[Path]]:
    """Rasters grouped for merging in memory (:func:`tiling.mosaic.touching_groups`): adjacent
    map sheets become one area, distant orthomosaics stay separate."""
    try:
        return touching_groups(rasters)
    except TilingError as exc:
        raise DatasetError(exc.problem, path=exc.path) from exc


def read_image(path: str | Path, size: int) -> npt.NDArray[np.uint8]:
    """Read an image file as RGB uint8 (3, size, size) (resized, antialiased)."""
    from PIL import Image

    try:
        rgb, _ = tiling_read_image(path)
    except TilingError as exc:
        raise DatasetError(f"cannot read image: {exc.problem}", path=str(path)) from exc
    im = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def _images_by_id(folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            out[d.name] = files
    return out


class University1652:
    """The University-1652 folder layout.

    ``root/train/drone/<id>/*``, ``root/train/satellite/<id>/*`` (training pairs: anchor =
    satellite image of a building, positive = a drone image of the same building, negative = a
    drone image of another building), ``root/test/query_drone/<id>/*`` and
    ``root/test/gallery_satellite/<id>/*`` (drone -> satellite retrieval evaluation).
    """

    def __init__(self, root: str | Path, *, size: int = 224) -> None:
        self.root = Path(root)
        self.size = int(size)
        if not self.root.is_dir():
            raise DatasetError("University-1652 root is not a directory", path=str(self.root))
        self.train_drone = self._folder("train/drone", required=False)
        self.train_satellite = self._folder("train/satellite", required=False)
        self.query_drone = self._folder("test/query_drone", required=False)
        self.gallery_satellite = self._folder("test/gallery_satellite", required=False)
        ids = sorted(set(self.train_drone) & set(self.train_satellite))
        # validation: every 10th building id (by name), when there are at least 10
        self.val_ids = ids[9::10] if len(ids) >= 10 else []
        self.train_ids = [i for i in ids if i not in set(self.val_ids)]
        if not self.train_ids and not self.query_drone:
            raise DatasetError(
                "neither train/drone + train/satellite nor test/query_drone holds any image",
                path=str(self.root),
            )

    def _folder(self, rel: str, required: bool) -> dict[str, list[Path]]:
        d = self.root / rel
        if not d.is_dir():
            if required:
                raise DatasetError(f"missing folder {rel}", path=str(self.root))
            return {}
        return _images_by_id(d)

    @property
    def has_validation(self) -> bool:
        """Whether validation ids were held out (>= 10 training ids)."""
        return len(self.val_ids) >= 2

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> PairSet:
        """``n`` pairs (satellite anchor, drone positive) of random buildings of ``split``
        ("train" | "val": every 10th building id held out)."""
        pool = self.train_ids if split == "train" else self.val_ids
        if len(pool) < 2:
            raise DatasetError(
                f"{split} needs at least 2 building ids in train/drone and train/satellite",
                path=str(self.root),
            )
        ids = [pool[int(i)] for i in rng.integers(len(pool), size=n)]
        anchors = np.stack(
            [read_image(self._pick(self.train_satellite[i], rng), self.size) for i in ids]
        )
        positives = np.stack(
            [read_image(self._pick(self.train_drone[i], rng), self.size) for i in ids]
        )
        g = np.array(ids)
        return PairSet(anchors, positives, g[:, None] != g[None, :], groups=ids)

    @staticmethod
    def _pick(files: list[Path], rng: np.random.Generator) -> Path:
        return files[int(rng.integers(len(files)))]

    def evaluation_set(
        self, max_queries: int | None = None, rng: np.random.Generator | None = None
    ) -> tuple[list[Path], list[str], list[Path], list[str]]:
        """(query drone paths, their ids, gallery satellite paths, their ids)."""
        if not self.query_drone or not self.gallery_satellite:
            raise DatasetError(
                "evaluation needs test/query_drone and test/gallery_satellite", path=str(self.root)
            )
        q = [(p, i) for i, ps in self.query_drone.items() for p in ps]
        if max_queries is not None and len(q) > max_queries:
            r = rng or np.random.default_rng(0)
            q = [q[int(k)] for k in sorted(r.choice(len(q), max_queries, replace=False))]
        g = [(p, i) for i, ps in self.gallery_satellite.items() for p in ps]
        return [p for p, _ in q], [i for _, i in q], [p for p, _ in g], [i for _, i in g]
