"""The NetVLAD family: NetVLAD, NetVLAD-Loupe (with context gating) and gated fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NetVLAD(nn.Module):
    """NetVLAD pooling of local features ``x`` (B, C, N, 1) into (B, C·K), L2 norm 1.

    a_ki = softmax_k(ReLU(conv1x1(x))_ki); VLAD_k = Σ_i a_ki (x_i − c_k) / Σ_i a_ki;
    intra-normalisation (per cluster L2), flatten, global L2.
    """

    def __init__(self, feature_size: int = 128, num_clusters: int = 16) -> None:
        super().__init__()
        self.feature_size = feature_size
        self.num_clusters = num_clusters
        self.output_dim = feature_size * num_clusters
        self.conv = nn.Conv2d(feature_size, num_clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.randn(num_clusters, feature_size) / feature_size**0.5)

    def soft_assign(self, x: torch.Tensor) -> torch.Tensor:
        """a (B, K, N): softmax over clusters of ReLU(1×1 conv(x))."""
        return torch.softmax(F.relu(self.conv(x)).flatten(2), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, N, 1) -> (B, C·K)."""
        b, c = x.shape[:2]
        a = self.soft_assign(x)  # B, K, N
        feats = x.flatten(2)  # B, C, N
        weighted = torch.einsum("bkn,bcn->bkc", a, feats)
        mass = a.sum(2).unsqueeze(2)  # B, K, 1
        vlad = (weighted - mass * self.centroids.unsqueeze(0)) / (mass + 1e-6)
        vlad = F.normalize(vlad, dim=2)
        return F.normalize(vlad.reshape(b, self.output_dim), dim=1)


class GatingContext(nn.Module):
    """Context gating: y = x · sigmoid(BN(x W)) (or + b without batch norm)."""

    def __init__(self, dim: int, add_batch_norm: bool = True) -> None:
        super().__init__()
        self.gating_weights = nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.bn: nn.Module
        if add_batch_norm:
            self.bn = nn.BatchNorm1d(dim)
            self.gating_biases = None
        else:
            self.bn = nn.Identity()
            self.gating_biases = nn.Parameter(torch.randn(dim) / dim**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate every dimension of ``x`` (B, dim)."""
        gates = self.bn(x @ self.gating_weights)
        if self.gating_biases is not None:
            gates = gates + self.gating_biases
        return x * torch.sigmoid(gates)


class NetVLADLoupe(nn.Module):
    """NetVLAD-Loupe (PointNetVLAD): (B, N, C) -> (B, output_dim).

    Cluster weights, softmax with batch norm, residuals to learned cluster centres, intra and
    global L2, a hidden projection to ``output_dim`` (+ BN) and optional context gating.
    """

    def __init__(
        self,
        feature_size: int,
        max_samples: int,
        cluster_size: int,
        output_dim: int = 256,
        gating: bool = True,
        add_batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.feature_size = feature_size
        self.max_samples = max_samples
        self.cluster_size = cluster_size
        self.output_dim = output_dim
        self.add_batch_norm = add_batch_norm
        scale = 1 / feature_size**0.5
        self.cluster_weights = nn.Parameter(torch.randn(feature_size, cluster_size) * scale)
        self.cluster_weights2 = nn.Parameter(torch.randn(1, feature_size, cluster_size) * scale)
        self.hidden1_weights = nn.Parameter(
            torch.randn(cluster_size * feature_size, output_dim) * scale
        )
        self.bn1: nn.Module
        if add_batch_norm:
            self.bn1 = nn.BatchNorm1d(cluster_size)
            self.cluster_biases = None
        else:
            self.bn1 = nn.Identity()
            self.cluster_biases = nn.Parameter(torch.randn(cluster_size) * scale)
        self.bn2 = nn.BatchNorm1d(output_dim)
        self.gating = GatingContext(output_dim, add_batch_norm) if gating else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, output_dim)."""
        b, n, c = x.shape
        act = x @ self.cluster_weights  # B, N, K
        act = self.bn1(act.reshape(-1, self.cluster_size)).reshape(b, n, self.cluster_size)
        if self.cluster_biases is not None:
            act = act + self.cluster_biases
        act = torch.softmax(act, dim=-1)
        a = act.sum(-2, keepdim=True) * self.cluster_weights2  # B, C, K
        vlad = torch.bmm(act.transpose(1, 2), x).transpose(1, 2) - a  # B, C, K
        vlad = F.normalize(vlad, dim=1)
        vlad = F.normalize(vlad.reshape(b, c * self.cluster_size), dim=1)
        out = self.bn2(vlad @ self.hidden1_weights)
        return self.gating(out) if self.gating is not None else out


class GatedFusion(nn.Module):
    """sigmoid(w)·a + (1 − sigmoid(w))·b with a learnable scalar w (0 at init: the mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Fuse two descriptors of the same shape."""
        g = torch.sigmoid(self.w)
        return g * a + (1 - g) * b
