"""SGM-Net: shapes, norms, node ordering, rotation behaviour, gradients, determinism."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from geoloc.errors import ConfigError
from geoloc.models import Encoder, EncoderInputError, build_encoder
from geoloc.models.sgmnet import SGMHead


def test_shapes_and_norms(sgmnet: Encoder, tiles: np.ndarray) -> None:
    out = sgmnet.encode(tiles)
    assert (sgmnet.omega_dim, sgmnet.phi_dim, sgmnet.num_nodes) == (50176, 1024, 4)
    assert out.omega.shape == (2, 50176)
    assert out.phi.shape == (2, 1024)
    assert out.node_areas.shape == (2, 4)
    assert out.node_centroids.shape == (2, 4, 2)
    assert out.assignments.shape == (2, 4, 14, 14)
    for name, arr in out.numpy().items():
        assert arr.dtype == np.float32, name
        assert np.isfinite(arr).all(), name
    torch.testing.assert_close(out.omega.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(out.phi.norm(dim=1), torch.ones(2))
    assert not out.omega.requires_grad


def test_nodes_sorted_and_inside_tile(sgmnet: Encoder, tiles: np.ndarray) -> None:
    out = sgmnet.encode(tiles)
    areas = out.node_areas
    assert (areas[:, :-1] >= areas[:, 1:]).all()
    assert (areas > 0).all()
    c = out.node_centroids
    assert ((c >= 0) & (c <= 1)).all()
    # soft area is the sum of the node's assignment map
    torch.testing.assert_close(out.assignments.sum((2, 3)), areas, rtol=1e-4, atol=1e-3)
    assert (out.assignments >= 0).all()


def test_tensor_input_and_resize(sgmnet: Encoder, tiles: np.ndarray) -> None:
    a = sgmnet.encode(torch.from_numpy(tiles[:1]))
    b = sgmnet.encode(tiles[0])  # (3, H, W) accepted as a batch of one
    torch.testing.assert_close(a.phi, b.phi)
    big = torch.nn.functional.interpolate(
        torch.from_numpy(tiles[:1]).float(), size=(320, 320), mode="bilinear"
    )
    out = sgmnet.encode(big.round().clamp(0, 255).to(torch.uint8))
    assert out.omega.shape == (1, 50176)
    # a resized copy of the same view stays closer than an unrelated tile
    other = sgmnet.encode(tiles[1:])
    assert float(out.phi @ a.phi.T) > float(other.phi @ a.phi.T)


def test_rejects_bad_input(sgmnet: Encoder) -> None:
    with pytest.raises(EncoderInputError, match="uint8"):
        sgmnet.encode(np.zeros((1, 3, 224, 224), dtype=np.float32))
    with pytest.raises(EncoderInputError, match=r"\(B, 3, H, W\)"):
        sgmnet.encode(np.zeros((1, 4, 224, 224), dtype=np.uint8))


def test_rotated_tile_phi_closer_than_unrelated(sgmnet: Encoder, tiles: np.ndarray) -> None:
    rotated = np.ascontiguousarray(np.rot90(tiles, 1, axes=(2, 3)))
    a = sgmnet.encode(tiles).phi
    r = sgmnet.encode(rotated).phi
    unrelated = float(a[0] @ a[1])
    assert float(a[0] @ r[0]) > unrelated
    assert float(a[1] @ r[1]) > unrelated


def test_eval_is_deterministic(sgmnet: Encoder, tiles: np.ndarray) -> None:
    first = sgmnet.encode(tiles)
    second = sgmnet.encode(tiles)
    torch.testing.assert_close(first.omega, second.omega, rtol=0, atol=0)
    torch.testing.assert_close(first.phi, second.phi, rtol=0, atol=0)
    again = build_encoder("sgmnet")
    assert again.weights_sha256 == sgmnet.weights_sha256
    torch.testing.assert_close(again.encode(tiles).phi, first.phi)
    other_seed = build_encoder("sgmnet", seed=1)
    assert other_seed.weights_sha256 != sgmnet.weights_sha256


def test_gradients_reach_csmg_centres(tiles: np.ndarray) -> None:
    enc = build_encoder("sgmnet")
    enc.train()
    assert not enc.backbone.training, "a frozen backbone keeps its BN statistics"
    x = enc.preprocess(tiles)
    with torch.no_grad():
        feats = enc.backbone_features(x)
    out = enc.forward_head(feats)
    loss = -(out.phi[0] @ out.phi[1]) + out.omega[0] @ out.omega[1]
    loss.backward()
    head = enc.head
    assert isinstance(head, SGMHead)
    centres = head.csmg.centres
    assert centres.grad is not None and centres.grad.abs().sum() > 0
    assert head.reduce.weight.grad is not None
    trainable = {id(p) for p in enc.trainable_parameters()}
    assert id(centres) in trainable
    assert not any(id(p) in trainable for p in enc.backbone.parameters())
    assert all(not p.requires_grad for p in enc.backbone.parameters())


def test_unfrozen_backbone_is_trainable() -> None:
    enc = build_encoder("sgmnet", freeze_backbone=False)
    n_train = sum(p.numel() for p in enc.trainable_parameters())
    assert n_train == enc.count_parameters()


@pytest.mark.parametrize(
    ("params", "phi_dim"),
    [
        ({"num_nodes": 2}, 512),
        ({"num_nodes": 8, "cosine": True}, 2048),
        ({"assignment": "softmax"}, 1024),
        ({"area": "hard"}, 1024),
        ({"csmg_input": "nonlocal", "channels": 128}, 512),
    ],
)
def test_csmg_variants(params: dict[str, Any], phi_dim: int, tiles: np.ndarray) -> None:
    enc = build_encoder("sgmnet", **params)
    out = enc.encode(tiles[:1])
    assert enc.phi_dim == phi_dim and out.phi.shape == (1, phi_dim)
    assert enc.omega_dim == out.omega.shape[1] == int(params.get("channels", 256)) * 196
    assert (out.node_areas[:, :-1] >= out.node_areas[:, 1:]).all()
    if params.get("area") == "hard":
        assert torch.equal(out.node_areas, out.node_areas.round())
        assert float(out.node_areas.sum()) <= 196


@pytest.mark.parametrize(
    "params", [{"num_nodes": 1}, {"num_nodes": 9}, {"assignment": "x"}, {"csmg_input": "x"}]
)
def test_bad_parameters(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        build_encoder("sgmnet", **params)


def test_empty_batch_and_chunking(sgmnet: Encoder, tiles: np.ndarray) -> None:
    empty = sgmnet.encode(np.zeros((0, 3, 224, 224), dtype=np.uint8))
    assert empty.omega.shape == (0, 50176) and empty.assignments.shape == (0, 4, 14, 14)
    whole = sgmnet.encode(tiles, batch_size=None)
    chunked = sgmnet.encode(tiles, batch_size=1)
    assert len(chunked) == 2
    torch.testing.assert_close(chunked.phi, whole.phi, rtol=1e-5, atol=1e-5)


def test_normalize_float_path_matches_preprocess(sgmnet: Encoder, tiles: np.ndarray) -> None:
    via_uint8 = sgmnet.preprocess(tiles)
    via_float = sgmnet.normalize(torch.from_numpy(tiles).float() / 255)
    torch.testing.assert_close(via_float, via_uint8)
    assert float(via_uint8.mean()) < 1.0 and float(via_uint8.std()) > 0.2


def test_ensure_compatible(sgmnet: Encoder) -> None:
    from geoloc.errors import EncoderMismatchError
    from geoloc.models import EncoderProtocol, ensure_compatible

    assert isinstance(sgmnet, EncoderProtocol)
    ensure_compatible(sgmnet, sgmnet.weights_sha256, 50176, 1024)
    with pytest.raises(EncoderMismatchError, match="does not match the index: weights SHA-256"):
        ensure_compatible(sgmnet, "f" * 64)
    with pytest.raises(EncoderMismatchError, match="phi_dim 1024 != 512"):
        ensure_compatible(sgmnet, phi_dim=512)
