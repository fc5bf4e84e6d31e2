"""optimize_for_inference: BN folded, channels_last, traced backbone, within 1e-4 of eager."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geoloc.errors import ConfigError
from geoloc.models import Encoder, build_encoder, save_checkpoint
from geoloc.models.base import fold_batchnorm


@pytest.fixture(scope="module")
def fast_sgmnet() -> Encoder:
    """The default encoder, optimised (folded, channels_last, traced backbone)."""
    return build_encoder("sgmnet").optimize_for_inference()


def _assert_matches(fast: Encoder, eager: Encoder, images: np.ndarray) -> None:
    a, b = eager.encode(images), fast.encode(images)
    for field in ("omega", "phi", "node_centroids", "assignments"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.node_areas, a.node_areas, rtol=1e-4, atol=1e-3)


def test_optimised_sgmnet_matches_eager(
    fast_sgmnet: Encoder, sgmnet: Encoder, tiles: np.ndarray
) -> None:
    fast = fast_sgmnet
    assert fast.optimized and fast.weights_sha256 == sgmnet.weights_sha256
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.backbone.modules())
    assert fast.__dict__.get("_traced_backbone") is not None
    # the trace is not a registered submodule: no duplicated weights in the state dict
    assert not any("traced" in k for k in fast.state_dict())
    assert len(fast.state_dict()) < len(sgmnet.state_dict())  # BN buffers folded away
    _assert_matches(fast, sgmnet, tiles[:1])
    # the trace was made at batch 2; other batch sizes go through it as well
    three = np.concatenate([tiles, tiles[:1]])
    _assert_matches(fast, sgmnet, three)


def test_optimised_netvlad_without_jit_matches_eager(tiles: np.ndarray) -> None:
    eager = build_encoder("netvlad")
    fast = build_encoder("netvlad").optimize_for_inference(jit=False)
    assert fast.__dict__.get("_traced_backbone") is None and fast.optimized
    _assert_matches(fast, eager, tiles[:1])


def test_fold_batchnorm_resnet_and_refuse_to_save(fast_sgmnet: Encoder, tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(weights=None)
    for m in net.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    net.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        assert fold_batchnorm(net) == 20
        torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="optimised"):
        save_checkpoint(fast_sgmnet, tmp_path / "x")
