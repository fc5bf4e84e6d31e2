"""SGM-Net loss on hand-made vectors."""

from __future__ import annotations

import pytest
import torch

from geoloc.training.losses import SGMLoss, cosine_triplet_loss

E1 = torch.tensor([[1.0, 0.0, 0.0]])
E2 = torch.tensor([[0.0, 1.0, 0.0]])
MINUS_E1 = -E1
NEAR_E1 = torch.tensor([[0.9, 0.1, 0.0]])  # cos with e1 ~ 0.9939


def test_triplet_zero_when_margin_holds() -> None:
    # d(a,p) = 0, d(a,n) = 1: 0 - 1 + 0.2 < 0
    assert cosine_triplet_loss(E1, E1, E2, margin=0.2).item() == 0.0
    # d(a,p) = 1 - 0.99388 = 0.0061, d(a,n) = 2 -> still zero
    assert cosine_triplet_loss(E1, NEAR_E1, MINUS_E1, margin=0.2).item() == 0.0


def test_triplet_positive_when_margin_is_violated() -> None:
    # positive orthogonal (d = 1), negative identical (d = 0): 1 - 0 + 0.2
    assert cosine_triplet_loss(E1, E2, E1, margin=0.2).item() == pytest.approx(1.2)
    # margin just violated: d(a,p) = 1, d(a,n) = 1.1 -> 1 - 1.1 + 0.2 = 0.1
    neg = torch.tensor([[-0.1, (1 - 0.01) ** 0.5, 0.0]])
    assert cosine_triplet_loss(E1, E2, neg, margin=0.2).item() == pytest.approx(0.1, abs=1e-6)


def test_triplet_ignores_vector_length() -> None:
    assert cosine_triplet_loss(5 * E1, 2 * E2, 3 * E1).item() == pytest.approx(1.2)


def test_sgm_loss_combines_terms_with_beta() -> None:
    # omega: positive pair identical (1 - 1 = 0), negative pair cos = 0.5 -> max(0, 0.5) = 0.5;
    # CosineEmbeddingLoss averages over the 2 pairs -> 0.25
    oa = E1
    op = E1
    on = torch.tensor([[0.5, 0.75**0.5, 0.0]])
    # phi: violated triplet with loss 1.2
    loss = SGMLoss(beta=0.5, margin=0.2)(oa, op, on, E1, E2, E1)
    assert loss.omega.item() == pytest.approx(0.25, abs=1e-6)
    assert loss.phi.item() == pytest.approx(1.2, abs=1e-6)
    assert loss.total.item() == pytest.approx(0.5 * 0.25 + 0.5 * 1.2, abs=1e-6)
    only_omega = SGMLoss(beta=1.0)(oa, op, on, E1, E2, E1)
    assert only_omega.total.item() == pytest.approx(0.25, abs=1e-6)


def test_sgm_loss_is_zero_for_a_perfect_embedding() -> None:
    loss = SGMLoss()(E1, E1, MINUS_E1, E1, E1, MINUS_E1)
    assert loss.total.item() == pytest.approx(0.0, abs=1e-7)


def test_gradient_flows_to_inputs() -> None:
    a = torch.randn(4, 8, requires_grad=True)
    loss = SGMLoss()(a, torch.randn(4, 8), torch.randn(4, 8), a, a.detach() * -1, a.detach())
    loss.total.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_bad_parameters_rejected() -> None:
    with pytest.raises(ValueError, match="beta"):
        SGMLoss(beta=1.5)
    with pytest.raises(ValueError, match="margin"):
        SGMLoss(margin=-0.1)
