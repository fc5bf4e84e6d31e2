"""CSMG and non-local block on hand-made feature maps (exact expectations)."""

from __future__ import annotations

import torch

from geoloc.models.csmg import CSMG
from geoloc.models.nonlocal_block import NonLocalBlock


def _two_region_map() -> torch.Tensor:
    """(1, 2, 14, 14): channel 0 on the left 4 columns, channel 1 on the right 10 columns."""
    x = torch.zeros(1, 2, 14, 14)
    x[0, 0, :, :4] = 1.0
    x[0, 1, :, 4:] = 1.0
    return x


def test_csmg_groups_regions_sorted_by_area() -> None:
    csmg = CSMG(2, num_nodes=2)
    with torch.no_grad():
        csmg.centres.copy_(torch.eye(2))
    out = csmg(_two_region_map())
    # node 0 = the larger right region (140 px), node 1 = the left one (56 px)
    torch.testing.assert_close(out.node_areas, torch.tensor([[140.0, 56.0]]))
    torch.testing.assert_close(out.node_centroids[0, 0], torch.tensor([9 / 14, 0.5]))
    torch.testing.assert_close(out.node_centroids[0, 1], torch.tensor([2 / 14, 0.5]))
    # descriptors: intra-normalised then globally normalised -> each node block has norm 1/sqrt(2)
    phi = out.phi.view(2, 2)
    torch.testing.assert_close(phi, torch.tensor([[0.0, 1.0], [1.0, 0.0]]) / 2**0.5)
    assert out.assignments[0, 0, :, 4:].min() == 1 and out.assignments[0, 0, :, :4].max() == 0


def test_csmg_hard_area_counts_pixels() -> None:
    csmg = CSMG(2, num_nodes=2, area="hard")
    with torch.no_grad():
        csmg.centres.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))
    out = csmg(_two_region_map())
    torch.testing.assert_close(out.node_areas, torch.tensor([[140.0, 56.0]]))


def test_csmg_empty_node_sits_at_the_centre() -> None:
    csmg = CSMG(2, num_nodes=3)
    with torch.no_grad():
        csmg.centres.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        out = csmg(_two_region_map())
    assert float(out.node_areas[0, 2]) == 0.0
    torch.testing.assert_close(out.node_centroids[0, 2], torch.tensor([0.5, 0.5]))


def test_nonlocal_is_identity_at_init_and_mixes_after() -> None:
    torch.manual_seed(0)
    block = NonLocalBlock(8).eval()
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), x)
    bn = block.W[1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    with torch.no_grad():
        bn.weight.fill_(1.0)
    y = block(x)
    assert not torch.allclose(y, x)
    # non-local: changing one position changes the output at every other position
    x2 = x.clone()
    x2[:, :, 0, 0] += 5.0
    diff = (block(x2) - y).abs().sum(1)
    assert (diff[:, 4, 4] > 0).all()
