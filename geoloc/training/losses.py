"""The SGM-Net training loss.

``loss = beta * CosineEmbeddingLoss(Omega) + (1 - beta) * TripletLoss(Phi)``

- Omega term: :class:`torch.nn.CosineEmbeddingLoss` over the pairs (anchor, positive, +1) and
  (anchor, negative, -1): ``1 - cos(a, p)`` for positives, ``max(0, cos(a, n) - omega_margin)``
  for negatives, averaged over all pairs.
- Phi term: triplet loss with the cosine distance ``d = 1 - cos``:
  ``max(0, d(a, p) - d(a, n) + margin)``, averaged over the triplets.

The anchor is the map tile, the positive a drone view of the same ground, the negative a drone view
of another place. ``beta`` = 0.5 and ``margin`` = 0.2 by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LossParts", "SGMLoss", "cosine_triplet_loss"]


@dataclass
class LossParts:
    """The total loss and its two terms (tensors; ``total`` carries the gradient)."""

    total: torch.Tensor
    omega: torch.Tensor
    phi: torch.Tensor


def cosine_triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Mean of ``max(0, (1 - cos(a, p)) - (1 - cos(a, n)) + margin)`` over the batch."""
    d_ap = 1.0 - F.cosine_similarity(anchor, positive, dim=1)
    d_an = 1.0 - F.cosine_similarity(anchor, negative, dim=1)
    return F.relu(d_ap - d_an + margin).mean()


class SGMLoss(nn.Module):
    """``beta * CosineEmbeddingLoss(Omega) + (1 - beta) * cosine triplet(Phi, margin)``."""

    def __init__(self, beta: float = 0.5, margin: float = 0.2, omega_margin: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.beta = float(beta)
        self.margin = float(margin)
        self.cel = nn.CosineEmbeddingLoss(margin=omega_margin)

    def forward(
        self,
        omega_a: torch.Tensor,
        omega_p: torch.Tensor,
        omega_n: torch.Tensor,
        phi_a: torch.Tensor,
        phi_p: torch.Tensor,
        phi_n: torch.Tensor,
    ) -> LossParts:
        """Loss of a batch of (anchor, positive, negative) triplets; inputs are (B, D)."""
        b = omega_a.shape[0]
        ones = torch.ones(b, device=omega_a.device, dtype=omega_a.dtype)
        x1 = torch.cat([omega_a, omega_a], dim=0)
        x2 = torch.cat([omega_p, omega_n], dim=0)
        target = torch.cat([ones, -ones], dim=0)
        l_omega = self.cel(x1, x2, target)
        l_phi = cosine_triplet_loss(phi_a, phi_p, phi_n, self.margin)
        total = self.beta * l_omega + (1.0 - self.beta) * l_phi
        return LossParts(total=total, omega=l_omega, phi=l_phi)
