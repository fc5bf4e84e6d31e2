"""encoder_threads: torch on one thread while a backbone runtime encodes, the same Φ bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from geoloc.ingest.stream import Batch, Encoded, encode_stream, encoder_threads
from geoloc.models import build_encoder
from geoloc.models.runtime import runtime_of, use_runtime
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
    with encoder_threads(fast):
        assert torch.get_num_threads() == 1
        got = _outputs(fast, pixels)
    assert torch.get_num_threads() == before
    for k in ("phi", "node_areas", "node_centroids"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    np.testing.assert_allclose(got["omega"], ref["omega"], rtol=0, atol=1e-6)
    # stored Φ is half precision: its bits are the same
    assert np.array_equal(got["phi"].astype(np.float16), ref["phi"].astype(np.float16))


def test_torch_backbone_keeps_its_threads() -> None:
    enc = build_encoder("sgmnet")
    assert runtime_of(enc) == "torch"
    before = torch.get_num_threads()
    with encoder_threads(enc):
        assert torch.get_num_threads() == before


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
