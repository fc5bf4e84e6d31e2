"""SGM-Net: backbone -> C=256 map X -> non-local -> Ω; CSMG on X (or the non-local output) -> Φ.

Built-in plugins (entry-point group ``geoloc.encoders``): ``sgmnet`` (EfficientNet-Lite0, ImageNet
pretrained, frozen), ``sgmnet-vgg16`` and ``sgmnet-resnet50`` (random init unless
``backbone_weights`` is given).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.errors import ConfigError
from geoloc.models.backbones import build_backbone
from geoloc.models.base import Encoder, EncoderOutput, InferenceTrunk
from geoloc.models.csmg import CSMG
from geoloc.models.nonlocal_block import NonLocalBlock

CSMG_INPUTS: tuple[str, ...] = ("backbone", "nonlocal")


class SGMHead(nn.Module):
    """Reduction to C channels, non-local block, (max-pool for stride-8 backbones), CSMG."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int,
        num_nodes: int,
        csmg_input: str,
        cosine: bool,
        assignment: str,
        area: str,
        temperature: float,
    ) -> None:
        super().__init__()
        if csmg_input not in CSMG_INPUTS:
            raise ConfigError(f"csmg_input {csmg_input!r}; valid: {', '.join(CSMG_INPUTS)}")
        self.csmg_input = csmg_input
        # stride 8 (VGG16 conv4_3): 3x3 conv, then a 2x2 max-pool after the non-local block.
        self.pool = stride == 8
        kernel = 3 if self.pool else 1
        self.reduce = nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2)
        self.non_local = NonLocalBlock(channels)
        self.csmg = CSMG(channels, num_nodes, cosine, assignment, area, temperature)

    def forward(self, features: torch.Tensor) -> EncoderOutput:
        """Ω from the non-local output, Φ and nodes from CSMG."""
        return self.finish(*self.maps(features))

    def maps(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, z)``: the reduced backbone map and the non-local block's output (the part of
        the head an exported runtime runs with the backbone,
        :meth:`SGMNetEncoder.inference_trunk`)."""
        x = self.reduce(features)
        z = self.non_local(x)
        if self.pool:
            x = F.max_pool2d(x, 2)
            z = F.max_pool2d(z, 2)
        return x, z

    def finish(self, x: torch.Tensor, z: torch.Tensor) -> EncoderOutput:
        """Ω (the flattened, L2-normalised ``z``) and CSMG's Φ and nodes from the maps."""
        omega = F.normalize(z.flatten(1), dim=1)
        nodes = self.csmg(x if self.csmg_input == "backbone" else z)
        return EncoderOutput(
            omega=omega,
            phi=nodes.phi,
            node_areas=nodes.node_areas,
            node_centroids=nodes.node_centroids,
            assignments=nodes.assignments,
        )


class SGMNetEncoder(Encoder):
    """SGM-Net encoder (default backbone EfficientNet-Lite0, ImageNet-pretrained and frozen).

    Parameters: ``backbone`` ("efficientnet_lite0" | "vgg16" | "resnet50"), ``pretrained``
    (Lite0 only: use the shipped ImageNet weights), ``backbone_weights`` (a state dict file for
    the backbone), ``freeze_backbone`` (default: True when the backbone has pretrained weights),
    ``channels`` C, ``num_nodes`` K (2–8), ``csmg_input`` ("backbone" | "nonlocal"), ``cosine``,
    ``assignment`` ("relu" | "softmax"), ``area`` ("soft" | "hard"), ``temperature`` (softmax
    variant), ``seed`` (deterministic head initialisation).
    """

    name = "sgmnet"
    default_backbone = "efficientnet_lite0"

    def __init__(
        self,
        backbone: str | None = None,
        pretrained: bool = True,
        backbone_weights: str | Path | None = None,
        freeze_backbone: bool | None = None,
        channels: int = 256,
        num_nodes: int = 4,
        csmg_input: str = "backbone",
        cosine: bool = False,
        assignment: str = "relu",
        area: str = "soft",
        temperature: float = 10.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        backbone = backbone or self.default_backbone
        self._params: dict[str, Any] = {
            "backbone": backbone,
            "pretrained": bool(pretrained),
            "backbone_weights": str(backbone_weights) if backbone_weights else None,
            "channels": int(channels),
            "num_nodes": int(num_nodes),
            "csmg_input": csmg_input,
            "cosine": bool(cosine),
            "assignment": assignment,
            "area": area,
            "temperature": float(temperature),
            "seed": int(seed),
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            bb = build_backbone(backbone, pretrained=pretrained, weights=backbone_weights)
            self.backbone = bb.module
            self.head = SGMHead(
                bb.out_channels,
                channels,
                bb.stride,
                num_nodes,
                csmg_input,
                cosine,
                assignment,
                area,
                temperature,
            )
        self.backbone_name = backbone
        self.pretrained = bb.pretrained
        self.freeze_backbone = bb.pretrained if freeze_backbone is None else bool(freeze_backbone)
        self._params["freeze_backbone"] = self.freeze_backbone
        self.channels = channels
        self.num_nodes = num_nodes
        self.omega_dim = channels * 14 * 14
        self.phi_dim = num_nodes * channels
        self.node_dim = channels
        self._apply_freeze()

    def config(self) -> dict[str, Any]:
        """Name and constructor parameters (JSON-able)."""
        return {"name": self.name, **self._params}

    def inference_trunk(self) -> InferenceTrunk | None:
        """Normalisation, backbone, reduction and non-local block (and the stride-8 pool): all
        but Ω's normalisation and CSMG, whose node sorting stays in torch."""
        assert isinstance(self.head, SGMHead)
        return InferenceTrunk(self, self.head.maps, ("x", "z"))

    def finish_trunk(self, outputs: Sequence[torch.Tensor]) -> EncoderOutput:
        """Ω and CSMG from the trunk's ``(x, z)``."""
        assert isinstance(self.head, SGMHead)
        x, z = outputs
        return self.head.finish(x, z)


class SGMNetVGG16Encoder(SGMNetEncoder):
    """SGM-Net on VGG16 conv4_3 (random init unless ``backbone_weights``)."""

    name = "sgmnet-vgg16"
    default_backbone = "vgg16"


class SGMNetResNet50Encoder(SGMNetEncoder):
    """SGM-Net on ResNet-50 conv1…layer3 (random init unless ``backbone_weights``)."""

    name = "sgmnet-resnet50"
    default_backbone = "resnet50"
