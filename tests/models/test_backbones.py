"""Backbones: pretrained EfficientNet-Lite0 (all keys load, ImageNet sanity), VGG16, ResNet-50."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc.errors import ConfigError
from geoloc.models import build_encoder
from geoloc.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0,
    build_backbone,
    lite0_pretrained_state,
    load_weights_strict,
)

MILITARY_UNIFORM = 652  # ImageNet class index


def _grace_hopper() -> torch.Tensor:
    from matplotlib import cbook
    from PIL import Image

    with Image.open(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))) as im:
        img = im.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((224, 224), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_lite0_full_classifier_loads_every_key_and_recognises_a_uniform() -> None:
    model = EfficientNetLite0(last_block=None)
    state = lite0_pretrained_state(last_block=None)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert len(state) == len(model.state_dict())
    model.eval()
    with torch.no_grad():
        top5 = model(_grace_hopper()).topk(5).indices[0].tolist()
    assert MILITARY_UNIFORM in top5
    # the same weights with the head shuffled no longer recognise it: the check can fail
    with torch.no_grad():
        model._fc.weight.copy_(
            model._fc.weight[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
        )
        assert model(_grace_hopper()).argmax().item() != MILITARY_UNIFORM


def test_truncated_lite0_stride16_signed_output() -> None:
    bb = build_backbone("efficientnet_lite0")
    assert bb.pretrained and bb.stride == 16 and bb.out_channels == 112
    bb.module.eval()
    with torch.no_grad():
        f = bb.module(_grace_hopper())
    assert f.shape == (1, 112, 14, 14)
    assert (f < 0).any() and (f > 0).any()


def test_lite0_wrong_weights_are_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(8, 3, 3, 3)}, bad)
    with pytest.raises(ConfigError, match=r"bad\.pth.*(missing|fit)"):
        build_backbone("efficientnet_lite0", weights=bad)
    with pytest.raises(ConfigError, match="not found"):
        build_backbone("vgg16", weights=tmp_path / "none.pth")
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("alexnet")


@pytest.mark.parametrize(
    "name", [pytest.param("sgmnet-vgg16", marks=pytest.mark.slow), "sgmnet-resnet50"]
)
def test_other_backbones_shapes(name: str) -> None:
    enc = build_encoder(name)
    assert not enc.pretrained and not enc.freeze_backbone
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)
    out = enc.encode(x)
    assert out.omega.shape == (1, 50176) and out.phi.shape == (1, 1024)
    assert out.assignments.shape == (1, 4, 14, 14)
    torch.testing.assert_close(out.omega.norm(dim=1), torch.ones(1))


def test_resnet50_backbone_weights_file(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    torch.manual_seed(3)
    full = resnet50(
        weights=None
    ).state_dict()  # a full torchvision model file: extra layers dropped
    path = tmp_path / "r50.pth"
    torch.save(full, path)
    enc = build_encoder("sgmnet-resnet50", backbone_weights=str(path))
    assert enc.pretrained and enc.freeze_backbone
    torch.testing.assert_close(
        enc.backbone.state_dict()["layer3.5.conv3.weight"], full["layer3.5.conv3.weight"]
    )
    other = tmp_path / "other.pth"
    sub = {k: v for k, v in full.items() if not k.startswith("layer3.")}
    torch.save(sub, other)
    with pytest.raises(ConfigError, match="missing"):
        build_encoder("sgmnet-resnet50", backbone_weights=str(other))


def test_load_weights_strict_reports_shape_mismatch() -> None:
    m = torch.nn.Conv2d(3, 4, 1)
    with pytest.raises(ConfigError, match="src"):
        load_weights_strict(m, {"weight": torch.zeros(5, 3, 1, 1), "bias": torch.zeros(4)}, "src")
