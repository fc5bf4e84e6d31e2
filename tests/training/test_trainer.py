"""The trainer: loss goes down on a fixed batch, checkpoints resume at the right epoch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from geoloc.training.datasets import RasterPairs
from geoloc.training.trainer import TrainConfig, Trainer, TrainError


@pytest.fixture(scope="module")
def pairs(sample_raster: Path) -> RasterPairs:
    return RasterPairs([sample_raster], tile_size=112, gsd_range=(0.6, 1.0))


def small_encoder() -> Any:
    """The real SGM-Net at 112 px input (7x7 maps) to keep CPU time small in tests."""
    from geoloc.models import build_encoder

    enc = build_encoder("sgmnet")
    enc.input_size = 112
    return enc


def test_raster_pairs_hold_out_a_spatial_block(pairs: RasterPairs) -> None:
    rng = np.random.default_rng(0)
    tr = pairs.sample(12, rng, "train")
    va = pairs.sample(12, rng, "val")
    assert tr.lonlat is not None and va.lonlat is not None
    # the sample raster is wider than tall: the block is its east end, beyond a guard band
    assert tr.lonlat[:, 0].max() < va.lonlat[:, 0].min()
    # a pair is never its own negative; far-apart places are
    assert not tr.negative_ok.diagonal().any()
    assert tr.negative_ok.any()


@pytest.mark.slow
def test_twenty_steps_lower_the_loss_on_a_fixed_batch(pairs: RasterPairs) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(lr=1e-3, seed=0)
    tr = Trainer(cfg, None, "/nonexistent-never-written", encoder=small_encoder())
    batch = pairs.sample(8, np.random.default_rng(1), "train")
    fa, fp = tr.features(batch.anchors), tr.features(batch.positives)
    neg = tr.mine_negatives(fa, fp, batch.negative_ok, np.random.default_rng(2))
    assert all(batch.negative_ok[i, neg[i]] for i in range(8))
    losses = [float(tr.step(fa, fp, fp[neg]).total.detach()) for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0], losses
    # only the head was trained: the frozen backbone still gives the same features
    assert torch.allclose(tr.features(batch.anchors), fa)


@pytest.mark.slow
def test_resume_continues_at_the_right_epoch(pairs: RasterPairs, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, samples_per_epoch=8, batch_size=4, passes=1, val_samples=8)
    first = Trainer(cfg, pairs, tmp_path, encoder=small_encoder()).fit()
    assert first.epochs_run == 1 and len(first.history) == 1
    meta = json.loads((tmp_path / "last.json").read_text())
    assert meta["training"]["epoch"] == 0 and meta["stored"] == "head"
    fresh = {k: v.clone() for k, v in small_encoder().state_dict().items() if k.startswith("head.")}

    cfg2 = TrainConfig(epochs=2, samples_per_epoch=8, batch_size=4, passes=1, val_samples=8)
    t2 = Trainer(cfg2, pairs, tmp_path, encoder=small_encoder())
    assert t2.resume() == 1
    # the weights are those of epoch 1, not the fresh initialisation
    fresh_equal = all(torch.equal(fresh[k], v) for k, v in t2.trained_state().items())
    assert not fresh_equal
    state = t2.optimizer.state_dict()["state"]
    assert state and all(int(s["step"]) == 2 for s in state.values())  # 8 pairs / 4 = 2 steps
    res = Trainer(cfg2, pairs, tmp_path, encoder=small_encoder()).fit(resume=True)
    assert res.epochs_run == 1 and len(res.history) == 2
    assert [h["epoch"] for h in res.history] == [1.0, 2.0]
    meta = json.loads((tmp_path / "last.json").read_text())
    assert meta["training"]["epoch"] == 1
    # the checkpoint is a regular encoder checkpoint
    from geoloc.models import load_encoder

    enc = load_encoder("sgmnet", checkpoint=tmp_path / "best")
    assert enc.omega_dim == 50176


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="nothing to resume"):
        Trainer(TrainConfig(), None, tmp_path).resume()


@pytest.mark.slow
def test_batch_hard_mining_picks_allowed_negatives_and_lowers_the_loss(
    pairs: RasterPairs,
) -> None:
    torch.manual_seed(0)
    tr = Trainer(TrainConfig(mining="batch"), None, "/nonexistent", encoder=small_encoder())
    batch = pairs.sample(8, np.random.default_rng(1), "train")
    fa, fp = tr.features(batch.anchors), tr.features(batch.positives)
    losses = [
        float(tr.step_batch_hard(fa, fp, batch.negative_ok).total.detach()) for _ in range(20)
    ]
    assert losses[-1] < 0.8 * losses[0], losses
    # an anchor whose only other pairs are too close has no negative: a clear error
    none_ok = np.zeros_like(batch.negative_ok)
    with pytest.raises(TrainError, match="no negative in its batch"):
        tr.step_batch_hard(fa, fp, none_ok)


def test_unknown_mining_is_an_error() -> None:
    with pytest.raises(TrainError, match="mining 'nope'"):
        Trainer(TrainConfig(mining="nope"), None, "/nonexistent", encoder=small_encoder())
