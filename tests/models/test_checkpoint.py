"""Checkpoints: round trip, head-only files, hash verification, shipped default weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc.errors import ConfigError, EncoderMismatchError
from geoloc.models import (
    Encoder,
    build_encoder,
    load_checkpoint,
    load_encoder,
    registry,
    save_checkpoint,
)
from geoloc.models.sgmnet import SGMHead


def _perturbed(**params: object) -> Encoder:
    enc = build_encoder("sgmnet", **params)
    head = enc.head
    assert isinstance(head, SGMHead) and head.reduce.bias is not None
    with torch.no_grad():
        head.csmg.centres.add_(0.5)
        head.reduce.bias.add_(0.1)
    return enc


def test_round_trip_head_only(tmp_path: Path, tiles: np.ndarray) -> None:
    enc = _perturbed()
    meta_path = save_checkpoint(enc, tmp_path / "ckpt")
    meta = json.loads(meta_path.read_text())
    assert meta["encoder"] == "sgmnet" and meta["stored"] == "head"
    assert meta["weights_sha256"] == enc.weights_sha256
    size = (tmp_path / "ckpt.safetensors").stat().st_size
    assert size < 1_000_000  # only the head: the pretrained backbone is not copied
    back = load_checkpoint(tmp_path / "ckpt.json")
    assert back.weights_sha256 == enc.weights_sha256
    assert back.weights_sha256 != build_encoder("sgmnet").weights_sha256
    torch.testing.assert_close(back.encode(tiles[:1]).phi, enc.encode(tiles[:1]).phi)
    assert not back.training


def test_round_trip_full(tmp_path: Path) -> None:
    enc = _perturbed(freeze_backbone=False, num_nodes=3)
    save_checkpoint(enc, tmp_path / "full.safetensors")
    meta = json.loads((tmp_path / "full.json").read_text())
    assert meta["stored"] == "full" and meta["phi_dim"] == 768
    back = load_encoder("sgmnet", checkpoint=tmp_path / "full")
    assert back.weights_sha256 == enc.weights_sha256 and back.num_nodes == 3


def test_tampered_weights_are_rejected(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_checkpoint(_perturbed(), tmp_path / "c")
    state = load_file(str(tmp_path / "c.safetensors"))
    state["head.csmg.centres"] = state["head.csmg.centres"] + 1
    save_file(state, str(tmp_path / "c.safetensors"))
    with pytest.raises(EncoderMismatchError, match=r"c\.safetensors.*SHA-256"):
        load_checkpoint(tmp_path / "c")


def test_recorded_encoder_hash_is_checked(tmp_path: Path) -> None:
    save_checkpoint(_perturbed(), tmp_path / "c")
    meta = json.loads((tmp_path / "c.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (tmp_path / "c.json").write_text(json.dumps(meta))
    with pytest.raises(EncoderMismatchError, match="differs from the recorded"):
        load_checkpoint(tmp_path / "c")


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.json: checkpoint metadata not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_checkpoint(tmp_path / "junk")
    save_checkpoint(_perturbed(), tmp_path / "c")
    with pytest.raises(EncoderMismatchError, match="not 'netvlad'"):
        load_encoder("netvlad", checkpoint=tmp_path / "c")
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_encoder("sgmnet", checkpoint=tmp_path / "c", num_nodes=2)


def test_shipped_weights_are_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    fresh = load_encoder("sgmnet")
    enc = _perturbed()
    save_checkpoint(enc, tmp_path / "sgmnet")
    assert load_encoder("sgmnet").weights_sha256 == enc.weights_sha256
    assert load_encoder("sgmnet", shipped=False).weights_sha256 == fresh.weights_sha256
    # other parameters than the shipped ones: a fresh head, not the shipped weights
    assert load_encoder("sgmnet", num_nodes=2).num_nodes == 2


@pytest.mark.slow
def test_hash_is_stable_across_processes() -> None:
    import subprocess
    import sys

    code = "from geoloc.models import build_encoder; print(build_encoder('sgmnet').weights_sha256)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == build_encoder("sgmnet").weights_sha256


def test_full_checkpoint_does_not_need_the_backbone_file(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    torch.manual_seed(5)
    weights = tmp_path / "r50.pth"
    torch.save(resnet50(weights=None).state_dict(), weights)
    enc = build_encoder("sgmnet-resnet50", backbone_weights=str(weights), freeze_backbone=False)
    save_checkpoint(enc, tmp_path / "r50ckpt")
    assert json.loads((tmp_path / "r50ckpt.json").read_text())["stored"] == "full"
    weights.unlink()
    back = load_checkpoint(tmp_path / "r50ckpt")
    assert back.weights_sha256 == enc.weights_sha256
    assert back.config() == enc.config() and back.pretrained
