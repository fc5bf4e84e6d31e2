"""A minimal third-party encoder plugin, registered as an entry point by the plugin tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.models import Encoder, EncoderOutput


class TinyHead(nn.Module):
    """Average-pool to 14×14, a 1×1 conv, two fixed half-image nodes."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 1)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Ω = the map, Φ = left/right halves pooled."""
        f = self.conv(F.adaptive_avg_pool2d(x, 14))
        b = f.shape[0]
        left, right = f[..., :7].mean((2, 3)), f[..., 7:].mean((2, 3))
        assign = torch.zeros(b, 2, 14, 14)
        assign[:, 0, :, :7] = 1
        assign[:, 1, :, 7:] = 1
        return EncoderOutput(
            omega=F.normalize(f.flatten(1), dim=1),
            phi=F.normalize(torch.cat([left, right], 1), dim=1),
            node_areas=torch.full((b, 2), 98.0),
            node_centroids=torch.tensor([[0.25, 0.5], [0.75, 0.5]]).expand(b, 2, 2),
            assignments=assign,
        )


class TinyEncoder(Encoder):
    """Third-party style encoder built on the public base class."""

    name = "tiny"

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.width = width
        self.backbone = nn.Identity()
        self.head = TinyHead(width)
        self.omega_dim, self.phi_dim, self.num_nodes = width * 196, 2 * width, 2

    def config(self) -> dict[str, Any]:
        """Name and parameters."""
        return {"name": self.name, "width": self.width}

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """Identity."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> EncoderOutput:
        """The tiny head."""
        return self.head(features)
