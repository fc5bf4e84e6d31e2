"""``write_bands``: the driver's re-batching of Ray band results, features kept with their tiles."""

from __future__ import annotations

from typing import Any

import numpy as np

from geoloc.ingest.distributed import BandResult, write_bands


def _band(start: int, n: int, with_features: bool) -> BandResult:
    ids = np.arange(start, start + n, dtype=np.float32)
    om = np.repeat(ids[:, None], 3, axis=1)
    feats = None
    if with_features:
        feats = [(np.full((2, 2), i), np.zeros((2, 4)), np.ones(2)) for i in ids]
    return BandResult(list(ids.astype(int)), om, om[:, :1], om[:, :2], om, "sha", feats)


def _write(bands: list[BandResult], batch: int) -> list[tuple[list[Any], Any]]:
    calls: list[tuple[list[Any], Any]] = []

    def add(tiles: list[Any], om: np.ndarray, *arrays: np.ndarray, features: Any = None) -> None:
        assert [int(t) for t in tiles] == om[:, 0].astype(int).tolist()
        calls.append((list(tiles), features))

    positions: list[int] = []
    n = write_bands(iter([(b, i) for i, b in enumerate(bands)]), add, batch, positions.append)
    assert n == sum(len(b.tiles) for b in bands) and positions == list(range(len(bands)))
    return calls


def test_bands_are_rebatched_with_their_features() -> None:
    bands = [_band(0, 5, True), _band(5, 0, True), _band(5, 6, True)]
    calls = _write(bands, 4)
    assert [len(t) for t, _ in calls] == [4, 4, 3]
    for tiles, feats in calls:
        assert feats is not None and len(feats) == len(tiles)
        assert [int(f[0][0, 0]) for f in feats] == tiles  # each tile's own features


def test_bands_without_features_pass_none() -> None:
    calls = _write([_band(0, 3, False), _band(3, 3, False)], 4)
    assert [len(t) for t, _ in calls] == [4, 2] and all(f is None for _, f in calls)
