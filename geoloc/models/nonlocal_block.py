"""Non-local block, embedded dot-product form (Wang et al., 2018)."""

from __future__ import annotations

import torch
from torch import nn


class NonLocalBlock(nn.Module):
    """z = x + BN(W(y)), y_i = (1/N) Σ_j (θ(x_i)ᵀ φ(x_j)) g(x_j).

    θ, φ, g and W are 1×1 convolutions; the BN after W starts at zero (weight and bias), so the
    block is the identity at initialisation.
    """

    def __init__(self, channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(channels // 2, 1)
        self.inter_channels = inter
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.W = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        bn = self.W[1]
        assert isinstance(bn, nn.BatchNorm2d)
        nn.init.zeros_(bn.weight)
        nn.init.zeros_(bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` (B, C, H, W)."""
        b, _, h, w = x.shape
        n = h * w
        theta = self.theta(x).flatten(2).transpose(1, 2)  # B, N, C'
        phi = self.phi(x).flatten(2)  # B, C', N
        g = self.g(x).flatten(2).transpose(1, 2)  # B, N, C'
        attn = torch.bmm(theta, phi) / n  # B, N, N
        y = torch.bmm(attn, g).transpose(1, 2).reshape(b, self.inter_channels, h, w)
        return x + self.W(y)
