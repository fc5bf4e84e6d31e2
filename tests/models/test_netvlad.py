"""NetVLAD family: shapes, norms, the VLAD formula, Loupe, fusion, and the ``netvlad`` encoder."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from geoloc.models import build_encoder
from geoloc.models.netvlad import GatedFusion, NetVLAD, NetVLADLoupe


def test_netvlad_shape_norm_and_formula() -> None:
    torch.manual_seed(0)
    vlad = NetVLAD(feature_size=128, num_clusters=16).eval()
    x = torch.randn(3, 128, 50, 1)
    out = vlad(x)
    assert out.shape == (3, 2048)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    # reference computation for sample 0, written out per cluster
    a = torch.softmax(F.relu(vlad.conv(x[:1])).flatten(2), dim=1)[0]  # K, N
    xi = x[0, :, :, 0].T  # N, C
    blocks = []
    for k in range(16):
        r = (a[k, :, None] * (xi - vlad.centroids[k])).sum(0) / a[k].sum()
        blocks.append(F.normalize(r, dim=0))
    ref = F.normalize(torch.cat(blocks), dim=0)
    torch.testing.assert_close(out[0], ref, rtol=1e-4, atol=1e-5)


def test_loupe_and_fusion() -> None:
    torch.manual_seed(0)
    loupe = NetVLADLoupe(feature_size=64, max_samples=30, cluster_size=8, output_dim=256).eval()
    y = loupe(torch.randn(2, 30, 64))
    assert y.shape == (2, 256) and torch.isfinite(y).all()
    plain = NetVLADLoupe(64, 30, 8, output_dim=32, gating=False, add_batch_norm=False)
    assert plain(torch.randn(2, 30, 64)).shape == (2, 32)
    fuse = GatedFusion()
    a, b = torch.ones(2, 4), torch.zeros(2, 4)
    torch.testing.assert_close(fuse(a, b), torch.full((2, 4), 0.5))
    with torch.no_grad():
        fuse.w.fill_(20.0)
    torch.testing.assert_close(fuse(a, b), a, atol=1e-6, rtol=0)
    fuse.w.data.zero_()
    loss = fuse(a, 2 * a).sum()
    loss.backward()
    assert fuse.w.grad is not None and float(fuse.w.grad) != 0


def test_netvlad_encoder(tiles: np.ndarray) -> None:
    enc = build_encoder("netvlad")
    assert enc.pretrained and enc.freeze_backbone and enc.node_dim is None
    out = enc.encode(tiles)
    assert out.omega.shape == (2, 50176) and out.phi.shape == (2, enc.phi_dim) == (2, 256)
    assert out.node_areas.shape == (2, 16) and out.assignments.shape == (2, 16, 14, 14)
    torch.testing.assert_close(out.phi.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(out.omega.norm(dim=1), torch.ones(2))
    assert (out.node_areas[:, :-1] >= out.node_areas[:, 1:]).all()
    # soft-assignments sum to one per pixel, so the areas sum to N = 196
    torch.testing.assert_close(out.node_areas.sum(1), torch.full((2,), 196.0))
    assert ((out.node_centroids >= 0) & (out.node_centroids <= 1)).all()
    assert not torch.allclose(out.phi[0], out.phi[1])
