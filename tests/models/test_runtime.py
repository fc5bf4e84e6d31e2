"""OpenVINO / ONNX Runtime backbones: exported once to a cache keyed by the weights, outputs within
1e-4 of torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import geoloc.models.runtime as rt
from geoloc.errors import ConfigError
from geoloc.models import Encoder, build_encoder, load_encoder
from geoloc.models.runtime import (
    check_runtime,
    default_cache_dir,
    default_runtime,
    load_for_inference,
    openvino_available,
    runtime_of,
    use_runtime,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _assert_matches(fast: Encoder, ref: Encoder, images: np.ndarray) -> None:
    a, b = ref.encode(images), fast.encode(images)
    for field in ("omega", "phi", "node_centroids", "assignments"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.node_areas, a.node_areas, rtol=1e-4, atol=1e-3)


def test_onnx_backbone_matches_torch_and_is_cached(
    sgmnet: Encoder, tiles: np.ndarray, tmp_path: Path
) -> None:
    fast = build_encoder("sgmnet").optimize_for_inference()
    assert use_runtime(fast, "onnx", cache_dir=tmp_path) == "onnx"
    (cached,) = list(tmp_path.glob("*.onnx"))
    assert cached.name.startswith(sgmnet.weights_sha256[:32])
    assert fast.weights_sha256 == sgmnet.weights_sha256
    assert not any("onnx" in k for k in fast.state_dict())
    # batch sizes other than the export's go through the dynamic batch axis
    _assert_matches(fast, sgmnet, tiles[:1])
    _assert_matches(fast, sgmnet, np.concatenate([tiles, tiles[:1]]))
    # a second encoder loads the cached file instead of exporting again
    stamp = cached.stat().st_mtime_ns
    other = build_encoder("sgmnet").optimize_for_inference()
    assert use_runtime(other, "onnx", cache_dir=tmp_path) == "onnx"
    assert cached.stat().st_mtime_ns == stamp
    _assert_matches(other, sgmnet, tiles[:2])
    # back to torch
    assert use_runtime(other, "torch") == "torch"
    assert runtime_of(other) == "torch"


@pytest.mark.skipif(not openvino_available(), reason="openvino is not installed (geoloc[openvino])")
def test_openvino_backbone_matches_torch_and_auto_prefers_it(
    sgmnet: Encoder, tiles: np.ndarray, tmp_path: Path
) -> None:
    fast = build_encoder("sgmnet").optimize_for_inference()
    assert use_runtime(fast, "auto", cache_dir=tmp_path) == "openvino" == runtime_of(fast)
    (cached,) = list(tmp_path.glob("*.onnx"))  # the one exported graph both runtimes read
    _assert_matches(fast, sgmnet, tiles[:1])
    _assert_matches(fast, sgmnet, np.concatenate([tiles, tiles[:1]]))  # dynamic batch axis
    # idempotent for auto, an explicit runtime switches, both from the same cache file
    assert use_runtime(fast, "auto", cache_dir=tmp_path) == "openvino"
    assert use_runtime(fast, "onnx", cache_dir=tmp_path) == "onnx" == runtime_of(fast)
    assert use_runtime(fast, "openvino", cache_dir=tmp_path) == "openvino"
    assert list(tmp_path.glob("*.onnx")) == [cached]
    _assert_matches(fast, sgmnet, tiles[:3])


def test_sub_batches_split_the_batch_and_join_every_output() -> None:
    arr = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)
    calls: list[int] = []
    buffer = np.zeros((3, 2), np.float32)  # a runtime that reuses its output buffer

    def run(a: np.ndarray) -> list[np.ndarray]:
        calls.append(len(a))
        buffer[: len(a)] = a * 2
        return [buffer[: len(a)], a.sum(axis=1)]

    doubled, sums = rt._in_sub_batches(run, arr, 3)
    assert calls == [3, 3, 1]
    np.testing.assert_array_equal(doubled.numpy(), arr * 2)
    np.testing.assert_array_equal(sums.numpy(), arr.sum(axis=1))
    calls.clear()
    (whole, _) = rt._in_sub_batches(lambda a: [a, a.sum(axis=1)], arr, 16)
    assert calls == [] and whole.shape == (7, 2)


@pytest.mark.parametrize(
    "runtime",
    [
        "onnx",
        pytest.param(
            "openvino",
            marks=pytest.mark.skipif(
                not openvino_available(), reason="openvino is not installed (geoloc[openvino])"
            ),
        ),
    ],
)
def test_sub_batched_runtimes_encode_as_one_call_does(
    runtime: str, tiles: np.ndarray, tmp_path: Path
) -> None:
    fast = build_encoder("sgmnet").optimize_for_inference()
    assert use_runtime(fast, runtime, cache_dir=tmp_path) == runtime
    session = fast.__dict__["_runtime_trunk"]
    assert session.sub_batch == rt.SUB_BATCH
    images = np.concatenate([tiles, tiles[:1], tiles[::-1]])
    outputs = {}
    for sub_batch in (len(images), 3, 1):
        session.sub_batch = sub_batch
        outputs[sub_batch] = fast.encode(images)
    for sub_batch in (3, 1):
        for field in ("omega", "phi", "node_centroids", "assignments", "node_areas"):
            torch.testing.assert_close(
                getattr(outputs[sub_batch], field),
                getattr(outputs[len(images)], field),
                rtol=1e-5,
                atol=1e-5,
            )


def test_missing_runtime_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:

    monkeypatch.setattr(rt, "openvino_available", lambda: False)
    fast = build_encoder("sgmnet").optimize_for_inference()
    with pytest.raises(ConfigError, match=r"pip install 'geoloc\[openvino\]'"):
        use_runtime(fast, "openvino", cache_dir=tmp_path)
    assert use_runtime(fast, "auto", cache_dir=tmp_path) == "onnx"  # the next one installed


def test_corrupt_cache_is_exported_again(tmp_path: Path, tiles: np.ndarray) -> None:
    fast = build_encoder("sgmnet").optimize_for_inference()
    use_runtime(fast, "onnx", cache_dir=tmp_path)
    (cached,) = list(tmp_path.glob("*.onnx"))
    cached.write_bytes(b"not an onnx model")
    again = build_encoder("sgmnet").optimize_for_inference()
    assert use_runtime(again, "onnx", cache_dir=tmp_path) == "onnx"
    assert cached.stat().st_size > 1000
    _assert_matches(again, fast, tiles[:1])


def test_unoptimised_encoder_keeps_torch(tmp_path: Path) -> None:
    eager = build_encoder("sgmnet")
    assert use_runtime(eager, "onnx", cache_dir=tmp_path) == "torch"
    assert not list(tmp_path.iterdir())


def test_gradients_bypass_onnx(tmp_path: Path, tiles: np.ndarray) -> None:
    """A backbone on ONNX Runtime has no autograd: grad-enabled calls use torch."""
    fast = build_encoder("sgmnet").optimize_for_inference(jit=False)
    use_runtime(fast, "onnx", cache_dir=tmp_path)
    x = fast.preprocess(tiles[:1]).requires_grad_(True)
    fast.backbone_features(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_runtime_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_runtime(" ONNX ") == "onnx"
    assert check_runtime("OpenVINO") == "openvino"
    with pytest.raises(ConfigError, match="valid: auto, torch, onnx, openvino"):
        check_runtime("tensorrt")
    monkeypatch.setenv("GEOLOC_ENCODER_RUNTIME", "torch")
    assert default_runtime() == "torch"
    monkeypatch.delenv("GEOLOC_ENCODER_RUNTIME")
    assert default_runtime() == "auto"


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEOLOC_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("GEOLOC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "geoloc" / "onnx"


def test_load_for_inference_follows_the_ingest_runtime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiles: np.ndarray
) -> None:
    monkeypatch.setenv("GEOLOC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GEOLOC_ENCODER_RUNTIME", "onnx")
    fast = load_for_inference("sgmnet")  # the environment's runtime, as ingest and rebuild use
    assert fast.optimized and runtime_of(fast) == "onnx"
    _assert_matches(fast, load_encoder("sgmnet"), tiles[:2])  # the shipped weights
    plain = load_for_inference("sgmnet", runtime="torch")  # an explicit runtime wins
    assert plain.optimized and runtime_of(plain) == "torch"
    monkeypatch.setenv("GEOLOC_ENCODER_RUNTIME", "tensorrt")
    with pytest.raises(ConfigError, match="encoder runtime 'tensorrt'"):
        load_for_inference("sgmnet")


@pytest.mark.skipif(not openvino_available(), reason="openvino is not installed (geoloc[openvino])")
def test_xfeat_on_openvino_finds_the_torch_keypoints(
    sample_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verifier's XFeat CNN on the runtime: same keypoints and descriptors as torch on a real
    image (and a batch of tiles), its graph cached by the weights; GEOLOC_ENCODER_RUNTIME=torch
    keeps torch."""
    import rasterio

    from geoloc.localize.verify import XFeatLighterGlueMatcher

    monkeypatch.setenv("GEOLOC_CACHE_DIR", str(tmp_path))
    with rasterio.open(sample_raster) as r:
        img = np.ascontiguousarray(
            np.transpose(r.read([1, 2, 3], window=((0, 360), (0, 500))), (1, 2, 0))
        )
    monkeypatch.setenv("GEOLOC_ENCODER_RUNTIME", "torch")
    ref = XFeatLighterGlueMatcher(max_keypoints=512)
    monkeypatch.setenv("GEOLOC_ENCODER_RUNTIME", "auto")
    fast = XFeatLighterGlueMatcher(max_keypoints=512)
    assert (ref.runtime, fast.runtime) == ("torch", "openvino")
    assert [p.name for p in tmp_path.glob("xfeat-*.onnx")]
    for a, b in (
        (ref.extract(img, None), fast.extract(img, None)),
        *zip(
            ref.extract_batch(np.stack([img[:224, :224], img[100:324, 200:424]]), None),
            fast.extract_batch(np.stack([img[:224, :224], img[100:324, 200:424]]), None),
            strict=True,
        ),
    ):
        assert len(a) == len(b) > 100
        near = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=2).min(axis=1)
        assert float((near < 0.01).mean()) > 0.98
        both = near < 0.01
        da = np.asarray(a.descriptors, dtype=np.float32)[both]
        j = np.linalg.norm(a.keypoints[both][:, None] - b.keypoints[None], axis=2).argmin(axis=1)
        db = np.asarray(b.descriptors, dtype=np.float32)[j]
        assert float((da * db).sum(axis=1).min()) > 0.999
    # a second matcher reads the cached graph
    again = XFeatLighterGlueMatcher(max_keypoints=512)
    assert again.runtime == "openvino"


def test_limit_blas_threads_is_process_wide_and_leaves_control() -> None:
    # in a child process: the limit lasts for the rest of the process
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import threading
        import numpy
        from threadpoolctl import threadpool_info, threadpool_limits
        from geoloc.models.runtime import limit_blas_threads

        def blas():
            return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

        assert blas(), "numpy's BLAS not found"
        limit_blas_threads()
        seen = []
        t = threading.Thread(target=lambda: seen.append(blas()))
        t.start(); t.join()
        assert blas() == [1] * len(blas()) and seen == [blas()], (blas(), seen)

        def other():
            with threadpool_limits(limits=2, user_api="blas"):
                seen.append(blas())

        t = threading.Thread(target=other)  # another thread can still set it
        t.start(); t.join()
        assert seen[-1] == [2] * len(blas()), seen
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
