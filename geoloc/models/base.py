"""The encoder contract: :class:`Encoder` (an ``nn.Module``) and its :class:`EncoderOutput`."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoloc.errors import EncoderInputError
from geoloc.models.backbones import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch of B images (float32; no gradient from ``encode``).

    ``omega`` (B, omega_dim) L2-normalised global map; ``phi`` (B, phi_dim) node descriptors;
    ``node_areas`` (B, K) sorted descending; ``node_centroids`` (B, K, 2) as (x, y) in [0, 1]²;
    ``assignments`` (B, K, h, w) node assignment maps.
    """

    omega: torch.Tensor
    phi: torch.Tensor
    node_areas: torch.Tensor
    node_centroids: torch.Tensor
    assignments: torch.Tensor

    def __len__(self) -> int:
        return int(self.omega.shape[0])

    def numpy(self) -> dict[str, np.ndarray]:
        """Every field as a float32 numpy array."""
        return {f.name: getattr(self, f.name).detach().cpu().float().numpy() for f in fields(self)}

    def to(self, device: str | torch.device) -> EncoderOutput:
        """A copy with every field on ``device`` as float32."""
        vals = {f.name: getattr(self, f.name).to(device, torch.float32) for f in fields(self)}
        return EncoderOutput(**vals)

    @staticmethod
    def cat(parts: Sequence[EncoderOutput]) -> EncoderOutput:
        """Concatenate outputs along the batch dimension."""
        names = [f.name for f in fields(EncoderOutput)]
        return EncoderOutput(**{n: torch.cat([getattr(p, n) for p in parts]) for n in names})


@runtime_checkable
class EncoderProtocol(Protocol):
    """Everything the rest of geoloc uses of an encoder: the one declaration of the contract.

    :class:`Encoder` implements it; a plugin is accepted by the registry when it has every
    member (:func:`protocol_members` lists them for the error message).
    """

    name: str
    input_size: int
    omega_dim: int
    phi_dim: int
    num_nodes: int

    @property
    def weights_sha256(self) -> str:
        """SHA-256 naming the weights (recorded by every index built with the encoder)."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-able parameters, enough to rebuild the encoder."""
        ...

    def encode(
        self, images: np.ndarray | torch.Tensor, batch_size: int | None = 32
    ) -> EncoderOutput:
        """uint8 RGB (B, 3, H, W) -> outputs."""
        ...

    def optimize_for_inference(self, jit: bool = True) -> Any:
        """Make :meth:`encode` faster for inference (in place; returns the encoder)."""
        ...

    def eval(self) -> Any:
        """Inference mode (``nn.Module.eval``)."""
        ...

    def to(self, device: Any) -> Any:
        """Move the weights to ``device`` (``nn.Module.to``)."""
        ...


def protocol_members(proto: type) -> tuple[str, ...]:
    """The attribute and method names ``proto`` (a Protocol class) declares, sorted."""
    names = set(getattr(proto, "__annotations__", {}))
    names.update(k for k in vars(proto) if not k.startswith("_"))
    return tuple(sorted(names))


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the safetensors serialisation of ``state`` (deterministic: sorted keys)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sorted(state.items())}
    return hashlib.sha256(save(tensors)).hexdigest()


# (conv attribute, batch-norm attribute) pairs folded by ``fold_batchnorm``.
_CONV_BN_PAIRS: tuple[tuple[str, str], ...] = (
    ("conv1", "bn1"),
    ("conv2", "bn2"),
    ("conv3", "bn3"),
    ("_conv_stem", "_bn0"),
    ("_expand_conv", "_bn0"),
    ("_depthwise_conv", "_bn1"),
    ("_project_conv", "_bn2"),
    ("_conv_head", "_bn1"),
)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    assert bn.running_mean is not None and bn.running_var is not None
    w, b = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    conv.weight = w
    conv.bias = b


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into it; return the count.

    Handles ``nn.Sequential`` (conv, bn) neighbours and the named attribute pairs of the
    torchvision ResNet and EfficientNet-Lite blocks. The BN is replaced by ``nn.Identity``.
    """
    count = 0
    for mod in list(module.modules()):
        if isinstance(mod, nn.Sequential):
            children = list(mod.named_children())
            for (_, a), (name_b, b) in zip(children, children[1:], strict=False):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    _fold(a, b)
                    setattr(mod, name_b, nn.Identity())
                    count += 1
        for conv_name, bn_name in _CONV_BN_PAIRS:
            conv, bn = getattr(mod, conv_name, None), getattr(mod, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold(conv, bn)
                setattr(mod, bn_name, nn.Identity())
                count += 1
    return count


class InferenceTrunk(nn.Module):
    """uint8 RGB images ``(B, 3, S, S)`` at the encoder's input size -> the tensors
    :meth:`Encoder.finish_trunk` takes: input normalisation, the backbone and ``maps`` (the
    head's leading part, or none) in one module, so an exported runtime runs all of them
    (:func:`geoloc.models.runtime.use_runtime`). ``output_names`` name its outputs."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        encoder: Encoder,
        maps: Any = None,
        output_names: tuple[str, ...] = ("features",),
    ) -> None:
        super().__init__()
        self.backbone = encoder.backbone
        self.maps = maps
        self.output_names = output_names
        # (x / 255 - mean) / std == (x - 255 mean) / (255 std), one pass in the exported graph
        mean = torch.tensor(encoder.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(encoder.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The trunk's outputs for uint8 ``images``."""
        x = (images.float() - self.mean) / self.std
        features = self.backbone(x)
        if self.maps is None:
            return (features,)
        return tuple(self.maps(features))


class Encoder(nn.Module):
    """Base class of every encoder plugin.

    Subclasses set ``name``, ``omega_dim``, ``phi_dim``, ``num_nodes``, build ``self.backbone``
    (the frozen, cacheable part) and ``self.head`` (features -> :class:`EncoderOutput`), and
    implement :meth:`config`; :meth:`backbone_features` and :meth:`forward_head` may be overridden.
    """

    name: str = "encoder"
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    omega_dim: int = 0
    phi_dim: int = 0
    num_nodes: int = 0
    #: Size of one node's block of Φ (Φ = K blocks), or None when Φ is one global descriptor.
    node_dim: int | None = None
    #: Name of the backbone architecture, when the encoder has a named one.
    backbone_name: str | None = None
    freeze_backbone: bool = False
    pretrained: bool = False

    backbone: nn.Module
    head: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._frozen_sha: str | None = None
        self._channels_last = False

    # -- contract -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able parameters, enough to rebuild the encoder with ``load_encoder(**config)``."""
        raise NotImplementedError

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map for normalised images ``x`` (the frozen, cacheable part)."""
        return self.run_backbone(x)

    def forward_head(self, features: torch.Tensor) -> EncoderOutput:
        """Everything after the backbone (with gradient unless called under no-grad)."""
        out: EncoderOutput = self.head(features)
        return out

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """``forward_head(backbone_features(x))`` for normalised images ``x``."""
        return self.forward_head(self.backbone_features(x))

    def inference_trunk(self) -> InferenceTrunk | None:
        """What an exported runtime runs (:func:`geoloc.models.runtime.use_runtime`): uint8
        images to the outputs :meth:`finish_trunk` turns into the encoding. Default: the input
        normalisation and the backbone; None for an encoder that computes its backbone features
        its own way (a plugin overriding :meth:`backbone_features`)."""
        if type(self).backbone_features is not Encoder.backbone_features:
            return None
        return InferenceTrunk(self)

    def finish_trunk(self, outputs: Sequence[torch.Tensor]) -> EncoderOutput:
        """The encoding from :meth:`inference_trunk`'s outputs (default: the head)."""
        return self.forward_head(outputs[0])

    # -- helpers ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the encoder's parameters."""
        return next(self.parameters()).device

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB (B, 3, H, W) or (3, H, W) -> normalised float32 (B, 3, 224, 224) on device.

        Images of another size are resized (bilinear, antialiased) to ``input_size``.
        """
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise EncoderInputError(f"encoder expects uint8 images, got {images.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(images))
        elif isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8:
                raise EncoderInputError(f"encoder expects uint8 images, got {images.dtype}")
            t = images
        else:
            raise EncoderInputError(f"encoder expects a numpy array or tensor, got {type(images)}")
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or t.shape[1] != 3:
            raise EncoderInputError(f"encoder expects (B, 3, H, W) RGB, got {tuple(t.shape)}")
        return self.normalize(t.to(self.device, torch.float32) / 255.0)

    def _encode_on_runtime(self, images: np.ndarray | torch.Tensor) -> EncoderOutput | None:
        """The encoding of uint8 ``images`` at the input size through the exported trunk
        (after :func:`~geoloc.models.runtime.use_runtime`); None when there is none or the
        images need :meth:`preprocess` (another size, bad input: it raises the error)."""
        session = self.__dict__.get("_runtime_trunk")
        if session is None or not isinstance(images, np.ndarray | torch.Tensor):
            return None
        size = int(self.input_size)
        if images.dtype not in (np.uint8, torch.uint8) or tuple(images.shape[-3:]) != (
            3,
            size,
            size,
        ):
            return None
        t = images if isinstance(images, torch.Tensor) else torch.from_numpy(images)
        return self.finish_trunk(session.outputs(t if t.ndim == 4 else t.unsqueeze(0)))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float RGB in [0, 1] (B, 3, H, W) -> resized to ``input_size`` and normalised.

        Differentiable; lets the trainer augment in float before normalising.
        """
        size = self.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def encode(
        self, images: np.ndarray | torch.Tensor, batch_size: int | None = 32
    ) -> EncoderOutput:
        """Encode uint8 RGB images (B, 3, H, W): eval mode, no gradient, float32 CPU outputs."""
        was_training = self.training
        if was_training:  # eval() walks every submodule: not on each call of a frozen encoder
            self.eval()
        try:
            n = int(images.shape[0]) if images.ndim == 4 else 1
            step = batch_size or max(n, 1)
            parts: list[EncoderOutput] = []
            with torch.inference_mode():
                for i in range(0, max(n, 1), step):
                    chunk = images[i : i + step] if images.ndim == 4 else images
                    out = self._encode_on_runtime(chunk)
                    if out is None:
                        out = self.forward(self.preprocess(chunk))
                    parts.append(out.to("cpu"))
            return parts[0] if len(parts) == 1 else EncoderOutput.cat(parts)
        finally:
            if was_training:
                self.train(True)

    def train(self, mode: bool = True) -> Encoder:
        """Set training mode; a frozen backbone always stays in eval mode (BN statistics fixed)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the trainer should optimise (the head; the backbone too unless frozen)."""
        if not self.freeze_backbone:
            yield from self.backbone.parameters()
        yield from self.head.parameters()

    def _apply_freeze(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(not self.freeze_backbone)
        if self.freeze_backbone:
            self.backbone.eval()

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the safetensors serialisation of the full state dict.

        After :meth:`optimize_for_inference` this stays the hash of the original weights.
        """
        if self._frozen_sha is not None:
            return self._frozen_sha
        return state_dict_sha256(self.state_dict())

    @property
    def optimized(self) -> bool:
        """Whether :meth:`optimize_for_inference` has been applied."""
        return self._frozen_sha is not None

    def optimize_for_inference(self, jit: bool = True) -> Encoder:
        """Fold BatchNorm into convolutions, switch to channels_last, freeze a traced backbone.

        With ``jit`` the backbone is traced at ``input_size`` and ``torch.jit.freeze``-d (faster on
        CPU after warm-up; tracing costs once), so inputs must then be ``input_size`` square,
        which :meth:`preprocess` guarantees. The weights hash is frozen first, so
        ``weights_sha256`` still names the original weights; outputs match eager mode within
        1e-4. Irreversible: the optimised encoder cannot be trained or saved.
        """
        if self._frozen_sha is not None:
            return self
        self._frozen_sha = state_dict_sha256(self.state_dict())
        self.eval()
        with torch.no_grad():
            fold_batchnorm(self)
        for p in self.parameters():
            p.requires_grad_(False)
        self.to(memory_format=torch.channels_last)
        self._channels_last = True
        if jit:
            size = self.input_size
            example = torch.zeros(2, 3, size, size, device=self.device).contiguous(
                memory_format=torch.channels_last
            )
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings: shapes are fixed by design
                traced = torch.jit.freeze(
                    torch.jit.trace(self.backbone, example, check_trace=False)
                )
            # a plain attribute, not a registered submodule: the state dict stays the same
            object.__setattr__(self, "_traced_backbone", traced)
        return self

    def run_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """``self.backbone(x)``, through the frozen trace once optimised for inference (an
        exported runtime runs the whole :meth:`inference_trunk` from :meth:`encode`)."""
        traced = self.__dict__.get("_traced_backbone")
        if traced is not None:
            return traced(x)
        return self.backbone(x)

    def count_parameters(self) -> int:
        """Number of parameters (backbone + head)."""
        return sum(p.numel() for p in self.parameters())

    def gflops(self, batch: int = 1) -> float:
        """GFLOPs (2 × multiply-adds, torch FlopCounterMode) of one forward pass per image."""
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(batch, 3, self.input_size, self.input_size, device=self.device)
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            self.forward(x)
        return counter.get_total_flops() / 1e9 / batch
