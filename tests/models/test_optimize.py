"""optimize_for_inference: BN folded, channels_last, outputs within 1e-4 of eager, hash kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geoloc.errors import ConfigError
from geoloc.models import build_encoder, save_checkpoint
from geoloc.models.base import fold_batchnorm


@pytest.mark.parametrize("name", ["sgmnet", "netvlad"])
def test_optimised_matches_eager(name: str, tiles: np.ndarray) -> None:
    eager = build_encoder(name)
    fast = build_encoder(name)
    sha = fast.weights_sha256
    fast.optimize_for_inference()
    assert fast.optimized and fast.weights_sha256 == sha
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.backbone.modules())
    a, b = eager.encode(tiles[:1]), fast.encode(tiles[:1])
    for field in ("omega", "phi", "node_centroids", "assignments"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.node_areas, a.node_areas, rtol=1e-4, atol=1e-3)


def test_fold_batchnorm_resnet_and_refuse_to_save(tmp_path: Path) -> None:
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
    enc = build_encoder("sgmnet").optimize_for_inference()
    with pytest.raises(ConfigError, match="optimised"):
        save_checkpoint(enc, tmp_path / "x")
