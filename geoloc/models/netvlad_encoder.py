"""The ``netvlad`` encoder plugin: NetVLAD and NetVLAD-Loupe over the same 256×14×14 map.

Ω is the L2-normalised map (as in SGM-Net, so the Ω index is interchangeable in shape); Φ is the
gated fusion of the NetVLAD descriptor (projected to ``output_dim``) and the Loupe descriptor,
L2-normalised. The K NetVLAD clusters play the role of nodes: areas Σ_i a_ki (sorted descending),
centroids and assignment maps come from the soft-assignment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.models.backbones import build_backbone
from geoloc.models.base import Encoder, EncoderOutput
from geoloc.models.netvlad import GatedFusion, NetVLAD, NetVLADLoupe


class NetVLADHead(nn.Module):
    """Reduction to C channels (+ 2×2 max-pool for stride-8 backbones), NetVLAD, Loupe, fusion."""

    def __init__(
        self, in_channels: int, channels: int, stride: int, num_clusters: int, output_dim: int
    ) -> None:
        super().__init__()
        self.pool = stride == 8
        kernel = 3 if self.pool else 1
        self.reduce = nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2)
        self.netvlad = NetVLAD(channels, num_clusters)
        self.project = nn.Linear(channels * num_clusters, output_dim)
        self.loupe = NetVLADLoupe(channels, 196, num_clusters, output_dim)
        self.fusion = GatedFusion()

    def forward(self, features: torch.Tensor) -> EncoderOutput:
        """Ω, Φ and cluster nodes."""
        x = self.reduce(features)
        if self.pool:
            x = F.max_pool2d(x, 2)
        b, c, h, w = x.shape
        omega = F.normalize(x.flatten(1), dim=1)
        cols = x.flatten(2).unsqueeze(-1)  # B, C, N, 1
        vlad = F.normalize(self.project(self.netvlad(cols)), dim=1)
        loupe = F.normalize(self.loupe(cols.squeeze(-1).transpose(1, 2)), dim=1)
        phi = F.normalize(self.fusion(vlad, loupe), dim=1)

        a = self.netvlad.soft_assign(cols)  # B, K, N
        areas = a.sum(2)
        ys = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) / h
        xs = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).view(h * w, 2)
        centroids = torch.einsum("bkn,nd->bkd", a, grid) / (areas.unsqueeze(2) + 1e-6)
        order = torch.argsort(areas, dim=1, descending=True, stable=True)
        k = a.shape[1]
        return EncoderOutput(
            omega=omega,
            phi=phi,
            node_areas=torch.gather(areas, 1, order),
            node_centroids=torch.gather(centroids, 1, order[:, :, None].expand(-1, -1, 2)).clamp(
                0, 1
            ),
            assignments=torch.gather(a, 1, order[:, :, None].expand(-1, -1, h * w)).view(
                b, k, h, w
            ),
        )


class NetVLADEncoder(Encoder):
    """NetVLAD-family encoder on the SGM-Net backbones (default EfficientNet-Lite0, frozen).

    Parameters: ``backbone``, ``pretrained``, ``backbone_weights``, ``freeze_backbone`` (as for
    SGM-Net), ``channels`` C (256), ``num_clusters`` K (16), ``output_dim`` of Φ (256), ``seed``.
    """

    name = "netvlad"

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        pretrained: bool = True,
        backbone_weights: str | Path | None = None,
        freeze_backbone: bool | None = None,
        channels: int = 256,
        num_clusters: int = 16,
        output_dim: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._params: dict[str, Any] = {
            "backbone": backbone,
            "pretrained": bool(pretrained),
            "backbone_weights": str(backbone_weights) if backbone_weights else None,
            "channels": int(channels),
            "num_clusters": int(num_clusters),
            "output_dim": int(output_dim),
            "seed": int(seed),
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            bb = build_backbone(backbone, pretrained=pretrained, weights=backbone_weights)
            self.backbone = bb.module
            self.head = NetVLADHead(bb.out_channels, channels, bb.stride, num_clusters, output_dim)
        self.backbone_name = backbone
        self.pretrained = bb.pretrained
        self.freeze_backbone = bb.pretrained if freeze_backbone is None else bool(freeze_backbone)
        self._params["freeze_backbone"] = self.freeze_backbone
        self.channels = channels
        self.num_nodes = num_clusters
        self.omega_dim = channels * 196
        self.phi_dim = output_dim
        self.node_dim = None  # Φ is one global descriptor, not per-node blocks
        self._apply_freeze()

    def config(self) -> dict[str, Any]:
        """Name and constructor parameters (JSON-able)."""
        return {"name": self.name, **self._params}
