"""throughput: torch on one thread while a backbone runtime encodes, OpenVINO on one stream per
thread with batches encoded concurrently, in order, with the same outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from geoloc.ingest.stream import Batch, Encoded, encode_stream, encoded
from geoloc.models import build_encoder
from geoloc.models.runtime import OpenVinoBackbone, runtime_of, throughput, use_runtime
from tests.conftest import SAMPLE_RASTER
from tiling import TileConfig, open_raster

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def tiles() -> list[Any]:
    with open_raster(SAMPLE_RASTER) as r:
        return list(r.tiles(TileConfig(224, stride=112, gsd=0.5)))[:20]


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """sgmnet on the runtime ``auto`` picks (OpenVINO when installed, else ONNX Runtime)."""
    enc = build_encoder("sgmnet").optimize_for_inference()
    assert use_runtime(enc, "auto", cache_dir=tmp_path_factory.mktemp("onnx")) != "torch"
    return enc


@pytest.fixture(autouse=True)
def two_threads() -> Any:
    """Torch on two intra-op threads during each test (so one thread is a change)."""
    was = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(was)


def _outputs(enc: Any, pixels: np.ndarray) -> dict[str, np.ndarray]:
    out = enc.encode(pixels)
    return {
        k: np.asarray(getattr(out, k)) for k in ("omega", "phi", "node_areas", "node_centroids")
    }


def test_one_torch_thread_while_a_runtime_encodes_same_phi(fast: Any, tiles: list[Any]) -> None:
    pixels = np.stack([t.pixels for t in tiles])
    before = torch.get_num_threads()
    assert before == 2
    ref = _outputs(fast, pixels)
    session = fast.__dict__["_runtime_trunk"]
    with throughput(fast) as streams:
        assert torch.get_num_threads() == 1
        if isinstance(session, OpenVinoBackbone):
            assert streams == 2 and session.streams == 2
        else:
            assert streams == 1
        got = _outputs(fast, pixels)
    assert torch.get_num_threads() == before
    assert getattr(session, "streams", 1) == 1  # back on the latency model
    for k in ("phi", "node_areas", "node_centroids", "omega"):
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-5, err_msg=k)


def test_torch_backbone_keeps_its_threads() -> None:
    enc = build_encoder("sgmnet")
    assert runtime_of(enc) == "torch"
    before = torch.get_num_threads()
    with throughput(enc) as streams:
        assert torch.get_num_threads() == before and streams == 1


def test_stream_encodes_under_it_and_restores(fast: Any, tiles: list[Any]) -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    got: list[Encoded] = []
    source = iter([Batch(tiles[:8], np.stack([t.pixels for t in tiles[:8]]), 8)])
    encode_stream(source, fast, got.append, on_batch=lambda b: seen.append(torch.get_num_threads()))
    assert seen == [1] and len(got) == 1 and torch.get_num_threads() == before

    def boom(_: Path) -> None:
        raise RuntimeError("disk full")

    source = iter([Batch(tiles[:8], np.stack([t.pixels for t in tiles[:8]]), 8)])
    with pytest.raises(RuntimeError, match="disk full"):
        encode_stream(source, fast, boom)  # type: ignore[arg-type]
    assert torch.get_num_threads() == before


def test_concurrent_batches_come_back_in_order_as_encoded_one_by_one(
    fast: Any, tiles: list[Any]
) -> None:
    batches = [
        Batch(tiles[i : i + 3], np.stack([t.pixels for t in tiles[i : i + 3]]), i + 3)
        for i in range(0, len(tiles), 3)
    ]
    one_by_one = [e for _, e, _ in encoded(fast, iter(batches), 1)]
    with throughput(fast) as streams:
        together = list(encoded(fast, iter(batches), max(streams, 2)))
    assert [b.position for b, _, _ in together] == [b.position for b in batches]
    for (batch, got, seconds), ref in zip(together, one_by_one, strict=True):
        assert [t.row for t in got.tiles] == [t.row for t in batch.tiles] and seconds > 0
        assert got.position == ref.position
        for k in ("omega", "phi", "node_areas", "node_centroids"):
            np.testing.assert_allclose(getattr(got, k), getattr(ref, k), rtol=0, atol=1e-5)


def test_an_encoder_error_stops_the_pool_and_propagates(tiles: list[Any]) -> None:
    real = build_encoder("sgmnet").optimize_for_inference(jit=False)
    calls: list[int] = []

    class Failing:
        def encode(self, pixels: np.ndarray) -> Any:
            calls.append(len(pixels))
            if len(calls) == 3:
                raise RuntimeError("out of memory")
            return real.encode(pixels)

    batches = (
        Batch(tiles[i : i + 2], np.stack([t.pixels for t in tiles[i : i + 2]]), i + 2)
        for i in range(0, len(tiles), 2)
    )
    with pytest.raises(RuntimeError, match="out of memory"):
        list(encoded(Failing(), batches, 2))
    assert len(calls) <= 4  # the queued batches were not started


class _RowFeatures:
    """A feature extractor whose 'features' name their tile (to check they stay aligned)."""

    def add(self, tiles: Any, pixels: np.ndarray) -> list[Any]:
        return [
            (np.array([[t.row, t.col]], np.float32), np.zeros((1, 1)), np.ones(1)) for t in tiles
        ]

    def finish(self) -> list[Any]:
        return []


@pytest.mark.parametrize("with_features", [False, True])
def test_stream_hands_on_writes_of_write_tiles_tiles(
    fast: Any, tiles: list[Any], with_features: bool
) -> None:
    batches = [
        Batch(tiles[i : i + 3], np.stack([t.pixels for t in tiles[i : i + 3]]), i + 3)
        for i in range(0, len(tiles), 3)
    ]
    ref = {id(t): e for _, e, _ in encoded(fast, iter(batches), 1) for t in e.tiles}
    got: list[Encoded] = []
    extractor = _RowFeatures() if with_features else None
    encode_stream(iter(batches), fast, got.append, features=extractor, write_tiles=7, omega=False)
    # 20 tiles in batches of 3: writes of 9, 9 (the first batches reaching 7) and the last 2
    assert [len(e.tiles) for e in got] == [9, 9, 2]
    assert [e.position for e in got] == [9, 18, batches[-1].position]
    assert [t.row * 1000 + t.col for e in got for t in e.tiles] == [
        t.row * 1000 + t.col for t in tiles
    ]
    for e in got:
        assert e.omega.shape == (len(e.tiles), 0)
        assert e.phi is not None and e.phi.shape[0] == len(e.tiles)
        first = ref[id(e.tiles[0])]
        np.testing.assert_allclose(e.phi[: len(first.tiles)], first.phi, atol=1e-5)
        if with_features:
            assert e.features is not None
            assert [(int(f[0][0, 0]), int(f[0][0, 1])) for f in e.features] == [
                (t.row, t.col) for t in e.tiles
            ]
        else:
            assert e.features is None
