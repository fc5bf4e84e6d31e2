"""CSMG: the scene-graph head of SGM-Net (Φ, node areas, node centroids, assignment maps)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.errors import ConfigError

ASSIGNMENTS: tuple[str, ...] = ("relu", "softmax")
AREAS: tuple[str, ...] = ("soft", "hard")


@dataclass
class CSMGOutput:
    """Per-image nodes, sorted by area (descending)."""

    phi: torch.Tensor  # (B, K*C): concat of node descriptors, globally L2-normalised
    node_areas: torch.Tensor  # (B, K)
    node_centroids: torch.Tensor  # (B, K, 2), (x, y) in [0, 1]^2
    assignments: torch.Tensor  # (B, K, H, W): s_ki


class CSMG(nn.Module):
    """K learnable centres c_k grouping the N = H·W local features x_i of a map into K nodes.

    - ``assignment="relu"``: s_ki = ReLU(c_kᵀ x_i) (with ``cosine=True``, x_i and c_k are
      L2-normalised first);
    - ``assignment="softmax"``: s_ki = softmax_k(τ·cos(c_k, x_i)) · ReLU(cos(c_k, x_i)).

    Node descriptor d_k = Σ_i s_ki x_i, intra-normalised (per node L2) then globally L2-normalised
    over the concatenation; node area a_k = Σ_i s_ki (``area="soft"``) or the number of pixels
    whose largest positive s_ki is k (``area="hard"``); node centroid = s-weighted mean of the
    pixel-centre coordinates in [0, 1]² (the tile centre for an empty node). Nodes are sorted by
    area, descending (stable), and Φ, areas, centroids and maps follow that order.
    """

    def __init__(
        self,
        channels: int,
        num_nodes: int = 4,
        cosine: bool = False,
        assignment: str = "relu",
        area: str = "soft",
        temperature: float = 10.0,
    ) -> None:
        super().__init__()
        if not 2 <= num_nodes <= 8:
            raise ConfigError(f"CSMG num_nodes must be in 2..8, got {num_nodes}")
        if assignment not in ASSIGNMENTS:
            raise ConfigError(f"CSMG assignment {assignment!r}; valid: {', '.join(ASSIGNMENTS)}")
        if area not in AREAS:
            raise ConfigError(f"CSMG area {area!r}; valid: {', '.join(AREAS)}")
        self.channels = channels
        self.num_nodes = num_nodes
        self.cosine = cosine or assignment == "softmax"
        self.assignment = assignment
        self.area = area
        self.temperature = temperature
        self.centres = nn.Parameter(torch.randn(num_nodes, channels) / channels**0.5)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """s (B, K, N) for features ``x`` (B, C, H, W)."""
        feats = x.flatten(2)  # B, C, N
        centres: torch.Tensor = self.centres
        if self.cosine:
            feats = F.normalize(feats, dim=1)
            centres = F.normalize(centres, dim=1)
        sim = torch.einsum("kc,bcn->bkn", centres, feats)
        if self.assignment == "softmax":
            return torch.softmax(self.temperature * sim, dim=1) * F.relu(sim)
        return F.relu(sim)

    def forward(self, x: torch.Tensor) -> CSMGOutput:
        """Group ``x`` (B, C, H, W) into sorted nodes."""
        b, c, h, w = x.shape
        s = self.scores(x)  # B, K, N
        feats = x.flatten(2)  # B, C, N
        desc = torch.einsum("bkn,bcn->bkc", s, feats)
        desc = F.normalize(F.normalize(desc, dim=2).flatten(1), dim=1).view(b, self.num_nodes, c)

        if self.area == "hard":
            best = s.argmax(dim=1)  # B, N
            positive = s.amax(dim=1) > 0
            onehot = F.one_hot(best, self.num_nodes).transpose(1, 2).to(s.dtype)
            areas = (onehot * positive.unsqueeze(1).to(s.dtype)).sum(2)
        else:
            areas = s.sum(2)

        ys = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) / h
        xs = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).view(h * w, 2)  # N, 2
        eps = 1e-6
        mass = s.sum(2, keepdim=True)  # B, K, 1
        centroids = (torch.einsum("bkn,nd->bkd", s, grid) + 0.5 * eps) / (mass + eps)

        order = torch.argsort(areas, dim=1, descending=True, stable=True)
        areas = torch.gather(areas, 1, order)
        desc = torch.gather(desc, 1, order[:, :, None].expand(-1, -1, c))
        centroids = torch.gather(centroids, 1, order[:, :, None].expand(-1, -1, 2))
        maps = torch.gather(s, 1, order[:, :, None].expand(-1, -1, h * w)).view(
            b, self.num_nodes, h, w
        )
        return CSMGOutput(desc.flatten(1), areas, centroids.clamp(0.0, 1.0), maps)
